/**
 * The control API's client side: what the CLI and Pool.connect use when the pool's daemon
 * runs. connect() finds out cheaply: no socket file, no daemon (no connection tried); a
 * socket nobody answers on (ECONNREFUSED: the daemon died) is no daemon either. Calls
 * share one kept-alive connection.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import { DmfsError, dmfsError, ERROR_CODES, type ErrorCode } from '../errors';
import type { LayerInfo } from '../store/layer-store';
import {
  CONTROL_API_VERSION, daemonRunPaths, type CreateLayerRequest, type DaemonStatus, type MountRequest, type MountResult,
  type ServiceStatus, type UnmountRequest, type UnmountResult,
} from './control-protocol';
import type { PoolClient } from './pool-client';
import { isProcessAlive, type ProcessIdentity } from '../pool/process-identity';

/** How long connect() waits for the worker a live supervisor is restarting. */
const RESTART_WAIT_MS = 10_000;

/** The pid of the live supervisor of the pool at root (daemon-supervisor.ts), from its record; else null. */
export function liveSupervisorPid(root: string): number | null {
  try {
    const rec = JSON.parse(fs.readFileSync(daemonRunPaths(root).supervisor, 'utf8')) as ProcessIdentity;
    return isProcessAlive(rec) ? rec.pid : null;
  } catch {
    return null;
  }
}

/** A mount or an unmount can wait for a slow sync; nothing else takes long. */
const REQUEST_TIMEOUT_MS = 180_000;

function isNoDaemon(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return code === 'ECONNREFUSED' || code === 'ENOENT' || code === 'ECONNRESET' || code === 'EPIPE';
}

export class DaemonClient implements PoolClient {
  readonly viaDaemon = true;
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 4 });

  private constructor(readonly socketPath: string) {}

  /**
   * The client of the daemon serving the pool at `root`, or null when none runs. While its
   * supervisor lives but no worker answers (one is being restarted), waits for the new one.
   */
  static async connect(root: string): Promise<DaemonClient | null> {
    const { socket } = daemonRunPaths(root);
    const deadline = Date.now() + RESTART_WAIT_MS;
    let client: DaemonClient;
    let version: { api?: number };
    for (;;) {
      if (!fs.existsSync(socket) && liveSupervisorPid(root) === null) return null;
      client = new DaemonClient(socket);
      try {
        version = await client.request<{ api: number }>('GET', '/version');
        break;
      } catch (err) {
        client.agent.destroy();
        if (!isNoDaemon(err)) throw err;
        if (liveSupervisorPid(root) === null || Date.now() > deadline) return null;
        await new Promise((r) => setTimeout(r, 25));
      }
    }
    if (version.api !== CONTROL_API_VERSION) {
      client.agent.destroy();
      throw dmfsError('NOT_SUPPORTED', `the daemon on ${socket} speaks control API ${version.api}, this dmfs ${CONTROL_API_VERSION}: restart it with this dmfs (dmfs daemon stop, then dmfs daemon start)`);
    }
    return client;
  }

  request<T>(method: 'GET' | 'POST', route: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? '' : JSON.stringify(body);
    return new Promise<T>((resolve, reject) => {
      const req = http.request({
        socketPath: this.socketPath, method, path: route, agent: this.agent, timeout: REQUEST_TIMEOUT_MS,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
      }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          let value: unknown;
          try {
            value = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            return reject(dmfsError('IO_ERROR', `the daemon on ${this.socketPath} answered ${method} ${route} with something that is not JSON (status ${res.statusCode})`));
          }
          const error = (value as { error?: { code?: string; message?: string } })?.error;
          if (res.statusCode !== 200 || error) {
            const code = (error?.code && error.code in ERROR_CODES ? error.code : 'IO_ERROR') as ErrorCode;
            return reject(new DmfsError(code, error?.message ?? `the daemon answered status ${res.statusCode}`));
          }
          resolve(value as T);
        });
      });
      req.on('timeout', () => req.destroy(dmfsError('IO_ERROR', `the daemon on ${this.socketPath} did not answer ${method} ${route} within ${REQUEST_TIMEOUT_MS / 1000} s`)));
      req.on('error', reject);
      req.end(payload);
    });
  }

  status(): Promise<DaemonStatus> {
    return this.request('GET', '/v1/status');
  }

  createLayer(req: CreateLayerRequest): Promise<LayerInfo> {
    return this.request('POST', '/v1/layers', req);
  }

  listLayers(): Promise<LayerInfo[]> {
    return this.request('GET', '/v1/layers');
  }

  mount(req: MountRequest): Promise<MountResult> {
    return this.request('POST', '/v1/mounts', req);
  }

  unmount(req: UnmountRequest): Promise<UnmountResult> {
    return this.request('POST', '/v1/unmount', req);
  }

  services(): Promise<ServiceStatus[]> {
    return this.request('GET', '/v1/services');
  }

  startService(name: string): Promise<ServiceStatus> {
    return this.request('POST', `/v1/services/${encodeURIComponent(name)}/start`);
  }

  stopService(name: string): Promise<ServiceStatus> {
    return this.request('POST', `/v1/services/${encodeURIComponent(name)}/stop`);
  }

  /** Asks the daemon to unmount everything and exit; resolves once it has accepted. */
  stop(): Promise<{ stopping: boolean }> {
    return this.request('POST', '/v1/stop');
  }

  async close(): Promise<void> {
    this.agent.destroy();
  }
}
