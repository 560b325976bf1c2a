/**
 * The one loader of the native seam (lmdb-js `native.js` style): `blockIo` is the Rust
 * addon (native/dmfs_native.node) wrapped to the BlockIo interface when it loads, else the
 * pure TypeScript fallback. Everything above src/native imports `blockIo` from here and
 * nothing else.
 *
 * Environment, read once at import:
 * - `DMFS_NATIVE` unset, '' or 'auto': the addon when it loads, else the fallback.
 * - `DMFS_NATIVE=off`: always the fallback.
 * - `DMFS_NATIVE=required`: the addon, or importing this module throws
 *   DmfsError(NATIVE_UNAVAILABLE) saying why.
 *   Any other value throws DmfsError(BAD_CONFIG).
 * - `DMFS_NATIVE_PATH`: load the addon from this file instead of
 *   `<package root>/native/dmfs_native.node` (built by scripts/build-native.js).
 *
 * Tests and benchmarks run both implementations through `loadNativeBlockIo()` and
 * `fallbackBlockIo`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { getSystemErrorName } from 'node:util';
import { dmfsError, DmfsError } from '../errors';
import type { BlockIo, ReadBlocksOptions } from './block-io';
import { FallbackBlockIo, checkDirPath, ioError } from './fallback';

export type { BlockIo, ReadBlocksOptions } from './block-io';
export { FallbackBlockIo, crc32cTable } from './fallback';

/** ABI the wrapper below speaks; must equal ABI_VERSION in native/src/lib.rs. */
export const NATIVE_ABI_VERSION = 4;

/** Bytes written and cloned by probeReflink: a multiple of every file system block size. */
const PROBE_BYTES = 64 * 1024;

/** The addon's raw exports (native/src/lib.rs). Errors: code 'INVALID' | 'ERRNO' | 'INTERNAL'. */
export interface RawAddon {
  abiVersion: number;
  crc32cImpl: 'sse4.2' | 'table';
  copyRange(fdIn: number, inOffsetBytes: number, fdOut: number, outOffsetBytes: number, lengthBytes: number): Promise<number>;
  /** FICLONERANGE only: true when cloned, false when not supported for these files/ranges. */
  cloneRange(fdIn: number, inOffsetBytes: number, fdOut: number, outOffsetBytes: number, lengthBytes: number): Promise<boolean>;
  readBlocks(fd: number, buffers: Buffer[], offsetsBytes: number[]): Promise<number>;
  writeBlocks(fd: number, buffers: Buffer[], offsetsBytes: number[]): Promise<number>;
  punchHole(fd: number, offsetBytes: number, lengthBytes: number): Promise<boolean>;
  crc32c(data: Buffer, seed?: number): number;
  /** The software (table) path even where SSE4.2 exists; for tests. */
  crc32cTable(data: Buffer, seed?: number): number;
  /**
   * Synchronous, page cache only (or, with mayBlock, waiting for the disk on this thread):
   * bytes moved, or -1 when the asynchronous call is needed.
   */
  readBlocksNowait(fd: number, buffers: Buffer[], offsetsBytes: number[], mayBlock?: boolean): number;
  writeBlocksNowait(fd: number, buffers: Buffer[], offsetsBytes: number[]): number;
  fuseWatch(fd: number, onReadable: () => void, spinMicros: () => number): number;
  fuseUnwatch(id: number): void;
  fuseRead(fd: number, buf: Buffer): number;
  fuseWrite(fd: number, buf: Buffer): number;
  /** socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC): 0 with both fds as int32 LE in out[0..8], or -errno. */
  fdSocketPair(out: Buffer): number;
  /** One non-blocking recvmsg: the one SCM_RIGHTS fd received (close-on-exec), or -errno (see native/src/fd_passing.rs). */
  fdReceive(sock: number): number;
  fdSetNonblocking(fd: number): number;
  /** mount(2) with C-string Buffers: 0 or -errno (native/src/fuse_mount.rs). Absent from addons built before it. */
  fuseMount?(source: Buffer, target: Buffer, fstype: Buffer, flags: number, data: Buffer): number;
  /** pidfd_getfd: a close-on-exec duplicate of descriptor fd of process pid, or -errno. Absent from older addons. */
  fdTakeFrom?(pid: number, fd: number): number;
  /** flock(2), never blocking (EINTR retried): mode 0 unlock, 1 shared, 2 exclusive; 0, or -errno (-EWOULDBLOCK: held by another; native/src/file_lock.rs). */
  fileLock(fd: number, mode: FileLockMode): number;
}

/** What a whole-file lock holds: 0 nothing, 1 shared, 2 exclusive. */
export type FileLockMode = 0 | 1 | 2;

/**
 * The addon's FUSE device calls (native/src/fuse_dev.rs, fd_passing.rs), used by the kernel FUSE
 * transport only. read/write return a byte count or a negative errno; they never throw
 * for a system error.
 */
export interface FuseDevice {
  /**
   * Calls onReadable on the JS thread while fd is readable (level-triggered); returns a
   * watch id. After each call (and its microtasks) spinMicros() > 0 busy-polls fd that many
   * µs before the thread sleeps.
   */
  watch(fd: number, onReadable: () => void, spinMicros: () => number): number;
  unwatch(id: number): void;
  read(fd: number, buf: Buffer): number;
  write(fd: number, buf: Buffer): number;
  /**
   * Descriptor passing, for mounting through fusermount (native/src/fd_passing.rs); -errno on
   * failure, never a throw. socketPair writes two close-on-exec fds as int32 LE into out[0..8].
   * receive: the one fd a message carried, -EAGAIN when none has arrived, -ENOMSG when the
   * peer sent none, -EBADMSG when it sent more (all closed).
   */
  socketPair(out: Buffer): number;
  receive(sock: number): number;
  setNonblocking(fd: number): number;
  /**
   * mount(2) (root): 0 or -errno, never a throw; null when the addon predates it (then
   * mount(8) mounts). See native/src/fuse_mount.rs for when it may be called.
   */
  mount: ((source: string, target: string, fstype: string, flags: number, data: string) => number) | null;
  /** pidfd_getfd (the daemon's supervisor): a duplicate of another process's fd, or -errno; null when the addon predates it. */
  takeFrom: ((pid: number, fd: number) => number) | null;
}

/**
 * The FUSE device calls, or why they are unavailable. Follows DMFS_NATIVE: 'off' means no
 * addon at all (the FUSE frontend then uses fuse-native).
 */
export function loadFuseDevice(mode: string | undefined = process.env.DMFS_NATIVE): { device: FuseDevice } | { reason: string } {
  if (mode === 'off') return { reason: 'DMFS_NATIVE=off' };
  const load = tryLoadNative();
  if (!load.blockIo) return { reason: load.reason };
  // N-API functions ignore `this`: hand them out unbound, with no wrapper on the hot path.
  const raw = load.blockIo.addon;
  return {
    device: {
      watch: raw.fuseWatch,
      unwatch: raw.fuseUnwatch,
      read: raw.fuseRead,
      write: raw.fuseWrite,
      socketPair: raw.fdSocketPair,
      receive: raw.fdReceive,
      setNonblocking: raw.fdSetNonblocking,
      mount: raw.fuseMount ? mountThrough(raw.fuseMount) : null,
      takeFrom: raw.fdTakeFrom ?? null,
    },
  };
}

/**
 * flock(2) from the addon (src/pool/env-open-lock.ts), or null without it (DMFS_NATIVE=off,
 * or not built): Node itself has no file locks.
 */
export function loadFileLock(mode: string | undefined = process.env.DMFS_NATIVE): RawAddon['fileLock'] | null {
  if (mode === 'off') return null;
  return tryLoadNative().blockIo?.addon.fileLock ?? null;
}

function mountThrough(fuseMount: NonNullable<RawAddon['fuseMount']>): NonNullable<FuseDevice['mount']> {
  const c = (s: string) => Buffer.from(`${s}\0`, 'utf8');
  return (source, target, fstype, flags, data) => fuseMount(c(source), c(target), c(fstype), flags, c(data));
}

let packageRootFound: string | null = null;

/**
 * The package root: the nearest ancestor holding dmfs's package.json (same from src/ and
 * dist/). Found once per process: every commit asks for the addon's flock through here.
 */
export function packageRoot(): string {
  packageRootFound ??= findPackageRoot();
  return packageRootFound;
}

function findPackageRoot(): string {
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string };
      if (pkg.name === 'dmfs') return dir;
    } catch {
      // not here; go up
    }
    const up = path.dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return path.resolve(__dirname, '..', '..');
}

export function nativeAddonPath(): string {
  return process.env.DMFS_NATIVE_PATH || path.join(packageRoot(), 'native', 'dmfs_native.node');
}

/**
 * Turns an addon error into the BlockIo contract: INVALID stays INVALID; a failed system
 * call becomes IO_ERROR whose cause looks like a Node system error (code 'EBADF',
 * negative errno, syscall), as the fallback's does.
 */
function fromAddon(op: string, err: unknown): DmfsError {
  const e = err as { code?: unknown; errno?: unknown; syscall?: unknown; message?: unknown } | null;
  const message = String(e?.message ?? err);
  if (e?.code === 'INVALID') return dmfsError('INVALID', `${op}: ${message}`);
  if (e?.code === 'ERRNO' && typeof e.errno === 'number') {
    const name = getSystemErrorName(-e.errno);
    const syscall = String(e.syscall);
    const cause = Object.assign(new Error(`${name}: ${syscall} failed`), { code: name, errno: -e.errno, syscall });
    return dmfsError('IO_ERROR', `${op}: ${syscall} failed: ${name}`, cause);
  }
  return dmfsError('IO_ERROR', `${op}: ${message}`, err);
}

/** The addon behind the BlockIo interface. */
export class NativeBlockIo implements BlockIo {
  readonly kind = 'native' as const;
  readonly unavailableReason = null;
  /** Which CRC-32C path the CPU gets: 'sse4.2' or 'table'. */
  readonly crc32cImpl: string;

  constructor(readonly addon: RawAddon, readonly addonPath: string) {
    this.crc32cImpl = addon.crc32cImpl;
  }

  async copyRange(fdIn: number, inOffsetBytes: number, fdOut: number, outOffsetBytes: number, lengthBytes: number): Promise<number> {
    try {
      return await this.addon.copyRange(fdIn, inOffsetBytes, fdOut, outOffsetBytes, lengthBytes);
    } catch (err) {
      throw fromAddon('copyRange', err);
    }
  }

  // Reads and writes first try the page cache on this thread (RWF_NOWAIT): a cached
  // transfer then costs one system call instead of two thread hand-offs through the libuv
  // pool, which on a small VM are most of a FUSE request's time. Anything that would wait
  // (disk reads, writeback throttling) goes to the pool as before.
  async readBlocks(fd: number, buffers: Buffer[], offsetsBytes: number[], opts: ReadBlocksOptions = {}): Promise<number> {
    try {
      const n = this.addon.readBlocksNowait(fd, buffers, offsetsBytes, opts.mayBlock === true);
      if (n >= 0) return n;
      return await this.addon.readBlocks(fd, buffers, offsetsBytes);
    } catch (err) {
      throw fromAddon('readBlocks', err);
    }
  }

  async writeBlocks(fd: number, buffers: Buffer[], offsetsBytes: number[]): Promise<number> {
    try {
      const n = this.addon.writeBlocksNowait(fd, buffers, offsetsBytes);
      if (n >= 0) return n;
      return await this.addon.writeBlocks(fd, buffers, offsetsBytes);
    } catch (err) {
      throw fromAddon('writeBlocks', err);
    }
  }

  async punchHole(fd: number, offsetBytes: number, lengthBytes: number): Promise<boolean> {
    try {
      return await this.addon.punchHole(fd, offsetBytes, lengthBytes);
    } catch (err) {
      throw fromAddon('punchHole', err);
    }
  }

  crc32c(data: Buffer, seed?: number): number {
    try {
      return this.addon.crc32c(data, seed);
    } catch (err) {
      throw fromAddon('crc32c', err);
    }
  }

  /**
   * Writes PROBE_BYTES to a temp file in dirPath and clones it into a second one with
   * FICLONERANGE. Rejects IO_ERROR when the temp files cannot be made (missing or
   * read-only directory); any clone failure resolves false. Both files are removed.
   */
  async probeReflink(dirPath: string): Promise<boolean> {
    const op = 'probeReflink';
    checkDirPath(op, dirPath);
    const base = path.join(dirPath, `.dmfs-reflink-probe-${process.pid}-${randomBytes(6).toString('hex')}`);
    const made: string[] = [];
    const handles: fs.promises.FileHandle[] = [];
    try {
      let src: fs.promises.FileHandle;
      let dst: fs.promises.FileHandle;
      try {
        src = await fs.promises.open(`${base}.src`, 'wx+', 0o600);
        handles.push(src);
        made.push(`${base}.src`);
        dst = await fs.promises.open(`${base}.dst`, 'wx+', 0o600);
        handles.push(dst);
        made.push(`${base}.dst`);
        await src.write(Buffer.alloc(PROBE_BYTES, 0xa5), 0, PROBE_BYTES, 0);
      } catch (err) {
        throw ioError(op, err);
      }
      try {
        return await this.addon.cloneRange(src.fd, 0, dst.fd, 0, PROBE_BYTES);
      } catch {
        return false;
      }
    } finally {
      for (const h of handles) await h.close().catch(() => undefined);
      for (const p of made) await fs.promises.unlink(p).catch(() => undefined);
    }
  }
}

export type NativeLoad = { blockIo: NativeBlockIo; reason: null } | { blockIo: null; reason: string };

const loads = new Map<string, NativeLoad>();

/** Loads the addon at addonPath (once per path; never throws): the wrapper, or why not. */
export function tryLoadNative(addonPath: string = nativeAddonPath()): NativeLoad {
  const cached = loads.get(addonPath);
  if (cached) return cached;
  let result: NativeLoad;
  const rel = path.relative(process.cwd(), addonPath);
  const shown = rel === '' || rel.startsWith('..') || path.isAbsolute(rel) ? addonPath : rel;
  if (!fs.existsSync(addonPath)) {
    result = { blockIo: null, reason: `${shown} is not built (needs cargo: node scripts/build-native.js)` };
  } else {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const addon = require(addonPath) as Partial<RawAddon>;
      if (addon.abiVersion !== NATIVE_ABI_VERSION) {
        result = { blockIo: null, reason: `${shown} has ABI ${String(addon.abiVersion)}, expected ${NATIVE_ABI_VERSION} (rebuild: node scripts/build-native.js)` };
      } else {
        result = { blockIo: new NativeBlockIo(addon as RawAddon, addonPath), reason: null };
      }
    } catch (err) {
      const first = String((err as Error)?.message ?? err).split('\n')[0];
      result = { blockIo: null, reason: `${shown} failed to load: ${first}` };
    }
  }
  loads.set(addonPath, result);
  return result;
}

/** The addon wrapped to BlockIo, or null when it does not load. */
export function loadNativeBlockIo(): BlockIo | null {
  return tryLoadNative().blockIo;
}

/** The fallback on its own, whatever DMFS_NATIVE says (for tests and benchmarks). */
export const fallbackBlockIo: BlockIo = new FallbackBlockIo('fallback selected explicitly');

/** Picks the implementation for the DMFS_NATIVE mode; throws as described at the top. */
export function selectBlockIo(mode: string | undefined = process.env.DMFS_NATIVE): BlockIo {
  switch (mode ?? '') {
    case 'off':
      return new FallbackBlockIo('DMFS_NATIVE=off');
    case 'required': {
      const load = tryLoadNative();
      if (!load.blockIo) throw dmfsError('NATIVE_UNAVAILABLE', `DMFS_NATIVE=required but the native addon is unavailable: ${load.reason}`);
      return load.blockIo;
    }
    case '':
    case 'auto': {
      const load = tryLoadNative();
      return load.blockIo ?? new FallbackBlockIo(load.reason);
    }
    default:
      throw dmfsError('BAD_CONFIG', `DMFS_NATIVE must be 'auto', 'off' or 'required', got '${mode}'`);
  }
}

/** The BlockIo every other module uses. */
export const blockIo: BlockIo = selectBlockIo();
