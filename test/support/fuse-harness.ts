/**
 * Shared helpers of the FUSE integration tests: can FUSE run here (and must it), shell
 * commands run asynchronously, and mounting a LayerFs in this process.
 *
 * Never touch a mountpoint served by this process with synchronous calls (execSync,
 * fs.*Sync): the event loop that answers FUSE would be blocked waiting for itself.
 */
import { execFile } from 'node:child_process';
import { accessSync, chownSync, constants as fsConstants, existsSync, mkdtempSync, openSync, closeSync } from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadFuseNative } from '../../src/fs/fuse-adapter';
import { MountService, transportFromEnv, type FuseTransport } from '../../src/fs/mount-service';
import type { LayerFs } from '../../src/store/layer-store';
import { MemoryLayerFs, type MemoryLayerFsOptions } from './memory-layer-fs';

export interface FuseReadiness {
  usable: boolean;
  reason: string | null;
  /** CI=true with root and /dev/fuse: FUSE tests must run, never skip. */
  mustRun: boolean;
}

function onPath(name: string): boolean {
  return (process.env.PATH ?? '').split(':').some((dir) => {
    if (!dir) return false;
    try {
      accessSync(path.join(dir, name), fsConstants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

let readiness: FuseReadiness | null = null;

export function fuseReadiness(): FuseReadiness {
  if (readiness) return readiness;
  const root = process.getuid?.() === 0;
  const devFuse = existsSync('/dev/fuse');
  const mustRun = process.env.CI === 'true' && root && devFuse;
  let reason: string | null = null;
  if (!root) reason = 'not root (FUSE integration tests mount as root)';
  else if (!devFuse) reason = '/dev/fuse is missing (modprobe fuse, or run the container with --device /dev/fuse)';
  else {
    try {
      closeSync(openSync('/dev/fuse', 'r+'));
    } catch (err) {
      reason = `/dev/fuse cannot be opened: ${(err as Error).message}`;
    }
  }
  if (!reason) {
    const lib = loadFuseNative();
    if ('error' in lib) reason = lib.error;
  }
  if (!reason && !onPath('fusermount') && !onPath('fusermount3') && !onPath('umount')) reason = 'no fusermount/umount on PATH';
  readiness = { usable: reason === null, reason, mustRun };
  return readiness;
}

/**
 * describe() when FUSE is usable; otherwise a skipped describe with the reason printed,
 * or — under CI with root and /dev/fuse — a failing test, because there it must run.
 */
export function describeFuse(name: string, fn: () => void): void {
  const r = fuseReadiness();
  if (r.usable) {
    describe(name, fn);
  } else if (r.mustRun) {
    describe(name, () => {
      it('FUSE must be usable under CI with root and /dev/fuse', () => {
        throw new Error(`FUSE unusable: ${r.reason}`);
      });
    });
  } else {
    // eslint-disable-next-line no-console
    console.log(`skipping "${name}": ${r.reason}`);
    describe.skip(name, fn);
  }
}

/**
 * The transports a FUSE suite runs over: the one DMFS_FUSE_TRANSPORT names, else (auto)
 * both, so that one run covers the kernel transport and libfuse 2.
 */
export function fuseTransports(): ('kernel' | 'libfuse2')[] {
  const t = transportFromEnv();
  return t === 'auto' ? ['kernel', 'libfuse2'] : [t];
}

export interface ShResult {
  code: number;
  stdout: string;
  stderr: string;
}

let scratchCwd: string | null = null;

/**
 * Where commands run unless told otherwise: an empty scratch directory, never the
 * repository, so a script whose `cd MOUNTPOINT` fails (a dead mount) cannot run
 * `git init`, `make` or `rm` in the working tree.
 */
function defaultCwd(): string {
  if (!scratchCwd || !existsSync(scratchCwd)) scratchCwd = mkdtempSync(path.join(os.tmpdir(), 'dmfs-sh-cwd-'));
  return scratchCwd;
}

/** Runs a bash command line asynchronously (pipefail on), in opts.cwd or a scratch directory. */
export function sh(cmd: string, opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<ShResult> {
  return new Promise((resolve) => {
    execFile(
      'bash',
      ['-c', `set -o pipefail\n${cmd}`],
      { cwd: opts.cwd ?? defaultCwd(), env: { ...process.env, LC_ALL: 'C', ...opts.env }, maxBuffer: 64 << 20, timeout: opts.timeoutMs ?? 120_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

/** Like sh, but throws with the output when the command fails; returns stdout. */
export async function run(cmd: string, opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<string> {
  const r = await sh(cmd, opts);
  if (r.code !== 0) throw new Error(`command failed (${r.code}): ${cmd}\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

export function tempDir(prefix: string): string {
  return mkdtempSync(path.join(os.tmpdir(), `dmfs-${prefix}-`));
}

export function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

export interface InProcessMount {
  mnt: string;
  layer: LayerFs;
  service: MountService;
  /** The service's log lines so far. */
  log: string[];
  unmount(): Promise<void>;
}

/** Mounts a LayerFs in this process (watching for external unmounts every 200 ms). */
export async function mountLayer(layer: LayerFs, mnt?: string, opts: { allowOther?: boolean; transport?: FuseTransport } = {}): Promise<InProcessMount> {
  const dir = mnt ?? path.join(tempDir('mnt'), 'm');
  await fsp.mkdir(dir, { recursive: true });
  if (opts.allowOther) await fsp.chmod(path.dirname(dir), 0o755); // let other users reach it
  const lines: string[] = [];
  // Unexpected errors (answered EIO) show in the test output at once.
  // eslint-disable-next-line no-console
  const log = (l: string) => (lines.push(l), /unexpected/.test(l) && console.error(l));
  const service = await MountService.start({ layer, mountpoint: dir, watchIntervalMs: 200, log, allowOther: opts.allowOther, transport: opts.transport });
  return {
    mnt: dir,
    layer,
    service,
    log: lines,
    async unmount() {
      const r = await service.stop('test done');
      if (r.error) throw r.error;
    },
  };
}

export async function mountMemory(opts: MemoryLayerFsOptions = {}, transport?: FuseTransport): Promise<InProcessMount & { layer: MemoryLayerFs }> {
  const layer = new MemoryLayerFs(opts);
  const m = await mountLayer(layer, undefined, { transport });
  return { ...m, layer };
}

/** True once pid is gone or a zombie (a detached daemon whose parent exited; who reaps it is up to pid 1). */
export async function waitProcessGone(pid: number, ms = 15000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if ((await sh(`s=$(ps -o stat= -p ${pid}) && [ "\${s#Z}" = "$s" ]`)).code !== 0) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

/**
 * The dmfs CLI (`bin`) on the pool at root() (read at each call: set in a beforeAll):
 * `dmfs` resolves with the result, `dmfsOk` with stdout or throws with the output.
 */
export function cliAt(bin: string, root: () => string) {
  const dmfs = (args: string) => sh(`node ${bin} ${args} --root ${shq(root())}`);
  const dmfsOk = async (args: string): Promise<string> => {
    const r = await dmfs(args);
    if (r.code !== 0) throw new Error(`dmfs ${args} failed (${r.code}):\n${r.stdout}${r.stderr}`);
    return r.stdout;
  };
  return { dmfs, dmfsOk };
}

/** The prefix that runs a command as uid/gid `uid` with no supplementary groups. */
export function asUser(uid: number): string {
  return `setpriv --reuid ${uid} --regid ${uid} --clear-groups`;
}

/**
 * The dmfs CLI (`bin`) run as user `uid` on the pool at root() (read at each call: set in a
 * beforeAll), with HOME=/tmp and DMFS_FUSE_TRANSPORT=auto unless `env` says otherwise (what
 * these callers check is the choice itself, whatever transport the test run narrows to).
 * `dmfs` resolves with the result, `dmfsOk` with stdout or throws with the output; `shell`
 * runs a sh script as that user and returns its stdout.
 */
export function cliAsUser(uid: number, bin: string, root: () => string) {
  const dmfs = (args: string, env: NodeJS.ProcessEnv = {}) =>
    sh(`${asUser(uid)} node ${bin} ${args} --root ${shq(root())}`, { env: { HOME: '/tmp', DMFS_FUSE_TRANSPORT: 'auto', ...env } });
  const dmfsOk = async (args: string, env: NodeJS.ProcessEnv = {}): Promise<string> => {
    const r = await dmfs(args, env);
    if (r.code !== 0) throw new Error(`dmfs ${args} failed (${r.code}):\n${r.stdout}${r.stderr}`);
    return r.stdout;
  };
  const shell = (script: string) => run(`${asUser(uid)} sh -c ${shq(script)}`);
  return { dmfs, dmfsOk, shell };
}

/**
 * The dmfs CLI (`bin`) run as root on the pool at root() (read at each call): `dmfs`
 * resolves with the result, `dmfsOk` with stdout or throws with the output, `json` with
 * the parsed `--json` answer of a command that succeeds.
 */
export function cliFor(bin: string, root: () => string) {
  const dmfs = (args: string) => sh(`node ${bin} ${args} --root ${shq(root())}`);
  const dmfsOk = async (args: string): Promise<string> => {
    const r = await dmfs(args);
    if (r.code !== 0) throw new Error(`dmfs ${args} failed (${r.code}):\n${r.stdout}${r.stderr}`);
    return r.stdout;
  };
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const json = async <T = any>(args: string): Promise<T> => JSON.parse(await dmfsOk(`${args} --json`)) as T;
  return { dmfs, dmfsOk, json };
}

/** A pool root and a work directory (for mountpoints) owned by `uid`, for the CLI run as that user (setpriv needed). */
export async function tempDirsOwnedBy(uid: number, prefix: string): Promise<{ root: string; work: string }> {
  if ((await sh('command -v setpriv')).code !== 0) throw new Error('setpriv (util-linux) is needed to run the CLI as another user');
  const dirs = { root: tempDir(`${prefix}-pool`), work: tempDir(`${prefix}-work`) };
  for (const d of Object.values(dirs)) chownSync(d, uid, uid);
  return dirs;
}
