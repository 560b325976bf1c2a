/**
 * The contract of the FUSE operations table (implemented by fuse-operations.ts): every FUSE
 * semantic dmfs has, written once, in the shape of libfuse's low-level API (node id + name in,
 * typed reply out). Transports only carry requests to it and replies back: the /dev/fuse loop
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
import { constants as osConstants } from 'node:os';
import { errnoOf } from '../errors';
import type { Attr, DirEntry, Ino, ReadOptions, StatFs } from '../store/layer-store';
import type { AtimeMode } from './access-times';

/** The node id of the layer's root (FUSE_ROOT_ID). */
export const ROOT_NODE_ID = 1;

/** renameat2(2) flags. */
export const RENAME_NOREPLACE = 1 << 0;
export const RENAME_EXCHANGE = 1 << 1;
/** setxattr(2) flags. */
export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;

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
  /**
   * The kernel enforces the POSIX ACLs stored here (FUSE_POSIX_ACL, which implies
   * default_permissions) and leaves the umask to the table (FUSE_DONT_MASK): see posix-acls.ts.
   */
  posixAcl: boolean;
}

export const NO_FEATURES: FuseFeatures = { writebackCache: false, killPrivileges: false, cacheSymlinks: false, posixAcl: false };

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
  /** Ask for POSIX ACL enforcement when offered (FuseFeatures.posixAcl). Default false. */
  posixAcl?: boolean;
  /** When reads move atime (access-times.ts). Default 'relatime', as on ext4. */
  atime?: AtimeMode;
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
  /**
   * O_TMPFILE: an open regular file with no name in parent's layer (nlink 0), freed at its
   * last release unless link() names it; the kernel refuses link() after O_EXCL.
   */
  tmpfile(ctx: CallerContext, parent: number, mode: number, flags: number): Promise<{ entry: Entry; open: OpenReply }>;
  /** Fills target from offsetBytes; resolves to the count (short at EOF). */
  read(ctx: CallerContext, nodeId: number, fh: number, target: Buffer, offsetBytes: number, opts?: ReadOptions): Promise<number>;
  /** Writes all of data; killSuidgid as for setattr. */
  write(ctx: CallerContext, nodeId: number, fh: number, data: Buffer, offsetBytes: number, killSuidgid: boolean): Promise<number>;
  /** fallocate(2); mode: its FALLOC_FL_* flags. NOT_IMPLEMENTED (ENOSYS) when the layer has none. */
  fallocate(ctx: CallerContext, nodeId: number, fh: number, offsetBytes: number, lengthBytes: number, mode: number): Promise<void>;
  /** lseek(2) with SEEK_DATA / SEEK_HOLE (the kernel answers the other whences itself): the new offset. */
  lseek(ctx: CallerContext, nodeId: number, fh: number, offsetBytes: number, whence: number): Promise<number>;
  /**
   * copy_file_range(2) within this mount (the kernel answers EXDEV across mounts itself):
   * the store shares whole blocks. Resolves to the bytes copied. NOT_SUPPORTED
   * (EOPNOTSUPP) when the layer cannot: the kernel then copies through read and write.
   */
  copyFileRange(ctx: CallerContext, nodeIn: number, fhIn: number, offInBytes: number, nodeOut: number, fhOut: number, offOutBytes: number, lengthBytes: number, flags: number): Promise<number>;
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
  /**
   * flags: setxattr(2)'s. POSIX ACLs are stored where the kernel enforces them, else refused
   * (NOT_SUPPORTED): see posix-acls.ts. killSgid: FUSE_SETXATTR_ACL_KILL_SGID.
   */
  setxattr(ctx: CallerContext, nodeId: number, name: string, value: Buffer, flags: number, killSgid?: boolean): Promise<void>;
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
