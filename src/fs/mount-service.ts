/**
 * Serves one layer on one mountpoint until it is unmounted: by `stop()` (SIGINT/SIGTERM)
 * or from outside (`dmfs umount`, `umount`, `fusermount -u`), which the service notices
 * when the FUSE session ends (kernel transport: the device reads ENODEV; libfuse 2: the
 * patched binding's loop-done flag, polled). A lazy unmount (`umount -l`) keeps serving
 * the files still open until the last one closes. Either way it ends the same: release
 * open handles, sync (data, then metadata), close the layer.
 *
 * Two transports (FuseTransport, chosen by chooseTransport) over one operations table
 * (fuse-operations.ts): the kernel one (kernel-session.ts + kernel-transport.ts: the native
 * addon, and root or a setuid fusermount) and libfuse 2 through fuse-native
 * (path-transport.ts + fuse-adapter.ts, everything else). Cache policy of the kernel
 * transport: kernelOptionsFor. Of libfuse 2 (mountOptionsFor, and libfuse2OptionsFor for
 * the table): a read-only layer keeps its page cache across
 * opens (kernel_cache) and dentries/attributes for an hour; a writable layer keeps
 * dentries 1 s, pages while mtime/size are unchanged (auto_cache), attributes not at all
 * (see attrTimeoutS). Both rely on nothing else changing the layer while it is mounted,
 * which start() makes so by claiming the mount in the store first (LAYER_IN_USE otherwise),
 * except for other mounts of the same open layer that the caller serves and whose changes
 * it hands to onCacheInvalidator (the daemon's coherent mounts: kernel transport only). */
import { writeFile } from 'node:fs/promises';
import type { LayerFs } from '../store/layer-store';
import type { LayerEdit } from '../store/shared-layer';
import { FuseMount, negErrno, type FuseMountOptions } from './fuse-adapter';
import type { AtimeMode } from './access-times';
import { createFuseOperations, type FuseOperations, type FuseOperationsOptions } from './fuse-operations';
import { createKernelTransport } from './kernel-transport';
import { KernelSession, kernelMountRoute } from './kernel-session';
import { createPathTransport } from './path-transport';
import { FUSE_FSTYPE, readMountTable, unmountFuse } from './mount-table';
import { dmfsError, isDmfsError } from '../errors';
import { onStopSignals } from './stop-signals';

/**
 * Which FUSE transport serves the mount. 'kernel': dmfs speaks the protocol on /dev/fuse
 * itself (kernel-session.ts; the native addon and root or a setuid fusermount needed).
 * 'libfuse2': fuse-native.
 * 'auto': kernel when it can, else libfuse2. DMFS_FUSE_TRANSPORT sets the default.
 */
export type FuseTransport = 'auto' | 'kernel' | 'libfuse2';

export function transportFromEnv(value: string | undefined = process.env.DMFS_FUSE_TRANSPORT): FuseTransport {
  if (value === undefined || value === '' || value === 'auto') return 'auto';
  if (value === 'kernel' || value === 'libfuse2') return value;
  throw dmfsError('BAD_CONFIG', `DMFS_FUSE_TRANSPORT must be 'auto', 'kernel' or 'libfuse2', got '${value}'`);
}

/** The transport a mount will use, and why (for logs and `dmfs doctor`). */
export interface TransportChoice {
  transport: 'kernel' | 'libfuse2';
  reason: string;
}

/**
 * The transport for a mount asked for with `wanted`: the kernel one unless libfuse 2 is
 * asked for (explicitly, or by `debug`, whose request log only libfuse has) or the kernel
 * one cannot mount here (`route`); then libfuse 2, with the kernel route's reason. Throws
 * FUSE_UNAVAILABLE when 'kernel' is asked for and cannot mount. A kernel mount that still
 * fails at mount time falls back to libfuse 2 under 'auto' (MountService.start).
 */
export function chooseTransport(wanted: FuseTransport = transportFromEnv(), opts: { debug?: boolean } = {}, route: ReturnType<typeof kernelMountRoute> = kernelMountRoute()): TransportChoice {
  if (wanted === 'libfuse2') return { transport: 'libfuse2', reason: 'libfuse 2 asked for (DMFS_FUSE_TRANSPORT=libfuse2)' };
  if ('unavailable' in route) {
    if (wanted === 'kernel') throw dmfsError('FUSE_UNAVAILABLE', `the kernel FUSE transport was asked for (DMFS_FUSE_TRANSPORT=kernel) but cannot mount here: ${route.unavailable}`);
    return { transport: 'libfuse2', reason: route.unavailable };
  }
  if (opts.debug) return { transport: 'libfuse2', reason: 'debug asks for libfuse\'s request log' };
  return {
    transport: 'kernel',
    reason: route.route.via === 'mount' ? 'root: mount(8) with the /dev/fuse descriptor' : `not root: ${route.route.fusermount} (setuid root) mounts and passes the /dev/fuse descriptor back`,
  };
}

/** The live session, whichever transport: ended once unmounted; detach frees it. */
interface FuseSessionHandle {
  readonly ended: boolean;
  /** The kernel transport's /dev/fuse descriptor. */
  readonly deviceFd?: number;
  detach(): void;
}

/** The operations side, whichever transport: the table, and the transport's request counts if it keeps them. */
interface ServedOperations {
  table: FuseOperations;
  requestCounts?(): Record<string, number>;
  /** The kernel transport's INIT flags (see KernelTransport.negotiatedFlags). */
  negotiatedFlags?(): number | null;
}

/** What another process needs to serve a kernel-transport mount on: its device and its INIT flags. */
export interface KernelHandoff {
  fd: number;
  initFlags: number;
}

export interface MountServiceOptions {
  layer: LayerFs;
  /** Default: DMFS_FUSE_TRANSPORT, else 'auto'. */
  transport?: FuseTransport;
  /** Absolute path of an existing directory. */
  mountpoint: string;
  allowOther?: boolean;
  /** When reads move atime: relatime (default, as ext4), strictatime or noatime. */
  atime?: AtimeMode;
  /** Honour setuid bits / device nodes (root only); undefined: honoured, as on ext4 (see mountOptionsFor). */
  suid?: boolean;
  dev?: boolean;
  /** libfuse's request log on stderr; only the libfuse 2 transport has one, so this selects it. */
  debug?: boolean;
  /** One line per event (mount, unmount, errors). */
  log?: (line: string) => void;
  /** How often to check whether the session ended (an unmount from outside). */
  watchIntervalMs?: number;
  /**
   * Given, once a kernel-transport mount serves, the function that invalidates its kernel
   * caches of changes made through another mount of the layer (a SharedLayer handle's
   * onPeerEdits). Never called for libfuse 2, whose binding has no notifications: such a
   * mount cannot be kept coherent with others.
   */
  onCacheInvalidator?: (invalidate: (edits: readonly LayerEdit[]) => void) => void;
}

export interface StopResult {
  reason: string;
  /** The error of the final sync/close, if any (the pool may have lost the last second). */
  error: Error | null;
}

/** Read-ahead of the mount's backing device: FUSE's default 128 KiB keeps ~2 READs in flight. */
const READ_AHEAD_KB = 1024;

/**
 * Raises the read-ahead of the mount (root only; best effort). The device comes from
 * /proc/self/mountinfo, never from stat of our own mountpoint, which would wait on ourselves.
 */
async function raiseReadAhead(device: string, log: (line: string) => void): Promise<void> {
  if ((process.getuid?.() ?? -1) !== 0) return;
  try {
    await writeFile(`/sys/class/bdi/${device}/read_ahead_kb`, String(READ_AHEAD_KB));
  } catch (err) {
    log(`read-ahead left at the default: ${(err as Error).message}`);
  }
}

/** FUSE request size limit of libfuse 2 (32 pages). */
const MAX_IO_BYTES = 128 * 1024;

/**
 * Setuid bits and device nodes are honoured only for root, and then unless `suid`/`dev`
 * say false: undefined keeps ext4's behaviour (both honoured). The CLI, the daemon and
 * Pool.connect pass the safe defaults of fs/mount-access.ts instead.
 */
export function mountOptionsFor(layer: LayerFs, blockSizeBytes: number, extra: { allowOther?: boolean; debug?: boolean; suid?: boolean; dev?: boolean } = {}): FuseMountOptions {
  const ro = layer.readOnly;
  const root = (process.getuid?.() ?? -1) === 0;
  return {
    fsName: `dmfs:${layer.layerName}`,
    readOnly: ro,
    allowOther: extra.allowOther,
    debug: extra.debug,
    entryTimeoutS: ro ? 3600 : 1,
    // 0 for writable layers. libfuse 2's path API gives each hard link its own kernel
    // inode, so with any attribute cache another name of a file just linked, unlinked or
    // written shows the old st_nlink/st_ctime/size (tar -c then fails with "file changed
    // as we read it"). The price is a GETATTR round trip per path component per syscall
    // (default_permissions needs the directories' modes): metadata-heavy work such as
    // tar -x is several times slower than fuse-overlayfs (BENCHMARKS.md). The way out is
    // the low-level FUSE API, where all names of an inode share one kernel inode.
    attrTimeoutS: ro ? 3600 : 0,
    negativeTimeoutS: ro ? 3600 : 1,
    kernelCache: ro,
    autoCache: !ro,
    maxWriteBytes: MAX_IO_BYTES,
    blockSizeBytes,
    suid: root && extra.suid !== false,
    dev: root && extra.dev !== false,
  };
}

/** What a mount asks of file semantics beyond its cache policy. */
export interface MountSemantics {
  allowOther?: boolean;
  /** When reads move atime (access-times.ts); default relatime. */
  atime?: AtimeMode;
}

function tableSemantics(extra: MountSemantics): Pick<FuseOperationsOptions, 'atime'> {
  return { atime: extra.atime ?? 'relatime' };
}

/**
 * Cache policy of the kernel transport. Node ids are store inodes and every change of the
 * layer passes through this mount's kernel, which updates or invalidates what it cached
 * (lower layers are immutable; the store refuses a second mount of a read-write mounted
 * layer and any writer on a mounted one: LayerFs.claimMount), or comes from another mount
 * served by the same process, which then invalidates this one's caches (coherent claims,
 * onCacheInvalidator). So names and attributes are kept for
 * an hour on every layer, and so are directory listings (the kernel drops a cached
 * listing when the directory changes through it). The writeback cache stays off: with it
 * write(2) would return before the store has the data, so a full pool or the layer's size
 * limit would surface as EIO at close instead of ENOSPC/EFBIG at the write, and a killed
 * daemon would lose writes already acknowledged.
 */
export function kernelOptionsFor(layer: LayerFs, blockSizeBytes: number, onUnexpected: (err: unknown) => void, extra: MountSemantics = {}): FuseOperationsOptions {
  return {
    ...tableSemantics(extra),
    // The kernel enforces ACLs only with default_permissions, which it then imposes. As root
    // (who passes its checks) or with allow_other (which has it anyway) that takes no right
    // away; a non-root mount without allow_other lets its user do anything, and keeps that.
    posixAcl: (process.getuid?.() ?? -1) === 0 || extra.allowOther === true,
    blockSizeBytes,
    entryTimeoutS: 3600,
    attrTimeoutS: 3600,
    negativeTimeoutS: 3600,
    keepCache: true,
    writebackCache: false,
    cacheDirs: true,
    onUnexpected,
  };
}

/**
 * The table's options under libfuse 2: the cache policy of mountOptionsFor (libfuse 2 tells
 * the kernel through mount options, not per reply). No page cache or listing is kept
 * across opens of a writable layer: each hard link is its own kernel inode there.
 */
export function libfuse2OptionsFor(o: FuseMountOptions, onUnexpected: (err: unknown) => void, extra: MountSemantics = {}): FuseOperationsOptions {
  return {
    ...tableSemantics(extra),
    blockSizeBytes: o.blockSizeBytes,
    entryTimeoutS: o.entryTimeoutS,
    attrTimeoutS: o.attrTimeoutS,
    negativeTimeoutS: o.negativeTimeoutS,
    keepCache: o.kernelCache,
    writebackCache: false,
    cacheDirs: false,
    onUnexpected,
  };
}

export class MountService {
  readonly stopped: Promise<StopResult>;
  private resolveStopped!: (r: StopResult) => void;
  private stopping: Promise<StopResult> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private mountId: number | null = null;

  private constructor(
    readonly layer: LayerFs,
    readonly mountpoint: string,
    private readonly ops: ServedOperations,
    private fuse: FuseSessionHandle | null,
    /** 'kernel' or 'libfuse2': the transport serving this mount. */
    readonly transport: 'kernel' | 'libfuse2',
    private readonly log: (line: string) => void,
  ) {
    this.stopped = new Promise((r) => (this.resolveStopped = r));
  }

  /** Mounts and returns once the mount is live. On failure nothing stays mounted; the layer stays open (the caller's). */
  static async start(opts: MountServiceOptions): Promise<MountService> {
    // Registered in the store before the kernel sees the mount (LayerFs.claimMount): a
    // second mount of a read-write mounted layer, or a mount of a layer written elsewhere,
    // is refused with LAYER_IN_USE, whoever mounts (CLI, mount.dmfs, this API).
    await opts.layer.claimMount?.(opts.mountpoint);
    try {
      return await MountService.startClaimed(opts);
    } catch (err) {
      await opts.layer.releaseMount?.(opts.mountpoint).catch(() => undefined);
      throw err;
    }
  }

  private static async startClaimed(opts: MountServiceOptions): Promise<MountService> {
    const log = opts.log ?? (() => undefined);
    const statfs = await opts.layer.statfs();
    const fuseOpts = mountOptionsFor(opts.layer, statfs.blockSizeBytes, { allowOther: opts.allowOther, debug: opts.debug, suid: opts.suid, dev: opts.dev });
    const onUnexpected = (err: unknown) => log(`unexpected error answered as ${-negErrno(err)}: ${(err as Error)?.stack ?? String(err)}`);
    const wanted = opts.transport ?? transportFromEnv();
    const choice = chooseTransport(wanted, { debug: opts.debug });
    // eslint-disable-next-line prefer-const
    let service: MountService | undefined;
    let served: { ops: ServedOperations; fuse: FuseSessionHandle; transport: 'kernel' | 'libfuse2' } | null = null;
    let kernelFailure: string | null = null;
    if (choice.transport === 'kernel') {
      const table = createFuseOperations(opts.layer, kernelOptionsFor(opts.layer, statfs.blockSizeBytes, onUnexpected, opts));
      const kernel = createKernelTransport(table, { onUnexpected });
      try {
        const session = await KernelSession.mount(opts.mountpoint, kernel, {
          source: fuseOpts.fsName,
          readOnly: fuseOpts.readOnly,
          allowOther: fuseOpts.allowOther,
          suid: Boolean(fuseOpts.suid),
          dev: Boolean(fuseOpts.dev),
        }, onUnexpected);
        session.onEnded = () => queueMicrotask(() => service?.checkSession());
        kernel.notifyTo(session);
        opts.onCacheInvalidator?.((edits) => kernel.invalidate(edits));
        served = { ops: { table, requestCounts: kernel.requestCounts, negotiatedFlags: kernel.negotiatedFlags }, fuse: session, transport: 'kernel' };
      } catch (err) {
        // 'auto' still has fuse-native: e.g. no mount(8), or root without CAP_SYS_ADMIN in a
        // container, where fusermount may still mount (MOUNT_FAILED). Not after
        // FUSE_UNAVAILABLE: the host lacks what libfuse 2 needs as well (/dev/fuse, a setuid
        // fusermount, user_allow_other), and its error says so first-hand.
        if (wanted === 'kernel' || !isDmfsError(err) || err.code === 'FUSE_UNAVAILABLE') throw err;
        kernelFailure = err.message;
        log(`kernel FUSE transport failed (${err.message}); using libfuse 2`);
      }
    } else if (wanted === 'auto') {
      log(`using libfuse 2: ${choice.reason}`);
    }
    if (!served) {
      const table = createFuseOperations(opts.layer, libfuse2OptionsFor(fuseOpts, onUnexpected, opts));
      try {
        served = { ops: { table }, fuse: await FuseMount.mount(opts.mountpoint, createPathTransport(table), fuseOpts, onUnexpected), transport: 'libfuse2' };
      } catch (err) {
        // Both transports failed: say why each did (the kernel one's reason is often the real one).
        if (kernelFailure && isDmfsError(err)) throw dmfsError(err.code, `${err.message}; the kernel transport failed first: ${kernelFailure}`, err);
        throw err;
      }
    }
    const { ops, fuse, transport } = served;
    service = new MountService(opts.layer, opts.mountpoint, ops, fuse, transport, log);
    try {
      const entries = (await readMountTable()).filter((m) => m.mountpoint === opts.mountpoint && m.fstype === FUSE_FSTYPE);
      service.mountId = entries.length ? entries[entries.length - 1].mountId : null;
      if (entries.length) await raiseReadAhead(entries[entries.length - 1].device, log);
    } catch (err) {
      await unmountFuse(opts.mountpoint, { lazy: true }).catch(() => undefined);
      fuse.detach();
      throw err;
    }
    log(`mounted layer ${opts.layer.layerName} at ${opts.mountpoint} (${opts.layer.readOnly ? 'read-only' : 'read-write'}, ${transport} transport)`);
    service.watch(opts.watchIntervalMs);
    return service;
  }

  /**
   * Serves a kernel-transport mount that another process mounted and whose device
   * descriptor this one was handed (`handoff`: a daemon worker restarted by its
   * supervisor): no mount, no INIT; requests the previous server read and never answered
   * are asked for again (KernelSession.adopt). Claims the mount in the store first, like
   * start(); on failure the descriptor is the caller's to close.
   */
  static async adopt(opts: MountServiceOptions & { handoff: KernelHandoff }): Promise<{ service: MountService; resent: boolean }> {
    const log = opts.log ?? (() => undefined);
    await opts.layer.claimMount?.(opts.mountpoint);
    try {
      const statfs = await opts.layer.statfs();
      const onUnexpected = (err: unknown) => log(`unexpected error answered as ${-negErrno(err)}: ${(err as Error)?.stack ?? String(err)}`);
      const table = createFuseOperations(opts.layer, kernelOptionsFor(opts.layer, statfs.blockSizeBytes, onUnexpected));
      const kernel = createKernelTransport(table, { onUnexpected });
      kernel.adoptInit(opts.handoff.initFlags);
      const { session, resent } = KernelSession.adopt(opts.handoff.fd, kernel, onUnexpected);
      kernel.notifyTo(session);
      opts.onCacheInvalidator?.((edits) => kernel.invalidate(edits));
      const service = new MountService(opts.layer, opts.mountpoint, { table, requestCounts: kernel.requestCounts, negotiatedFlags: kernel.negotiatedFlags }, session, 'kernel', log);
      session.onEnded = () => queueMicrotask(() => service.checkSession());
      const entries = (await readMountTable()).filter((m) => m.mountpoint === opts.mountpoint && m.fstype === FUSE_FSTYPE);
      service.mountId = entries.length ? entries[entries.length - 1].mountId : null;
      log(`took over layer ${opts.layer.layerName} at ${opts.mountpoint} (${opts.layer.readOnly ? 'read-only' : 'read-write'}; unanswered requests ${resent ? 'asked for again' : 'NOT resent: the kernel lacks FUSE_NOTIFY_RESEND'})`);
      service.watch(opts.watchIntervalMs);
      return { service, resent };
    } catch (err) {
      await opts.layer.releaseMount?.(opts.mountpoint).catch(() => undefined);
      throw err;
    }
  }

  /** The device and INIT flags another process needs to take this mount over; null for libfuse 2 or before INIT. */
  kernelHandoff(): KernelHandoff | null {
    const fd = this.fuse?.deviceFd;
    const initFlags = this.ops.negotiatedFlags?.() ?? null;
    return this.transport === 'kernel' && fd !== undefined && fd >= 0 && initFlags !== null ? { fd, initFlags } : null;
  }

  private watch(intervalMs = 1000): void {
    this.timer = setInterval(() => this.checkSession(), intervalMs);
    this.timer.unref();
  }

  get openHandles(): number {
    return this.ops.table.openHandles;
  }

  private async isMounted(): Promise<boolean> {
    const table = await readMountTable();
    return table.some((m) => (this.mountId !== null ? m.mountId === this.mountId : m.mountpoint === this.mountpoint && m.fstype === FUSE_FSTYPE));
  }

  /** The session ends when the kernel connection goes: after `umount`/`fusermount -u` (a lazy one: once the last file is closed). */
  checkSession(): void {
    if (!this.stopping && this.fuse?.ended) void this.stop('unmounted');
  }

  private async waitSessionEnd(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.fuse && !this.fuse.ended) {
      if (Date.now() >= deadline) return false;
      await new Promise((r) => setTimeout(r, 10));
    }
    return true;
  }

  /**
   * Unmounts (lazily if files are still open, like libfuse on SIGTERM), then releases the
   * handles, syncs and closes the layer. Idempotent; resolves with the outcome.
   */
  stop(reason = 'stop requested'): Promise<StopResult> {
    if (!this.stopping) this.stopping = this.doStop(reason);
    return this.stopping;
  }

  private async doStop(reason: string): Promise<StopResult> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    let error: Error | null = null;
    try {
      if (!this.fuse?.ended && (await this.isMounted())) {
        let lazy = false;
        try {
          await unmountFuse(this.mountpoint);
        } catch (err) {
          if (!isDmfsError(err, 'LAYER_IN_USE')) throw err;
          this.log(`${this.mountpoint} is busy: detaching lazily; files still open there lose access`);
          await unmountFuse(this.mountpoint, { lazy: true });
          lazy = true;
        }
        // After a normal unmount the session ends at once; let in-flight requests finish.
        if (!lazy && !(await this.waitSessionEnd(5000))) this.log('session did not end 5 s after the unmount; closing anyway');
      }
    } catch (err) {
      error = err as Error;
      this.log(`unmount failed: ${error.message}`);
    }
    this.fuse?.detach();
    this.fuse = null;
    if (this.ops.requestCounts) this.log(`FUSE requests: ${JSON.stringify(this.ops.requestCounts())}`);
    try {
      await this.ops.table.shutdown();
    } catch (err) {
      error = error ?? (err as Error);
      this.log(`final sync failed: ${(err as Error).message}`);
    }
    try {
      await this.layer.close();
    } catch (err) {
      error = error ?? (err as Error);
      this.log(`closing layer failed: ${(err as Error).message}`);
    }
    this.log(`unmounted ${this.mountpoint} (${reason})${error ? `: ${error.message}` : ''}`);
    const result = { reason, error };
    this.resolveStopped(result);
    return result;
  }

  /** SIGINT/SIGTERM stop the service; SIGHUP is ignored (a daemon has no terminal). Returns the remover. */
  installSignalHandlers(): () => void {
    return onStopSignals((sig) => {
      if (this.stopping) {
        this.log(`${sig}: already stopping`);
        return;
      }
      void this.stop(sig);
    });
  }
}
