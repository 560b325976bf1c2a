/**
 * The FUSE operations table of one mounted layer (libfuse passthrough_hp's
 * `assign_operations`, fuse-overlayfs's `ovl_oper`): each operation resolves its path,
 * calls the layer store, and returns. Whiteouts, copy-up and block arithmetic live in the
 * store; this file knows paths, handles and FUSE's conventions only.
 *
 * libfuse's high-level API names files by path. Two consequences handled here:
 * - Open files are addressed by handle -> inode (HandleTable), so rename and unlink of an
 *   open file do not disturb reads and writes through it.
 * - Unlinking (or renaming over) a file that is still open makes libfuse rename it to
 *   `.fuse_hiddenXXXXXXXXXXXXXXXX` and unlink that name at the last close. We unlink the
 *   real name in the store at the rename (the open handle keeps the inode alive through
 *   `LayerFs.retain`) and serve the hidden name from a map, so it never shows in readdir,
 *   never blocks `rmdir`, and `fstat` on the open file keeps working.
 */
import { constants as fsConstants } from 'node:fs';
import { dmfsError, isDmfsError } from '../errors';
import type { Attr, DirEntry, Ino, LayerFs, StatFs } from '../store/layer-store';
import { S_IFDIR, S_IFMT, S_IFREG } from '../store/layer-store';
import { DentryCache } from './dentry-cache';
import type { CallerContext, FuseOperations, TimeSpec } from './fuse-adapter';
import { GroupSync } from './group-sync';
import { HandleTable } from './handle-table';
import { checkAccess, NAME_MAX_BYTES, newNodeOwner, POSIX_ACL_XATTRS, wallClockNs } from './posix-rules';

const O_RDONLY = fsConstants.O_RDONLY;
/** O_ACCMODE (not exported by Node): the two low bits hold O_RDONLY / O_WRONLY / O_RDWR. */
const ACCMODE = 3;
const XATTR_CREATE = 1;
const XATTR_REPLACE = 2;

const HIDDEN_NAME = /^\.fuse_hidden[0-9a-f]{16}$/;

export interface OperationsOptions {
  /** Bound of the (dir inode, name) -> inode cache. */
  dentryCacheEntries?: number;
  /** Wall clock in nanoseconds, for UTIME_NOW (tests inject one). */
  nowNs?: () => bigint;
}

export interface LayerOperations extends FuseOperations {
  /** Releases every handle still open and syncs the layer. Called once, after unmount. */
  shutdown(): Promise<void>;
  /** Open handles (for tests and the service's log). */
  readonly openHandles: number;
  /** Store syncs started by fsync/flush (for tests). */
  readonly syncCount: number;
}

export function createOperations(layer: LayerFs, options: OperationsOptions = {}): LayerOperations {
  const dentries = new DentryCache(options.dentryCacheEntries);
  const handles = new HandleTable();
  const hidden = new Map<string, Ino>();
  // fsync on a read-only layer is a successful no-op, as on any read-only file system.
  const group = new GroupSync(() => (layer.readOnly ? Promise.resolve() : layer.fsync()));
  const nowNs = options.nowNs ?? wallClockNs;
  const root = layer.rootIno;

  // ---- path resolution ----------------------------------------------------------------

  function components(path: string): string[] {
    const parts = path.split('/').filter((p) => p.length > 0);
    for (const p of parts) {
      if (Buffer.byteLength(p) > NAME_MAX_BYTES) throw dmfsError('NAME_TOO_LONG', `name longer than ${NAME_MAX_BYTES} bytes`);
    }
    return parts;
  }

  async function child(dirIno: Ino, name: string): Promise<Attr> {
    const attr = await layer.lookup(dirIno, name);
    if (!attr) throw dmfsError('NOT_FOUND', `no such file: ${name}`);
    dentries.set(dirIno, name, attr.ino);
    return attr;
  }

  async function walk(parts: string[]): Promise<Ino> {
    let ino = root;
    for (const name of parts) {
      ino = dentries.get(ino, name) ?? (await child(ino, name)).ino;
    }
    return ino;
  }

  /** Parent directory inode and final name; NOT_FOUND/NOT_DIR from the walk. */
  async function parentOf(path: string): Promise<{ dirIno: Ino; name: string }> {
    const parts = components(path);
    const name = parts.pop();
    if (name === undefined) throw dmfsError('INVALID', 'the root has no parent');
    return { dirIno: await walk(parts), name };
  }

  async function inoOf(path: string): Promise<Ino> {
    const parts = components(path);
    const last = parts[parts.length - 1];
    if (last !== undefined && HIDDEN_NAME.test(last)) {
      const h = hidden.get(last);
      if (h !== undefined) return h;
    }
    return walk(parts);
  }

  async function attrOf(path: string): Promise<Attr> {
    const parts = components(path);
    const name = parts.pop();
    if (name === undefined) return layer.getattr(root);
    const h = HIDDEN_NAME.test(name) ? hidden.get(name) : undefined;
    if (h !== undefined) return layer.getattr(h);
    const dirIno = await walk(parts);
    const cached = dentries.get(dirIno, name);
    if (cached !== undefined) {
      try {
        return await layer.getattr(cached);
      } catch (err) {
        if (!isDmfsError(err, 'NOT_FOUND')) throw err;
        dentries.delete(dirIno, name);
      }
    }
    return child(dirIno, name);
  }

  function handleIno(fh: number): Ino {
    const h = handles.get(fh);
    if (!h) throw dmfsError('INVALID', `unknown file handle ${fh}`);
    return h.ino;
  }

  function newNode(dirIno: Ino, mode: number, ctx: CallerContext): Promise<{ mode: number; uid: number; gid: number }> {
    return newNodeOwner(layer, dirIno, mode, ctx.uid, ctx.gid);
  }

  function toNs(t: TimeSpec, now: bigint): bigint | undefined {
    if (t === 'omit') return undefined;
    if (t === 'now') return now;
    return t;
  }

  // ---- the table ----------------------------------------------------------------------

  const ops: LayerOperations = {
    get openHandles() {
      return handles.size;
    },
    get syncCount() {
      return group.syncCount;
    },

    async statfs(): Promise<StatFs> {
      return layer.statfs();
    },

    async getattr(path) {
      return attrOf(path);
    },

    async fgetattr(path, fh) {
      const h = handles.get(fh);
      return h ? layer.getattr(h.ino) : attrOf(path);
    },

    async readdir(path): Promise<DirEntry[]> {
      const parts = components(path);
      const ino = await inoOf(path);
      const parentIno = parts.length === 0 ? root : await walk(parts.slice(0, -1));
      const entries = await layer.readdir(ino);
      for (const e of entries) dentries.set(ino, e.name, e.ino);
      return [{ name: '.', ino, kind: 'dir' }, { name: '..', ino: parentIno, kind: 'dir' }, ...entries];
    },

    async open(path, flags) {
      const writable = (flags & ACCMODE) !== O_RDONLY;
      if (writable && layer.readOnly) throw dmfsError('READ_ONLY_LAYER', `layer ${layer.layerName} is read-only`);
      const ino = await inoOf(path);
      layer.retain(ino);
      return handles.open(ino, writable);
    },

    async create(path, mode, ctx) {
      const { dirIno, name } = await parentOf(path);
      const attr = await layer.mknod(dirIno, name, await newNode(dirIno, S_IFREG | (mode & 0o7777), ctx));
      dentries.set(dirIno, name, attr.ino);
      layer.retain(attr.ino);
      return handles.open(attr.ino, true);
    },

    async read(_path, fh, target, offsetBytes) {
      return layer.read(handleIno(fh), target, offsetBytes);
    },

    async write(_path, fh, data, offsetBytes) {
      const h = handles.get(fh);
      if (!h) throw dmfsError('INVALID', `unknown file handle ${fh}`);
      return layer.write(h.ino, data, offsetBytes);
    },

    async release(_path, fh) {
      const h = handles.close(fh);
      if (!h) return;
      try {
        await layer.release(h.ino);
      } finally {
        if (handles.openCount(h.ino) === 0) {
          for (const [name, ino] of hidden) if (ino === h.ino) hidden.delete(name);
        }
      }
    },

    // close(2) is not a durability point (as on ext4): the store commits metadata at once
    // and flushes data and metadata at least every second; fsync, fdatasync and umount
    // are what make writes durable. Syncing here cost ~40% of a tar -x.
    async flush() {
      return;
    },

    async fsync() {
      await group.sync();
    },

    async fsyncdir() {
      await group.sync();
    },

    async truncate(path, sizeBytes) {
      await layer.setattr(await inoOf(path), { sizeBytes });
    },

    async ftruncate(path, fh, sizeBytes) {
      const h = handles.get(fh);
      await layer.setattr(h ? h.ino : await inoOf(path), { sizeBytes });
    },

    async utimens(path, atime, mtime) {
      const now = atime === 'now' || mtime === 'now' ? nowNs() : 0n;
      const atimeNs = toNs(atime, now);
      const mtimeNs = toNs(mtime, now);
      if (atimeNs === undefined && mtimeNs === undefined) return;
      await layer.setattr(await inoOf(path), { atimeNs, mtimeNs });
    },

    async readlink(path) {
      return layer.readlink(await inoOf(path));
    },

    async chown(path, uid, gid) {
      await layer.setattr(await inoOf(path), { uid: uid ?? undefined, gid: gid ?? undefined });
    },

    async chmod(path, mode) {
      await layer.setattr(await inoOf(path), { mode: mode & 0o7777 });
    },

    async mknod(path, mode, rdev, ctx) {
      const { dirIno, name } = await parentOf(path);
      const typed = (mode & S_IFMT) === 0 ? mode | S_IFREG : mode;
      const attr = await layer.mknod(dirIno, name, { ...(await newNode(dirIno, typed, ctx)), rdev });
      dentries.set(dirIno, name, attr.ino);
    },

    async mkdir(path, mode, ctx) {
      const { dirIno, name } = await parentOf(path);
      const attr = await layer.mkdir(dirIno, name, await newNode(dirIno, S_IFDIR | (mode & 0o7777), ctx));
      dentries.set(dirIno, name, attr.ino);
    },

    async symlink(target, path, ctx) {
      const { dirIno, name } = await parentOf(path);
      const { uid, gid } = await newNode(dirIno, 0, ctx);
      const attr = await layer.symlink(dirIno, name, target, { uid, gid });
      dentries.set(dirIno, name, attr.ino);
    },

    async link(existingPath, newPath) {
      const ino = await inoOf(existingPath);
      const { dirIno, name } = await parentOf(newPath);
      await layer.link(ino, dirIno, name);
      dentries.set(dirIno, name, ino);
    },

    async unlink(path) {
      // libfuse removes the hidden name after the last release, possibly below a directory gone since.
      // The entry is dropped at that release already, so a missing hidden name is fine.
      const last = path.slice(path.lastIndexOf('/') + 1);
      const isHidden = HIDDEN_NAME.test(last);
      if (isHidden && hidden.delete(last)) return;
      try {
        const { dirIno, name } = await parentOf(path);
        await layer.unlink(dirIno, name);
        dentries.delete(dirIno, name);
      } catch (err) {
        if (!(isHidden && isDmfsError(err, 'NOT_FOUND'))) throw err;
      }
    },

    async rmdir(path) {
      const { dirIno, name } = await parentOf(path);
      await layer.rmdir(dirIno, name);
      dentries.delete(dirIno, name);
    },

    async rename(fromPath, toPath) {
      const from = await parentOf(fromPath);
      const to = await parentOf(toPath);
      if (HIDDEN_NAME.test(to.name)) {
        // libfuse hides a file that is still open before unlinking or replacing it.
        const attr = await child(from.dirIno, from.name);
        if (handles.openCount(attr.ino) > 0) {
          await layer.unlink(from.dirIno, from.name);
          dentries.delete(from.dirIno, from.name);
          hidden.set(to.name, attr.ino);
          return;
        }
      }
      await layer.rename(from.dirIno, from.name, to.dirIno, to.name);
      dentries.delete(from.dirIno, from.name);
      dentries.delete(to.dirIno, to.name);
    },

    async setxattr(path, name, value, flags) {
      // The kernel checks permissions from the mode alone (default_permissions, no
      // FUSE_POSIX_ACL in libfuse 2): an ACL stored here would be shown but not enforced.
      // Refusing makes cp/tar fall back to chmod, which is what takes effect.
      if (POSIX_ACL_XATTRS.has(name)) throw dmfsError('NOT_SUPPORTED', 'POSIX ACLs are not supported; use chmod');
      // value is FUSE's buffer: copy, it is freed when we answer.
      await layer.setxattr(await inoOf(path), name, Buffer.from(value), {
        create: (flags & XATTR_CREATE) !== 0,
        replace: (flags & XATTR_REPLACE) !== 0,
      });
    },

    async getxattr(path, name) {
      return layer.getxattr(await inoOf(path), name);
    },

    async listxattr(path) {
      return layer.listxattr(await inoOf(path));
    },

    async access(path, mode) {
      checkAccess(layer, await attrOf(path), mode, path);
    },

    async removexattr(path, name) {
      const ino = await inoOf(path);
      // No ACL is ever stored, so removing one succeeds as on ext4 when the file has none.
      if (POSIX_ACL_XATTRS.has(name)) {
        if (layer.readOnly) throw dmfsError('READ_ONLY_LAYER', 'read-only layer');
        return;
      }
      await layer.removexattr(ino, name);
    },

    async shutdown() {
      const open = [...handles.entries()];
      for (const [fh] of open) {
        const h = handles.close(fh);
        if (h) await layer.release(h.ino).catch(() => undefined);
      }
      hidden.clear();
      if (!layer.readOnly) await group.sync();
    },
  };
  return ops;
}
