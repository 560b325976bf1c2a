/**
 * The layer store contract.
 *
 * Vocabulary
 * - **Layer**: a named, numbered node in a chain. Kinds:
 *   - `base`: the empty root directory (0755 root:root) at the bottom of every chain.
 *     There is exactly one per pool, named `base`.
 *   - `image`: a thin snapshot of its parent. Writable only while it is being built
 *     (state `building`, e.g. during `dmfs import`); read-only once `committed`.
 *   - `container`: a thin snapshot of its parent that stays writable (`active`).
 * - **Segment**: the records a layer itself holds (its own inodes, directory entries,
 *   whiteouts and block maps). Layers point at segments by number, so `commit` can hand
 *   a container's segment to a new image in O(1).
 * - **Chain**: a layer and its ancestors down to `base`. Reads walk the chain top-down
 *   and take the nearest segment that has what they look for; a hole reads as zeros.
 * - **Whiteout**: a directory entry in an upper segment that hides a name of the layers
 *   below. **Opaque** directory: hides every lower entry below it.
 *
 * Lifecycle
 *   base ──createLayer(kind:image, building)──▶ image (building) ──seal──▶ image (committed)
 *   image ──createLayer(kind:container)──▶ container (active, writable)
 *   container ──commit(name)──▶ new image layer holding the container's changes; the
 *        container continues on top of it with an empty segment
 *   any layer without children ──removeLayer──▶ gone (deferred while open/mounted)
 *
 * Worked example: importing a layer
 *   const img = await store.createLayer('debian-l1', { parent: 'base', kind: 'image', building: true });
 *   const fs = await store.openLayer('debian-l1');            // writable while building
 *   const root = await fs.getattr(fs.rootIno);
 *   const etc = await fs.mkdir(fs.rootIno, 'etc', { mode: 0o755, uid: 0, gid: 0 });
 *   const f = await fs.mknod(etc.ino, 'hostname', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
 *   await fs.write(f.ino, Buffer.from('box\n'), 0);
 *   await fs.unlink(root.ino, 'tmp');                          // ".wh.tmp": whiteout
 *   await fs.setOpaque(etc.ino);                               // ".wh..wh..opq"
 *   await fs.close();
 *   await store.sealLayer('debian-l1');                        // now read-only
 *   // on failure instead: await store.removeLayer('debian-l1') leaves the pool as before
 *
 * Worked example: running a container
 *   await store.createLayer('web-1', { parent: 'debian-l1', kind: 'container' }); // O(1)
 *   const fs = await store.openLayer('web-1');
 *   const a = await fs.resolve('/etc/hostname');
 *   await fs.write(a.ino, Buffer.from('web'), 0);   // copies one block up, then writes
 *   await fs.fsync();                               // data, then metadata, durable
 *   await fs.close();
 *   await store.commit('web-1', 'web-image');
 *
 * Units: sizes and offsets in bytes (`*Bytes`), timestamps as bigint nanoseconds since
 * the epoch (`*Ns`). Ranges are half-open `[begin, end)`.
 *
 * Errors: every method throws `DmfsError` with a stable code (NOT_FOUND, EXISTS,
 * NOT_DIR, IS_DIR, NOT_EMPTY, READ_ONLY_LAYER, POOL_FULL, LAYER_FULL, ...).
 * "Not there" in `lookup` is `null`, not an error.
 *
 * Concurrency: one process may open a layer for writing at a time (others get
 * LAYER_IN_USE); any number may open it read-only. Methods of one `LayerFs` may be
 * called concurrently; the implementation serialises what must be serialised.
 */

/** Inode number: stable across the whole chain, unique in the pool. */
export type Ino = number;

export type FileKind = 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo' | 'socket';
export type LayerKind = 'base' | 'image' | 'container';
export type LayerState = 'building' | 'committed' | 'active' | 'removing';

/** POSIX st_mode type bits (as in <sys/stat.h>), so callers need no magic numbers. */
export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;

/** The file kind named by st_mode's type bits (0 means a regular file, as mknod(2) takes it). */
export function fileKindOfMode(mode: number): FileKind {
  switch (mode & S_IFMT) {
    case S_IFDIR: return 'dir';
    case S_IFLNK: return 'symlink';
    case S_IFCHR: return 'chardev';
    case S_IFBLK: return 'blockdev';
    case S_IFIFO: return 'fifo';
    case S_IFSOCK: return 'socket';
    case S_IFREG: case 0: return 'file';
    default: throw new RangeError(`unknown file type in mode 0${mode.toString(8)}`);
  }
}

export interface Attr {
  ino: Ino;
  kind: FileKind;
  /** Full st_mode: type bits | permission bits (incl. setuid/setgid/sticky). */
  mode: number;
  uid: number;
  gid: number;
  sizeBytes: number;
  nlink: number;
  /** Device number for chardev/blockdev (Linux makedev encoding), else 0. */
  rdev: number;
  atimeNs: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  /** Birth time (statx btime); absent when the store never recorded one for this inode. */
  btimeNs?: bigint;
  /** Allocated 512-byte sectors, for st_blocks / du. */
  blocks512: number;
}

export interface ReadOptions {
  /**
   * The caller has nothing else to do until this read is done (e.g. the only FUSE request
   * in flight): a read that must wait for the disk may wait on the calling thread rather
   * than hand off to a pool thread and back.
   */
  mayBlock?: boolean;
}

export interface DirEntry {
  name: string;
  ino: Ino;
  kind: FileKind;
}

export interface NewNodeOptions {
  /** Full st_mode including the type bits (S_IFREG, S_IFIFO, S_IFCHR, ...). For mkdir the type bits may be omitted. */
  mode: number;
  uid: number;
  gid: number;
  /** Device number for chardev/blockdev. */
  rdev?: number;
  /** Extended attributes the node is born with, in its creating transaction (inherited ACLs). */
  xattrs?: Record<string, Buffer>;
}

/**
 * A node as an image entry describes it (LayerFs.createEntries): a regular file, device or
 * fifo by `mode`, or a symlink when `target` is given; born with these times and xattrs.
 */
export interface NewEntry extends NewNodeOptions {
  mtimeNs: bigint;
  atimeNs: bigint;
  /** A regular file's whole content (dense: holes are zeros written). */
  content?: Buffer;
  target?: string;
}

/** A NewEntry and where it goes (LayerFs.createEntries). */
export interface NamedEntry {
  dirIno: Ino;
  name: string;
  entry: NewEntry;
}

/** Fields left undefined are unchanged. Changing sizeBytes truncates or extends (with a hole). */
export interface SetAttr {
  mode?: number;
  uid?: number;
  gid?: number;
  sizeBytes?: number;
  atimeNs?: bigint;
  mtimeNs?: bigint;
  ctimeNs?: bigint;
  /**
   * An access-time update (a read under relatime/strictatime): atime becomes atimeNs, or
   * the store's now when absent (the clock its mtimes come from); ctime stays as it is; an
   * inode this layer has not copied up keeps its lower atime (a read is no change of the layer).
   */
  accessOnly?: boolean;
}

export interface RenameFlags {
  /** RENAME_NOREPLACE: fail with EXISTS if the target exists. */
  noReplace?: boolean;
  /** RENAME_EXCHANGE: atomically swap the two names. */
  exchange?: boolean;
}

export interface XattrSetFlags {
  /** XATTR_CREATE: fail with XATTR_EXISTS if present. */
  create?: boolean;
  /** XATTR_REPLACE: fail with NO_XATTR if absent. */
  replace?: boolean;
  /** Also set these mode bits (0o7777), in the same transaction: an access ACL and the mode it implies. */
  mode?: number;
}

export interface StatFs {
  blockSizeBytes: number;
  totalBlocks: number;
  freeBlocks: number;
  availBlocks: number;
  totalInodes: number;
  freeInodes: number;
  nameMaxBytes: number;
}

/**
 * A directory as its name and its parent's (the root is `{ parent: null, name: '' }`).
 * The changes of one directory share one object, so a path thousands of levels deep
 * costs nothing to hand out, and a consumer finds its place from the nearest directory
 * it has seen instead of comparing whole paths.
 */
export interface ChangeDir {
  readonly parent: ChangeDir | null;
  readonly name: string;
}

/** One change of a layer against its parent, computed from the layer's own segment. */
export interface LayerChange {
  /** Absolute path inside the layer, '/'-separated, no trailing slash ('/' itself never appears). */
  path: string;
  /**
   * added: the name is new in this layer (it may replace a lower entry of another kind);
   * modified: same inode as below, content or attributes changed;
   * deleted: a whiteout hides the lower name;
   * opaque: the directory hides all its lower entries (it is also reported added/modified).
   */
  change: 'added' | 'modified' | 'deleted' | 'opaque';
  /** Attributes in this layer; absent for `deleted`. */
  attr?: Attr;
  /** Where `path` is, as its directory and its name there, when the implementation says (not for '/'). */
  at?: { dir: ChangeDir; name: string };
}

/**
 * What fallocate(2) does to a regular file's range (its mode flags, decoded):
 * - `allocate` (mode 0, or KEEP_SIZE): every block of the range gets a block of this
 *   layer's own, so later writes there need no new space; holes become unwritten blocks
 *   (reading as zeros); the size grows to the range's end unless keepSize.
 * - `punch-hole` (PUNCH_HOLE, always with keepSize): the range reads as zeros; whole
 *   blocks leave the file (a lower layer's block is hidden, never shown again), partial
 *   ones are zeroed in place. Past the end of the file nothing changes.
 * - `zero-range` (ZERO_RANGE): the range reads as zeros and stays allocated, as for
 *   allocate; the size grows unless keepSize.
 * - `collapse-range` / `insert-range` (COLLAPSE_RANGE / INSERT_RANGE): the range's blocks
 *   leave the file and what follows moves down by its length, or everything from the
 *   offset moves up and the range becomes a hole. Offset and length are multiples of the
 *   pool block size (INVALID otherwise, as ext4 asks multiples of its block size); a
 *   collapse must end before the end of the file, an insert start before it.
 */
export interface FallocateHow {
  mode: 'allocate' | 'punch-hole' | 'zero-range' | 'collapse-range' | 'insert-range';
  keepSize: boolean;
}

/** File-level operations on one layer. What the FUSE frontend and the image importer call. */
export interface LayerFs {
  readonly layerName: string;
  readonly readOnly: boolean;
  readonly rootIno: Ino;
  /** The layer's virtual size limit (dm.basesize or --size). */
  readonly sizeLimitBytes: number;

  getattr(ino: Ino): Promise<Attr>;
  /** The entry `name` in directory `dirIno`, or null when absent (or whited out). */
  lookup(dirIno: Ino, name: string): Promise<Attr | null>;
  /** Absolute path to attributes, without following a final symlink; throws NOT_FOUND / NOT_DIR. */
  resolve(path: string): Promise<Attr>;
  /** Merged entries of the chain, without '.' and '..', in a stable order. */
  readdir(dirIno: Ino): Promise<DirEntry[]>;

  mknod(dirIno: Ino, name: string, opts: NewNodeOptions): Promise<Attr>;
  /**
   * O_TMPFILE: a regular file with no name in dirIno's layer, returned retained (release it
   * like an open). It lives while retained and is freed at the last release (or at the next
   * open of the pool after a crash) unless link() gives it a name first. Absent: the layer
   * cannot make unnamed files (EOPNOTSUPP).
   */
  createUnnamed?(dirIno: Ino, opts: NewNodeOptions): Promise<Attr>;
  /**
   * New non-directory nodes, each whole, in one metadata transaction: regular files with
   * all their content, symlinks, devices, fifos, with their entries' times (ctime is now).
   * What an import writes, a run of entries at a time. Content goes to blocks before that
   * transaction; all or nothing: a failure (EXISTS for any name, LAYER_FULL, ...) leaves no
   * name and no block taken. Optional: without it the importer makes each node with
   * mknod/symlink, write and setattr.
   */
  createEntries?(entries: readonly NamedEntry[]): Promise<Attr[]>;
  mkdir(dirIno: Ino, name: string, opts: NewNodeOptions): Promise<Attr>;
  symlink(dirIno: Ino, name: string, target: string, opts: Omit<NewNodeOptions, 'mode'>): Promise<Attr>;
  /** New name for an existing non-directory inode; returns its attributes (nlink + 1). */
  link(ino: Ino, newDirIno: Ino, newName: string): Promise<Attr>;
  unlink(dirIno: Ino, name: string): Promise<void>;
  rmdir(dirIno: Ino, name: string): Promise<void>;
  rename(oldDirIno: Ino, oldName: string, newDirIno: Ino, newName: string, flags?: RenameFlags): Promise<void>;
  readlink(ino: Ino): Promise<string>;
  setattr(ino: Ino, changes: SetAttr): Promise<Attr>;
  /** Marks a directory opaque in this layer: every lower entry below it is hidden. */
  setOpaque(dirIno: Ino): Promise<void>;

  /** Reads up to target.length bytes at offsetBytes into target; returns the count (short at EOF, 0 past it). */
  read(ino: Ino, target: Buffer, offsetBytes: number, opts?: ReadOptions): Promise<number>;
  /** Writes all of data at offsetBytes (extending the file); returns data.length. */
  write(ino: Ino, data: Buffer, offsetBytes: number): Promise<number>;
  /**
   * copy_file_range(2) between two regular files of this layer: up to lengthBytes from
   * inoIn at offInBytes to inoOut at offOutBytes (extending it); returns the count, short
   * at the source's end (0 past it) or for a very long range. Whole blocks are shared,
   * not copied (a later write into either file copies that one block); overlapping ranges
   * of one file are INVALID. Absent where a layer cannot share: FUSE then answers
   * EOPNOTSUPP and the kernel copies the bytes itself.
   */
  copyFileRange?(inoIn: Ino, offInBytes: number, inoOut: Ino, offOutBytes: number, lengthBytes: number): Promise<number>;

  /**
   * fallocate(2) over [offsetBytes, offsetBytes + lengthBytes) of a regular file (see
   * FallocateHow). All or nothing: POOL_FULL / LAYER_FULL leave the file as it was.
   * Optional: a layer without it answers FUSE with ENOSYS (the kernel then says EOPNOTSUPP).
   */
  fallocate?(ino: Ino, offsetBytes: number, lengthBytes: number, how: FallocateHow): Promise<void>;
  /**
   * lseek(2)'s SEEK_DATA (`data`) / SEEK_HOLE (`hole`) from offsetBytes: the first offset
   * at or after it in data (a written block or inline bytes of the chain) or in a hole
   * (no block, a punched one, an unwritten one; the end of the file counts as a hole).
   * Data is found at block granularity. PAST_END_OF_FILE (ENXIO) at or past the end, or
   * when no data follows. Optional, as fallocate.
   */
  seekData?(ino: Ino, offsetBytes: number, what: 'data' | 'hole'): Promise<number>;

  /** Keeps an inode alive while open: an unlinked but open file stays readable until the last release. */
  retain(ino: Ino): void;
  release(ino: Ino): Promise<void>;

  getxattr(ino: Ino, name: string): Promise<Buffer | null>;
  listxattr(ino: Ino): Promise<string[]>;
  setxattr(ino: Ino, name: string, value: Buffer, flags?: XattrSetFlags): Promise<void>;
  removexattr(ino: Ino, name: string): Promise<void>;

  statfs(): Promise<StatFs>;
  /**
   * Registers a mount of this open layer at `mountpoint` (MountService calls it before
   * mounting; openLayer with `mountpoint` registers at open). A mount caches what it
   * serves, so a layer mounted read-write has no other mount, and a layer mounted
   * anywhere has no other writer: LAYER_IN_USE otherwise, checked in one metadata
   * transaction (race-free between processes). Read-only mounts of a layer nobody writes
   * stack freely. Absent on layers outside a store (nobody else can reach them).
   *
   * `coherent`: the caller serves every mount of this open layer from one process and
   * invalidates each one's kernel caches when another changes the layer (SharedLayer, the
   * daemon): then several mounts of this one open layer may stand, read-write or not. Other
   * processes and other opens are held to the rules above all the same: nothing could
   * invalidate their caches.
   */
  claimMount?(mountpoint: string, opts?: { coherent?: boolean }): Promise<void>;
  /** Undoes claimMount (a mount that failed to come up); close() releases every claim. */
  releaseMount?(mountpoint: string): Promise<void>;
  /** Makes every write so far durable: data blocks first, then the metadata that points at them. */
  fsync(): Promise<void>;
  /** The layer's own changes against its parent. */
  changes(): AsyncIterable<LayerChange>;
  /** Commits and releases the layer (write lock, caches). Idempotent. */
  close(): Promise<void>;
}

export interface LayerInfo {
  id: number;
  name: string;
  kind: LayerKind;
  state: LayerState;
  /** Parent layer name; null only for the base. */
  parent: string | null;
  createdMs: number;
  labels: Record<string, string>;
  sizeLimitBytes: number;
  /**
   * Bytes of pool space held by this layer's own segment (blocks + inline data). A block
   * shared by copies counts once, in the layer that wrote it (block-sharing.ts).
   */
  exclusiveBytes: number;
  /** Bytes held by the ancestors that this layer sees through. */
  sharedBytes: number;
  /** Names of direct children. */
  children: string[];
  /** Pid and mountpoint of a live mount of this layer, if any. */
  mounts: { pid: number; mountpoint: string; readOnly: boolean }[];
  /** True when removal was asked while in use: it happens at the last close. */
  deferredRemoval: boolean;
}

export interface CreateLayerOptions {
  /** Parent layer name; default 'base'. */
  parent?: string;
  kind: 'image' | 'container';
  /**
   * Image layers only: stay writable until sealLayer (used by import). A building layer
   * may sit on a building parent of the same process, so a whole chain can be built and
   * then sealed bottom-up; if that process dies, the next open removes the whole chain.
   */
  building?: boolean;
  sizeLimitBytes?: number;
  labels?: Record<string, string>;
}

export interface OpenLayerOptions {
  /** Force read-only even for a container. */
  readOnly?: boolean;
  /** Recorded in the layer's mount list while open. */
  mountpoint?: string;
}

/** Layer management of one pool. */
export interface LayerStore {
  createLayer(name: string, opts: CreateLayerOptions): Promise<LayerInfo>;
  /** Building image → committed (read-only). */
  sealLayer(name: string): Promise<LayerInfo>;
  /** Container → new committed image `imageName` holding its changes; the container continues on top of it. */
  commit(containerName: string, imageName: string): Promise<LayerInfo>;
  /** Refuses with LAYER_HAS_CHILDREN; defers (returns deferred: true) while open elsewhere. */
  removeLayer(name: string): Promise<{ deferred: boolean }>;
  renameLayer(name: string, newName: string): Promise<void>;
  setLabels(name: string, labels: Record<string, string>): Promise<void>;
  getLayer(name: string): Promise<LayerInfo>;
  listLayers(): Promise<LayerInfo[]>;
  openLayer(name: string, opts?: OpenLayerOptions): Promise<LayerFs>;
  close(): Promise<void>;
}
