/**
 * The containerd snapshotter as a service of the pool's daemon (`dmfs daemon` hosts it by
 * default): the same SnapshotterService as `dmfs snapshotter`, on the daemon's opened pool,
 * its snapshot mounts made through the daemon (ServiceContext.mounts), so they are served,
 * listed and handed over across a worker restart like every other mount of the daemon.
 *
 * A worker that replaces a dead one starts it again: the gRPC socket is bound anew (the
 * dead worker's socket file, which nobody answers on, is replaced) and every active and view
 * snapshot is found mounted already (taken over before services start), so a running
 * container keeps its root file system and containerd reconnects to the same path.
 */
import type { HostedService, ServiceContext } from '../service/hosted-services';
import { SnapshotterService, snapshotterPathsOf } from './snapshotter-service';

/** The service's name in the daemon (status, control API). */
export const SNAPSHOTTER_SERVICE_NAME = 'containerd-snapshotter';

export interface HostedSnapshotterOptions {
  /** The unix socket to serve on; default POOL/run/containerd-snapshotter.sock. */
  socketPath?: string | null;
  /** One log line per answered request (DMFS_SNAPSHOTTER_TRACE=1). */
  traceRequests?: boolean;
}

export class HostedSnapshotter implements HostedService {
  readonly name = SNAPSHOTTER_SERVICE_NAME;
  private service: SnapshotterService | null = null;

  constructor(private readonly opts: HostedSnapshotterOptions = {}) {}

  async start(ctx: ServiceContext): Promise<void> {
    const defaults = snapshotterPathsOf(ctx.pool.root);
    this.service = await SnapshotterService.start({
      store: ctx.pool.store,
      mountHost: ctx.mounts,
      mountsDir: defaults.mountsDir,
      socketPath: this.opts.socketPath ?? defaults.socketPath,
      log: (line) => ctx.log(`snapshotter: ${line}`),
      traceRequests: this.opts.traceRequests ?? false,
    });
  }

  async stop(): Promise<void> {
    const service = this.service;
    this.service = null;
    await service?.stop();
  }

  detail(): Record<string, unknown> {
    return this.service ? { socket: this.service.socketPath, snapshotMounts: this.service.mountCount } : {};
  }
}
