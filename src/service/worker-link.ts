/**
 * The worker's side of the daemon's supervisor link (daemon-supervisor.ts): the mounts it
 * is to take over come in DMFS_DAEMON_ADOPT (their descriptors inherited at the numbers
 * given), and it reports on the IPC channel each mount it serves (the supervisor then takes
 * a duplicate of the descriptor), each that ended, and that it is stopping for good.
 */
import type { HandedOverMount } from './pool-host';
import type { SupervisedWorker } from './pool-daemon';

/** Messages from a worker to its supervisor. */
export type WorkerMessage =
  | ({ type: 'mounted' } & HandedOverMount)
  | { type: 'unmounted'; mountpoint: string }
  | { type: 'ready' }
  | { type: 'stopping' };

export const ADOPT_ENV = 'DMFS_DAEMON_ADOPT';
export const RESTARTS_ENV = 'DMFS_DAEMON_RESTARTS';
/** The listening control socket the supervisor hands on (systemd's), as a descriptor number. */
export const CONTROL_FD_ENV = 'DMFS_DAEMON_CONTROL_FD';

/** The link when this process runs as a supervised worker (IPC channel and ADOPT_ENV present), else null. */
export function workerLinkFromEnv(env: NodeJS.ProcessEnv = process.env): SupervisedWorker | null {
  if (!process.send || env[ADOPT_ENV] === undefined) return null;
  const adopt = JSON.parse(env[ADOPT_ENV]!) as HandedOverMount[];
  let pending = Promise.resolve();
  const send = (msg: WorkerMessage) =>
    (pending = pending.then(() => new Promise<void>((resolve) => {
      if (!process.connected) return resolve();
      process.send!(msg, undefined, {}, () => resolve());
    })));
  // Losing the supervisor must not kill the worker: its mounts still serve.
  process.on('disconnect', () => undefined);
  const controlFd = env[CONTROL_FD_ENV] === undefined ? null : Number(env[CONTROL_FD_ENV]);
  return {
    supervisorPid: process.ppid,
    controlFd: Number.isInteger(controlFd) ? controlFd : null,
    restarts: Number(env[RESTARTS_ENV] ?? 0),
    adopt,
    onServed: (m) => send({ type: 'mounted', ...m }),
    onReleased: (mountpoint) => void send({ type: 'unmounted', mountpoint }),
    onStopping: () => void send({ type: 'stopping' }),
    onReady: () => void send({ type: 'ready' }),
    disconnect: () => void pending.then(() => process.connected && process.disconnect()),
  };
}
