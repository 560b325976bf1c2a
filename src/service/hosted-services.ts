/**
 * Services the pool daemon hosts on its opened pool (the containerd snapshotter, ...): each
 * is started with the daemon (PoolDaemonOptions.startServices) or by name through the
 * control API, stopped by name, and stopped before the pool closes. A service owns no pool
 * of its own: it gets the daemon's, and mounts through the daemon (ServiceContext).
 */
import type { Pool } from '../api';
import { dmfsError } from '../errors';
import type { ServiceStatus } from './control-protocol';

export interface ServiceContext {
  pool: Pool;
  /** The daemon's log (one line per call). */
  log: (line: string) => void;
  /** Mounts the service makes for its clients, served by the daemon beside its other mounts. */
  mounts: ServiceMounts;
}

/**
 * How a hosted service mounts layers (PoolHost.serviceMounts): each mount is served,
 * recorded and reported to the daemon's supervisor like a mount the CLI asked for, so a
 * worker that replaces a dead one serves it on (it is live again before the service
 * starts in the new worker). For a container's root file system, unlike `dmfs mount`:
 * the mountpoint lies in a directory of the pool that only the pool's owner can enter
 * (mode 0700, checked), setuid bits and device nodes are honoured as root, and
 * allow_other,default_permissions let a container's users in.
 */
export interface ServiceMounts {
  /**
   * Resolves once the layer is live at the mountpoint. Idempotent: a mountpoint this daemon
   * serves already with that layer and mode (and still live) is left as it is; one serving
   * something else is unmounted first. A dead mount left there is detached; a missing
   * mountpoint is created.
   */
  mount(layerName: string, mountpoint: string, opts: { readOnly: boolean }): Promise<void>;
  /** Unmounts (lazily where files are open), syncs and closes the layer; nothing to do for a mountpoint not served. */
  unmount(mountpoint: string): Promise<void>;
}

/** A service the daemon can host. start() resolves once it serves; stop() once it has let go of the pool. */
export interface HostedService {
  readonly name: string;
  start(ctx: ServiceContext): Promise<void>;
  stop(): Promise<void>;
  /** What it reports of itself in `dmfs daemon status` (addresses, counts). */
  detail?(): Record<string, unknown>;
}

interface Entry {
  service: HostedService;
  state: ServiceStatus['state'];
  error: string | null;
}

export class HostedServices {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly ctx: ServiceContext) {}

  /** Makes a service known (stopped); a second one of the same name is refused. */
  register(service: HostedService): void {
    if (!/^[a-z][a-z0-9-]{0,62}$/.test(service.name)) throw dmfsError('INVALID', `service name '${service.name}' must be lower-case letters, digits and dashes`);
    if (this.entries.has(service.name)) throw dmfsError('EXISTS', `a service named '${service.name}' is already registered`);
    this.entries.set(service.name, { service, state: 'stopped', error: null });
  }

  list(): ServiceStatus[] {
    return [...this.entries.keys()].map((name) => this.status(name));
  }

  status(name: string): ServiceStatus {
    const e = this.entry(name);
    return { name, state: e.state, error: e.error, detail: e.state === 'running' ? e.service.detail?.() ?? {} : {} };
  }

  async start(name: string): Promise<ServiceStatus> {
    const e = this.entry(name);
    if (e.state === 'running' || e.state === 'starting') return this.status(name);
    if (e.state === 'stopping') throw dmfsError('LAYER_IN_USE', `service '${name}' is stopping; start it again once it has stopped`);
    e.state = 'starting';
    try {
      await e.service.start(this.ctx);
      e.state = 'running';
      e.error = null;
      this.ctx.log(`service ${name} started`);
    } catch (err) {
      e.state = 'failed';
      e.error = (err as Error).message;
      this.ctx.log(`service ${name} failed to start: ${e.error}`);
      throw err;
    }
    return this.status(name);
  }

  async stop(name: string): Promise<ServiceStatus> {
    const e = this.entry(name);
    if (e.state !== 'running' && e.state !== 'failed') return this.status(name);
    e.state = 'stopping';
    try {
      await e.service.stop();
      e.state = 'stopped';
      this.ctx.log(`service ${name} stopped`);
    } catch (err) {
      e.state = 'failed';
      e.error = (err as Error).message;
      this.ctx.log(`service ${name} failed to stop: ${e.error}`);
      throw err;
    }
    return this.status(name);
  }

  /** Stops every running service; failures are logged, not thrown (the pool closes next). */
  async stopAll(): Promise<void> {
    for (const name of this.entries.keys()) await this.stop(name).catch(() => undefined);
  }

  private entry(name: string): Entry {
    const e = this.entries.get(name);
    if (!e) throw dmfsError('NOT_FOUND', `no service named '${name}' (known: ${[...this.entries.keys()].join(', ') || 'none'})`);
    return e;
  }
}
