/**
 * `dmfs daemon`: one long-lived process per pool. It opens the pool once (walking the
 * metadata file first, as a mount does), serves every mount of it from that one process
 * (PoolHost) and answers the control API on POOL/run/dmfs.sock (control-server.ts).
 *
 * The socket is either its own (bound here, mode 0600; a stale socket whose daemon died is
 * replaced) or handed over by systemd's socket activation (LISTEN_FDS=1 and LISTEN_PID this
 * process: fd 3), so dmfs-daemon.socket starts the daemon at the first connection.
 * Hosted services (hosted-services.ts: the containerd snapshotter) start once the mounts
 * a previous worker served are taken over, so a restarted worker serves them again too.
 * SIGTERM/SIGINT (or POST /v1/stop) stop it: hosted services stop, every mount is
 * unmounted (lazily where files are open) and synced, the pool closes. SIGHUP is ignored.
 */
import * as fs from 'node:fs';
import type * as http from 'node:http';
import { dmfsError } from '../errors';
import { onStopSignals } from '../fs/stop-signals';
import { requireFullMetadataVerify } from '../pool/metadata-gate';
import { poolPaths } from '../pool/pool-paths';
import { DaemonClient } from './control-client';
import { CONTROL_API_VERSION, daemonRunPaths, type DaemonStatus } from './control-protocol';
import { createControlServer } from './control-server';
import type { HostedService } from './hosted-services';
import { PoolHost, processMemory, type HandedOverMount } from './pool-host';

export interface PoolDaemonOptions {
  log: (line: string) => void;
  logFile?: string | null;
  /** Services to host (registered stopped; started through the control API or startServices). */
  services?: HostedService[];
  /**
   * Names among `services` to start with the daemon, after the mounts are taken over and
   * before the control socket answers (so `dmfs daemon start` returns with them serving).
   * One that fails to start is logged and shown failed in the status; the daemon serves on.
   */
  startServices?: string[];
  /** The environment to look for a systemd socket in (default: process.env). */
  env?: NodeJS.ProcessEnv;
  /** Run as the worker of a supervisor (daemon-supervisor.ts): the mounts to take over, and where to report. */
  supervised?: SupervisedWorker;
}

export interface SupervisedWorker {
  supervisorPid: number;
  /** A listening control socket handed down (systemd's, via the supervisor); null: bind POOL/run/dmfs.sock. */
  controlFd: number | null;
  /** How many workers died before this one. */
  restarts: number;
  adopt: HandedOverMount[];
  onServed: (m: HandedOverMount) => Promise<void>;
  onReleased: (mountpoint: string) => void;
  /** Called once when this worker starts stopping for good (the supervisor then exits with it). */
  onStopping: () => void;
  /** Called once it serves (mounts taken over, control socket answering). */
  onReady: () => void;
  /** Closes the link once the worker has stopped (after its last reports are sent). */
  disconnect: () => void;
}

/** The listening socket systemd passed (socket activation), or null. */
function activationFd(env: NodeJS.ProcessEnv): number | null {
  if (env.LISTEN_PID !== String(process.pid) || env.LISTEN_FDS !== '1') return null;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  return 3;
}

export class PoolDaemon {
  readonly stopped: Promise<void>;
  private resolveStopped!: () => void;
  private stopping: Promise<void> | null = null;
  private removeSignals: () => void = () => undefined;

  private constructor(
    readonly host: PoolHost,
    private readonly server: http.Server,
    readonly socketPath: string,
    /** The socket file is ours to remove (not systemd's, which keeps listening on it). */
    private readonly ownSocket: boolean,
    private readonly log: (line: string) => void,
    private readonly supervised: SupervisedWorker | null,
  ) {
    this.stopped = new Promise((r) => (this.resolveStopped = r));
  }

  /** Opens the pool, listens, and resolves once the control API answers. POOL_LOCKED when a daemon already serves the pool. */
  static async start(root: string, opts: PoolDaemonOptions): Promise<PoolDaemon> {
    const env = opts.env ?? process.env;
    const { socket } = daemonRunPaths(root);
    const sup = opts.supervised;
    const fd = sup?.controlFd ?? activationFd(env);
    // A supervised worker leaves this to its supervisor (which checked before it started).
    if (fd === null && !sup) {
      const running = await DaemonClient.connect(root).catch(() => null);
      if (running) {
        const s = await running.status().catch(() => null);
        await running.close();
        throw dmfsError('POOL_LOCKED', `a dmfs daemon already serves the pool ${root}${s ? ` (pid ${s.pid})` : ''}; use it, or stop it first (dmfs daemon stop)`);
      }
    }
    requireFullMetadataVerify(); // a daemon lives long; walk data.mdb before LMDB opens it
    const host = await PoolHost.open(root, { log: opts.log, logFile: opts.logFile ?? null, daemon: true, onServed: sup?.onServed, onReleased: sup?.onReleased });
    try {
      // Mounts first: their callers are waiting in the kernel while the worker was away.
      if (sup?.adopt.length) await host.adoptMounts(sup.adopt);
      for (const s of opts.services ?? []) host.services.register(s);
      for (const name of opts.startServices ?? []) await host.services.start(name).catch(() => undefined); // logged by start()
      let daemon: PoolDaemon | undefined;
      const server = createControlServer({
        host,
        status: () => daemon!.status(),
        requestStop: () => void daemon!.stop('stop requested over the control socket'),
        log: opts.log,
      });
      await listen(server, fd, socket, poolPaths(root).runDir);
      daemon = new PoolDaemon(host, server, socket, fd === null, opts.log, sup ?? null);
      daemon.removeSignals = daemon.installSignalHandlers();
      sup?.onReady();
      opts.log(`serving the pool ${host.root} on ${socket} (control API ${CONTROL_API_VERSION}${fd !== null ? ', socket from systemd' : ''})`);
      return daemon;
    } catch (err) {
      await host.close().catch(() => undefined);
      throw err;
    }
  }

  status(): DaemonStatus {
    const mem = processMemory();
    return {
      api: CONTROL_API_VERSION,
      dmfs: require('../../package.json').version,
      pid: process.pid,
      root: this.host.root,
      startedMs: this.host.startedMs,
      uptimeSeconds: Math.round((Date.now() - this.host.startedMs) / 100) / 10,
      rssBytes: mem.rssBytes,
      pssBytes: mem.pssBytes,
      mounts: this.host.served(),
      services: this.host.services.list(),
      supervisorPid: this.supervised?.supervisorPid ?? null,
      restarts: this.supervised?.restarts ?? 0,
    };
  }

  /** Stops serving: no new requests, every mount unmounted and synced, the pool closed. Idempotent. */
  stop(reason = 'stop requested'): Promise<void> {
    if (!this.stopping) this.stopping = this.doStop(reason);
    return this.stopping;
  }

  private async doStop(reason: string): Promise<void> {
    this.log(`stopping (${reason})`);
    this.supervised?.onStopping();
    await new Promise<void>((r) => {
      this.server.close(() => r());
      this.server.closeAllConnections?.();
    });
    try {
      await this.host.close();
    } catch (err) {
      this.log(`closing the pool failed: ${(err as Error).message}`);
    }
    if (this.ownSocket) fs.rmSync(this.socketPath, { force: true });
    this.removeSignals();
    this.log('stopped');
    this.resolveStopped();
  }

  private installSignalHandlers(): () => void {
    return onStopSignals((sig) => void this.stop(sig));
  }
}

/** Listens on systemd's fd, or binds the socket path (replacing a stale socket) with mode 0600. */
async function listen(server: http.Server, fd: number | null, socket: string, runDir: string): Promise<void> {
  if (fd === null) {
    fs.mkdirSync(runDir, { recursive: true, mode: 0o700 });
    fs.rmSync(socket, { force: true }); // nobody answered on it (checked above): stale
  }
  const oldMask = process.umask(0o077);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(fd !== null ? { fd } : { path: socket }, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } finally {
    process.umask(oldMask);
  }
  if (fd === null) fs.chmodSync(socket, 0o600);
}
