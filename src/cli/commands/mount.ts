import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, promises as fsp, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { Pool } from '../../api';
import { DmfsError, dmfsError, ERROR_CODES, isDmfsError, type ErrorCode } from '../../errors';
import type { AtimeMode } from '../../fs/access-times';
import { MountService, type StopResult } from '../../fs/mount-service';
import {
  DAEMON_ARG,
  findMount,
  FUSE_FSTYPE,
  isRecordOwnerAlive,
  mountRunPaths,
  probeMountpoint,
  readMountRecord,
  removeFile,
  unmountFuse,
  writeMountRecord,
  type MountRecord,
} from '../../fs/mount-table';
import { assertOutsidePool } from '../../pool/pool-guard';
import { poolPaths } from '../../pool/pool-paths';
import { currentProcess } from '../../pool/process-identity';
import { explainUnwrappedError } from '../system-errors';
import type { Command, CommandContext } from '../command';
import { requireFullMetadataVerify } from '../../pool/metadata-gate';

/** What the daemon needs to serve one mount; crosses the process boundary as JSON. */
export interface MountSpec {
  root: string;
  layer: string;
  mountpoint: string;
  readOnly: boolean;
  allowOther: boolean;
  /** When reads move atime (fs/access-times.ts); absent: relatime. */
  atime?: AtimeMode;
}

export interface MountResult {
  layer: string;
  mountpoint: string;
  readOnly: boolean;
  pid: number;
  log: string | null;
  /** A dead mount (daemon gone) at the mountpoint was cleaned up first. */
  recovered: boolean;
  /** The FUSE transport serving the mount (see chooseTransport in fs/mount-service). */
  transport: 'kernel' | 'libfuse2';
}

/**
 * A mountpoint may be neither in the pool (the daemon would then write its run record, and
 * every later command its data, through the mount into the layer) nor above it (the mount
 * would hide the pool's files from every other process). PATH_IN_POOL, exit 2. Both the CLI
 * (and mount.dmfs, which runs it) and serveMount, the path of the daemon and of Node API
 * callers, run this before touching the mountpoint.
 */
export function assertMountpointOutsidePool(root: string, mountpoint: string): void {
  assertOutsidePool(root, mountpoint, 'mountpoint', { refuseAncestor: true });
}

/** Makes the mountpoint usable: recovers a dead mount, drops stale records, creates the directory. */
export async function prepareMountpoint(mountpoint: string, runDir: string): Promise<{ recovered: boolean }> {
  const paths = mountRunPaths(runDir, mountpoint);
  let recovered = false;
  let state = await probeMountpoint(mountpoint);
  if (state === 'dead') {
    await unmountFuse(mountpoint, { lazy: true });
    await removeFile(paths.record);
    recovered = true;
    state = await probeMountpoint(mountpoint);
  }
  if (state === 'dead') throw dmfsError('MOUNT_FAILED', `${mountpoint} is a dead mount that could not be detached`);
  if (state === 'not-dir') throw dmfsError('NOT_DIR', `${mountpoint} is not a directory`);
  if (state === 'missing') await fsp.mkdir(mountpoint, { recursive: true });

  const rec = await readMountRecord(paths.record);
  const entry = await findMount(mountpoint);
  if (entry?.fstype === FUSE_FSTYPE) {
    const owner = rec && isRecordOwnerAlive(rec) ? ` (layer ${rec.layer}, pid ${rec.pid})` : '';
    throw dmfsError('LAYER_IN_USE', `${mountpoint} is already a dmfs mount${owner}; run dmfs umount ${mountpoint} first`);
  }
  if (rec) await removeFile(paths.record);
  return { recovered };
}

/**
 * Opens the pool and the layer, mounts, records the mount, and serves until unmounted.
 * `onReady` runs once the mount is live.
 */
export async function serveMount(spec: MountSpec, hooks: { log: (line: string) => void; onReady: (r: MountResult) => void | Promise<void>; logFile: string | null; recovered: boolean }): Promise<StopResult> {
  assertMountpointOutsidePool(spec.root, spec.mountpoint);
  const paths = mountRunPaths(poolPaths(spec.root).runDir, spec.mountpoint);
  requireFullMetadataVerify(); // a mount lives long; walk data.mdb before LMDB opens it
  const pool = await Pool.open(spec.root);
  let result: StopResult | null = null;
  // Kept until the exit record is written: `dmfs umount` sends SIGTERM right after the
  // unmount, which must not kill a daemon that already stopped but is still closing.
  let removeSignals: (() => void) | null = null;
  try {
    const layer = await pool.store.openLayer(spec.layer, { readOnly: spec.readOnly, mountpoint: spec.mountpoint });
    let service: MountService;
    try {
      service = await MountService.start({ layer, mountpoint: spec.mountpoint, allowOther: spec.allowOther, atime: spec.atime, log: hooks.log });
    } catch (err) {
      await layer.close().catch(() => undefined);
      throw err;
    }
    removeSignals = service.installSignalHandlers();
    const rec: MountRecord = {
      version: 1,
      ...currentProcess(),
      layer: spec.layer,
      mountpoint: spec.mountpoint,
      readOnly: layer.readOnly,
      root: spec.root,
      startedMs: Date.now(),
      log: hooks.logFile ?? '',
    };
    try {
      await writeMountRecord(paths.record, rec);
      await hooks.onReady({ layer: spec.layer, mountpoint: spec.mountpoint, readOnly: layer.readOnly, pid: process.pid, log: hooks.logFile, recovered: hooks.recovered, transport: service.transport });
    } catch (err) {
      await service.stop('start-up failed');
      throw err;
    }
    result = await service.stopped;
    await removeFile(paths.record);
    return result;
  } finally {
    try {
      await pool.close();
    } catch (err) {
      hooks.log(`closing the pool failed: ${(err as Error).message}`);
      if (result && !result.error) result.error = err as Error;
    }
    if (result) await fsp.writeFile(paths.exit, JSON.stringify({ ok: !result.error, reason: result.reason, error: result.error?.message ?? null }) + '\n').catch(() => undefined);
    removeSignals?.();
  }
}

/** The compiled script of this module (the daemon runs it; under ts-jest, the dist copy). */
function daemonScript(): string {
  if (__filename.endsWith('.js')) return __filename;
  const dist = path.resolve(__dirname, '..', '..', '..', 'dist', 'cli', 'commands', 'mount.js');
  if (existsSync(dist)) return dist;
  throw dmfsError('MOUNT_FAILED', 'background mounts need the compiled CLI: run npm run build');
}

function tail(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

type DaemonMessage = { type: 'ready'; result: MountResult } | { type: 'error'; code: string; message: string };

/** Starts a detached daemon and resolves once its mount is live (or throws its error). */
async function spawnDaemon(spec: MountSpec, recovered: boolean, timeoutMs = 120_000): Promise<MountResult> {
  const runDir = poolPaths(spec.root).runDir;
  const paths = mountRunPaths(runDir, spec.mountpoint);
  await fsp.mkdir(runDir, { recursive: true, mode: 0o700 });
  await removeFile(paths.exit);
  let logFd: number;
  try {
    logFd = openSync(paths.log, 'a', 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EROFS') throw err;
    throw dmfsError('POOL_READ_ONLY', `the pool ${spec.root} is on a read-only file system, and a mount keeps its log and run record in ${runDir}: remount it read-write to mount a layer (ls, info, check, export, diff and save work as it is)`, err);
  }
  const child = spawn(process.execPath, [daemonScript(), DAEMON_ARG, JSON.stringify({ ...spec, recovered, logFile: paths.log })], {
    detached: true,
    stdio: ['ignore', logFd, logFd, 'ipc'],
    // libfuse serves on several threads; give the store's file I/O room in the thread pool.
    env: { ...process.env, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '16' },
  });
  closeSync(logFd);
  type Outcome = { kind: 'message'; msg: DaemonMessage } | { kind: 'exit'; code: number | null; signal: string | null } | { kind: 'timeout' } | { kind: 'spawn-error'; err: Error };
  const outcome = await new Promise<Outcome>((resolve) => {
    const timer = setTimeout(() => resolve({ kind: 'timeout' }), timeoutMs);
    const done = (o: Outcome) => {
      clearTimeout(timer);
      resolve(o);
    };
    child.once('message', (msg) => done({ kind: 'message', msg: msg as DaemonMessage }));
    child.once('exit', (code, signal) => done({ kind: 'exit', code, signal }));
    child.once('error', (err) => done({ kind: 'spawn-error', err }));
  });
  if (outcome.kind === 'message' && outcome.msg.type === 'ready') {
    child.disconnect();
    child.unref();
    return outcome.msg.result;
  }
  if (outcome.kind === 'message' && outcome.msg.type === 'error') {
    const code = (outcome.msg.code in ERROR_CODES ? outcome.msg.code : 'MOUNT_FAILED') as ErrorCode;
    throw new DmfsError(code, outcome.msg.message);
  }
  if (outcome.kind === 'timeout') {
    child.kill('SIGTERM');
    throw dmfsError('MOUNT_FAILED', `the mount daemon did not come up within ${timeoutMs / 1000} s; log: ${paths.log}\n${tail(paths.log)}`);
  }
  if (outcome.kind === 'spawn-error') throw dmfsError('MOUNT_FAILED', `cannot start the mount daemon: ${outcome.err.message}`, outcome.err);
  if (outcome.kind !== 'exit') throw dmfsError('MOUNT_FAILED', `unexpected message from the mount daemon; log: ${paths.log}`);
  throw dmfsError('MOUNT_FAILED', `the mount daemon exited (${outcome.signal ?? outcome.code}) before the mount was live; log: ${paths.log}\n${tail(paths.log)}`);
}

function report(ctx: CommandContext, r: MountResult): void {
  if (ctx.json) {
    ctx.stdout.write(JSON.stringify(r) + '\n');
    return;
  }
  const how = `${r.readOnly ? 'read-only' : 'read-write'}, ${r.transport} transport`;
  const where = r.log ? `, pid ${r.pid}, log ${r.log}` : '';
  if (r.recovered) ctx.stderr.write(`dmfs mount: cleaned up a dead mount at ${r.mountpoint}\n`);
  ctx.stdout.write(`mounted ${r.layer} at ${r.mountpoint} (${how}${where})\n`);
}

export const command: Command = {
  name: 'mount',
  summary: 'Mount a layer with FUSE (images read-only, containers read-write)',
  usage: 'NAME MOUNTPOINT [--ro] [--foreground] [--allow-other] [--noatime | --strictatime]',
  description: [
    'Mounts layer NAME at MOUNTPOINT (created if missing) and returns once the mount is live,',
    'leaving a background process that serves it (pid and log under POOL/run/). Image layers',
    'and the base are always read-only; container layers are read-write unless --ro.',
    'A dead mount left at MOUNTPOINT by a crashed daemon is cleaned up first.',
    '',
    'Unmount with `dmfs umount MOUNTPOINT`; `umount` or `fusermount -u` work too, and the',
    'daemon then flushes, commits and exits on its own.',
    '',
    'Reads move atime as ext4 does with relatime (when atime is not newer than mtime and',
    'ctime, or is a day old); --noatime never, --strictatime on every read dmfs serves.',
  ].join('\n'),
  options: [
    { name: 'ro', type: 'boolean', description: 'mount read-only' },
    { name: 'foreground', type: 'boolean', short: 'f', description: 'serve in this process until unmounted or SIGINT/SIGTERM' },
    { name: 'allow-other', type: 'boolean', description: 'let other users in (the kernel checks permissions: default_permissions)' },
    { name: 'noatime', type: 'boolean', description: 'reads never move atime' },
    { name: 'strictatime', type: 'boolean', description: 'every read dmfs serves moves atime (default: relatime)' },
  ],
  minArgs: 2,
  maxArgs: 2,
  async run(ctx) {
    const [layer, mpArg] = ctx.args;
    if (!layer) throw dmfsError('USAGE', 'layer name is empty');
    if (ctx.opts.noatime && ctx.opts.strictatime) throw dmfsError('USAGE', '--noatime and --strictatime exclude each other: give one');
    const spec: MountSpec = {
      root: path.resolve(ctx.root),
      layer,
      mountpoint: path.resolve(mpArg),
      readOnly: Boolean(ctx.opts.ro),
      allowOther: Boolean(ctx.opts['allow-other']),
      atime: ctx.opts.noatime ? 'noatime' : ctx.opts.strictatime ? 'strictatime' : 'relatime',
    };
    assertMountpointOutsidePool(spec.root, spec.mountpoint);
    const { recovered } = await prepareMountpoint(spec.mountpoint, poolPaths(spec.root).runDir);
    if (!ctx.opts.foreground) {
      report(ctx, await spawnDaemon(spec, recovered));
      return 0;
    }
    const log = (line: string) => ctx.stderr.write(`dmfs mount: ${line}\n`);
    const result = await serveMount(spec, { log, onReady: (r) => report(ctx, r), logFile: null, recovered });
    if (result.error) throw isDmfsError(result.error) ? result.error : dmfsError('IO_ERROR', `unmounted with an error: ${result.error.message}`, result.error);
    return 0;
  },
};

/** Entry of the detached daemon: `node mount.js --dmfs-mount-daemon SPEC_JSON`. */
async function daemonMain(specJson: string): Promise<number> {
  const spec = JSON.parse(specJson) as MountSpec & { recovered: boolean; logFile: string };
  const log = (line: string) => process.stderr.write(`${new Date().toISOString()} [${process.pid}] ${line}\n`);
  const send = (msg: DaemonMessage) =>
    new Promise<void>((resolve) => {
      if (!process.send || !process.connected) return resolve();
      process.send(msg, undefined, {}, () => resolve());
    });
  process.on('disconnect', () => undefined);
  process.on('unhandledRejection', (err) => log(`unhandled rejection: ${(err as Error)?.stack ?? String(err)}`));
  try {
    const result = await serveMount(spec, {
      log,
      logFile: spec.logFile,
      recovered: spec.recovered,
      onReady: async (r) => {
        await send({ type: 'ready', result: r });
        if (process.connected) process.disconnect();
      },
    });
    return result.error ? 1 : 0;
  } catch (err) {
    // A DmfsError (or a host condition) is the user's to act on: its message, no stack. Anything else is a bug.
    const known = isDmfsError(err) ? err : explainUnwrappedError(err, spec.root);
    log(`mount failed: ${known ? `${known.code}: ${known.message}` : (err as Error)?.stack ?? String(err)}`);
    await send({ type: 'error', code: known ? known.code : 'MOUNT_FAILED', message: known ? known.message : (err as Error)?.message ?? String(err) });
    return 1;
  }
}

if (require.main === module && process.argv[2] === DAEMON_ARG) {
  // Exit explicitly: libfuse's thread handles may outlive the mount.
  daemonMain(process.argv[3] ?? '{}').then((code) => process.exit(code), () => process.exit(1));
}
