/**
 * The one module that touches fuse-native (2.2.6, patched in place by
 * scripts/patch-fuse-native.js). It turns the promise handlers of `PathOperations` into
 * fuse-native's callbacks, errors into negative errno, attributes into the patched stat
 * layout, and raw utimens arguments into nanoseconds / UTIME_NOW / UTIME_OMIT.
 *
 * fuse-native is required lazily, inside `FuseMount.mount`, so the conversions here can be
 * unit-tested on hosts without libfuse.
 *
 * Threading: libfuse runs a pool of threads; each blocks until its JS handler calls back.
 * Handlers must never block the event loop (no *Sync I/O), and the serving process must
 * never touch its own mountpoint synchronously, or it deadlocks.
 */
import { constants as osConstants } from 'node:os';
import { DmfsError, dmfsError } from '../errors';
import { errnoFor, type CallerContext } from './fuse-operations';
import { libfuseMountProblem } from './fuse-diagnosis';
import type { Attr, DirEntry, FileKind, StatFs } from '../store/layer-store';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, S_IFSOCK } from '../store/layer-store';

const E = osConstants.errno;

/** The patch version this adapter speaks (scripts/patch-fuse-native.js PATCH_VERSION). */
export const FUSE_PATCH_VERSION = 3;

/** utimensat(2) special nanosecond values, as libfuse hands them through. */
export const UTIME_NOW = (1 << 30) - 1;
export const UTIME_OMIT = (1 << 30) - 2;

/** A time to set: exact nanoseconds since the epoch, the current time, or unchanged. */
export type TimeSpec = bigint | 'now' | 'omit';

export type { CallerContext } from './fuse-operations';

/**
 * Promise-based, path-based operations of libfuse's high-level API (path-transport.ts
 * implements them over the operations table). Paths are absolute ('/' for the root). `fh`
 * is the handle returned by open/create (always in [1, 2^31)). `ctx` is the caller
 * (fuse_get_context); the adapter always gives it. Errors: throw (DmfsError preferred);
 * the adapter answers -errno.
 */
export interface PathOperations {
  init?(): Promise<void>;
  statfs(path: string, ctx?: CallerContext): Promise<StatFs>;
  getattr(path: string, ctx?: CallerContext): Promise<Attr>;
  fgetattr(path: string, fh: number, ctx?: CallerContext): Promise<Attr>;
  /** Every entry, including '.' and '..'. */
  readdir(path: string, ctx?: CallerContext): Promise<DirEntry[]>;
  open(path: string, flags: number, ctx?: CallerContext): Promise<number>;
  create(path: string, mode: number, ctx: CallerContext): Promise<number>;
  /** Fills target (FUSE's own buffer) from offsetBytes; returns the count. */
  read(path: string, fh: number, target: Buffer, offsetBytes: number, ctx?: CallerContext): Promise<number>;
  /** data is FUSE's buffer, valid only until the promise settles. */
  write(path: string, fh: number, data: Buffer, offsetBytes: number, ctx?: CallerContext): Promise<number>;
  release(path: string, fh: number, ctx?: CallerContext): Promise<void>;
  flush(path: string, fh: number, ctx?: CallerContext): Promise<void>;
  fsync(path: string, dataSync: boolean, fh: number, ctx?: CallerContext): Promise<void>;
  fsyncdir(path: string, dataSync: boolean, ctx?: CallerContext): Promise<void>;
  truncate(path: string, sizeBytes: number, ctx?: CallerContext): Promise<void>;
  ftruncate(path: string, fh: number, sizeBytes: number, ctx?: CallerContext): Promise<void>;
  utimens(path: string, atime: TimeSpec, mtime: TimeSpec, ctx?: CallerContext): Promise<void>;
  readlink(path: string, ctx?: CallerContext): Promise<string>;
  /** uid/gid null: leave unchanged (chown -1). */
  chown(path: string, uid: number | null, gid: number | null, ctx?: CallerContext): Promise<void>;
  chmod(path: string, mode: number, ctx?: CallerContext): Promise<void>;
  mknod(path: string, mode: number, rdev: number, ctx: CallerContext): Promise<void>;
  mkdir(path: string, mode: number, ctx: CallerContext): Promise<void>;
  symlink(target: string, path: string, ctx: CallerContext): Promise<void>;
  link(existingPath: string, newPath: string, ctx?: CallerContext): Promise<void>;
  unlink(path: string, ctx?: CallerContext): Promise<void>;
  rmdir(path: string, ctx?: CallerContext): Promise<void>;
  rename(fromPath: string, toPath: string, ctx?: CallerContext): Promise<void>;
  /** value is FUSE's buffer, valid only until the promise settles. */
  setxattr(path: string, name: string, value: Buffer, flags: number, ctx?: CallerContext): Promise<void>;
  /** null: no such attribute (fuse-native answers ENODATA). */
  getxattr(path: string, name: string, ctx?: CallerContext): Promise<Buffer | null>;
  listxattr(path: string, ctx?: CallerContext): Promise<string[]>;
  removexattr(path: string, name: string, ctx?: CallerContext): Promise<void>;
  /** access(2) when the kernel does not check modes itself (no default_permissions). */
  access(path: string, mode: number, ctx?: CallerContext): Promise<void>;
}

// ---- conversions (pure, unit-tested) ----------------------------------------------------

const TWO32 = 4294967296;
const NS_PER_S = 1_000_000_000n;

/** Number of uint32 slots of the patched stat layout. */
export const STAT_SLOTS = 23;
/** Number of uint32 slots of the patched statfs layout. */
export const STATFS_SLOTS = 17;

/** Writes a 64-bit integer (a safe JS integer, possibly negative) as low/high uint32 (two's complement). */
export function setInt64(ints: Uint32Array, idx: number, value: number): void {
  if (!Number.isSafeInteger(value)) throw dmfsError('INVALID', `not a safe integer: ${value}`);
  const high = Math.floor(value / TWO32);
  ints[idx] = value - high * TWO32;
  ints[idx + 1] = high >>> 0;
}

/** Reads back what setInt64 wrote (for tests and symmetry). */
export function getInt64(ints: Uint32Array, idx: number): number {
  return ints[idx] + (ints[idx + 1] | 0) * TWO32;
}

/** Splits nanoseconds since the epoch into whole seconds (floored) and nanoseconds [0, 1e9). */
export function nsToTimespec(ns: bigint): { sec: number; nsec: number } {
  let sec = ns / NS_PER_S;
  let nsec = ns % NS_PER_S;
  if (nsec < 0n) {
    nsec += NS_PER_S;
    sec -= 1n;
  }
  return { sec: Number(sec), nsec: Number(nsec) };
}

/** One utimens time as libfuse passes it (seconds, nanoseconds) to a TimeSpec. */
export function timespecToTimeSpec(sec: number, nsec: number): TimeSpec {
  if (nsec === UTIME_NOW) return 'now';
  if (nsec === UTIME_OMIT) return 'omit';
  if (!Number.isSafeInteger(sec) || !Number.isInteger(nsec) || nsec < 0 || nsec >= 1e9) {
    throw dmfsError('INVALID', `bad timespec ${sec}.${nsec}`);
  }
  return BigInt(sec) * NS_PER_S + BigInt(nsec);
}

const TYPE_BITS: Record<FileKind, number> = {
  file: S_IFREG,
  dir: S_IFDIR,
  symlink: S_IFLNK,
  chardev: S_IFCHR,
  blockdev: S_IFBLK,
  fifo: S_IFIFO,
  socket: S_IFSOCK,
};

export function typeBitsOf(kind: FileKind): number {
  return TYPE_BITS[kind];
}

/** Attr to the patched stat array (layout in scripts/patch-fuse-native.js). */
export function attrToStat(attr: Attr, blockSizeBytes: number): Uint32Array {
  const ints = new Uint32Array(STAT_SLOTS);
  ints[0] = attr.mode;
  ints[1] = attr.uid;
  ints[2] = attr.gid;
  setInt64(ints, 3, attr.sizeBytes);
  ints[5] = 0; // st_dev: the kernel fills it in
  ints[6] = attr.nlink;
  setInt64(ints, 7, attr.ino);
  setInt64(ints, 9, attr.rdev);
  ints[11] = blockSizeBytes;
  setInt64(ints, 12, attr.blocks512);
  setTime(ints, 14, attr.atimeNs);
  setTime(ints, 17, attr.mtimeNs);
  setTime(ints, 20, attr.ctimeNs);
  return ints;
}

function setTime(ints: Uint32Array, idx: number, ns: bigint): void {
  const { sec, nsec } = nsToTimespec(ns);
  setInt64(ints, idx, sec);
  ints[idx + 2] = nsec;
}

/** A directory entry to the stat array readdir's filler needs: only st_ino and the type bits are read. */
export function direntToStat(entry: DirEntry): Uint32Array {
  const ints = new Uint32Array(STAT_SLOTS);
  ints[0] = typeBitsOf(entry.kind);
  ints[6] = 1;
  setInt64(ints, 7, entry.ino);
  return ints;
}

/** StatFs to the patched statfs array. f_frsize = f_bsize = the pool block size. */
export function statfsToArray(s: StatFs): Uint32Array {
  const ints = new Uint32Array(STATFS_SLOTS);
  ints[0] = s.blockSizeBytes;
  ints[1] = s.blockSizeBytes;
  setInt64(ints, 2, s.totalBlocks);
  setInt64(ints, 4, s.freeBlocks);
  setInt64(ints, 6, s.availBlocks);
  setInt64(ints, 8, s.totalInodes);
  setInt64(ints, 10, s.freeInodes);
  setInt64(ints, 12, s.freeInodes);
  ints[14] = 0;
  ints[15] = 0;
  ints[16] = s.nameMaxBytes;
  return ints;
}

/** Negative errno for the callback; never 0 (an error that maps to nothing becomes -EIO). */
export function negErrno(err: unknown): number {
  return -errnoFor(err);
}

// ---- mount options ------------------------------------------------------------------------

export interface FuseMountOptions {
  /** Shown as the source in /proc/mounts, e.g. 'dmfs:web-1'. Characters outside [A-Za-z0-9._:@/+-] become '_'. */
  fsName: string;
  readOnly: boolean;
  allowOther?: boolean;
  /** Kernel dentry/attribute cache lifetimes in seconds. */
  entryTimeoutS: number;
  attrTimeoutS: number;
  negativeTimeoutS: number;
  /** Keep the page cache across opens (immutable content). */
  kernelCache: boolean;
  /** Keep the page cache while mtime/size are unchanged. */
  autoCache: boolean;
  /** Largest write request (big_writes); the kernel caps it at 128 KiB for libfuse 2. */
  maxWriteBytes: number;
  /** st_blksize of every file. */
  blockSizeBytes: number;
  debug?: boolean;
  /** Honour setuid/setgid bits (no nosuid; root only). */
  suid?: boolean;
  /** Honour device nodes (no nodev; root only). */
  dev?: boolean;
}

/** The libfuse option list. fuse-native forwards only a fixed set, so all of it rides in `fsname`. */
export function fuseOptionList(o: FuseMountOptions): string[] {
  const list = [
    `fsname=${o.fsName.replace(/[^A-Za-z0-9._:@/+-]/g, '_')}`,
    'subtype=dmfs',
    'use_ino',
    'big_writes',
    `max_write=${o.maxWriteBytes}`,
    `entry_timeout=${o.entryTimeoutS}`,
    `attr_timeout=${o.attrTimeoutS}`,
    `negative_timeout=${o.negativeTimeoutS}`,
  ];
  // libfuse 2 adds nosuid,nodev unless told otherwise; ext4 (and a container's rootfs)
  // has neither, so setuid binaries and device nodes in an image work. Root only.
  if (o.suid) list.push('suid');
  if (o.dev) list.push('dev');
  // The page cache of a writable layer is checked against fresh attributes at every open:
  // libfuse 2's path API gives each hard link its own kernel inode, and another name's
  // cached attributes could otherwise keep stale pages for up to attr_timeout.
  if (o.autoCache) list.push('ac_attr_timeout=0');
  if (o.readOnly) list.push('ro');
  // The kernel checks permissions from the mode when other users may enter. Without
  // allow_other only the mounting user (as a rule root, who passes those checks) can, and
  // leaving the checks out spares a GETATTR round trip per path component per syscall
  // (attributes are not cached on writable layers); `access` answers X_OK itself.
  if (o.allowOther) list.push('allow_other', 'default_permissions');
  if (o.kernelCache) list.push('kernel_cache');
  else if (o.autoCache) list.push('auto_cache');
  return list;
}

// ---- the fuse-native side ----------------------------------------------------------------

type Cb = (...args: unknown[]) => void;

interface NativeFuse {
  context?: CallerContext;
  mount(cb: (err: Error | null) => void): void;
  loopDone(): boolean;
  detach(): void;
}

interface NativeFuseClass {
  new (mnt: string, ops: Record<string, unknown>, opts: Record<string, unknown>): NativeFuse;
  DMFS_PATCH?: number;
}

let loaded: { Fuse: NativeFuseClass } | { error: string } | null = null;

/** Loads fuse-native once; the reason it is unusable otherwise. */
export function loadFuseNative(): { Fuse: NativeFuseClass } | { error: string } {
  if (loaded) return loaded;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const Fuse = require('fuse-native') as NativeFuseClass;
    if (Fuse.DMFS_PATCH !== FUSE_PATCH_VERSION) {
      loaded = { error: `fuse-native is not patched for dmfs (found ${String(Fuse.DMFS_PATCH)}, want ${FUSE_PATCH_VERSION}); run: npm run setup` };
    } else {
      loaded = { Fuse };
    }
  } catch (err) {
    const msg = (err as Error).message ?? String(err);
    const hint = /libfuse\.so\.2/.test(msg)
      ? 'libfuse.so.2 is missing (apt-get install libfuse2)'
      : /fuse\.node|Cannot find module/.test(msg)
        ? 'the patched fuse-native binding is not built (run: npm run setup)'
        : msg;
    loaded = { error: `fuse-native unavailable: ${hint}` };
  }
  return loaded;
}

const NO_CONTEXT: CallerContext = { uid: 0, gid: 0, pid: 0, umask: 0o022 };

/**
 * Builds fuse-native's callback-style handler object. `context()` yields the caller of the
 * operation being dispatched; it must be read synchronously on entry (fuse-native sets it
 * just before calling the handler).
 */
export function toNativeHandlers(
  ops: PathOperations,
  blockSizeBytes: number,
  context: () => CallerContext,
  onUnexpected: (err: unknown) => void = () => undefined,
): Record<string, unknown> {
  // A DmfsError is an answer; anything else is a bug or an I/O failure worth a log line.
  const errno = (err: unknown): number => {
    if (!(err instanceof DmfsError)) onUnexpected(err);
    return negErrno(err);
  };
  const fail = (cb: Cb, err: unknown, ...rest: unknown[]) => cb(errno(err), ...rest);
  const v = (p: Promise<unknown>, cb: Cb) => {
    p.then(() => cb(0), (err) => fail(cb, err));
  };
  const stat = (p: Promise<Attr>, cb: Cb) => {
    p.then((a) => cb(0, attrToStat(a, blockSizeBytes)), (err) => fail(cb, err));
  };
  const num = (p: Promise<number>, cb: Cb) => {
    p.then((n) => cb(0, n), (err) => fail(cb, err));
  };
  return {
    init: (cb: Cb) => v(ops.init ? ops.init() : Promise.resolve(), cb),
    statfs: (path: string, cb: Cb) => {
      ops.statfs(path, context()).then((s) => cb(0, statfsToArray(s)), (err) => fail(cb, err));
    },
    getattr: (path: string, cb: Cb) => stat(ops.getattr(path, context()), cb),
    fgetattr: (path: string, fh: number, cb: Cb) => stat(ops.fgetattr(path, fh, context()), cb),
    readdir: (path: string, cb: Cb) => {
      ops.readdir(path, context()).then(
        (entries) => cb(0, entries.map((e) => e.name), entries.map(direntToStat)),
        (err) => fail(cb, err),
      );
    },
    open: (path: string, flags: number, cb: Cb) => num(ops.open(path, flags, context()), cb),
    create: (path: string, mode: number, cb: Cb) => num(ops.create(path, mode, context()), cb),
    read: (path: string, fh: number, buf: Buffer, len: number, offset: number, cb: Cb) => {
      const target = buf.length === len ? buf : buf.subarray(0, len);
      ops.read(path, fh, target, offset, context()).then((n) => cb(n), (err) => cb(errno(err)));
    },
    write: (path: string, fh: number, buf: Buffer, len: number, offset: number, cb: Cb) => {
      const data = buf.length === len ? buf : buf.subarray(0, len);
      ops.write(path, fh, data, offset, context()).then((n) => cb(n), (err) => cb(errno(err)));
    },
    release: (path: string, fh: number, cb: Cb) => v(ops.release(path, fh, context()), cb),
    flush: (path: string, fh: number, cb: Cb) => v(ops.flush(path, fh, context()), cb),
    fsync: (path: string, dataSync: number, fh: number, cb: Cb) => v(ops.fsync(path, dataSync !== 0, fh, context()), cb),
    fsyncdir: (path: string, dataSync: number, _fh: number, cb: Cb) => v(ops.fsyncdir(path, dataSync !== 0, context()), cb),
    truncate: (path: string, size: number, cb: Cb) => v(ops.truncate(path, size, context()), cb),
    ftruncate: (path: string, fh: number, size: number, cb: Cb) => v(ops.ftruncate(path, fh, size, context()), cb),
    utimens: (path: string, aSec: number, aNsec: number, mSec: number, mNsec: number, cb: Cb) => {
      const ctx = context();
      let p: Promise<void>;
      try {
        p = ops.utimens(path, timespecToTimeSpec(aSec, aNsec), timespecToTimeSpec(mSec, mNsec), ctx);
      } catch (err) {
        p = Promise.reject(err);
      }
      v(p, cb);
    },
    readlink: (path: string, cb: Cb) => {
      ops.readlink(path, context()).then((t) => cb(0, t), (err) => fail(cb, err));
    },
    chown: (path: string, uid: number, gid: number, cb: Cb) =>
      v(ops.chown(path, uid === 0xffffffff ? null : uid, gid === 0xffffffff ? null : gid, context()), cb),
    chmod: (path: string, mode: number, cb: Cb) => v(ops.chmod(path, mode, context()), cb),
    mknod: (path: string, mode: number, dev: number, cb: Cb) => v(ops.mknod(path, mode, dev, context()), cb),
    mkdir: (path: string, mode: number, cb: Cb) => v(ops.mkdir(path, mode, context()), cb),
    symlink: (target: string, path: string, cb: Cb) => v(ops.symlink(target, path, context()), cb),
    link: (existing: string, path: string, cb: Cb) => v(ops.link(existing, path, context()), cb),
    unlink: (path: string, cb: Cb) => v(ops.unlink(path, context()), cb),
    rmdir: (path: string, cb: Cb) => v(ops.rmdir(path, context()), cb),
    rename: (from: string, to: string, cb: Cb) => v(ops.rename(from, to, context()), cb),
    setxattr: (path: string, name: string, value: Buffer, _position: number, flags: number, cb: Cb) =>
      v(ops.setxattr(path, name, value, flags, context()), cb),
    getxattr: (path: string, name: string, _position: number, cb: Cb) => {
      ops.getxattr(path, name, context()).then((val) => cb(0, val), (err) => fail(cb, err));
    },
    listxattr: (path: string, cb: Cb) => {
      ops.listxattr(path, context()).then((names) => cb(0, names), (err) => fail(cb, err));
    },
    removexattr: (path: string, name: string, cb: Cb) => v(ops.removexattr(path, name, context()), cb),
    access: (path: string, mode: number, cb: Cb) => v(ops.access(path, mode, context()), cb),
  };
}

/** A live FUSE session on one mountpoint. */
export class FuseMount {
  private constructor(
    readonly mountpoint: string,
    private readonly native: NativeFuse,
  ) {}

  /**
   * Mounts and resolves once the kernel sent INIT (the mount is live). The mountpoint must
   * exist and not be a dead FUSE mount (see mount-table.ts). Throws FUSE_UNAVAILABLE when
   * fuse-native cannot load or the host cannot mount FUSE (the cause named: fuse-diagnosis.ts),
   * MOUNT_FAILED when libfuse refuses for another reason.
   */
  static async mount(mountpoint: string, ops: PathOperations, opts: FuseMountOptions, onUnexpected?: (err: unknown) => void): Promise<FuseMount> {
    const lib = loadFuseNative();
    if ('error' in lib) throw dmfsError('FUSE_UNAVAILABLE', lib.error);
    let native: NativeFuse | null = null;
    const context = () => native?.context ?? NO_CONTEXT;
    const handlers = toNativeHandlers(ops, opts.blockSizeBytes, context, onUnexpected);
    native = new lib.Fuse(mountpoint, handlers, {
      // Every option rides in fsname (see fuseOptionList); fuse-native adds nothing else.
      fsname: fuseOptionList(opts).join(',').slice('fsname='.length),
      debug: Boolean(opts.debug),
      // fuse-native answers ETIMEDOUT after 15 s by default; a slow store under load must not fail.
      timeout: false,
    });
    const n = native;
    await new Promise<void>((resolve, reject) => {
      n.mount((err) => {
        if (!err) return resolve();
        if (err instanceof DmfsError) return reject(err);
        // libfuse 2 says only "fuse failed" (its own line goes to stderr): name the cause this host shows.
        const cause = libfuseMountProblem({ allowOther: opts.allowOther });
        reject(cause
          ? dmfsError('FUSE_UNAVAILABLE', `cannot mount ${mountpoint}: ${cause}`, err)
          : dmfsError('MOUNT_FAILED', `mounting ${mountpoint} failed: ${err.message} (libfuse 2 printed its reason on stderr: see the mount log)`, err));
      });
    });
    return new FuseMount(mountpoint, n);
  }

  /** True once the session has ended: unmounted (lazily: and every file closed), or aborted. */
  get ended(): boolean {
    return this.native.loopDone();
  }

  /** Releases the native handles once the kernel mount is gone. Idempotent. */
  detach(): void {
    this.native.detach();
  }
}
