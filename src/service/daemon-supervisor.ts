/**
 * The daemon's supervisor: a small process that runs the pool daemon as its worker and
 * keeps every mount's /dev/fuse descriptor open across the worker's death, so the kernel
 * keeps the connections (no ENOTCONN) and a new worker carries on.
 *
 * - The worker reports each kernel-transport mount it serves (worker-link.ts); the
 *   supervisor takes a duplicate of its descriptor (pidfd_getfd) before the mount's caller
 *   hears of it, and closes it when the worker reports the mount ended.
 * - When the worker dies (kill -9, a crash) the supervisor starts a new one at once, with
 *   every kept descriptor inherited (fd 4 and up) and listed in DMFS_DAEMON_ADOPT. The new
 *   worker serves them without remounting and has the kernel resend what the dead one read
 *   and never answered (FUSE_NOTIFY_RESEND).
 * - A worker that exits (not killed by a signal) before it said it serves is not restarted:
 *   its next start would fail the same way; the supervisor exits with its status.
 * - SIGTERM/SIGINT go to the worker, which unmounts and syncs everything; when a worker
 *   says it is stopping for good (also after `dmfs daemon stop`), its exit ends the
 *   supervisor with its status.
 * - More than MAX_RESTARTS deaths within RESTART_WINDOW_MS: the supervisor gives up (exits
 *   1), closing the descriptors; the mounts then answer ENOTCONN, as without it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';

import { dmfsError } from '../errors';
import { onStopSignals } from '../fs/stop-signals';
import { loadFuseDevice } from '../native';
import { currentProcess } from '../pool/process-identity';
import { poolPaths } from '../pool/pool-paths';
import { DaemonClient } from './control-client';
import { daemonRunPaths } from './control-protocol';
import type { HandedOverMount } from './pool-host';
import { ADOPT_ENV, CONTROL_FD_ENV, RESTARTS_ENV, type WorkerMessage } from './worker-link';

const MAX_RESTARTS = 20;
const RESTART_WINDOW_MS = 60_000;
/** Descriptors handed to a worker start here (0-2 stdio, 3 the IPC channel). */
const FIRST_HANDED_FD = 4;

export interface SupervisorOptions {
  log: (line: string) => void;
  /** The command line that starts a worker: [script, ...args]. */
  workerArgv: string[];
  env?: NodeJS.ProcessEnv;
  /**
   * A listening control socket to hand every worker (systemd's, socket activation): it stays
   * open across restarts, so clients queue in its backlog instead of being refused.
   */
  controlFd?: number | null;
}

/** Whether this host can supervise (the native addon with pidfd_getfd); why not otherwise. */
export function supervisionUnavailable(): string | null {
  const dev = loadFuseDevice();
  if ('reason' in dev) return dev.reason;
  if (!dev.device.takeFrom) return 'the native addon predates fdTakeFrom (rebuild: node scripts/build-native.js)';
  return null;
}

/** Runs the supervisor until its worker stops for good; resolves with the exit code. */
export async function superviseDaemon(root: string, opts: SupervisorOptions): Promise<number> {
  const dev = loadFuseDevice();
  const takeFrom = 'device' in dev ? dev.device.takeFrom : null;
  if (!takeFrom) throw dmfsError('NATIVE_UNAVAILABLE', `the daemon's supervisor needs the native addon: ${supervisionUnavailable()}`);
  const running = opts.controlFd != null ? null : await DaemonClient.connect(root).catch(() => null);
  if (running) {
    await running.close();
    throw dmfsError('POOL_LOCKED', `a dmfs daemon already serves the pool ${root}; use it, or stop it first (dmfs daemon stop)`);
  }
  const paths = daemonRunPaths(root);
  fs.mkdirSync(poolPaths(root).runDir, { recursive: true, mode: 0o700 });
  fs.writeFileSync(paths.supervisor, JSON.stringify({ version: 1, ...currentProcess(), startedMs: Date.now() }) + '\n', { mode: 0o600 });
  const held = new Map<string, HandedOverMount>();
  const deaths: number[] = [];
  let restarts = 0;
  let stopping = false;
  let worker: ChildProcess | null = null;
  const log = opts.log;

  const closeHeld = (mountpoint: string) => {
    const m = held.get(mountpoint);
    if (!m) return;
    held.delete(mountpoint);
    try {
      fs.closeSync(m.fd);
    } catch {
      /* already closed */
    }
  };

  let ready = false;
  const onMessage = (child: ChildProcess, msg: WorkerMessage) => {
    if (msg.type === 'ready') ready = true;
    else if (msg.type === 'stopping') stopping = true;
    else if (msg.type === 'unmounted') closeHeld(msg.mountpoint);
    else if (msg.type === 'mounted') {
      const fd = takeFrom(child.pid!, msg.fd);
      if (fd < 0) {
        log(`cannot keep the /dev/fuse descriptor of ${msg.mountpoint} (errno ${-fd}): it will not survive a worker restart`);
        return;
      }
      closeHeld(msg.mountpoint);
      held.set(msg.mountpoint, { layer: msg.layer, mountpoint: msg.mountpoint, readOnly: msg.readOnly, initFlags: msg.initFlags, fd });
    }
  };

  const start = (): ChildProcess => {
    const handed = [...held.values()];
    const adopt = handed.map((m, i) => ({ ...m, fd: FIRST_HANDED_FD + i }));
    const control = opts.controlFd != null ? { fds: [opts.controlFd], env: { [CONTROL_FD_ENV]: String(FIRST_HANDED_FD + handed.length) } } : { fds: [], env: {} };
    const child = spawn(process.execPath, opts.workerArgv, {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc', ...handed.map((m) => m.fd), ...control.fds],
      env: { ...(opts.env ?? process.env), [ADOPT_ENV]: JSON.stringify(adopt), [RESTARTS_ENV]: String(restarts), ...control.env },
    });
    child.on('message', (msg) => onMessage(child, msg as WorkerMessage));
    return child;
  };

  const forward = (sig: NodeJS.Signals) => {
    stopping = true;
    worker?.kill(sig);
  };
  const removeSignals = onStopSignals(forward);
  try {
    for (;;) {
      worker = start();
      const child = worker;
      const spawned = await new Promise<Error | null>((r) => {
        child.once('spawn', () => r(null));
        child.once('error', (err) => r(err));
      });
      if (spawned) throw dmfsError('MOUNT_FAILED', `cannot start the daemon's worker: ${spawned.message}`, spawned);
      log(`worker ${child.pid} started${restarts ? ` (restart ${restarts}, taking over ${held.size} mount${held.size === 1 ? '' : 's'})` : ''}`);
      const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((r) => child.once('exit', (c, s) => r([c, s])));
      if (stopping) {
        log(`worker ${child.pid} stopped (${signal ?? code})`);
        return code ?? 1;
      }
      // A worker that fails before it serves (no pool, damaged metadata, ...) would fail again.
      if (!ready && signal === null) {
        log(`worker ${child.pid} failed before it served (exit ${code}); not restarting it`);
        return code || 1;
      }
      ready = false;
      const now = Date.now();
      deaths.push(now);
      while (deaths.length && deaths[0] < now - RESTART_WINDOW_MS) deaths.shift();
      if (deaths.length > MAX_RESTARTS) {
        log(`worker ${child.pid} died (${signal ?? code}); ${deaths.length} deaths within ${RESTART_WINDOW_MS / 1000} s: giving up, the mounts die with it`);
        return 1;
      }
      restarts++;
      log(`worker ${child.pid} died (${signal ?? code}); starting a new one for ${held.size} mount${held.size === 1 ? '' : 's'}`);
    }
  } finally {
    removeSignals();
    for (const mp of [...held.keys()]) closeHeld(mp);
    fs.rmSync(paths.supervisor, { force: true });
  }
}
