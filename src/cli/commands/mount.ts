import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, promises as fsp, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { DmfsError, dmfsError, ERROR_CODES, isDmfsError, type ErrorCode } from '../../errors';
import type { AtimeMode } from '../../fs/access-times';
import type { MountService, StopResult } from '../../fs/mount-service';
import { DAEMON_ARG, mountRunPaths, removeFile, writeMountRecord, type MountRecord } from '../../fs/mount-table';
import { assertMountpointOutsidePool, prepareMountpoint } from '../../fs/mountpoint-prep';
import { poolPaths } from '../../pool/pool-paths';
import { currentProcess } from '../../pool/process-identity';
import { explainUnwrappedError } from '../system-errors';
import type { Command, CommandContext } from '../command';
import type { MountResult } from '../../service/control-protocol';
import { mountAccessFor } from '../../fs/mount-access';
import { daemonFor } from '../daemon-route';

export { assertMountpointOutsidePool, prepareMountpoint };

/** What the daemon needs to serve one mount; crosses the process boundary as JSON. */
export interface MountSpec {
  root: string;
  layer: string;
  mountpoint: string;
  readOnly: boolean;
  allowOther: boolean;
  /** When reads move atime (fs/access-times.ts); absent: relatime. */
  atime?: AtimeMode;
  /** Honour setuid bits / device nodes (root only; default off: fs/mount-access.ts). */
  suid?: boolean;
  dev?: boolean;
}

export type { MountResult };

/**
 * Opens the pool and the layer, mounts, records the mount, and serves until unmounted.
 * `onReady` runs once the mount is live.
 */
export async function serveMount(spec: MountSpec, hooks: { log: (line: string) => void; onReady: (r: MountResult) => void | Promise<void>; logFile: string | null; recovered: boolean }): Promise<StopResult> {
  assertMountpointOutsidePool(spec.root, spec.mountpoint);
  const paths = mountRunPaths(poolPaths(spec.root).runDir, spec.mountpoint);
  // Loaded here: a mount the pool's daemon serves needs none of this in the CLI process.
  const [{ Pool }, { MountService: Service }, { requireFullMetadataVerify }] = await Promise.all([
    import('../../api'), import('../../fs/mount-service'), import('../../pool/metadata-gate'),
  ]);
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
      service = await Service.start({ layer, mountpoint: spec.mountpoint, allowOther: spec.allowOther, atime: spec.atime, suid: Boolean(spec.suid), dev: Boolean(spec.dev), log: hooks.log });
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
      await hooks.onReady({ layer: spec.layer, mountpoint: spec.mountpoint, readOnly: layer.readOnly, pid: process.pid, log: hooks.logFile, recovered: hooks.recovered, transport: service.transport, servedBy: 'process' });
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
  const by = r.servedBy === 'daemon' ? `, served by the pool's daemon (pid ${r.pid})` : r.log ? `, pid ${r.pid}` : '';
  const where = `${by}${r.log ? `, log ${r.log}` : ''}`;
  if (r.recovered) ctx.stderr.write(`dmfs mount: cleaned up a dead mount at ${r.mountpoint}\n`);
  ctx.stdout.write(`mounted ${r.layer} at ${r.mountpoint} (${how}${where})\n`);
}

export const command: Command = {
  name: 'mount',
  summary: 'Mount a layer with FUSE (images read-only, containers read-write)',
  usage: 'NAME MOUNTPOINT [--ro] [--foreground] [--allow-other] [--suid] [--dev] [--noatime | --strictatime]',
  description: [
    'Mounts layer NAME at MOUNTPOINT (created if missing) and returns once the mount is live.',
    "When the pool's daemon runs (dmfs daemon start), it serves the mount; otherwise a",
    'background process of its own does (pid and log under POOL/run/). Image layers',
    'and the base are always read-only; container layers are read-write unless --ro.',
    'A dead mount left at MOUNTPOINT by a crashed daemon is cleaned up first.',
    '',
    'As root every user may enter (allow_other, permissions checked by the kernel from the',
    'modes), and setuid bits and device nodes are not honoured unless --suid / --dev.',
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
    { name: 'allow-other', type: 'boolean', description: 'let other users in (the kernel checks permissions: default_permissions); the default as root' },
    { name: 'suid', type: 'boolean', description: 'honour setuid/setgid bits (root only; default nosuid)' },
    { name: 'dev', type: 'boolean', description: 'honour device nodes (root only; default nodev)' },
    { name: 'noatime', type: 'boolean', description: 'reads never move atime' },
    { name: 'strictatime', type: 'boolean', description: 'every read dmfs serves moves atime (default: relatime)' },
  ],
  minArgs: 2,
  maxArgs: 2,
  async run(ctx) {
    const [layer, mpArg] = ctx.args;
    if (!layer) throw dmfsError('USAGE', 'layer name is empty');
    if (ctx.opts.noatime && ctx.opts.strictatime) throw dmfsError('USAGE', '--noatime and --strictatime exclude each other: give one');
    const access = mountAccessFor({ allowOther: ctx.opts['allow-other'] ? true : undefined, suid: Boolean(ctx.opts.suid), dev: Boolean(ctx.opts.dev) });
    const spec: MountSpec = {
      root: path.resolve(ctx.root),
      layer,
      mountpoint: path.resolve(mpArg),
      readOnly: Boolean(ctx.opts.ro),
      ...access,
      atime: ctx.opts.noatime ? 'noatime' : ctx.opts.strictatime ? 'strictatime' : 'relatime',
    };
    assertMountpointOutsidePool(spec.root, spec.mountpoint);
    const daemon = ctx.opts.foreground ? null : await daemonFor(ctx);
    if (daemon) {
      try {
        report(ctx, await daemon.mount({ layer, mountpoint: spec.mountpoint, readOnly: spec.readOnly, atime: spec.atime, ...access }));
      } finally {
        await daemon.close();
      }
      return 0;
    }
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
