import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { dmfsError, isDmfsError } from '../../errors';
import { waitForExit } from '../../fs/mount-table';
import { poolPaths } from '../../pool/pool-paths';
import { formatBytes } from '../../pool/sizes';
import { DaemonClient } from '../../service/control-client';
import { daemonRunPaths, type DaemonStatus } from '../../service/control-protocol';
import type { Command, CommandContext } from '../command';
import { formatTable, printJson } from '../output';

/** How long `daemon start` waits for the control socket to answer (the metadata walk comes first). */
const START_TIMEOUT_MS = 120_000;
/** How long `daemon stop` waits for every mount to be synced and the process to exit. */
const STOP_TIMEOUT_MS = 180_000;

/** What `run`, `start` and the worker are told of the hosted snapshotter; the same flags go to each. */
interface SnapshotterChoice {
  /** false: --no-snapshotter. */
  enabled: boolean;
  /** --snapshotter-socket (absolute), else null: the default path. */
  socketPath: string | null;
}

function snapshotterChoice(ctx: CommandContext): SnapshotterChoice {
  const off = ctx.opts['no-snapshotter'] === true;
  const socket = ctx.opts['snapshotter-socket'] as string | undefined;
  if (off && socket !== undefined) throw dmfsError('USAGE', "--no-snapshotter and --snapshotter-socket exclude each other. Run 'dmfs daemon --help'.");
  if (socket === '') throw dmfsError('USAGE', '--snapshotter-socket needs a path');
  return { enabled: !off, socketPath: socket === undefined ? null : path.resolve(socket) };
}

/** The flags that hand `choice` on to a `dmfs daemon run` or `worker` this process starts. */
function snapshotterArgv(choice: SnapshotterChoice): string[] {
  if (!choice.enabled) return ['--no-snapshotter'];
  return choice.socketPath === null ? [] : ['--snapshotter-socket', choice.socketPath];
}

function timestamped(line: string): string {
  return `${new Date().toISOString()} [${process.pid}] ${line}\n`;
}

/**
 * Foreground: the supervisor, which runs the daemon as its worker and restarts it, keeping
 * the mounts (daemon-supervisor.ts); where it cannot (no native addon with pidfd_getfd, or
 * DMFS_DAEMON_SUPERVISOR=off) the daemon itself, in this process. Serves until
 * SIGTERM/SIGINT or `dmfs daemon stop`.
 */
async function run(ctx: CommandContext): Promise<number> {
  const root = path.resolve(ctx.root);
  const log = (line: string) => ctx.stderr.write(timestamped(line));
  const { superviseDaemon, supervisionUnavailable } = await import('../../service/daemon-supervisor');
  const why = process.env.DMFS_DAEMON_SUPERVISOR === 'off' ? 'DMFS_DAEMON_SUPERVISOR=off' : supervisionUnavailable();
  if (why === null) {
    // systemd's socket (activation) goes to every worker; the supervisor never accepts on it.
    const controlFd = process.env.LISTEN_PID === String(process.pid) && process.env.LISTEN_FDS === '1' ? 3 : null;
    const env = { ...process.env };
    delete env.LISTEN_PID;
    delete env.LISTEN_FDS;
    delete env.LISTEN_FDNAMES;
    const workerArgv = [cliScript(), 'daemon', 'worker', '--root', root, ...snapshotterArgv(snapshotterChoice(ctx))];
    return superviseDaemon(root, { log, env, controlFd, workerArgv });
  }
  log(`no supervisor (${why}): the mounts live in this process and die with it`);
  return serve(ctx, null);
}

/** The supervisor's worker (not for users: `dmfs daemon run` starts it). */
async function worker(ctx: CommandContext): Promise<number> {
  const { workerLinkFromEnv } = await import('../../service/worker-link');
  const link = workerLinkFromEnv();
  if (!link) throw dmfsError('USAGE', "dmfs daemon worker is started by dmfs daemon run's supervisor; run dmfs daemon run (or start)");
  return serve(ctx, link);
}

async function serve(ctx: CommandContext, supervised: import('../../service/pool-daemon').SupervisedWorker | null): Promise<number> {
  const { PoolDaemon } = await import('../../service/pool-daemon');
  const logFile = process.env.DMFS_DAEMON_LOG_FILE ?? null;
  const log = (line: string) => ctx.stderr.write(timestamped(line));
  process.on('unhandledRejection', (err) => log(`unhandled rejection: ${(err as Error)?.stack ?? String(err)}`));
  const choice = snapshotterChoice(ctx);
  const services: import('../../service/hosted-services').HostedService[] = [];
  if (choice.enabled) {
    const { HostedSnapshotter } = await import('../../snapshotter/hosted-snapshotter');
    services.push(new HostedSnapshotter({ socketPath: choice.socketPath, traceRequests: process.env.DMFS_SNAPSHOTTER_TRACE === '1' }));
  }
  const daemon = await PoolDaemon.start(path.resolve(ctx.root), {
    log, logFile, supervised: supervised ?? undefined, services, startServices: services.map((s) => s.name),
  });
  if (ctx.json && !supervised) printJson(ctx, { pid: process.pid, socket: daemon.socketPath });
  await daemon.stopped;
  // The IPC channel to the supervisor would keep this process alive: let go once the last reports are out.
  if (supervised) supervised.disconnect();
  return 0;
}

function tail(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/** The CLI script (bin/dmfs.js, which runs the compiled dist/). */
function cliScript(): string {
  const bin = path.resolve(__dirname, '..', '..', '..', 'bin', 'dmfs.js');
  if (!existsSync(bin) || !existsSync(path.resolve(__dirname, '..', '..', '..', 'dist', 'cli', 'main.js'))) {
    throw dmfsError('MOUNT_FAILED', 'a background daemon needs the compiled CLI: run npm run build');
  }
  return bin;
}

/** Background: starts `dmfs daemon run` detached (log in POOL/run/daemon.log) and returns once it answers. */
async function start(ctx: CommandContext): Promise<number> {
  const root = path.resolve(ctx.root);
  const existing = await DaemonClient.connect(root);
  if (existing) {
    const s = await existing.status();
    await existing.close();
    if (ctx.json) printJson(ctx, { started: false, pid: s.pid, socket: existing.socketPath });
    else ctx.stdout.write(`the dmfs daemon already serves ${root} (pid ${s.pid})\n`);
    return 0;
  }
  if (!existsSync(path.join(poolPaths(root).metadataDir, 'data.mdb'))) {
    throw dmfsError('POOL_NOT_FOUND', `no dmfs pool at ${root}: create one first (dmfs pool create --root ${root})`);
  }
  const paths = daemonRunPaths(root);
  mkdirSync(poolPaths(root).runDir, { recursive: true, mode: 0o700 });
  const logFd = openSync(paths.log, 'a', 0o600);
  const child = spawn(process.execPath, [cliScript(), 'daemon', 'run', '--root', root, ...snapshotterArgv(snapshotterChoice(ctx))], {
    detached: true,
    stdio: ['ignore', logFd, logFd],
    env: { ...process.env, DMFS_DAEMON_LOG_FILE: paths.log, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '16' },
  });
  closeSync(logFd);
  let exited: string | null = null;
  child.once('exit', (code, signal) => (exited = String(signal ?? code)));
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    const client = await DaemonClient.connect(root).catch((err) => {
      if (isDmfsError(err)) throw err;
      return null;
    });
    if (client) {
      const s = await client.status();
      await client.close();
      child.unref();
      if (ctx.json) printJson(ctx, { started: true, pid: s.pid, socket: client.socketPath, log: paths.log });
      else ctx.stdout.write(`started the dmfs daemon for ${root} (pid ${s.pid}, socket ${client.socketPath}, log ${paths.log})\n`);
      return 0;
    }
    if (exited !== null) throw dmfsError('MOUNT_FAILED', `the daemon exited (${exited}) before it answered; log: ${paths.log}\n${tail(paths.log)}`);
    if (Date.now() > deadline) {
      child.kill('SIGTERM');
      throw dmfsError('MOUNT_FAILED', `the daemon did not answer within ${START_TIMEOUT_MS / 1000} s; log: ${paths.log}\n${tail(paths.log)}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

function noDaemon(root: string) {
  return dmfsError('NOT_FOUND', `no dmfs daemon serves the pool ${root}: start one with dmfs daemon start --root ${root}`);
}

function printStatus(ctx: CommandContext, s: DaemonStatus, socket: string): void {
  if (ctx.json) return printJson(ctx, { running: true, socket, ...s });
  const pss = s.pssBytes === null ? '' : ` (PSS ${formatBytes(s.pssBytes)})`;
  const sup = s.supervisorPid === null ? 'no supervisor' : `supervisor pid ${s.supervisorPid}, ${s.restarts} restart${s.restarts === 1 ? '' : 's'}`;
  ctx.stdout.write(`dmfs daemon for ${s.root}: pid ${s.pid} (${sup}), up ${s.uptimeSeconds} s, RSS ${formatBytes(s.rssBytes)}${pss}, control API ${s.api} on ${socket}\n`);
  if (s.mounts.length) {
    ctx.stdout.write(formatTable(['MOUNTPOINT', 'LAYER', 'MODE', 'TRANSPORT', 'OPEN FILES', 'SINCE'], s.mounts.map((m) => [
      m.mountpoint, m.layer, m.readOnly ? 'ro' : 'rw', m.transport, String(m.openHandles), new Date(m.startedMs).toISOString().replace(/\.\d+Z$/, 'Z'),
    ])));
  } else ctx.stdout.write('no mounts\n');
  // The daemon hosts no service only when told so at its start.
  if (!s.services.length) ctx.stdout.write('no services (started with --no-snapshotter: containerd\'s snapshots API is not served)\n');
  for (const svc of s.services) {
    const detail = Object.entries(svc.detail).map(([k, v]) => `${k} ${String(v)}`).join(', ');
    ctx.stdout.write(`service ${svc.name}: ${svc.state}${detail ? ` (${detail})` : ''}${svc.error ? ` (${svc.error})` : ''}\n`);
  }
}

async function status(ctx: CommandContext): Promise<number> {
  const root = path.resolve(ctx.root);
  const client = await DaemonClient.connect(root);
  if (!client) throw noDaemon(root);
  try {
    printStatus(ctx, await client.status(), client.socketPath);
  } finally {
    await client.close();
  }
  return 0;
}

async function stop(ctx: CommandContext): Promise<number> {
  const root = path.resolve(ctx.root);
  const client = await DaemonClient.connect(root);
  if (!client) {
    if (ctx.json) printJson(ctx, { stopped: false, running: false });
    else ctx.stdout.write(`no dmfs daemon serves ${root}\n`);
    return 0;
  }
  let s: DaemonStatus;
  try {
    s = await client.status();
    await client.stop();
  } finally {
    await client.close();
  }
  // The supervisor exits once its worker has unmounted, synced and exited.
  const last = s.supervisorPid ?? s.pid;
  if (!(await waitForExit(last, STOP_TIMEOUT_MS))) {
    throw dmfsError('MOUNT_FAILED', `the daemon (pid ${last}) did not exit within ${STOP_TIMEOUT_MS / 1000} s; see ${daemonRunPaths(root).log}`);
  }
  const pid = s.pid;
  if (ctx.json) printJson(ctx, { stopped: true, pid, supervisorPid: s.supervisorPid });
  else ctx.stdout.write(`stopped the dmfs daemon (pid ${pid}): every mount unmounted, synced and committed\n`);
  return 0;
}

const ACTIONS: Record<string, (ctx: CommandContext) => Promise<number>> = { run, start, status, stop, worker };

export const command: Command = {
  name: 'daemon',
  summary: "one service per pool: serves every mount and answers the CLI and Node API",
  usage: '[run|start|status|stop] [--snapshotter-socket PATH | --no-snapshotter] [--json]',
  description: [
    'run (the default): open the pool once and serve every mount of it from one worker process,',
    'with the control API on POOL/run/dmfs.sock (mode 0600), until SIGTERM/SIGINT or',
    '`dmfs daemon stop`. This process supervises the worker: it keeps every mount\'s /dev/fuse',
    'descriptor and restarts a worker that dies, which takes the mounts over (no ENOTCONN).',
    'start: the same in the background (log in POOL/run/daemon.log); returns once it answers.',
    'status: its pid, supervisor, restarts, uptime, memory, mounts and services. stop: unmount,',
    'sync and commit everything, exit.',
    '',
    "It also serves containerd's snapshots API (what `dmfs snapshotter` serves on its own) as its",
    'service containerd-snapshotter, on POOL/run/containerd-snapshotter.sock (mode 0600) unless',
    'told otherwise; its snapshot mounts (under POOL/snapshots/, mode 0700) are daemon mounts and',
    'survive a worker restart like the others, and so does the socket (the new worker binds it again).',
    '',
    'While it runs, dmfs create, ls, mount and umount go through it (mounts are then served by it);',
    'every other command works on the pool directly, as without it.',
  ].join('\n'),
  options: [
    { name: 'snapshotter-socket', type: 'string', valueName: 'PATH', description: "run, start: serve containerd's snapshots API on PATH (default POOL/run/containerd-snapshotter.sock)" },
    { name: 'no-snapshotter', type: 'boolean', description: "run, start: do not serve containerd's snapshots API" },
  ],
  minArgs: 0,
  maxArgs: 1,
  async run(ctx) {
    const action = ctx.args[0] ?? 'run';
    const fn = ACTIONS[action];
    if (!fn) throw dmfsError('USAGE', `unknown daemon action '${action}' (run, start, status, stop). Run 'dmfs daemon --help'.`);
    if ((action === 'status' || action === 'stop') && (ctx.opts['no-snapshotter'] || ctx.opts['snapshotter-socket'] !== undefined)) {
      throw dmfsError('USAGE', `--snapshotter-socket and --no-snapshotter go with run and start, not ${action}`);
    }
    return fn(ctx);
  },
};
