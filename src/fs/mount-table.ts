/**
 * What the host knows about mounts: /proc/self/mountinfo, unmounting (normal or lazy),
 * recognising a dead FUSE mountpoint (ENOTCONN: its daemon died), and the run records a
 * mount daemon leaves under the pool root (pid, layer, log) so `dmfs umount` finds it.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { dmfsError } from '../errors';
import { isProcessAlive } from '../pool/process-identity';

export const FUSE_FSTYPE = 'fuse.dmfs';

export interface MountEntry {
  mountId: number;
  /** The mount's device, "MAJ:MIN" (also its backing-device name under /sys/class/bdi). */
  device: string;
  mountpoint: string;
  fstype: string;
  source: string;
  /** Per-mount options (ro/rw, nosuid, ...). */
  mountOptions: string[];
  /** Super block options (user_id, allow_other, default_permissions, ...). */
  superOptions: string[];
}

/** Octal escapes of /proc/self/mountinfo (\040 for a space, ...). */
function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

export function parseMountInfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const right = line.slice(sep + 3).split(' ');
    if (left.length < 6 || right.length < 3) continue;
    out.push({
      mountId: Number(left[0]),
      device: left[2],
      mountpoint: unescapeMountField(left[4]),
      mountOptions: left[5].split(','),
      fstype: right[0],
      source: unescapeMountField(right[1]),
      superOptions: right[2].split(','),
    });
  }
  return out;
}

export async function readMountTable(): Promise<MountEntry[]> {
  return parseMountInfo(await fsp.readFile('/proc/self/mountinfo', 'utf8'));
}

/** The topmost mount at exactly this path, or null. */
export async function findMount(mountpoint: string): Promise<MountEntry | null> {
  const abs = path.resolve(mountpoint);
  const hits = (await readMountTable()).filter((m) => m.mountpoint === abs);
  return hits.length ? hits[hits.length - 1] : null;
}

export type MountpointState = 'missing' | 'dir' | 'not-dir' | 'dead';

/** ENOTCONN on stat means a FUSE mount whose daemon is gone. */
export async function probeMountpoint(mountpoint: string): Promise<MountpointState> {
  try {
    const st = await fsp.stat(mountpoint);
    return st.isDirectory() ? 'dir' : 'not-dir';
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return 'missing';
    if (code === 'ENOTCONN' || code === 'ECONNABORTED') return 'dead';
    throw err;
  }
}

interface RunResult {
  code: number;
  stderr: string;
}

function run(cmd: string, args: string[]): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 30_000 }, (err, _stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string }) | null;
      if (e && e.code === 'ENOENT') return resolve({ code: 127, stderr: `${cmd}: not found` });
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : 1) : 0, stderr: String(stderr) });
    });
  });
}

/**
 * Unmounts a FUSE mount. Normal unmount fails with LAYER_IN_USE while files are open;
 * lazy detaches at once (for dead mounts and shutdown). Tries fusermount (works for the
 * mounting user), fusermount3, then umount(8) (root).
 */
export async function unmountFuse(mountpoint: string, opts: { lazy?: boolean } = {}): Promise<void> {
  const abs = path.resolve(mountpoint);
  const attempts: [string, string[]][] = [
    ['fusermount', [opts.lazy ? '-uz' : '-u', '--', abs]],
    ['fusermount3', [opts.lazy ? '-uz' : '-u', '--', abs]],
    ['umount', opts.lazy ? ['-l', abs] : [abs]],
  ];
  const errors: string[] = [];
  for (const [cmd, args] of attempts) {
    const r = await run(cmd, args);
    if (r.code === 0) return;
    if (r.code === 127) continue;
    errors.push(r.stderr.trim());
    if (/busy/i.test(r.stderr)) {
      throw dmfsError('LAYER_IN_USE', `${abs} is busy (files are open or a process has its cwd there); close them or use a lazy unmount`);
    }
    // Already gone: fine.
    if (!(await findMount(abs))) return;
  }
  throw dmfsError('MOUNT_FAILED', `cannot unmount ${abs}: ${errors.filter(Boolean).join('; ') || 'no fusermount/umount found'}`);
}

// ---- run records ----------------------------------------------------------------------------

export interface MountRecord {
  version: 1;
  pid: number;
  /** /proc/PID/stat start time of the serving process (see pool/process-identity). */
  startTicks: number;
  layer: string;
  mountpoint: string;
  readOnly: boolean;
  root: string;
  startedMs: number;
  log: string;
  /** Served by the pool's daemon (pid), which serves other mounts too: never signal it to end one mount. */
  servedByDaemon?: boolean;
}

export interface MountRunPaths {
  /** The live daemon's MountRecord (removed at exit). */
  record: string;
  /** The daemon's stdout/stderr (appended across mounts). */
  log: string;
  /** The daemon's last outcome: { ok, reason, error } after its final sync and close. */
  exit: string;
}

/** Where the daemon of a mountpoint keeps its files under the pool's run directory: one function for all. */
export function mountRunPaths(runDir: string, mountpoint: string): MountRunPaths {
  const abs = path.resolve(mountpoint);
  const tag = createHash('sha256').update(abs).digest('hex').slice(0, 16);
  const base = path.basename(abs).replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 40) || 'root';
  const stem = path.join(runDir, `mount-${base}-${tag}`);
  return { record: `${stem}.json`, log: `${stem}.log`, exit: `${stem}.exit.json` };
}

export async function writeMountRecord(file: string, rec: MountRecord): Promise<void> {
  await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  await fsp.writeFile(tmp, JSON.stringify(rec) + '\n', { mode: 0o600 });
  await fsp.rename(tmp, file);
}

export async function readMountRecord(file: string): Promise<MountRecord | null> {
  try {
    const rec = JSON.parse(await fsp.readFile(file, 'utf8')) as MountRecord;
    return rec && rec.version === 1 && Number.isInteger(rec.pid) ? rec : null;
  } catch {
    return null;
  }
}

export async function removeFile(file: string): Promise<void> {
  await fsp.rm(file, { force: true });
}

/** The marker in a background mount daemon's argv (for ps; identity is checked by start time). */
export const DAEMON_ARG = '--dmfs-mount-daemon';

/** True when the process that wrote the record still runs (same pid and start time: not a recycled pid). */
export function isRecordOwnerAlive(rec: MountRecord): boolean {
  return isProcessAlive({ pid: rec.pid, startTicks: rec.startTicks });
}

/** Waits until pid has exited; false on timeout. */
export async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      process.kill(pid, 0);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ESRCH') return true;
    }
    // A zombie child of ours counts as gone.
    try {
      const stat = await fsp.readFile(`/proc/${pid}/stat`, 'utf8');
      if (/\) Z /.test(stat)) return true;
    } catch {
      return true;
    }
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, 25));
  }
}
