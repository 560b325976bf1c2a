/**
 * One opened pool serving many mounts from one process: the heart of `dmfs daemon`, and
 * what Pool.connect gives when no daemon runs. Every mount shares the pool's LMDB
 * environment, caches and buffers; each is a MountService over a layer opened from the
 * one store, recorded in the pool's run directory like a mount process's (with
 * servedByDaemon, so nothing signals this process to end one mount).
 *
 * Coherent mounts: the mounts of one layer here (one read-write plus any number of
 * read-only ones, or read-only ones alone) are served from the layer's one open LayerFs,
 * each through a handle of a SharedLayer (store/shared-layer.ts). A change made through
 * one mount reaches the store at once, and the others' kernel caches are invalidated
 * (FUSE notifications, kernel-transport.ts), so every mount shows it. That needs every
 * mount of a shared layer on the kernel transport: libfuse 2's binding sends no
 * notifications, so a layer mounted through it has no second mount here. A read-write
 * mount joins only a layer opened for writing: after read-only mounts of a container it
 * is refused until they are unmounted (TODO: reopen the layer for writing under the
 * read-only mounts, once someone needs that order).
 *
 * Public methods validate their request (it may come from the control socket as JSON);
 * a mountpoint being mounted or unmounted is busy to a second call until the first ends,
 * and mounts of one layer are made one at a time (they share its open LayerFs).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Pool } from '../api';
import { dmfsError, isDmfsError } from '../errors';
import { mountAccessFor } from '../fs/mount-access';
import { MountService, type MountServiceOptions } from '../fs/mount-service';
import { findMount, mountRunPaths, probeMountpoint, removeFile, unmountFuse, writeMountRecord } from '../fs/mount-table';
import { assertMountpointOutsidePool, prepareMountpoint } from '../fs/mountpoint-prep';
import { poolPaths } from '../pool/pool-paths';
import { currentProcess } from '../pool/process-identity';
import type { LayerFs, LayerInfo } from '../store/layer-store';
import { SharedLayer, type LayerEdit } from '../store/shared-layer';
import type { CreateLayerRequest, MountRequest, MountResult, ServedMount, UnmountRequest, UnmountResult } from './control-protocol';
import { HostedServices, type ServiceMounts } from './hosted-services';
import type { PoolClient } from './pool-client';

interface HostedMount {
  service: MountService;
  layer: string;
  readOnly: boolean;
  startedMs: number;
}

/** A layer open here with the mounts served from it (mountpoint -> read-only?, transport). */
interface LayerShare {
  shared: SharedLayer;
  mounts: Map<string, { readOnly: boolean; transport: 'kernel' | 'libfuse2' }>;
}

/** A handle on a layer for one mount, and where that mount's cache invalidator goes. */
interface MountLayer {
  layer: LayerFs;
  share: LayerShare;
  /** Other mounts of the layer are served here: this one must be on the kernel transport. */
  joined: boolean;
  setInvalidator: (invalidate: (edits: readonly LayerEdit[]) => void) => void;
}

export interface PoolHostOptions {
  log?: (line: string) => void;
  /** The log file lines go to (shown in mount results), if any. */
  logFile?: string | null;
  /** This host is the pool's daemon (mount results say so). */
  daemon?: boolean;
  /**
   * Told of every kernel-transport mount once it serves (before the mount's caller hears of
   * it) and of its end: the daemon's supervisor keeps the descriptors (worker-link.ts).
   */
  onServed?: (m: HandedOverMount) => Promise<void>;
  onReleased?: (mountpoint: string) => void;
}

/** A mount as a restarted worker takes it over: what it serves and how the kernel was set up. */
export interface HandedOverMount {
  layer: string;
  mountpoint: string;
  readOnly: boolean;
  fd: number;
  initFlags: number;
}

/** How long a normal unmount waits for the session to end before closing anyway. */
const SESSION_END_TIMEOUT_MS = 5000;

function atimeOf(v: unknown): 'relatime' | 'strictatime' | 'noatime' {
  if (v === undefined) return 'relatime';
  if (v === 'relatime' || v === 'strictatime' || v === 'noatime') return v;
  throw dmfsError('USAGE', `atime must be relatime, strictatime or noatime, not ${JSON.stringify(v)}`);
}

function requireString(v: unknown, what: string): string {
  if (typeof v !== 'string' || v === '') throw dmfsError('USAGE', `${what} must be a non-empty string`);
  return v;
}

function optionalBoolean(v: unknown, what: string): boolean | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw dmfsError('USAGE', `${what} must be true or false`);
  return v;
}

function requireAbsolute(v: unknown, what: string): string {
  const p = requireString(v, what);
  if (!path.isAbsolute(p)) throw dmfsError('USAGE', `${what} must be an absolute path, got '${p}'`);
  return path.resolve(p);
}

export class PoolHost implements PoolClient {
  readonly viaDaemon = false;
  readonly services: HostedServices;
  readonly startedMs = Date.now();
  private readonly mounts = new Map<string, HostedMount>();
  /** Layers open for mounts, by layer name (see Coherent mounts above). */
  private readonly shares = new Map<string, LayerShare>();
  /** The mount of each layer under way, which the next one waits for. */
  private readonly layerTurns = new Map<string, Promise<void>>();
  /** Mountpoints with a mount or unmount under way. */
  private readonly busy = new Set<string>();
  private closing: Promise<void> | null = null;
  private readonly log: (line: string) => void;
  /** The mounts hosted services make (see ServiceMounts for how they differ from mount()'s). */
  readonly serviceMounts: ServiceMounts = {
    mount: (layerName, mountpoint, opts) => this.serviceMount(layerName, mountpoint, opts),
    unmount: (mountpoint) => this.serviceUnmount(mountpoint),
  };

  private constructor(readonly pool: Pool, private readonly opts: PoolHostOptions) {
    this.log = opts.log ?? (() => undefined);
    this.services = new HostedServices({ pool, log: this.log, mounts: this.serviceMounts });
  }

  static async open(root: string, opts: PoolHostOptions = {}): Promise<PoolHost> {
    return new PoolHost(await Pool.open(root), opts);
  }

  get root(): string {
    return this.pool.root;
  }

  async createLayer(req: CreateLayerRequest): Promise<LayerInfo> {
    this.assertOpen();
    const name = requireString(req?.name, 'name');
    const kind = req.kind ?? 'container';
    if (kind !== 'container' && kind !== 'image') throw dmfsError('USAGE', `kind must be 'container' or 'image', got '${String(kind)}'`);
    if (req.sizeLimitBytes !== undefined && !(Number.isSafeInteger(req.sizeLimitBytes) && req.sizeLimitBytes > 0)) {
      throw dmfsError('USAGE', 'sizeLimitBytes must be a positive integer');
    }
    const labels = req.labels ?? {};
    if (typeof labels !== 'object' || Object.values(labels).some((v) => typeof v !== 'string')) throw dmfsError('USAGE', 'labels must map names to strings');
    return this.pool.store.createLayer(name, {
      kind,
      parent: req.parent === undefined ? 'base' : requireString(req.parent, 'parent'),
      labels,
      ...(req.sizeLimitBytes !== undefined ? { sizeLimitBytes: req.sizeLimitBytes } : {}),
    });
  }

  async listLayers(): Promise<LayerInfo[]> {
    this.assertOpen();
    return this.pool.store.listLayers();
  }

  async mount(req: MountRequest): Promise<MountResult> {
    this.assertOpen();
    const layerName = requireString(req?.layer, 'layer');
    const mountpoint = requireAbsolute(req.mountpoint, 'mountpoint');
    const readOnly = optionalBoolean(req.readOnly, 'readOnly') ?? false;
    const access = mountAccessFor({
      allowOther: optionalBoolean(req.allowOther, 'allowOther'),
      suid: optionalBoolean(req.suid, 'suid'),
      dev: optionalBoolean(req.dev, 'dev'),
    });
    assertMountpointOutsidePool(this.root, mountpoint);
    this.claim(mountpoint);
    try {
      const runDir = poolPaths(this.root).runDir;
      const { recovered } = await prepareMountpoint(mountpoint, runDir);
      const service = await this.startServing(layerName, mountpoint, readOnly, { ...access, atime: atimeOf(req.atime) });
      return { layer: layerName, mountpoint, readOnly: service.layer.readOnly, pid: process.pid, log: this.opts.logFile ?? null, recovered, transport: service.transport, servedBy: this.opts.daemon ? 'daemon' : 'process' };
    } finally {
      this.busy.delete(mountpoint);
    }
  }

  private async serviceMount(layerName: string, mountpoint: string, opts: { readOnly: boolean }): Promise<void> {
    this.assertOpen();
    const name = requireString(layerName, 'layer');
    const mp = requireAbsolute(mountpoint, 'mountpoint');
    const readOnly = Boolean(opts?.readOnly);
    this.assertServiceMountpoint(mp);
    const serving = this.mounts.get(mp);
    if (serving && serving.layer === name && serving.readOnly === readOnly && (await probeMountpoint(mp)) === 'dir') return;
    if (serving) await this.serviceUnmount(mp);
    this.claim(mp);
    try {
      await prepareMountpoint(mp, poolPaths(this.root).runDir);
      // MountService's own defaults: setuid and device nodes honoured as root (a rootfs needs them).
      await this.startServing(name, mp, readOnly, { allowOther: true });
    } finally {
      this.busy.delete(mp);
    }
  }

  private async serviceUnmount(mountpoint: string): Promise<void> {
    const mp = requireAbsolute(mountpoint, 'mountpoint');
    const m = this.mounts.get(mp);
    if (!m) return;
    this.claim(mp);
    try {
      const result = await m.service.stop('unmounted by its service');
      if (result.error) throw dmfsError('IO_ERROR', `unmounting ${mp} failed: ${result.error.message}`, result.error);
    } finally {
      this.busy.delete(mp);
    }
  }

  /**
   * Opens (or joins, kept coherent with the layer's other mounts) `layerName` and serves it
   * at the prepared, claimed `mountpoint` with these MountService options; recorded and
   * handed to the supervisor by serving().
   */
  private startServing(layerName: string, mountpoint: string, readOnly: boolean, options: Pick<MountServiceOptions, 'allowOther' | 'suid' | 'dev' | 'atime'>): Promise<MountService> {
    return this.layerTurn(layerName, async () => {
      const m = await this.layerForMount(layerName, readOnly, mountpoint);
      let service: MountService;
      try {
        service = await MountService.start({
          layer: m.layer, mountpoint, ...options, log: this.log,
          ...(m.joined ? { transport: 'kernel' as const } : {}), onCacheInvalidator: m.setInvalidator,
        });
      } catch (err) {
        await m.layer.close().catch(() => undefined);
        if (m.joined && isDmfsError(err, 'FUSE_UNAVAILABLE')) {
          throw dmfsError('LAYER_IN_USE', `layer '${layerName}' is mounted elsewhere by this process; another mount of it must be kept coherent, which only the kernel FUSE transport can: ${err.message}`, err);
        }
        throw err;
      }
      try {
        await this.serving(mountpoint, layerName, service, m.share);
      } catch (err) {
        await service.stop('start-up failed');
        throw err;
      }
      return service;
    });
  }

  /** Runs `fn` once every earlier call for `layerName` has settled. */
  private async layerTurn<T>(layerName: string, fn: () => Promise<T>): Promise<T> {
    const before = this.layerTurns.get(layerName) ?? Promise.resolve();
    const run = before.then(fn);
    const settled = run.then(() => undefined, () => undefined);
    this.layerTurns.set(layerName, settled);
    try {
      return await run;
    } finally {
      if (this.layerTurns.get(layerName) === settled) this.layerTurns.delete(layerName);
    }
  }

  /**
   * A service's mountpoint lies two or more levels down in the pool, outside the pool's own
   * directories (metadata, data, run: a mount there would hide or swallow the pool's
   * files), in a real directory of this user's that nobody else can enter: that is what
   * makes setuid bits and device nodes safe to honour in it.
   */
  private assertServiceMountpoint(mountpoint: string): void {
    const pool = poolPaths(this.root);
    const poolOwn = new Set([pool.metadataDir, pool.runDir, path.dirname(pool.dataFile)].map((d) => path.basename(d)));
    const parts = path.relative(this.root, mountpoint).split(path.sep);
    if (parts.length < 2 || parts[0] === '..' || parts[0] === '' || poolOwn.has(parts[0])) {
      throw dmfsError('PATH_IN_POOL', `a service's mountpoint must lie in a directory of its own in the pool ${this.root}, not at ${mountpoint}`);
    }
    const dir = path.dirname(mountpoint);
    const st = fs.lstatSync(dir, { throwIfNoEntry: false });
    if (!st?.isDirectory() || (st.mode & 0o077) !== 0 || st.uid !== (process.getuid?.() ?? st.uid)) {
      throw dmfsError('NOT_PERMITTED', `${dir} must be a directory of this user with mode 0700 (no symlink) to hold a service's mounts`);
    }
  }

  /**
   * The layer a new mount at `mountpoint` serves: a handle on the layer's open LayerFs
   * when other mounts here serve it (refused where they could not be kept coherent), else
   * on a fresh open. LAYER_IN_USE for a second read-write mount, a read-write mount after
   * read-only ones of a container, and any mount next to one through libfuse 2.
   */
  private async layerForMount(layerName: string, readOnly: boolean, mountpoint: string): Promise<MountLayer> {
    let invalidate: ((edits: readonly LayerEdit[]) => void) | null = null;
    const onPeerEdits = (edits: readonly LayerEdit[]) => invalidate?.(edits);
    const setInvalidator = (fn: (edits: readonly LayerEdit[]) => void) => (invalidate = fn);
    const existing = this.shares.get(layerName);
    if (existing && !existing.shared.closed) {
      const others = [...existing.mounts.keys()].join(', ');
      const libfuse2 = [...existing.mounts.entries()].find(([, m]) => m.transport === 'libfuse2');
      if (libfuse2) {
        throw dmfsError('LAYER_IN_USE', `layer '${layerName}' is mounted at ${libfuse2[0]} through libfuse 2, whose binding cannot invalidate the kernel's caches of a mount: it can have no second mount. Unmount it and mount it again on the kernel FUSE transport (DMFS_FUSE_TRANSPORT=kernel for the daemon).`);
      }
      const rw = [...existing.mounts.entries()].find(([, m]) => !m.readOnly);
      if (!readOnly && rw) {
        throw dmfsError('LAYER_IN_USE', `layer '${layerName}' is mounted read-write at ${rw[0]}; a layer has one read-write mount. Mount it again with --ro: read-only mounts see its changes at once.`);
      }
      let wantReadOnly = readOnly;
      if (!readOnly && existing.shared.layer.readOnly) {
        const info = await this.pool.store.getLayer(layerName);
        if (info.kind === 'container' || info.state === 'building') {
          throw dmfsError('LAYER_IN_USE', `layer '${layerName}' is mounted read-only at ${others}; a read-write mount has to come first. Unmount those (dmfs umount MOUNTPOINT), mount it read-write, then read-only again.`);
        }
        wantReadOnly = true; // an image layer mounts read-only however asked, as on a first mount
      }
      return { layer: existing.shared.handle({ readOnly: wantReadOnly, onPeerEdits }), share: existing, joined: true, setInvalidator };
    }
    const opened = await this.pool.store.openLayer(layerName, { readOnly, mountpoint });
    const share: LayerShare = {
      shared: new SharedLayer(opened, () => {
        if (this.shares.get(layerName) === share) this.shares.delete(layerName);
      }),
      mounts: new Map(),
    };
    this.shares.set(layerName, share);
    return { layer: share.shared.handle({ readOnly: opened.readOnly, onPeerEdits }), share, joined: false, setInvalidator };
  }

  /**
   * Takes over mounts a previous worker served (their descriptors handed down by the
   * supervisor). One that cannot be served (its layer gone, ...) is detached lazily, so it
   * is not left answering ENOTCONN; its descriptor is closed.
   */
  async adoptMounts(mounts: HandedOverMount[]): Promise<void> {
    // Read-write mounts first: the read-only mounts of their layers join them (layerForMount).
    const ordered = [...mounts].sort((a, b) => Number(a.readOnly) - Number(b.readOnly));
    for (const m of ordered) {
      try {
        await this.layerTurn(m.layer, async () => {
          const ml = await this.layerForMount(m.layer, m.readOnly, m.mountpoint);
          try {
            const { service } = await MountService.adopt({ layer: ml.layer, mountpoint: m.mountpoint, handoff: { fd: m.fd, initFlags: m.initFlags }, log: this.log, onCacheInvalidator: ml.setInvalidator });
            await this.serving(m.mountpoint, m.layer, service, ml.share, true);
          } catch (err) {
            await ml.layer.close().catch(() => undefined);
            throw err;
          }
        });
      } catch (err) {
        this.log(`cannot take over ${m.mountpoint} (layer ${m.layer}): ${(err as Error).message}; detaching it`);
        try {
          fs.closeSync(m.fd);
        } catch {
          /* already closed */
        }
        if (await findMount(m.mountpoint).catch(() => null)) await unmountFuse(m.mountpoint, { lazy: true }).catch(() => undefined);
        this.opts.onReleased?.(m.mountpoint);
      }
    }
  }

  /** Records a live mount (run record, supervisor) and forgets it when it ends. */
  private async serving(mountpoint: string, layerName: string, service: MountService, share: LayerShare, adopted = false): Promise<void> {
    const record = mountRunPaths(poolPaths(this.root).runDir, mountpoint).record;
    await writeMountRecord(record, {
      version: 1, ...currentProcess(), layer: layerName, mountpoint, readOnly: service.layer.readOnly, root: this.root,
      startedMs: Date.now(), log: this.opts.logFile ?? '', servedByDaemon: true,
    });
    const handoff = service.kernelHandoff();
    if (handoff && !adopted) await this.opts.onServed?.({ layer: layerName, mountpoint, readOnly: service.layer.readOnly, ...handoff });
    this.mounts.set(mountpoint, { service, layer: layerName, readOnly: service.layer.readOnly, startedMs: Date.now() });
    share.mounts.set(mountpoint, { readOnly: service.layer.readOnly, transport: service.transport });
    void service.stopped.then(async (r) => {
      if (this.mounts.get(mountpoint)?.service === service) this.mounts.delete(mountpoint);
      this.mounts.delete(mountpoint);
      share.mounts.delete(mountpoint);
      this.opts.onReleased?.(mountpoint);
      await removeFile(record).catch(() => undefined);
      if (r.error) this.log(`${mountpoint}: ended with an error: ${r.error.message}`);
    });
  }

  async unmount(req: UnmountRequest): Promise<UnmountResult> {
    this.assertOpen();
    const mountpoint = requireAbsolute(req?.mountpoint, 'mountpoint');
    const lazy = optionalBoolean(req.lazy, 'lazy') ?? false;
    const m = this.mounts.get(mountpoint);
    if (!m) throw dmfsError('NOT_MOUNTED', `${mountpoint} is not a mount served by this process (pid ${process.pid})`);
    this.claim(mountpoint);
    try {
      // Fails with LAYER_IN_USE while files are open there, leaving the mount as it was.
      await unmountFuse(mountpoint, { lazy });
      if (lazy) return { mountpoint, layer: m.layer, pid: process.pid, recovered: false, flushed: null };
      // The session ends by itself once the kernel lets go; stop() then syncs and closes.
      const timeout = new Promise<null>((r) => setTimeout(() => r(null), SESSION_END_TIMEOUT_MS).unref());
      const result = (await Promise.race([m.service.stopped, timeout])) ?? (await m.service.stop('unmounted'));
      if (result.error) throw dmfsError('IO_ERROR', `unmounted ${mountpoint}, but the final sync failed: ${result.error.message}`, result.error);
      return { mountpoint, layer: m.layer, pid: process.pid, recovered: false, flushed: true };
    } finally {
      this.busy.delete(mountpoint);
    }
  }

  served(): ServedMount[] {
    return [...this.mounts.entries()].map(([mountpoint, m]) => ({
      layer: m.layer, mountpoint, readOnly: m.readOnly, transport: m.service.transport, startedMs: m.startedMs, openHandles: m.service.openHandles,
    }));
  }

  /**
   * Stops the hosted services, unmounts every mount (lazily where files are open: they
   * lose access, as at a mount process's SIGTERM), syncs, and closes the pool. Idempotent.
   */
  close(): Promise<void> {
    if (!this.closing) this.closing = this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    await this.services.stopAll();
    const results = await Promise.all([...this.mounts.values()].map((m) => m.service.stop('the pool is closing')));
    for (const r of results) if (r.error) this.log(`a mount ended with an error: ${r.error.message}`);
    await this.pool.close();
  }

  private claim(mountpoint: string): void {
    if (this.busy.has(mountpoint)) throw dmfsError('LAYER_IN_USE', `${mountpoint} is being mounted or unmounted; try again once that is done`);
    this.busy.add(mountpoint);
  }

  private assertOpen(): void {
    if (this.closing) throw dmfsError('POOL_LOCKED', `the pool ${this.root} is closing`);
  }
}

/** Resident and proportional set size of this process, from /proc/self/smaps_rollup (PSS null where the kernel has none). */
export function processMemory(pid: number | 'self' = 'self'): { rssBytes: number; pssBytes: number | null } {
  let rssBytes = pid === 'self' ? process.memoryUsage().rss : 0;
  let pssBytes: number | null = null;
  try {
    const text = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    const kb = (field: string) => {
      const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
      return m ? Number(m[1]) * 1024 : null;
    };
    rssBytes = kb('Rss') ?? rssBytes;
    pssBytes = kb('Pss');
  } catch {
    /* no smaps_rollup: RSS from Node only */
  }
  return { rssBytes, pssBytes };
}
