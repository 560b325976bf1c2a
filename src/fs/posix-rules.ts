/**
 * POSIX rules the operations table (fuse-operations.ts) applies on top of the layer store:
 * name length, new nodes' owners, access(2) without default_permissions, POSIX ACL names,
 * the clock for "now".
 */
import { constants as fsConstants } from 'node:fs';
import { dmfsError } from '../errors';
import type { Attr, Ino, LayerFs } from '../store/layer-store';
import { S_IFDIR, S_IFMT } from '../store/layer-store';

/** NAME_MAX: the kernel lets FUSE names reach 1024 bytes, POSIX tools expect 255. */
export const NAME_MAX_BYTES = 255;

export const S_ISUID = 0o4000;
export const S_ISGID = 0o2000;

/**
 * Never stored: the kernel checks permissions from the mode alone (no FUSE_POSIX_ACL), so
 * an ACL would be shown but not enforced. Setting one is refused (cp/tar fall back to
 * chmod); removing one succeeds, as on ext4 for a file that has none.
 */
export const POSIX_ACL_XATTRS: ReadonlySet<string> = new Set(['system.posix_acl_access', 'system.posix_acl_default']);

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
