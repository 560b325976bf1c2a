/**
 * The kernel FUSE transport: dmfs speaks the FUSE protocol on /dev/fuse itself, with no
 * libfuse in between (what libfuse's low-level API does, in TypeScript).
 *
 * Why: libfuse 2's high-level path API (fuse-native) names files by path, so every hard
 * link is its own kernel inode and attributes cannot be cached on a writable layer; it
 * offers no writeback cache and 128 KiB requests; each request crosses four threads.
 * Here the node id is the store's inode number, the kernel caches attributes and
 * dentries (this mount is the layer's only writer, or the others are served by this process,
 * which invalidates their caches with notifications: KernelSession.notify), writes are
 * gathered in the page cache and arrive in up to 1 MiB requests, and a request costs one
 * wake-up of the JS thread (native/src/fuse_dev.rs watches the device on Node's loop).
 *
 * Mounting needs mount(2) with the device's fd. Root runs `mount -i -t fuse.dmfs -o
 * fd=3,...` with the device as its fd 3. Any other user goes through the setuid
 * fusermount3, which mounts and passes the device fd back over a unix socket
 * (fusermount.ts), as libfuse 3 does. Where neither works (no native addon, no setuid
 * fusermount, /dev/fuse not openable) mounts use the fuse-native transport
 * (src/fs/fuse-adapter.ts); kernelMountRoute says which applies and why.
 *
 * Buffers: a request is read into a pooled buffer of MAX_REQUEST_BYTES. Handlers parse
 * what they need synchronously; only WRITE keeps its buffer (the data) until the store
 * has it, which `dispatch` signals by returning a promise.
 */
import { spawn } from 'node:child_process';
import { closeSync, constants as fsConstants, openSync, write as writeAsync } from 'node:fs';
import { realpath } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { dmfsError } from '../errors';
import { loadFuseDevice, type FuseDevice } from '../native';
import { defaultFuseHostView, devFuseProblem, kernelFusermount, type FuseHostView } from './fuse-diagnosis';
import { mountWithFusermount } from './fusermount';
import { FUSE_FSTYPE, readMountTable, unmountFuse } from './mount-table';
import { NotifyCode, Op, OUT_HEADER_BYTES, writeOutHeader, type Unique } from './kernel-protocol';

const E = osConstants.errno;

/** Largest WRITE payload negotiated (max_pages 256 of 4 KiB). */
export const MAX_WRITE_BYTES = 1024 * 1024;
/** A request buffer: header + fuse_write_in + MAX_WRITE_BYTES, with room to spare. */
const MAX_REQUEST_BYTES = MAX_WRITE_BYTES + 64 * 1024;
/** Request buffers kept for reuse; more in flight are allocated and dropped. */
const POOLED_BUFFERS = 16;

/**
 * Free request buffers, shared by every session of the process: one daemon serving a
 * hundred mounts keeps POOLED_BUFFERS, not a set per mount. A buffer is owned by one
 * session from takeBuffer until giveBuffer (all on the JS thread).
 */
const freeRequestBuffers: Buffer[] = [];
/** Requests read per wake-up before yielding to the event loop (I/O completions). */
const READS_PER_WAKEUP = 64;

/**
 * Notifications (KernelSession.notify) of every session of the process, written in order,
 * one at a time, by libuv's thread pool, never on the JS thread. A notification about
 * another mount's inode may block in the kernel: INVAL_ENTRY takes the directory's lock,
 * INVAL_INODE waits for pages locked by a READ in flight. Whoever holds them is waiting
 * for this process to answer a request of that mount, which needs the JS thread free (a
 * blocking write there would never return), and may need the thread pool for its data:
 * one write at a time ties up at most one pool thread.
 */
const notifications: { session: KernelSession; message: Buffer }[] = [];
let notificationWriting = false;

/** Errors a notification may meet that need no report: the kernel no longer has the node or name (or it is busy / not empty there), or the connection is gone. */
const QUIET_NOTIFY_ERRNOS: ReadonlySet<number> = new Set([E.ENOENT, E.ENOTDIR, E.EBUSY, E.ENOTEMPTY, E.ENODEV, E.EBADF]);

function writeNextNotification(): void {
  if (notificationWriting) return;
  let next = notifications.shift();
  while (next && next.session.deviceFd < 0) next = notifications.shift();
  if (!next) return;
  const { session, message } = next;
  notificationWriting = true;
  session.notificationStarted();
  writeAsync(session.deviceFd, message, 0, message.length, null, (err) => {
    notificationWriting = false;
    session.notificationDone(err);
    writeNextNotification();
  });
}

/** Requests the kernel expects no reply to. */
const NO_REPLY_OPCODES: ReadonlySet<number> = new Set([Op.FORGET, Op.BATCH_FORGET, Op.INTERRUPT]);

/**
 * How long to busy-poll /dev/fuse after answering everything, in µs
 * (DMFS_FUSE_SPIN_US, default DEFAULT_SPIN_MICROS; 0 turns it off).
 */
export const DEFAULT_SPIN_MICROS = 50;

function spinMicrosFromEnv(value = process.env.DMFS_FUSE_SPIN_US): number {
  if (value === undefined || value === '') return DEFAULT_SPIN_MICROS;
  const n = Number(value);
  return Number.isFinite(n) && n >= 0 ? Math.min(n, 1000) : DEFAULT_SPIN_MICROS;
}

/** What the codec (kernel-transport.ts) gives the session. */
export interface KernelDispatcher {
  /**
   * Handles one request (`len` bytes of `req`). Returns a promise only when it keeps
   * using `req` after returning (WRITE data); the buffer is reused once it settles.
   */
  dispatch(req: Buffer, len: number, session: KernelSession): Promise<void> | void;
}

export interface KernelMountOptions {
  /** Shown as the source in /proc/mounts, e.g. 'dmfs:web-1'. */
  source: string;
  readOnly: boolean;
  allowOther?: boolean;
  /** Honour setuid/setgid bits (ext4's default); else nosuid. */
  suid: boolean;
  /** Honour device nodes (ext4's default); else nodev. */
  dev: boolean;
}

/**
 * How the kernel transport mounts: mount(8) with the device as its fd 3 (root), or through
 * a setuid fusermount that passes the device fd back (everyone else).
 */
export type KernelMountRoute = { via: 'mount' } | { via: 'fusermount'; fusermount: string };

/**
 * How this process would mount with the kernel transport, or why it cannot (in words that
 * say what to do). Reads the host only; a route found can still fail at mount time (no
 * mount(8), no CAP_SYS_ADMIN in a container, a mountpoint the user may not write).
 */
export function kernelMountRoute(host: FuseHostView = defaultFuseHostView()): { route: KernelMountRoute } | { unavailable: string } {
  const dev = loadFuseDevice();
  if ('reason' in dev) return { unavailable: `the native addon is unavailable: ${dev.reason}` };
  if (host.uid === 0) return { route: { via: 'mount' } };
  const found = kernelFusermount({}, host);
  if ('problem' in found) return { unavailable: found.problem };
  return { route: { via: 'fusermount', fusermount: found.fusermount } };
}

/** Why the kernel transport cannot be used here (null: it can). See kernelMountRoute. */
export function kernelTransportUnavailable(host?: FuseHostView): string | null {
  const r = kernelMountRoute(host);
  return 'unavailable' in r ? r.unavailable : null;
}

/** The mount options every route passes: access, read-only, setuid/devices. */
function commonMountOptions(o: KernelMountOptions): string[] {
  const list: string[] = [];
  // The kernel checks permissions from the mode when other users may enter; without
  // allow_other only the mounting user gets in at all (see the access operation).
  if (o.allowOther) list.push('allow_other', 'default_permissions');
  list.push(o.readOnly ? 'ro' : 'rw');
  if (!o.suid) list.push('nosuid');
  if (!o.dev) list.push('nodev');
  return list;
}

/** The mount(8) option string of a FUSE mount whose device is the child's fd 3. */
export function kernelMountOptions(o: KernelMountOptions, uid: number, gid: number): string {
  return ['fd=3', 'rootmode=40000', `user_id=${uid}`, `group_id=${gid}`, ...commonMountOptions(o)].join(',');
}

/** /proc/mounts' source field: what mount(8) and fusermount accept unescaped. */
function mountSource(o: KernelMountOptions): string {
  return o.source.replace(/[^A-Za-z0-9._:@/+-]/g, '_');
}

/**
 * fusermount's -o list. It adds fd, rootmode, user_id and group_id itself and refuses
 * unknown options; fsname and subtype give the same source and type (fuse.dmfs) as a root
 * mount. For a non-root caller it forces nosuid,nodev and ignores suid/dev.
 */
export function fusermountOptions(o: KernelMountOptions): string {
  return [`fsname=${mountSource(o)}`, `subtype=${FUSE_FSTYPE.slice('fuse.'.length)}`, ...commonMountOptions(o)].join(',');
}

function runMount(fd: number, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    // env given explicitly: the caller's view of the environment (PATH included) decides
    // which mount(8) runs, also where `process` is a copy (jest's test environment).
    const child = spawn('mount', args, { stdio: ['ignore', 'ignore', 'pipe', fd], env: process.env });
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (err) => reject(dmfsError('MOUNT_FAILED', `cannot run mount(8): ${err.message}`, err)));
    child.on('close', (code) => {
      if (code === 0) resolve();
      else reject(dmfsError('MOUNT_FAILED', `mount(8) failed (exit ${code}): ${stderr.trim() || 'no message'}`));
    });
  });
}

/** mount(2) flags (sys/mount.h). */
const MS_RDONLY = 1;
const MS_NOSUID = 2;
const MS_NODEV = 4;

/**
 * Mounts with mount(2) from this process when the addon can and the mountpoint's path
 * passes through no FUSE mount (this process may be the one serving it, and mount(2) runs
 * on the JS thread). False when it did not mount: mount(8) then does, and says why if it
 * cannot either.
 */
async function mountDirect(device: FuseDevice, fd: number, mountpoint: string, opts: KernelMountOptions, uid: number, gid: number): Promise<boolean> {
  // DMFS_FUSE_MOUNT=mount8: always through mount(8) (what hosts whose mount(2) policy lives in mount(8) need).
  if (!device.mount || process.env.DMFS_FUSE_MOUNT === 'mount8') return false;
  let real: string;
  try {
    real = await realpath(mountpoint);
  } catch {
    return false;
  }
  const underFuse = (await readMountTable()).some((m) => m.fstype.startsWith('fuse') && (real === m.mountpoint || real.startsWith(m.mountpoint.endsWith('/') ? m.mountpoint : `${m.mountpoint}/`)));
  if (underFuse) return false;
  const data = [`fd=${fd}`, 'rootmode=40000', `user_id=${uid}`, `group_id=${gid}`, ...(opts.allowOther ? ['allow_other', 'default_permissions'] : [])].join(',');
  const flags = (opts.readOnly ? MS_RDONLY : 0) | (opts.suid ? 0 : MS_NOSUID) | (opts.dev ? 0 : MS_NODEV);
  return device.mount(mountSource(opts), real, FUSE_FSTYPE, flags, data) === 0;
}

/** Root: opens /dev/fuse (non-blocking) and mounts it with mount(2), else mount(8). Returns the mounted fd; on failure closes it. */
async function mountAsRoot(device: FuseDevice, mountpoint: string, opts: KernelMountOptions): Promise<number> {
  let fd: number;
  try {
    fd = openSync('/dev/fuse', fsConstants.O_RDWR | fsConstants.O_NONBLOCK);
  } catch (err) {
    throw dmfsError('FUSE_UNAVAILABLE', devFuseProblem() ?? `cannot open /dev/fuse: ${(err as Error).message}`, err);
  }
  try {
    const uid = process.getuid?.() ?? 0;
    const gid = process.getgid?.() ?? 0;
    if (await mountDirect(device, fd, mountpoint, opts, uid, gid)) return fd;
    await runMount(fd, ['-i', '-t', FUSE_FSTYPE, '-o', kernelMountOptions(opts, uid, gid), mountSource(opts), mountpoint]);
    return fd;
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}

/** Non-root: fusermount mounts and passes the device fd back (fusermount.ts); made non-blocking here. */
async function mountThroughFusermount(device: FuseDevice, fusermount: string, mountpoint: string, opts: KernelMountOptions): Promise<number> {
  const diagnose = () => {
    const found = kernelFusermount({ allowOther: opts.allowOther });
    return 'problem' in found ? found.problem : null;
  };
  const fd = await mountWithFusermount(device, fusermount, mountpoint, fusermountOptions(opts), diagnose);
  const rc = device.setNonblocking(fd);
  if (rc < 0) {
    closeSync(fd);
    await unmountFuse(mountpoint, { lazy: true }).catch(() => undefined);
    throw dmfsError('MOUNT_FAILED', `cannot make the /dev/fuse descriptor from ${fusermount} non-blocking: errno ${-rc}`);
  }
  return fd;
}

/** One FUSE connection: the device fd, its watcher, and the reply path. */
export class KernelSession {
  private watchId: number | null = null;
  private endedFlag = false;
  /** Requests read that still owe a reply. */
  private outstanding = 0;
  /** Busy-poll window after the last reply (µs); 0 sleeps at once. */
  private readonly spinMicros = spinMicrosFromEnv();
  private readonly errorReply = Buffer.alloc(OUT_HEADER_BYTES);
  private initSeen!: () => void;
  /** Notification writes under way (0 or 1); detach() leaves the fd open for them. */
  private notificationWrites = 0;
  /** The fd detach() left open for a notification write under way (-1: none). */
  private closeAfterNotification = -1;
  /** Called once when the connection ends by itself (unmount, abort); not by detach(). */
  onEnded: () => void = () => undefined;
  /** Resolves once the kernel's INIT has been answered (the mount is live). */
  readonly initialised = new Promise<void>((r) => (this.initSeen = r));

  private constructor(
    private readonly device: FuseDevice,
    private fd: number,
    private readonly dispatcher: KernelDispatcher,
    private readonly onUnexpected: (err: unknown) => void,
  ) {}

  /**
   * Mounts /dev/fuse at `mountpoint` by the route kernelMountRoute gives (mount(8) as root,
   * fusermount otherwise) and serves requests on this event loop. Resolves once the kernel's
   * INIT is answered: the mount is live. Throws FUSE_UNAVAILABLE / MOUNT_FAILED; on failure
   * nothing stays mounted or open.
   */
  static async mount(mountpoint: string, dispatcher: KernelDispatcher, opts: KernelMountOptions, onUnexpected: (err: unknown) => void = () => undefined): Promise<KernelSession> {
    const dev = loadFuseDevice();
    if ('reason' in dev) throw dmfsError('FUSE_UNAVAILABLE', `kernel FUSE transport unavailable: ${dev.reason}`);
    const how = kernelMountRoute();
    if ('unavailable' in how) throw dmfsError('FUSE_UNAVAILABLE', `kernel FUSE transport unavailable: ${how.unavailable}`);
    const fd = how.route.via === 'mount' ? await mountAsRoot(dev.device, mountpoint, opts) : await mountThroughFusermount(dev.device, how.route.fusermount, mountpoint, opts);
    const session = new KernelSession(dev.device, fd, dispatcher, onUnexpected);
    try {
      // Watched only once mounted: before that the device polls as an error and reads EPERM.
      session.watchId = dev.device.watch(fd, () => session.onReadable(), () => session.idleSpinMicros());
    } catch (err) {
      session.detach();
      await unmountFuse(mountpoint, { lazy: true }).catch(() => undefined);
      throw err;
    }
    await session.initialised;
    return session;
  }

  /**
   * Serves a connection that is already mounted and initialised, whose descriptor `fd`
   * this process was handed (a daemon worker restarted by its supervisor). Then asks the
   * kernel to send again every request the previous server read but never answered
   * (FUSE_NOTIFY_RESEND, Linux 6.9 and later): false when the kernel refused that, and
   * those requests wait for an answer that never comes (until the mount is aborted).
   */
  static adopt(fd: number, dispatcher: KernelDispatcher, onUnexpected: (err: unknown) => void = () => undefined): { session: KernelSession; resent: boolean } {
    const dev = loadFuseDevice();
    if ('reason' in dev) throw dmfsError('FUSE_UNAVAILABLE', `kernel FUSE transport unavailable: ${dev.reason}`);
    const rc = dev.device.setNonblocking(fd);
    if (rc < 0) throw dmfsError('MOUNT_FAILED', `cannot make the adopted /dev/fuse descriptor ${fd} non-blocking: errno ${-rc}`);
    const session = new KernelSession(dev.device, fd, dispatcher, onUnexpected);
    session.markInitialised();
    session.watchId = dev.device.watch(fd, () => session.onReadable(), () => session.idleSpinMicros());
    const notify = Buffer.alloc(OUT_HEADER_BYTES);
    // FUSE_NOTIFY_RESEND (protocol 7.40): resend every request read and not yet answered.
    writeOutHeader(notify, OUT_HEADER_BYTES, NotifyCode.RESEND, { lo: 0, hi: 0 });
    const n = dev.device.write(fd, notify);
    return { session, resent: n === OUT_HEADER_BYTES };
  }

  /** The connection's /dev/fuse descriptor (-1 once detached). */
  get deviceFd(): number {
    return this.fd;
  }

  /** Requests read that still owe a reply (the one being dispatched included). */
  get inFlight(): number {
    return this.outstanding;
  }

  /** True once the connection is gone: unmounted (lazily: and every file closed) or aborted. */
  get ended(): boolean {
    return this.endedFlag;
  }

  /** Called by the INIT handler once it has replied. */
  markInitialised(): void {
    this.initSeen();
  }

  private takeBuffer(): Buffer {
    return freeRequestBuffers.pop() ?? Buffer.allocUnsafeSlow(MAX_REQUEST_BYTES);
  }

  private giveBuffer(buf: Buffer): void {
    if (freeRequestBuffers.length < POOLED_BUFFERS) freeRequestBuffers.push(buf);
  }

  /**
   * How long the native side may busy-poll for the next request before sleeping (see
   * native/src/fuse_dev.rs): the spin window once every request read is answered, else 0.
   */
  private idleSpinMicros(): number {
    return this.outstanding === 0 && !this.endedFlag ? this.spinMicros : 0;
  }

  /** Reads and dispatches what the device has (up to READS_PER_WAKEUP requests). */
  private onReadable(): void {
    for (let i = 0; i < READS_PER_WAKEUP && !this.endedFlag; i++) {
      const buf = this.takeBuffer();
      const n = this.device.read(this.fd, buf);
      if (n < 0) {
        this.giveBuffer(buf);
        const errno = -n;
        // ENOENT: the request was interrupted before we read it; EINTR: try again.
        if (errno === E.ENOENT || errno === E.EINTR) continue;
        if (errno === E.EAGAIN) return;
        // ENODEV: unmounted (or the connection was aborted). Anything else ends it too.
        if (errno !== E.ENODEV) this.onUnexpected(new Error(`reading /dev/fuse failed: errno ${errno}`));
        this.end();
        return;
      }
      if (!NO_REPLY_OPCODES.has(buf.readUInt32LE(4))) this.outstanding++;
      let kept: Promise<void> | void;
      try {
        kept = this.dispatcher.dispatch(buf, n, this);
      } catch (err) {
        this.onUnexpected(err);
        kept = undefined;
      }
      if (kept) kept.then(() => this.giveBuffer(buf), () => this.giveBuffer(buf));
      else this.giveBuffer(buf);
    }
  }

  /** Sends a reply whose body starts at OUT_HEADER_BYTES of `reply` and ends at totalBytes. */
  send(unique: Unique, reply: Buffer, totalBytes: number): void {
    this.outstanding--;
    writeOutHeader(reply, totalBytes, 0, unique);
    this.write(totalBytes === reply.length ? reply : reply.subarray(0, totalBytes));
  }

  /** Sends an empty success reply. */
  ok(unique: Unique): void {
    this.fail(unique, 0);
  }

  /** Sends an error reply (errno > 0) or, with 0, an empty success. */
  fail(unique: Unique, errno: number): void {
    this.outstanding--;
    writeOutHeader(this.errorReply, OUT_HEADER_BYTES, -errno, unique);
    this.write(this.errorReply);
  }

  /**
   * Queues a notification (a message whose header's unique is 0, kernel-protocol.ts):
   * written soon, off the JS thread (see `notifications`), in order with this process's
   * other notifications. Dropped once the connection is gone.
   */
  notify(message: Buffer): void {
    if (this.endedFlag) return;
    notifications.push({ session: this, message });
    writeNextNotification();
  }

  /** @internal writeNextNotification's bookkeeping. */
  notificationStarted(): void {
    this.notificationWrites++;
  }

  /** @internal */
  notificationDone(err: NodeJS.ErrnoException | null): void {
    this.notificationWrites--;
    const errno = err ? Math.abs(err.errno ?? E.EIO) : 0;
    if (err && !QUIET_NOTIFY_ERRNOS.has(errno) && !this.endedFlag) this.onUnexpected(new Error(`writing a FUSE notification failed: ${err.message}`));
    if (this.notificationWrites === 0 && this.closeAfterNotification >= 0) {
      try {
        closeSync(this.closeAfterNotification);
      } catch {
        // already closed
      }
      this.closeAfterNotification = -1;
    }
  }

  private write(buf: Buffer): void {
    if (this.endedFlag) return;
    const n = this.device.write(this.fd, buf);
    // ENOENT: the request was interrupted and is gone; nothing to do.
    if (n < 0 && -n !== E.ENOENT) {
      if (-n === E.ENODEV) this.end();
      else this.onUnexpected(new Error(`writing a FUSE reply failed: errno ${-n}`));
    }
  }

  private end(): void {
    if (this.endedFlag) return;
    this.detach();
    // Nothing else may keep the event loop alive now: whoever serves must hear it here.
    this.onEnded();
  }

  /** Stops watching and closes the device (the kernel then aborts the connection if still mounted). Idempotent. */
  detach(): void {
    this.endedFlag = true;
    if (this.watchId !== null) this.device.unwatch(this.watchId);
    this.watchId = null;
    if (this.fd >= 0) {
      // A notification write under way still uses the fd: closed once it is done, so that
      // its number is not reused under it.
      if (this.notificationWrites > 0) this.closeAfterNotification = this.fd;
      else {
        try {
          closeSync(this.fd);
        } catch {
          // already closed
        }
      }
      this.fd = -1;
    }
    this.initSeen();
  }
}
