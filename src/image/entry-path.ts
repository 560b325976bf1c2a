/**
 * Names of layer tar entries, from untrusted input to checked path components.
 *
 * A tar name is split on '/', and '' and '.' components are dropped, so `./a`, `/a`,
 * `a/` and `a//b/.` all name inside the layer; `.`, `./` and `/` are the root (empty
 * component list). A `..` component anywhere is refused (UNSAFE_PATH) rather than
 * resolved: no legitimate layer needs it, and refusing it leaves no room for tricks.
 * Components longer than 255 bytes are NAME_TOO_LONG. Symlinks are never followed:
 * `layer-applier.ts` walks the components with `lookup` itself.
 */
import { dmfsError } from '../errors';

export const NAME_MAX_BYTES = 255;
export const WHITEOUT_PREFIX = '.wh.';
export const OPAQUE_MARKER = '.wh..wh..opq';

/** Components of an entry name inside the layer; [] for the root. */
export function entryComponents(name: string): string[] {
  if (name.includes('\0')) throw dmfsError('UNSAFE_PATH', `entry name contains a NUL byte: ${JSON.stringify(name)}`);
  const out: string[] = [];
  for (const part of name.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') throw dmfsError('UNSAFE_PATH', `entry name escapes the layer: ${JSON.stringify(name)}`);
    // A UTF-16 unit is at most 3 UTF-8 bytes: only long parts need counting.
    if (part.length * 3 > NAME_MAX_BYTES && Buffer.byteLength(part) > NAME_MAX_BYTES) {
      throw dmfsError('NAME_TOO_LONG', `entry name component longer than ${NAME_MAX_BYTES} bytes: ${JSON.stringify(part.slice(0, 64))}...`);
    }
    out.push(part);
  }
  return out;
}

/** '/a/b' for ['a', 'b'], '/' for []. */
export function componentsToPath(components: readonly string[]): string {
  return '/' + components.join('/');
}

export type WhiteoutKind = { kind: 'opaque' } | { kind: 'whiteout'; name: string } | { kind: 'reserved' } | null;

/** What a basename means under the OCI whiteout convention. */
export function whiteoutOf(basename: string): WhiteoutKind {
  if (!basename.startsWith(WHITEOUT_PREFIX)) return null;
  if (basename === OPAQUE_MARKER) return { kind: 'opaque' };
  // `.wh..wh.*` names are reserved (aufs metadata such as .wh..wh.plnk): never content.
  if (basename.startsWith(WHITEOUT_PREFIX + WHITEOUT_PREFIX)) return { kind: 'reserved' };
  const name = basename.slice(WHITEOUT_PREFIX.length);
  if (name === '' || name === '.' || name === '..') {
    throw dmfsError('UNSAFE_PATH', `whiteout names no entry: ${JSON.stringify(basename)}`);
  }
  return { kind: 'whiteout', name };
}

/** Byte-wise order of '/'-separated paths with parents before children (tar order). */
export function comparePaths(a: string, b: string): number {
  const ca = a.split('/');
  const cb = b.split('/');
  const n = Math.min(ca.length, cb.length);
  for (let i = 0; i < n; i++) {
    if (ca[i] === cb[i]) continue;
    return Buffer.compare(Buffer.from(ca[i]), Buffer.from(cb[i]));
  }
  return ca.length - cb.length;
}
