/**
 * The FUSE operations table of one mounted layer: every FUSE semantic dmfs has, written
 * once, in the shape of libfuse's low-level API (node id + name in, typed reply out).
 * Transports only carry requests to it and replies back: the /dev/fuse loop
 * (kernel-transport.ts), libfuse 2's path API (path-transport.ts); FUSE over io_uring can
 * be a third. The table knows no byte layout of fuse.h and no path.
 *
 * Vocabulary:
 * - node id: FUSE's name for an inode. The root is ROOT_NODE_ID; every other node id is
 *   the store's inode number, so all names of a hard-linked file are one node, and node
 *   ids are never reused (store inode numbers are not).
 * - Entry: a name's node, its attributes and how long they may be cached; nodeId 0 is a
 *   negative entry (the name is known absent).
 * - handle (fh): what open/create/opendir return, in [1, 2^31); reads and writes name
 *   their node and handle, so rename or unlink of an open file disturbs nothing.
 * - caller (CallerContext): who asked (uid, gid, pid, umask), the first argument of each
 *   request. New nodes belong to the caller (BSD groups below a setgid directory).
 *
 * Lifecycle: init (once, before any other operation: which features this connection
 * uses) -> operations, concurrently -> shutdown (once, after unmount: closes what is
 * still open and syncs).
 *
 * Contracts for transports:
 * - Operations that reach the store return promises; the others answer synchronously.
 *   A failure is thrown or rejected, a DmfsError as a rule; errnoFor(err) is its errno.
 * - Buffers handed in (write data, xattr values) are the transport's and only valid until
 *   the operation settles; the table copies what it keeps.
 * - Attribute replies (getattr, setattr) may be cached for cache.attrTimeoutS; entries
 *   carry their own timeouts; open/opendir say whether the page cache and directory
 *   listings stay valid across opens.
 *
 * Lookup counts (forget) are not kept: store inodes live on their own (an open file keeps
 * an unlinked inode through LayerFs.retain), and inode numbers are never reused, so a
 * forgotten node id stays meaningful. Requests run concurrently; the store serialises what
 * must be; the kernel serialises conflicting changes in one directory (its lock).
 */
import { constants as fsConstants } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { DmfsError, dmfsError, errnoOf } from '../errors';
import type { Attr, DirEntry, Ino, LayerFs, ReadOptions, SetAttr, StatFs } from '../store/layer-store';
import { S_IFDIR, S_IFMT, S_IFREG } from '../store/layer-store';
import { GroupSync } from './group-sync';
import { HandleTable } from './handle-table';
import { checkAccess, NAME_MAX_BYTES, newNodeOwner, POSIX_ACL_XATTRS, S_ISGID, S_ISUID, wallClockNs } from './posix-rules';

/** The node id of the layer's root (FUSE_ROOT_ID). */
export const ROOT_NODE_ID = 1;

/** renameat2(2) flags. */
export const RENAME_NOREPLACE = 1 << 0;
export const RENAME_EXCHANGE = 1 << 1;
/** setxattr(2) flags. */
export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;

/** O_ACCMODE (not exported by Node): the two low bits hold O_RDONLY / O_WRONLY / O_RDWR. */
const ACCMODE = 3;
const SECURITY_CAPABILITY = 'security.capability';
/** A name of this many UTF-16 units or fewer is at most NAME_MAX_BYTES of UTF-8. */
const SURELY_SHORT_NAME = Math.floor(NAME_MAX_BYTES / 3);

/** The process that issued an operation (fuse_get_context / fuse_in_header). */
export interface CallerContext {
  uid: number;
  gid: number;
  pid: number;
  umask: number;
}

/** What a connection can do beyond the basics; init answers the subset the table uses. */
export interface FuseFeatures {
  /** The kernel gathers writes in its page cache (write(2) returns before the table sees them). */
  writebackCache: boolean;
  /**
   * The kernel leaves clearing privileges to the file system (HANDLE_KILLPRIV_V2): a write
   * drops security.capability here, and writes, truncates and chowns flagged killSuidgid
   * clear setuid (and setgid when group-executable). Without it the kernel does all this.
   */
  killPrivileges: boolean;
  /** The kernel may cache symlink targets (they never change in place). */
  cacheSymlinks: boolean;
}

export const NO_FEATURES: FuseFeatures = { writebackCache: false, killPrivileges: false, cacheSymlinks: false };

/** Kernel cache lifetimes (seconds) and page-cache policy of the mount. */
export interface CachePolicy {
  entryTimeoutS: number;
  attrTimeoutS: number;
  /** Lifetime of a known-absent name; 0 answers an absent name with NOT_FOUND instead. */
  negativeTimeoutS: number;
  /** Cached pages of a file stay valid across opens (nothing else writes the layer, and one node per inode). */
  keepCache: boolean;
  /** The kernel may keep directory listings across opens (it drops them on changes it makes). */
  cacheDirs: boolean;
}

export interface FuseOperationsOptions extends CachePolicy {
  /** st_blksize of every file. */
  blockSizeBytes: number;
  /** Ask for the kernel's writeback cache when offered (writable layers only). */
  writebackCache: boolean;
  /** Wall clock in nanoseconds, for 'now' times (tests inject one). */
  nowNs?: () => bigint;
  /** A failure that is not a DmfsError (a bug or an I/O error): see errnoFor. */
  onUnexpected?: (err: unknown) => void;
}

export interface Entry {
  /** 0: a negative entry (attr null; the name is absent for entryTimeoutS). */
  nodeId: number;
  attr: Attr | null;
  entryTimeoutS: number;
  attrTimeoutS: number;
}

export interface OpenReply {
  fh: number;
  /** Keep the page cache (files) or the cached listing (directories) from earlier opens. */
  keepCache: boolean;
  /** Directories: the kernel may cache this listing. */
  cacheDir: boolean;
}

/** A time to set: nanoseconds since the epoch, or the current time (one clock reading per operation). */
export type TimeToSet = bigint | 'now';

/** setattr's changes; an absent field is left as it is. */
export interface AttrChanges {
  mode?: number;
  uid?: number;
  gid?: number;
  sizeBytes?: number;
  atime?: TimeToSet;
  mtime?: TimeToSet;
  ctimeNs?: bigint;
}

export interface DirPage {
  /** The listing from the asked offset: entries[i] sits at offset + i, the next one at offset + i + 1. */
  entries: DirEntry[];
  /** readdirplus: each entry's Entry, null for '.', '..' and names gone meanwhile (no lookup counted). */
  plus: (Entry | null)[] | null;
}

export interface FuseOperations {
  readonly cache: CachePolicy;
  /** st_blksize of every file. */
  readonly blockSizeBytes: number;

  /** Once, before anything else: the features this table uses, out of those offered. */
  init(offered: FuseFeatures): FuseFeatures;
  lookup(ctx: CallerContext, parent: number, name: string): Promise<Entry>;
  forget(nodeId: number, nlookup: number): void;
  getattr(ctx: CallerContext, nodeId: number): Promise<Attr>;
  /** killSuidgid: the caller lacks CAP_FSETID and the kernel delegated clearing (FuseFeatures.killPrivileges). */
  setattr(ctx: CallerContext, nodeId: number, changes: AttrChanges, killSuidgid?: boolean): Promise<Attr>;
  readlink(ctx: CallerContext, nodeId: number): Promise<string>;
  /** mode: st_mode with the type bits (none: a regular file); rdev: Linux makedev encoding. */
  mknod(ctx: CallerContext, parent: number, name: string, mode: number, rdev: number): Promise<Entry>;
  mkdir(ctx: CallerContext, parent: number, name: string, mode: number): Promise<Entry>;
  symlink(ctx: CallerContext, parent: number, name: string, target: string): Promise<Entry>;
  unlink(ctx: CallerContext, parent: number, name: string): Promise<void>;
  rmdir(ctx: CallerContext, parent: number, name: string): Promise<void>;
  /** flags: renameat2(2)'s; any other bit is INVALID. */
  rename(ctx: CallerContext, parent: number, name: string, newParent: number, newName: string, flags: number): Promise<void>;
  link(ctx: CallerContext, nodeId: number, newParent: number, newName: string): Promise<Entry>;
  /** flags: open(2)'s. A read-only layer refuses write access (READ_ONLY_LAYER). */
  open(ctx: CallerContext, nodeId: number, flags: number): Promise<OpenReply>;
  create(ctx: CallerContext, parent: number, name: string, mode: number, flags: number): Promise<{ entry: Entry; open: OpenReply }>;
  /** Fills target from offsetBytes; resolves to the count (short at EOF). */
  read(ctx: CallerContext, nodeId: number, fh: number, target: Buffer, offsetBytes: number, opts?: ReadOptions): Promise<number>;
  /** Writes all of data; killSuidgid as for setattr. */
  write(ctx: CallerContext, nodeId: number, fh: number, data: Buffer, offsetBytes: number, killSuidgid: boolean): Promise<number>;
  /**
   * close(2) is not a durability point (as on ext4): the store commits metadata at once and
   * flushes data and metadata at least every second; fsync and umount make writes durable
   * (syncing at close cost ~40% of a tar -x). Throws NOT_IMPLEMENTED, which FUSE answers
   * as ENOSYS: the kernel then never sends it again, sparing a round trip per close.
   */
  flush(ctx: CallerContext, nodeId: number, fh: number): void;
  release(ctx: CallerContext, nodeId: number, fh: number): Promise<void>;
  fsync(ctx: CallerContext, nodeId: number, fh: number, dataSync: boolean): Promise<void>;
  fsyncdir(ctx: CallerContext, nodeId: number, fh: number, dataSync: boolean): Promise<void>;
  syncfs(ctx: CallerContext): Promise<void>;
  opendir(ctx: CallerContext, nodeId: number, flags: number): OpenReply;
  /**
   * The listing of handle fh from offset (taken afresh at offset 0). fits, when given, is
   * asked about each entry in turn and the page ends before the first it refuses (the
   * transport's reply size).
   */
  readdir(ctx: CallerContext, nodeId: number, fh: number, offset: number, plus: boolean, fits?: (entry: DirEntry) => boolean): Promise<DirPage>;
  releasedir(ctx: CallerContext, nodeId: number, fh: number): void;
  statfs(ctx: CallerContext, nodeId: number): Promise<StatFs>;
  /** flags: setxattr(2)'s. POSIX ACLs are refused (NOT_SUPPORTED): see POSIX_ACL_XATTRS. */
  setxattr(ctx: CallerContext, nodeId: number, name: string, value: Buffer, flags: number): Promise<void>;
  /** null: no such attribute (ENODATA; not thrown, as the kernel asks for security.capability often). */
  getxattr(ctx: CallerContext, nodeId: number, name: string): Promise<Buffer | null>;
  listxattr(ctx: CallerContext, nodeId: number): Promise<string[]>;
  removexattr(ctx: CallerContext, nodeId: number, name: string): Promise<void>;
  /** access(2), asked only without default_permissions (see checkAccess). */
  access(ctx: CallerContext, nodeId: number, mask: number): Promise<void>;

  /** The node a handle was opened on (undefined: unknown handle). */
  handleNode(fh: number): number | undefined;
  /** True while some handle is open on the node. */
  isOpen(nodeId: number): boolean;
  /** The node id of a store inode. */
  nodeIdOf(ino: Ino): number;
  /** errnoFor(err), reporting a failure that is not a DmfsError (a bug, an I/O error) to onUnexpected first. */
  errno(err: unknown): number;
  /** Releases every handle still open and syncs the layer. Called once, after unmount. */
  shutdown(): Promise<void>;
  readonly openHandles: number;
  /** Store syncs started by fsync (for tests and stats). */
  readonly syncCount: number;
}

/** The positive errno a failure is answered with: a DmfsError's, a system error's, else EIO. */
export function errnoFor(err: unknown): number {
  const n = errnoOf(err);
  return n > 0 ? n : osConstants.errno.EIO;
}

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

  async function newNode(ctx: CallerContext, dirIno: Ino, mode: number): Promise<{ mode: number; uid: number; gid: number }> {
    return newNodeOwner(layer, dirIno, mode, ctx.uid, ctx.gid);
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

  /** The store's form of changes, with 'now' read once; null when nothing is to change. */
  function storeChanges(c: AttrChanges): SetAttr | null {
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
      };
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
      const c = storeChanges(changes);
      let attr = c ? await layer.setattr(ino, c) : await layer.getattr(ino);
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
      const { uid, gid } = await newNode(ctx, dirIno, 0);
      return entryOf(dirIno, await layer.symlink(dirIno, name, target, { uid, gid }));
    },

    async unlink(_ctx, parent, name) {
      checkName(name);
      await layer.unlink(inoOf(parent), name);
    },

    async rmdir(_ctx, parent, name) {
      checkName(name);
      await layer.rmdir(inoOf(parent), name);
    },

    async rename(_ctx, parent, name, newParent, newName, flags) {
      checkName(name);
      checkName(newName);
      if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) throw dmfsError('INVALID', `unknown rename flags 0x${(flags >>> 0).toString(16)}`);
      const dirIno = inoOf(parent);
      const newDirIno = inoOf(newParent);
      const exchange = (flags & RENAME_EXCHANGE) !== 0;
      await layer.rename(dirIno, name, newDirIno, newName, { noReplace: (flags & RENAME_NOREPLACE) !== 0, exchange });
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
      return entryOf(dirIno, await layer.link(inoOf(nodeId), dirIno, newName));
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

    read(_ctx, nodeId, _fh, target, offsetBytes, opts) {
      return layer.read(inoOf(nodeId), target, offsetBytes, opts);
    },

    write(_ctx, nodeId, _fh, data, offsetBytes, killSuidgid) {
      const ino = inoOf(nodeId);
      if (!features.killPrivileges && !killSuidgid) return layer.write(ino, data, offsetBytes);
      return writeKilling(ino, data, offsetBytes, killSuidgid);
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
      if (offset === 0 || !h.entries) h.entries = await listing(h);
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

    async setxattr(_ctx, nodeId, name, value, flags) {
      // The kernel checks permissions from the mode alone (no FUSE_POSIX_ACL): an ACL stored
      // here would be shown but not enforced. Refusing makes cp/tar fall back to chmod.
      if (POSIX_ACL_XATTRS.has(name)) throw dmfsError('NOT_SUPPORTED', 'POSIX ACLs are not supported; use chmod');
      await layer.setxattr(inoOf(nodeId), name, Buffer.from(value), {
        create: (flags & XATTR_CREATE) !== 0,
        replace: (flags & XATTR_REPLACE) !== 0,
      });
    },

    getxattr(_ctx, nodeId, name) {
      return layer.getxattr(inoOf(nodeId), name);
    },

    listxattr(_ctx, nodeId) {
      return layer.listxattr(inoOf(nodeId));
    },

    async removexattr(_ctx, nodeId, name) {
      // No ACL is ever stored, so removing one succeeds as on ext4 when the file has none.
      if (POSIX_ACL_XATTRS.has(name)) {
        if (layer.readOnly) throw dmfsError('READ_ONLY_LAYER', 'read-only layer');
        return;
      }
      await layer.removexattr(inoOf(nodeId), name);
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
