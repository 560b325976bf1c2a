/**
 * The FUSE operations table of one mounted layer: createFuseOperations implements the
 * contract of fuse-operations-api.ts (vocabulary, lifecycle, what transports may rely on),
 * which this module re-exports so that transports import one module.
 */
import { constants as fsConstants } from 'node:fs';
import { DmfsError, dmfsError } from '../errors';
import type { Attr, DirEntry, Ino, LayerFs } from '../store/layer-store';
import { S_IFDIR, S_IFMT, S_IFREG } from '../store/layer-store';
import { AccessTimes } from './access-times';
import { fallocateHowOf, seekWhatOf } from './file-space-flags';
import { GroupSync } from './group-sync';
import { HandleTable } from './handle-table';
import { PosixAcls } from './posix-acls';
import { checkAccess, NAME_MAX_BYTES, newNodeOwner, S_ISGID, S_ISUID, storeChanges, wallClockNs } from './posix-rules';

export * from './fuse-operations-api';
import {
  errnoFor,
  NO_FEATURES,
  RENAME_EXCHANGE,
  RENAME_NOREPLACE,
  ROOT_NODE_ID,
  XATTR_CREATE,
  XATTR_REPLACE,
  type CachePolicy,
  type CallerContext,
  type Entry,
  type FuseOperations,
  type FuseOperationsOptions,
  type OpenReply,
} from './fuse-operations-api';

/** O_ACCMODE (not exported by Node): the two low bits hold O_RDONLY / O_WRONLY / O_RDWR. */
const ACCMODE = 3;
const SECURITY_CAPABILITY = 'security.capability';
/** A name of this many UTF-16 units or fewer is at most NAME_MAX_BYTES of UTF-8. */
const SURELY_SHORT_NAME = Math.floor(NAME_MAX_BYTES / 3);

interface DirHandle {
  ino: Ino;
  /** The listing this handle reads from ('.', '..', then the entries); taken at offset 0. */
  entries: DirEntry[] | null;
}

export function createFuseOperations(layer: LayerFs, options: FuseOperationsOptions): FuseOperations {
  // Handles start at a random number: a daemon worker restarted on a live mount must not
  // hand out the numbers the kernel still holds from its predecessor.
  const handles = new HandleTable(HandleTable.randomStart());
  const dirHandles = new Map<number, DirHandle>();
  let nextDirHandle = HandleTable.randomStart();
  // A directory's parent, learnt from lookups, listings and renames, for '..' in listings.
  const parents = new Map<Ino, Ino>();
  // fsync on a read-only layer is a successful no-op, as on any read-only file system.
  const group = new GroupSync(() => (layer.readOnly ? Promise.resolve() : layer.fsync()));
  const nowNs = options.nowNs ?? wallClockNs;
  const onUnexpected = options.onUnexpected ?? (() => undefined);
  const root = layer.rootIno;
  const cache: CachePolicy = {
    entryTimeoutS: options.entryTimeoutS,
    attrTimeoutS: options.attrTimeoutS,
    negativeTimeoutS: options.negativeTimeoutS,
    keepCache: options.keepCache,
    cacheDirs: options.cacheDirs,
  };
  let features = NO_FEATURES;
  let acls = new PosixAcls(layer, false);
  const atimes = new AccessTimes(layer, options.atime ?? 'relatime', nowNs);

  const inoOf = (nodeId: number): Ino => (nodeId === ROOT_NODE_ID ? root : nodeId);
  const nodeIdOf = (ino: Ino): number => (ino === root ? ROOT_NODE_ID : ino);

  function checkName(name: string): void {
    if (name.length > SURELY_SHORT_NAME && Buffer.byteLength(name) > NAME_MAX_BYTES) {
      throw dmfsError('NAME_TOO_LONG', `name longer than ${NAME_MAX_BYTES} bytes`);
    }
  }

  function entryOf(dirIno: Ino, attr: Attr): Entry {
    if (attr.kind === 'dir') parents.set(attr.ino, dirIno);
    return { nodeId: nodeIdOf(attr.ino), attr, entryTimeoutS: cache.entryTimeoutS, attrTimeoutS: cache.attrTimeoutS };
  }

  function fileOpen(fh: number): OpenReply {
    return { fh, keepCache: cache.keepCache, cacheDir: false };
  }

  /** Owner, mode and inherited ACLs of a node made in dirIno (the umask applied here under DONT_MASK). */
  async function newNode(ctx: CallerContext, dirIno: Ino, mode: number): Promise<{ mode: number; uid: number; gid: number; xattrs?: Record<string, Buffer> }> {
    atimes.changed(dirIno);
    const withAcl = await acls.forNewNode(dirIno, mode, ctx.umask);
    const owner = await newNodeOwner(layer, dirIno, withAcl.mode, ctx.uid, ctx.gid);
    return withAcl.xattrs ? { ...owner, xattrs: withAcl.xattrs } : owner;
  }

  // What Linux does (file_remove_privs, and chown / truncate by a caller without CAP_FSETID,
  // which the kernel flags): a write always drops security.capability; the flag clears
  // setuid, and setgid when group-executable.

  async function dropCapability(ino: Ino): Promise<void> {
    if ((await layer.getxattr(ino, SECURITY_CAPABILITY)) !== null) await layer.removexattr(ino, SECURITY_CAPABILITY);
  }

  /** `attr` with setuid (and setgid when group-executable) cleared; stored only if that changes it. */
  async function clearSetIds(ino: Ino, attr: Attr): Promise<Attr> {
    const mode = attr.mode & 0o7777;
    const cleared = mode & ~(S_ISUID | (mode & 0o010 ? S_ISGID : 0));
    return cleared === mode ? attr : layer.setattr(ino, { mode: cleared });
  }

  async function writeKilling(ino: Ino, data: Buffer, offsetBytes: number, killSuidgid: boolean): Promise<number> {
    if (features.killPrivileges) await dropCapability(ino);
    if (killSuidgid) await clearSetIds(ino, await layer.getattr(ino));
    return layer.write(ino, data, offsetBytes);
  }

  /** The listing state of fh; an unknown one (opened before a daemon restart) starts afresh for nodeId. */
  function dirHandle(fh: number, nodeId: number): DirHandle {
    const ino = inoOf(nodeId);
    let h = dirHandles.get(fh);
    if (!h || h.ino !== ino) dirHandles.set(fh, (h = { ino, entries: null }));
    return h;
  }

  async function listing(h: DirHandle): Promise<DirEntry[]> {
    const entries = await layer.readdir(h.ino);
    const parent = h.ino === root ? root : (parents.get(h.ino) ?? h.ino);
    for (const e of entries) if (e.kind === 'dir') parents.set(e.ino, h.ino);
    return [{ name: '.', ino: h.ino, kind: 'dir' }, { name: '..', ino: parent, kind: 'dir' }, ...entries];
  }

  async function releaseAll(): Promise<void> {
    for (const [fh] of [...handles.entries()]) {
      const h = handles.close(fh);
      if (h) await layer.release(h.ino).catch(() => undefined);
    }
  }

  return {
    cache,
    blockSizeBytes: options.blockSizeBytes,

    init(offered) {
      features = {
        writebackCache: offered.writebackCache && options.writebackCache && !layer.readOnly,
        killPrivileges: offered.killPrivileges,
        cacheSymlinks: offered.cacheSymlinks,
        posixAcl: offered.posixAcl && options.posixAcl === true,
      };
      acls = new PosixAcls(layer, features.posixAcl);
      return features;
    },

    async lookup(_ctx, parent, name) {
      checkName(name);
      const dirIno = inoOf(parent);
      const attr = await layer.lookup(dirIno, name);
      if (attr) return entryOf(dirIno, attr);
      if (cache.negativeTimeoutS <= 0) throw dmfsError('NOT_FOUND', `no such file: ${name}`);
      return { nodeId: 0, attr: null, entryTimeoutS: cache.negativeTimeoutS, attrTimeoutS: 0 };
    },

    forget() {
      // Nothing held per lookup (see the lookup counts above).
    },

    getattr(_ctx, nodeId) {
      return layer.getattr(inoOf(nodeId));
    },

    async setattr(_ctx, nodeId, changes, killSuidgid = false) {
      const ino = inoOf(nodeId);
      const c = storeChanges(changes, nowNs);
      let attr = c ? await layer.setattr(ino, c) : await layer.getattr(ino);
      atimes.changed(ino);
      if (c?.mode !== undefined) await acls.afterChmod(ino, attr.mode);
      // After the change: a chown or truncate that also sets the mode keeps the kill. A kill
      // with nothing else to change is chown(f, -1, -1), which clears only a regular file's.
      if (killSuidgid && (c !== null || attr.kind === 'file')) attr = await clearSetIds(ino, attr);
      return attr;
    },

    readlink(_ctx, nodeId) {
      return layer.readlink(inoOf(nodeId));
    },

    async mknod(ctx, parent, name, mode, rdev) {
      checkName(name);
      const dirIno = inoOf(parent);
      const typed = (mode & S_IFMT) === 0 ? mode | S_IFREG : mode;
      const node = await newNode(ctx, dirIno, typed);
      return entryOf(dirIno, await layer.mknod(dirIno, name, { ...node, rdev }));
    },

    async mkdir(ctx, parent, name, mode) {
      checkName(name);
      const dirIno = inoOf(parent);
      const node = await newNode(ctx, dirIno, S_IFDIR | (mode & 0o7777));
      return entryOf(dirIno, await layer.mkdir(dirIno, name, node));
    },

    async symlink(ctx, parent, name, target) {
      checkName(name);
      const dirIno = inoOf(parent);
      atimes.changed(dirIno);
      const { uid, gid } = await newNodeOwner(layer, dirIno, 0, ctx.uid, ctx.gid);
      return entryOf(dirIno, await layer.symlink(dirIno, name, target, { uid, gid }));
    },

    async unlink(_ctx, parent, name) {
      checkName(name);
      await layer.unlink(inoOf(parent), name);
      atimes.namespaceChanged();
    },

    async rmdir(_ctx, parent, name) {
      checkName(name);
      await layer.rmdir(inoOf(parent), name);
      atimes.namespaceChanged();
    },

    async rename(_ctx, parent, name, newParent, newName, flags) {
      checkName(name);
      checkName(newName);
      if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) throw dmfsError('INVALID', `unknown rename flags 0x${(flags >>> 0).toString(16)}`);
      const dirIno = inoOf(parent);
      const newDirIno = inoOf(newParent);
      const exchange = (flags & RENAME_EXCHANGE) !== 0;
      await layer.rename(dirIno, name, newDirIno, newName, { noReplace: (flags & RENAME_NOREPLACE) !== 0, exchange });
      atimes.namespaceChanged();
      // A moved directory's '..' is its new parent (the kernel sends no LOOKUP for it).
      const moved = await layer.lookup(newDirIno, newName);
      if (moved?.kind === 'dir') parents.set(moved.ino, newDirIno);
      if (exchange) {
        const other = await layer.lookup(dirIno, name);
        if (other?.kind === 'dir') parents.set(other.ino, dirIno);
      }
    },

    async link(_ctx, nodeId, newParent, newName) {
      checkName(newName);
      const dirIno = inoOf(newParent);
      const linked = await layer.link(inoOf(nodeId), dirIno, newName);
      atimes.changed(linked.ino);
      atimes.changed(dirIno);
      return entryOf(dirIno, linked);
    },

    async open(_ctx, nodeId, flags) {
      const writable = (flags & ACCMODE) !== fsConstants.O_RDONLY;
      if (writable && layer.readOnly) throw dmfsError('READ_ONLY_LAYER', `layer ${layer.layerName} is read-only`);
      const ino = inoOf(nodeId);
      await layer.getattr(ino);
      layer.retain(ino);
      return fileOpen(handles.open(ino, writable));
    },

    async create(ctx, parent, name, mode) {
      checkName(name);
      const dirIno = inoOf(parent);
      const attr = await layer.mknod(dirIno, name, await newNode(ctx, dirIno, S_IFREG | (mode & 0o7777)));
      layer.retain(attr.ino);
      const fh = handles.open(attr.ino, true);
      return { entry: entryOf(dirIno, attr), open: fileOpen(fh) };
    },

    async tmpfile(ctx, parent, mode) {
      if (!layer.createUnnamed) throw dmfsError('NOT_SUPPORTED', 'this layer cannot make unnamed files (O_TMPFILE)');
      const dirIno = inoOf(parent);
      const attr = await layer.createUnnamed(dirIno, await newNode(ctx, dirIno, S_IFREG | (mode & 0o7777)));
      return { entry: entryOf(dirIno, attr), open: fileOpen(handles.open(attr.ino, true)) };
    },

    read(_ctx, nodeId, _fh, target, offsetBytes, opts) {
      const ino = inoOf(nodeId);
      const touched = atimes.accessed(ino);
      if (!touched) return layer.read(ino, target, offsetBytes, opts);
      return touched.then(() => layer.read(ino, target, offsetBytes, opts));
    },

    write(_ctx, nodeId, _fh, data, offsetBytes, killSuidgid) {
      const ino = inoOf(nodeId);
      // Once the write has moved mtime, the next read asks relatime again.
      const written = !features.killPrivileges && !killSuidgid ? layer.write(ino, data, offsetBytes) : writeKilling(ino, data, offsetBytes, killSuidgid);
      return written.then((n) => (atimes.changed(ino), n));
    },

    async fallocate(_ctx, nodeId, _fh, offsetBytes, lengthBytes, mode) {
      if (!layer.fallocate) throw dmfsError('NOT_IMPLEMENTED', 'this layer has no fallocate');
      await layer.fallocate(inoOf(nodeId), offsetBytes, lengthBytes, fallocateHowOf(mode));
    },

    async lseek(_ctx, nodeId, _fh, offsetBytes, whence) {
      if (!layer.seekData) throw dmfsError('NOT_IMPLEMENTED', 'this layer has no SEEK_DATA / SEEK_HOLE');
      return layer.seekData(inoOf(nodeId), offsetBytes, seekWhatOf(whence));
    },

    async copyFileRange(_ctx, nodeIn, _fhIn, offInBytes, nodeOut, _fhOut, offOutBytes, lengthBytes, flags) {
      if (flags !== 0) throw dmfsError('INVALID', `copy_file_range flags ${flags} are not supported`);
      if (!layer.copyFileRange) throw dmfsError('NOT_SUPPORTED', 'this layer does not share blocks; the kernel copies the data');
      const ino = inoOf(nodeOut);
      if (features.killPrivileges) await dropCapability(ino); // as a write would
      return layer.copyFileRange(inoOf(nodeIn), offInBytes, ino, offOutBytes, lengthBytes);
    },

    flush() {
      throw dmfsError('NOT_IMPLEMENTED', 'close is not a durability point: no FLUSH needed');
    },

    async release(_ctx, nodeId, fh) {
      // A handle opened before a daemon restart is unknown here: nothing to release.
      if (handles.get(fh)?.ino !== inoOf(nodeId)) return;
      const h = handles.close(fh);
      if (h) await layer.release(h.ino);
    },

    fsync() {
      return group.sync();
    },

    fsyncdir() {
      return group.sync();
    },

    syncfs() {
      return group.sync();
    },

    opendir(_ctx, nodeId) {
      const fh = nextDirHandle;
      nextDirHandle = nextDirHandle >= HandleTable.MAX_FH - 1 ? 1 : nextDirHandle + 1;
      dirHandles.set(fh, { ino: inoOf(nodeId), entries: null });
      return { fh, keepCache: cache.cacheDirs, cacheDir: cache.cacheDirs };
    },

    async readdir(_ctx, nodeId, fh, offset, plus, fits) {
      const h = dirHandle(fh, nodeId);
      if (offset === 0 || !h.entries) {
        await atimes.accessed(h.ino);
        h.entries = await listing(h);
      }
      const all = h.entries;
      let end = offset;
      while (end < all.length && (!fits || fits(all[end]))) end++;
      const entries = offset < end ? all.slice(offset, end) : [];
      if (!plus) return { entries, plus: null };
      const attrs = await Promise.all(entries.map((e) => (e.name === '.' || e.name === '..' ? null : layer.getattr(e.ino).catch(() => null))));
      return { entries, plus: attrs.map((a) => a && { nodeId: nodeIdOf(a.ino), attr: a, entryTimeoutS: cache.entryTimeoutS, attrTimeoutS: cache.attrTimeoutS }) };
    },

    releasedir(_ctx, _nodeId, fh) {
      dirHandles.delete(fh);
    },

    statfs() {
      return layer.statfs();
    },

    async setxattr(_ctx, nodeId, name, value, flags, killSgid = false) {
      const ino = inoOf(nodeId);
      if (PosixAcls.isAclName(name)) await acls.set(ino, name, Buffer.from(value), killSgid);
      else await layer.setxattr(ino, name, Buffer.from(value), { create: (flags & XATTR_CREATE) !== 0, replace: (flags & XATTR_REPLACE) !== 0 });
      atimes.changed(ino);
    },

    getxattr(_ctx, nodeId, name) {
      return layer.getxattr(inoOf(nodeId), name);
    },

    listxattr(_ctx, nodeId) {
      return layer.listxattr(inoOf(nodeId));
    },

    async removexattr(_ctx, nodeId, name) {
      const ino = inoOf(nodeId);
      if (PosixAcls.isAclName(name)) await acls.remove(ino, name);
      else await layer.removexattr(ino, name);
      atimes.changed(ino);
    },

    async access(_ctx, nodeId, mask) {
      checkAccess(layer, await layer.getattr(inoOf(nodeId)), mask, `inode ${nodeId}`);
    },

    handleNode(fh) {
      const h = handles.get(fh);
      return h && nodeIdOf(h.ino);
    },

    isOpen(nodeId) {
      return handles.openCount(inoOf(nodeId)) > 0;
    },

    nodeIdOf,

    errno(err) {
      if (!(err instanceof DmfsError)) onUnexpected(err);
      return errnoFor(err);
    },

    get openHandles() {
      return handles.size;
    },

    get syncCount() {
      return group.syncCount;
    },

    async shutdown() {
      await releaseAll();
      dirHandles.clear();
      if (!layer.readOnly) await group.sync();
    },
  };
}
