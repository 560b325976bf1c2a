/**
 * POSIX rules the operations table (fuse-operations.ts) applies on top of the layer store:
 * name length, new nodes' owners, access(2) without default_permissions, setattr's changes
 * in the store's form, the clock for "now". POSIX ACLs: posix-acls.ts.
 */
import { constants as fsConstants } from 'node:fs';
import { dmfsError } from '../errors';
import type { Attr, Ino, LayerFs, SetAttr } from '../store/layer-store';
import type { AttrChanges } from './fuse-operations';
import { S_IFDIR, S_IFMT } from '../store/layer-store';

/** NAME_MAX: the kernel lets FUSE names reach 1024 bytes, POSIX tools expect 255. */
export const NAME_MAX_BYTES = 255;

export const S_ISUID = 0o4000;
export const S_ISGID = 0o2000;

export function wallClockNs(): bigint {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000)) * 1000n;
}

/** Owner and mode of a new node in dirIno: the caller's ids, and BSD group semantics under a setgid directory. */
export async function newNodeOwner(layer: LayerFs, dirIno: Ino, mode: number, uid: number, gid: number): Promise<{ mode: number; uid: number; gid: number }> {
  const dir = await layer.getattr(dirIno);
  if ((dir.mode & S_ISGID) === 0) return { mode, uid, gid };
  const isDir = (mode & S_IFMT) === S_IFDIR;
  return { mode: isDir ? mode | S_ISGID : mode, uid, gid: dir.gid };
}

/**
 * access(2), only asked without default_permissions, where the caller is the mounting user
 * (as a rule root): existence (the caller found `attr`), X_OK needs an execute bit on
 * anything but a directory, W_OK a writable layer. Throws ACCESS_DENIED / READ_ONLY_LAYER.
 */
export function checkAccess(layer: LayerFs, attr: Attr, mask: number, what: string): void {
  if (mask & fsConstants.X_OK && attr.kind !== 'dir' && (attr.mode & 0o111) === 0) {
    throw dmfsError('ACCESS_DENIED', `${what} is not executable`);
  }
  if (mask & fsConstants.W_OK && layer.readOnly) throw dmfsError('READ_ONLY_LAYER', 'read-only layer');
}

/** The store's form of changes, with 'now' read once; null when nothing is to change. */
export function storeChanges(c: AttrChanges, nowNs: () => bigint): SetAttr | null {
  if (c.mode === undefined && c.uid === undefined && c.gid === undefined && c.sizeBytes === undefined &&
    c.atime === undefined && c.mtime === undefined && c.ctimeNs === undefined) return null;
  const now = c.atime === 'now' || c.mtime === 'now' ? nowNs() : 0n;
  const out: SetAttr = {};
  if (c.mode !== undefined) out.mode = c.mode & 0o7777;
  if (c.uid !== undefined) out.uid = c.uid;
  if (c.gid !== undefined) out.gid = c.gid;
  if (c.sizeBytes !== undefined) out.sizeBytes = c.sizeBytes;
  if (c.atime !== undefined) out.atimeNs = c.atime === 'now' ? now : c.atime;
  if (c.mtime !== undefined) out.mtimeNs = c.mtime === 'now' ? now : c.mtime;
  if (c.ctimeNs !== undefined) out.ctimeNs = c.ctimeNs;
  return out;
}
