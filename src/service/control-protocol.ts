/**
 * The pool daemon's control API (version 1): JSON over HTTP/1.1 on a unix socket,
 * `POOL/run/dmfs.sock` (mode 0600 in a 0700 directory: the pool's owner only).
 *
 *   GET    /version                      → { api: 1, dmfs: "0.1.0" }   (any version answers this)
 *   GET    /v1/status                    → DaemonStatus
 *   GET    /v1/layers                    → LayerInfo[]
 *   POST   /v1/layers      CreateLayerRequest → LayerInfo
 *   POST   /v1/mounts      MountRequest   → MountResult
 *   POST   /v1/unmount     UnmountRequest → UnmountResult
 *   GET    /v1/services                  → ServiceStatus[]
 *   POST   /v1/services/NAME/start|stop  → ServiceStatus
 *   POST   /v1/stop                      → { stopping: true }  (unmounts everything, then exits)
 *
 * A failure answers 4xx/5xx with `{ "error": { "code", "message" } }`, the code one of
 * src/errors.ts. A new version adds a `/v2/` prefix beside `/v1/`; fields are only ever
 * added within a version, so clients ignore what they do not know.
 */
import * as path from 'node:path';
import { poolPaths } from '../pool/pool-paths';
import type { LayerInfo } from '../store/layer-store';

export const CONTROL_API_VERSION = 1;

export interface DaemonRunPaths {
  /** The control socket. */
  socket: string;
  /** The background daemon's stdout/stderr (`dmfs daemon start`; appended). */
  log: string;
  /** The supervisor's record ({version, pid, startTicks}): clients wait for a worker it is restarting. */
  supervisor: string;
}

/** Where the daemon of the pool at `root` keeps its files: one function for all. */
export function daemonRunPaths(root: string): DaemonRunPaths {
  const runDir = poolPaths(root).runDir;
  return { socket: path.join(runDir, 'dmfs.sock'), log: path.join(runDir, 'daemon.log'), supervisor: path.join(runDir, 'daemon.json') };
}

export interface CreateLayerRequest {
  name: string;
  /** Default: base. */
  parent?: string;
  /** Default: container. */
  kind?: 'container' | 'image';
  labels?: Record<string, string>;
  sizeLimitBytes?: number;
}

/** Access and privilege options of a mount (see fs/mount-access.ts for the defaults). */
export interface MountAccessRequest {
  /** Let other users in (allow_other,default_permissions). Default: true as root. */
  allowOther?: boolean;
  /** Honour setuid/setgid bits (no nosuid). Default: false. */
  suid?: boolean;
  /** Honour device nodes (no nodev). Default: false. */
  dev?: boolean;
}

export interface MountRequest extends MountAccessRequest {
  layer: string;
  /** Absolute path. */
  mountpoint: string;
  readOnly?: boolean;
  /** When reads move atime. Default: relatime. A mount a restarted worker takes over is relatime. */
  atime?: 'relatime' | 'strictatime' | 'noatime';
}

export interface MountResult {
  layer: string;
  mountpoint: string;
  readOnly: boolean;
  /** The process serving the mount (the daemon's pid when it serves it). */
  pid: number;
  log: string | null;
  /** A dead mount (its server gone) at the mountpoint was cleaned up first. */
  recovered: boolean;
  transport: 'kernel' | 'libfuse2';
  /** 'daemon': the pool's daemon serves it with its other mounts; 'process': a process of its own. */
  servedBy: 'daemon' | 'process';
}

export interface UnmountRequest {
  mountpoint: string;
  lazy?: boolean;
}

export interface UnmountResult {
  mountpoint: string;
  layer: string | null;
  pid: number | null;
  recovered: boolean;
  /** True once synced and committed; null when not waited for (lazy). */
  flushed: boolean | null;
}

export interface ServedMount {
  layer: string;
  mountpoint: string;
  readOnly: boolean;
  transport: 'kernel' | 'libfuse2';
  startedMs: number;
  openHandles: number;
}

export interface ServiceStatus {
  name: string;
  state: 'stopped' | 'starting' | 'running' | 'stopping' | 'failed';
  /** The last start or stop failure. */
  error: string | null;
  /** What the service reports of itself (addresses, counts). */
  detail: Record<string, unknown>;
}

export interface DaemonStatus {
  api: number;
  dmfs: string;
  pid: number;
  root: string;
  startedMs: number;
  uptimeSeconds: number;
  /** Resident set and proportional set size of the daemon process (/proc/self/smaps_rollup). */
  rssBytes: number;
  pssBytes: number | null;
  mounts: ServedMount[];
  services: ServiceStatus[];
  /** The supervisor keeping the mounts' /dev/fuse descriptors across worker restarts (null: none, mounts die with this process). */
  supervisorPid: number | null;
  /** Workers that died and were replaced since the daemon started. */
  restarts: number;
}

export interface ErrorBody {
  error: { code: string; message: string };
}

export type { LayerInfo };
