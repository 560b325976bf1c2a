/**
 * The libfuse 2 transport's path side: libfuse's high-level API names files by path, the
 * operations table (fuse-operations.ts) by node id. This turns each path into a node id
 * and calls the table; fuse-adapter.ts turns the result into fuse-native's callbacks.
 * No FUSE semantics live here beyond what paths themselves bring:
 *
 * - The walk: each component is looked up through the table, and remembered in a
 *   (parent node, name) -> node cache (DentryCache), which rename, unlink and rmdir update.
 *   Coherent because every change to a mounted layer passes through this mount.
 * - Open files are addressed by handle (the table maps it to its node), so rename and
 *   unlink of an open file do not disturb reads and writes through it.
 * - Unlinking (or renaming over) a file that is still open makes libfuse rename it to
 *   `.fuse_hiddenXXXXXXXXXXXXXXXX` and unlink that name at the last close. The real name
 *   is unlinked in the table at the rename (the open handle keeps the inode alive) and the
 *   hidden name served from a map, so it never shows in readdir, never blocks `rmdir`, and
 *   `fstat` on the open file keeps working.
 */
import { constants as fsConstants } from 'node:fs';
import { dmfsError, isDmfsError } from '../errors';
import type { Attr } from '../store/layer-store';
import { DentryCache } from './dentry-cache';
import type { PathOperations, TimeSpec } from './fuse-adapter';
import { NO_FEATURES, ROOT_NODE_ID, type AttrChanges, type CallerContext, type FuseOperations, type TimeToSet } from './fuse-operations';

const HIDDEN_NAME = /^\.fuse_hidden[0-9a-f]{16}$/;

/** Who asks when libfuse names no caller: the mounting user (as a rule root). */
const MOUNTER: CallerContext = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, pid: 0, umask: 0o022 };

export interface PathTransportOptions {
  /** Bound of the (parent node, name) -> node cache. */
  dentryCacheEntries?: number;
}

export function createPathTransport(ops: FuseOperations, options: PathTransportOptions = {}): PathOperations {
  const dentries = new DentryCache(options.dentryCacheEntries);
  /** Hidden name -> node of an open file whose real name is gone. */
  const hidden = new Map<string, number>();

  /** A path's names; the table checks each as the walk or the operation reaches it. */
  function components(path: string): string[] {
    return path.split('/').filter((p) => p.length > 0);
  }

  async function child(ctx: CallerContext, dir: number, name: string): Promise<{ nodeId: number; attr: Attr }> {
    const e = await ops.lookup(ctx, dir, name);
    if (!e.attr) throw dmfsError('NOT_FOUND', `no such file: ${name}`);
    dentries.set(dir, name, e.nodeId);
    return { nodeId: e.nodeId, attr: e.attr };
  }

  async function walk(ctx: CallerContext, parts: string[]): Promise<number> {
    let node = ROOT_NODE_ID;
    for (const name of parts) node = dentries.get(node, name) ?? (await child(ctx, node, name)).nodeId;
    return node;
  }

  /** Parent directory node and final name; NOT_FOUND/NOT_DIR from the walk. */
  async function parentOf(ctx: CallerContext, path: string): Promise<{ dir: number; name: string }> {
    const parts = components(path);
    const name = parts.pop();
    if (name === undefined) throw dmfsError('INVALID', 'the root has no parent');
    return { dir: await walk(ctx, parts), name };
  }

  async function nodeOf(ctx: CallerContext, path: string): Promise<number> {
    const parts = components(path);
    const last = parts[parts.length - 1];
    if (last !== undefined && HIDDEN_NAME.test(last)) {
      const h = hidden.get(last);
      if (h !== undefined) return h;
    }
    return walk(ctx, parts);
  }

  async function attrOf(ctx: CallerContext, path: string): Promise<Attr> {
    const parts = components(path);
    const name = parts.pop();
    if (name === undefined) return ops.getattr(ctx, ROOT_NODE_ID);
    const h = HIDDEN_NAME.test(name) ? hidden.get(name) : undefined;
    if (h !== undefined) return ops.getattr(ctx, h);
    const dir = await walk(ctx, parts);
    const cached = dentries.get(dir, name);
    if (cached !== undefined) {
      try {
        return await ops.getattr(ctx, cached);
      } catch (err) {
        if (!isDmfsError(err, 'NOT_FOUND')) throw err;
        dentries.delete(dir, name);
      }
    }
    return (await child(ctx, dir, name)).attr;
  }

  function handleNode(fh: number): number {
    const node = ops.handleNode(fh);
    if (node === undefined) throw dmfsError('INVALID', `unknown file handle ${fh}`);
    return node;
  }

  function timeToSet(t: TimeSpec): TimeToSet | undefined {
    return t === 'omit' ? undefined : t;
  }

  async function setattr(ctx: CallerContext, path: string, changes: AttrChanges, fh?: number): Promise<void> {
    const node = (fh === undefined ? undefined : ops.handleNode(fh)) ?? (await nodeOf(ctx, path));
    await ops.setattr(ctx, node, changes);
  }

  return {
    async init() {
      // libfuse 2 negotiates with the kernel itself and offers none of the features.
      ops.init(NO_FEATURES);
    },

    statfs(_path, ctx = MOUNTER) {
      return ops.statfs(ctx, ROOT_NODE_ID);
    },

    getattr(path, ctx = MOUNTER) {
      return attrOf(ctx, path);
    },

    async fgetattr(path, fh, ctx = MOUNTER) {
      const node = ops.handleNode(fh);
      return node !== undefined ? ops.getattr(ctx, node) : attrOf(ctx, path);
    },

    async readdir(path, ctx = MOUNTER) {
      const node = await nodeOf(ctx, path);
      const { fh } = ops.opendir(ctx, node, fsConstants.O_RDONLY);
      try {
        const { entries } = await ops.readdir(ctx, node, fh, 0, false);
        for (const e of entries) if (e.name !== '.' && e.name !== '..') dentries.set(node, e.name, ops.nodeIdOf(e.ino));
        return entries;
      } finally {
        ops.releasedir(ctx, node, fh);
      }
    },

    async open(path, flags, ctx = MOUNTER) {
      return (await ops.open(ctx, await nodeOf(ctx, path), flags)).fh;
    },

    async create(path, mode, ctx) {
      const { dir, name } = await parentOf(ctx, path);
      const { entry, open } = await ops.create(ctx, dir, name, mode, fsConstants.O_CREAT | fsConstants.O_RDWR);
      dentries.set(dir, name, entry.nodeId);
      return open.fh;
    },

    async read(_path, fh, target, offsetBytes, ctx = MOUNTER) {
      return ops.read(ctx, handleNode(fh), fh, target, offsetBytes);
    },

    async write(_path, fh, data, offsetBytes, ctx = MOUNTER) {
      return ops.write(ctx, handleNode(fh), fh, data, offsetBytes, false);
    },

    async release(_path, fh, ctx = MOUNTER) {
      const node = ops.handleNode(fh);
      if (node === undefined) return;
      try {
        await ops.release(ctx, node, fh);
      } finally {
        if (!ops.isOpen(node)) for (const [name, n] of hidden) if (n === node) hidden.delete(name);
      }
    },

    async flush(_path, fh, ctx = MOUNTER) {
      ops.flush(ctx, ops.handleNode(fh) ?? ROOT_NODE_ID, fh);
    },

    fsync(_path, dataSync, fh, ctx = MOUNTER) {
      return ops.fsync(ctx, ops.handleNode(fh) ?? ROOT_NODE_ID, fh, dataSync);
    },

    fsyncdir(_path, dataSync, ctx = MOUNTER) {
      return ops.fsyncdir(ctx, ROOT_NODE_ID, 0, dataSync);
    },

    truncate(path, sizeBytes, ctx = MOUNTER) {
      return setattr(ctx, path, { sizeBytes });
    },

    ftruncate(path, fh, sizeBytes, ctx = MOUNTER) {
      return setattr(ctx, path, { sizeBytes }, fh);
    },

    utimens(path, atime, mtime, ctx = MOUNTER) {
      return setattr(ctx, path, { atime: timeToSet(atime), mtime: timeToSet(mtime) });
    },

    async readlink(path, ctx = MOUNTER) {
      return ops.readlink(ctx, await nodeOf(ctx, path));
    },

    chown(path, uid, gid, ctx = MOUNTER) {
      return setattr(ctx, path, { uid: uid ?? undefined, gid: gid ?? undefined });
    },

    chmod(path, mode, ctx = MOUNTER) {
      return setattr(ctx, path, { mode });
    },

    async mknod(path, mode, rdev, ctx) {
      const { dir, name } = await parentOf(ctx, path);
      dentries.set(dir, name, (await ops.mknod(ctx, dir, name, mode, rdev)).nodeId);
    },

    async mkdir(path, mode, ctx) {
      const { dir, name } = await parentOf(ctx, path);
      dentries.set(dir, name, (await ops.mkdir(ctx, dir, name, mode)).nodeId);
    },

    async symlink(target, path, ctx) {
      const { dir, name } = await parentOf(ctx, path);
      dentries.set(dir, name, (await ops.symlink(ctx, dir, name, target)).nodeId);
    },

    async link(existingPath, newPath, ctx = MOUNTER) {
      const node = await nodeOf(ctx, existingPath);
      const { dir, name } = await parentOf(ctx, newPath);
      dentries.set(dir, name, (await ops.link(ctx, node, dir, name)).nodeId);
    },

    async unlink(path, ctx = MOUNTER) {
      // libfuse removes the hidden name after the last release, possibly below a directory gone since.
      // The entry is dropped at that release already, so a missing hidden name is fine.
      const last = path.slice(path.lastIndexOf('/') + 1);
      const isHidden = HIDDEN_NAME.test(last);
      if (isHidden && hidden.delete(last)) return;
      try {
        const { dir, name } = await parentOf(ctx, path);
        await ops.unlink(ctx, dir, name);
        dentries.delete(dir, name);
      } catch (err) {
        if (!(isHidden && isDmfsError(err, 'NOT_FOUND'))) throw err;
      }
    },

    async rmdir(path, ctx = MOUNTER) {
      const { dir, name } = await parentOf(ctx, path);
      await ops.rmdir(ctx, dir, name);
      dentries.delete(dir, name);
    },

    async rename(fromPath, toPath, ctx = MOUNTER) {
      const from = await parentOf(ctx, fromPath);
      const to = await parentOf(ctx, toPath);
      if (HIDDEN_NAME.test(to.name)) {
        // libfuse hides a file that is still open before unlinking or replacing it.
        const { nodeId } = await child(ctx, from.dir, from.name);
        if (ops.isOpen(nodeId)) {
          await ops.unlink(ctx, from.dir, from.name);
          dentries.delete(from.dir, from.name);
          hidden.set(to.name, nodeId);
          return;
        }
      }
      await ops.rename(ctx, from.dir, from.name, to.dir, to.name, 0);
      dentries.delete(from.dir, from.name);
      dentries.delete(to.dir, to.name);
    },

    async setxattr(path, name, value, flags, ctx = MOUNTER) {
      await ops.setxattr(ctx, await nodeOf(ctx, path), name, value, flags);
    },

    async getxattr(path, name, ctx = MOUNTER) {
      return ops.getxattr(ctx, await nodeOf(ctx, path), name);
    },

    async listxattr(path, ctx = MOUNTER) {
      return ops.listxattr(ctx, await nodeOf(ctx, path));
    },

    async removexattr(path, name, ctx = MOUNTER) {
      await ops.removexattr(ctx, await nodeOf(ctx, path), name);
    },

    async access(path, mode, ctx = MOUNTER) {
      await ops.access(ctx, await nodeOf(ctx, path), mode);
    },
  };
}
