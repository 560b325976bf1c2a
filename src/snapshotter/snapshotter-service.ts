/**
 * dmfs as a containerd proxy snapshotter: containerd.services.snapshots.v1.Snapshots on a
 * unix socket, over an opened layer store, mounting through a SnapshotMountHost.
 *
 *   containerd ──gRPC──▶ SnapshotterService ──▶ SnapshotCatalog (store: layers + labels)
 *                                 └──────────▶ SnapshotMountHost (one FUSE mount per
 *                                              active/view snapshot, under mountsDir)
 *
 * Mounts answers a bind mount of the snapshot's own dmfs mount (`rbind`, `rw`/`ro`): dmfs
 * does the copy-on-write, so nothing goes on top. A snapshot is mounted when it is prepared
 * (containerd mounts what Prepare answers at once) and again on demand after a restart of
 * this service; it is unmounted before Commit and Remove.
 *
 * Fast unpack (the remote-snapshotter protocol): a Prepare labelled
 * `containerd.io/snapshot.ref=CHAINID` for a layer the pool holds already answers
 * ALREADY_EXISTS after making the committed snapshot (SnapshotCatalog.committedForRef), so
 * containerd neither downloads nor unpacks that layer.
 *
 * Concurrency: changes (and the mounts they make or undo) run one at a time; Stat, List and
 * Usage read the store as they find it.
 *
 * Hosting: `start()` with any opened store and mount host. `dmfs snapshotter` hosts it in
 * its own process (StoreMountHost); the pool's daemon hosts it beside its other mounts
 * (hosted-snapshotter.ts, the daemon's ServiceMounts), where its mounts survive a restart of
 * the daemon's worker: the new worker has them live before the service starts again, and
 * the mount host leaves a live mount as it is.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { dmfsError, isDmfsError } from '../errors';
import { poolPaths } from '../pool/pool-paths';
import type { LayerStore } from '../store/layer-store';
import { snapshotFilter } from './list-filters';
import { SnapshotCatalog } from './snapshot-catalog';
import { layerNameForKey, type SnapshotInfo } from './snapshot-records';
import { bindMount, grpcError, snapshotsServiceDefinition, wireInfo, type WireInfo, type WireMount } from './snapshots-proto';

/**
 * Mounts layers of the store for the snapshotter. `mount` resolves once the mount is live,
 * and is idempotent: on a mountpoint it serves already (still live) it does nothing, so the
 * service asks again on every Mounts and a mount that went away comes back. It creates the
 * mountpoint directory, and first detaches a dead mount left there by a process that died.
 */
export interface SnapshotMountHost {
  mount(layerName: string, mountpoint: string, opts: { readOnly: boolean }): Promise<void>;
  /** Flushes and unmounts; resolves once the layer is closed. */
  unmount(mountpoint: string): Promise<void>;
}

export interface SnapshotterServiceOptions {
  store: LayerStore;
  mountHost: SnapshotMountHost;
  /** Where snapshots are mounted (one directory per layer id); created mode 0700 and kept so. */
  mountsDir: string;
  /** The unix socket to listen on; a stale socket file there is replaced. */
  socketPath: string;
  log?: (line: string) => void;
  /** One log line per answered request, with its duration (DMFS_SNAPSHOTTER_TRACE=1 for `dmfs snapshotter`). */
  traceRequests?: boolean;
}

/** The gRPC metadata header carrying containerd's namespace. */
const NAMESPACE_HEADER = 'containerd-namespace';
/** Snapshots per List message. */
const LIST_BATCH = 100;

type Unary<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>, callback: grpc.sendUnaryData<Res>) => void;

export class SnapshotterService {
  private readonly catalog: SnapshotCatalog;
  /** Layer name → mountpoint of the live mounts this service made. */
  private readonly mounted = new Map<string, string>();
  private queue: Promise<unknown> = Promise.resolve();
  /** Removals answered but not done yet (unmount, then the layer), one at a time in the order asked. */
  private removals: Promise<unknown> = Promise.resolve();
  private readonly log: (line: string) => void;

  private constructor(private readonly opts: SnapshotterServiceOptions, private readonly server: grpc.Server) {
    this.catalog = new SnapshotCatalog(opts.store);
    this.log = opts.log ?? (() => undefined);
  }

  /** Listens on opts.socketPath and mounts the active and view snapshots the pool holds. */
  static async start(opts: SnapshotterServiceOptions): Promise<SnapshotterService> {
    const server = new grpc.Server();
    const service = new SnapshotterService(opts, server);
    await fsp.mkdir(opts.mountsDir, { recursive: true, mode: 0o700 });
    await fsp.chmod(opts.mountsDir, 0o700);
    await service.mountExisting();
    server.addService(snapshotsServiceDefinition(), service.handlers());
    await fsp.mkdir(path.dirname(opts.socketPath), { recursive: true, mode: 0o700 });
    await removeStaleSocket(opts.socketPath);
    await new Promise<void>((resolve, reject) => {
      server.bindAsync(`unix://${opts.socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(dmfsError('IO_ERROR', `cannot listen on ${opts.socketPath}: ${err.message}`, err)) : resolve()));
    });
    await fsp.chmod(opts.socketPath, 0o600);
    opts.log?.(`containerd snapshotter listening on ${opts.socketPath}`);
    return service;
  }

  get socketPath(): string {
    return this.opts.socketPath;
  }

  /** How many snapshots this service has mounted (active and view snapshots in use). */
  get mountCount(): number {
    return this.mounted.size;
  }

  /** Stops answering, finishes pending removals, then unmounts every snapshot (flushing each). */
  async stop(): Promise<void> {
    await new Promise<void>((resolve) => this.server.tryShutdown(() => resolve()));
    await this.settled();
    await this.serial(async () => {
      for (const [layer, mp] of [...this.mounted]) {
        await this.opts.mountHost.unmount(mp).catch((err) => this.log(`unmounting ${mp} failed: ${(err as Error).message}`));
        this.mounted.delete(layer);
      }
    });
    await fsp.rm(this.opts.socketPath, { force: true });
  }

  private async mountExisting(): Promise<void> {
    for (const layer of await this.catalog.pendingRemovals()) await this.finishRemoval(layer);
    for (const s of await this.catalog.list()) {
      if (s.kind === 'committed') continue;
      try {
        await this.ensureMounted(s);
      } catch (err) {
        this.log(`snapshot ${s.key} not mounted at start: ${(err as Error).message}`);
      }
    }
  }

  private mountpointOf(s: SnapshotInfo): string {
    return path.join(this.opts.mountsDir, String(s.layerId));
  }

  private async ensureMounted(s: SnapshotInfo): Promise<WireMount[]> {
    if (s.kind === 'committed') throw dmfsError('WRONG_LAYER_KIND', `snapshot ${s.key} is committed: only active and view snapshots have mounts`);
    const readOnly = s.kind === 'view';
    const mp = this.mounted.get(s.layerName) ?? this.mountpointOf(s);
    await this.opts.mountHost.mount(s.layerName, mp, { readOnly });
    this.mounted.set(s.layerName, mp);
    return bindMount(mp, readOnly);
  }

  private async unmountIfMounted(s: SnapshotInfo): Promise<void> {
    const mp = this.mounted.get(s.layerName);
    if (mp === undefined) return;
    await this.opts.mountHost.unmount(mp);
    this.mounted.delete(s.layerName);
    await fsp.rmdir(mp).catch(() => undefined);
  }

  /** Runs changes one at a time, in arrival order. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  // ---- the RPCs ------------------------------------------------------------------

  private async prepare(kind: 'active' | 'view', ns: string, req: { key: string; parent: string; labels: Record<string, string> }): Promise<{ mounts: WireMount[] }> {
    return this.serial(async () => {
      const request = { kind, key: req.key, parent: req.parent, namespace: ns, labels: req.labels ?? {} };
      if (await this.catalog.find(req.key)) throw dmfsError('LAYER_EXISTS', `snapshot ${req.key} already exists`);
      // The key is used again before its old layer went: finish that removal now (never wait
      // on the removal queue here: a queued clean-up waits on this very queue).
      if (await this.catalog.isPendingRemoval(req.key)) await this.finishRemoval(layerNameForKey(req.key));
      const existing = await this.catalog.committedForRef(request);
      if (existing) throw dmfsError('LAYER_EXISTS', `target snapshot ${existing.key} exists: the pool holds layer ${request.labels['containerd.io/snapshot.ref']} already`);
      const s = await this.catalog.create(request);
      try {
        return { mounts: await this.ensureMounted(s) };
      } catch (err) {
        await this.catalog.remove(s.key).then((l) => this.catalog.finishRemoval(l)).catch(() => undefined);
        throw err;
      }
    });
  }

  private async commit(ns: string, req: { name: string; key: string; labels: Record<string, string> }): Promise<void> {
    await this.serial(async () => {
      const s = await this.catalog.get(req.key);
      if (s.kind !== 'active') throw dmfsError('WRONG_LAYER_KIND', `snapshot ${req.key} is ${s.kind}, not active: only an active snapshot can be committed`);
      if (await this.catalog.find(req.name)) throw dmfsError('LAYER_EXISTS', `snapshot ${req.name} already exists`);
      await this.unmountIfMounted(s);
      await this.catalog.commit(req.name, req.key, req.labels ?? {}, ns);
    });
  }

  /**
   * Answers once the snapshot is gone for containerd (its record is a removal mark); the
   * unmount and the layer's removal follow in the background, in order, so a `ctr run
   * --rm` or containerd's garbage collector does not wait on them (settled() does).
   */
  private async remove(key: string): Promise<void> {
    await this.serial(async () => {
      const layerName = await this.catalog.remove(key);
      const next = this.removals.then(() => this.finishRemoval(layerName));
      this.removals = next.catch(() => undefined);
    });
  }

  private async finishRemoval(layerName: string): Promise<void> {
    try {
      const mp = this.mounted.get(layerName);
      if (mp !== undefined) {
        await this.opts.mountHost.unmount(mp);
        this.mounted.delete(layerName);
        await fsp.rmdir(mp).catch(() => undefined);
      }
      const parent = await this.catalog.finishRemoval(layerName);
      if (parent && (await this.catalog.isMarkedForRemoval(parent))) await this.finishRemoval(parent);
    } catch (err) {
      if (isDmfsError(err, 'LAYER_HAS_CHILDREN')) return; // its last child finishes it
      this.log(`removing layer ${layerName} failed (Cleanup tries again): ${(err as Error).message}`);
    }
  }

  /**
   * Frees what nothing refers to: layers whose removal is pending (a Remove not finished, a
   * crash between a Remove and its removal), then mounts and mount directories no snapshot
   * owns. containerd's garbage collector calls Cleanup while it holds its metadata lock, so
   * this answers at once and the work runs after the pending removals (see settled()).
   */
  private cleanup(): void {
    const next = this.removals.then(async () => {
      for (const layer of await this.catalog.pendingRemovals()) await this.finishRemoval(layer);
      await this.serial(() => this.removeStaleMounts());
    });
    this.removals = next.catch((err) => this.log(`cleanup failed: ${(err as Error).message}`));
  }

  private async removeStaleMounts(): Promise<void> {
    const live = new Set((await this.catalog.list()).map((s) => String(s.layerId)));
    for (const [layer, mp] of [...this.mounted]) {
      if (!live.has(path.basename(mp))) {
        await this.opts.mountHost.unmount(mp).catch((err) => this.log(`unmounting ${mp} failed: ${(err as Error).message}`));
        this.mounted.delete(layer);
      }
    }
    for (const entry of await fsp.readdir(this.opts.mountsDir)) {
      if (!live.has(entry)) await fsp.rmdir(path.join(this.opts.mountsDir, entry)).catch((err) => this.log(`cannot remove ${entry}: ${(err as Error).message}`));
    }
  }

  /** Resolves once the removals and clean-ups answered so far are done. */
  async settled(): Promise<void> {
    let seen: Promise<unknown>;
    do {
      seen = this.removals;
      await seen;
    } while (seen !== this.removals);
  }

  private handlers(): grpc.UntypedServiceImplementation {
    const ns = (call: { metadata: grpc.Metadata }): string => String(call.metadata.get(NAMESPACE_HEADER)[0] ?? '');
    const unary = <Req, Res>(fn: (req: Req, namespace: string) => Promise<Res>): Unary<Req, Res> => (call, callback) => {
      const startNs = process.hrtime.bigint();
      fn(call.request, ns(call) || namespaceOfKey((call.request as { key?: string }).key ?? '')).then((res) => {
        if (this.opts.traceRequests) this.log(`${call.getPath().split('/').pop()} ${(call.request as { key?: string }).key ?? ''}: ${(Number(process.hrtime.bigint() - startNs) / 1e6).toFixed(1)} ms`);
        callback(null, res);
      }, (err) => {
        const e = grpcError(err);
        if (e.code === grpc.status.INTERNAL || e.code === grpc.status.UNKNOWN) this.log(`request failed: ${(err as Error)?.stack ?? String(err)}`);
        callback(e);
      });
    };
    type KeyReq = { key: string };
    type CreateReq = { key: string; parent: string; labels: Record<string, string> };
    return {
      Prepare: unary((req: CreateReq, n) => this.prepare('active', n, req)),
      View: unary((req: CreateReq, n) => this.prepare('view', n, req)),
      Mounts: unary(async (req: KeyReq) => this.serial(async () => ({ mounts: await this.ensureMounted(await this.catalog.get(req.key)) }))),
      Commit: unary(async (req: { name: string; key: string; labels: Record<string, string> }, n) => {
        await this.commit(n, req);
        return {};
      }),
      Remove: unary(async (req: KeyReq) => {
        await this.remove(req.key);
        return {};
      }),
      Stat: unary(async (req: KeyReq) => ({ info: wireInfo(await this.catalog.get(req.key)) })),
      Update: unary(async (req: { info: WireInfo | null; update_mask: { paths: string[] } | null }) => {
        if (!req.info) throw dmfsError('INVALID', 'Update needs the snapshot info');
        return this.serial(async () => ({ info: wireInfo(await this.catalog.updateLabels(req.info!.name, req.info!.labels ?? {}, req.update_mask?.paths ?? [])) }));
      }),
      Usage: unary(async (req: KeyReq) => {
        const u = await this.catalog.usage(req.key);
        return { size: u.sizeBytes, inodes: u.inodes };
      }),
      Cleanup: unary(async () => {
        this.cleanup();
        return {};
      }),
      List: (call: grpc.ServerWritableStream<{ filters: string[] }, { info: WireInfo[] }>) => {
        void (async () => {
          try {
            const keep = snapshotFilter(call.request.filters ?? []);
            const namespace = ns(call);
            const infos = (await this.catalog.list()).filter((s) => (!namespace || s.namespace === namespace || !s.namespace) && keep(s)).map(wireInfo);
            for (let i = 0; i < infos.length; i += LIST_BATCH) call.write({ info: infos.slice(i, i + LIST_BATCH) });
            call.end();
          } catch (err) {
            call.emit('error', grpcError(err)); // grpc-js ends the call with this status
          }
        })();
      },
    };
  }
}

/**
 * The namespace in a key of containerd's metadata store (`NAMESPACE/SEQ/KEY`): containerd
 * 1.6 sends no namespace header to proxy snapshotters, its keys carry it instead.
 */
export function namespaceOfKey(key: string): string {
  const m = /^([^/]+)\/\d+\//.exec(key);
  return m ? m[1] : '';
}

/** Removes a socket file nobody listens on (a previous service's); refuses a regular file there. */
async function removeStaleSocket(socketPath: string): Promise<void> {
  let st;
  try {
    st = await fsp.lstat(socketPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!st.isSocket()) throw dmfsError('EXISTS', `${socketPath} exists and is not a socket: remove it or choose another --socket`);
  const net = await import('node:net');
  const live = await new Promise<boolean>((resolve) => {
    const c = net.createConnection(socketPath);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (live) throw dmfsError('LAYER_IN_USE', `another snapshotter listens on ${socketPath}: stop it first, or choose another --socket`);
  await fsp.rm(socketPath, { force: true });
}

/**
 * Where a pool's snapshotter lives by default: the socket in the pool's run directory, the
 * snapshot mounts in `POOL/snapshots/` (0700: only root reaches a mount through it; a
 * container sees its root through containerd's bind mount).
 */
export function snapshotterPathsOf(root: string): { socketPath: string; mountsDir: string } {
  const p = poolPaths(root);
  return { socketPath: path.join(p.runDir, 'containerd-snapshotter.sock'), mountsDir: path.join(p.root, 'snapshots') };
}
