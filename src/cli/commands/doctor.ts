import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { blockIo } from '../../native';
import type { BlockIo } from '../../native/block-io';
import type { Command } from '../command';
import { fusermountSetuidProblem } from '../../fs/fuse-diagnosis';
import { chooseTransport, type TransportChoice } from '../../fs/mount-service';
import { poolPaths } from '../../pool/pool-paths';
import { describeHostSpace } from '../../pool/host-space';

/**
 * `dmfs doctor`: can this host run dmfs, and how well? One check per line with what to do
 * next. FUSE (device, fusermount, and libfuse.so.2 where mounts go through fuse-native:
 * no native addon, or a non-root user without a setuid fusermount3) is essential: without
 * it nothing mounts, so the exit code is 1. The report names the transport mounts by this
 * user will use and why (`fuse.transport`, `fuse.reason`). The native addon, the kernel, the file system of
 * the pool root and its reflink support only change speed and space; they are reported.
 * Reads the host, changes nothing except two temp files for the reflink probe (removed).
 */

export type CheckStatus = 'ok' | 'missing' | 'warn';

export interface DoctorCheck {
  /** Stable id, e.g. 'fuse.device'. */
  id: string;
  title: string;
  status: CheckStatus;
  /** Mounting fails when an essential check is not ok. */
  essential: boolean;
  detail: string;
  /** What to do next; null when nothing is needed. */
  hint: string | null;
}

export interface DoctorReport {
  /** Every essential check is ok. */
  ok: boolean;
  root: string;
  /**
   * The FUSE transport a `dmfs mount` by this user would use, and why (chooseTransport);
   * 'none' when DMFS_FUSE_TRANSPORT asks for one that cannot mount or is not a transport.
   */
  fuse: { transport: 'kernel' | 'libfuse2' | 'none'; reason: string };
  checks: DoctorCheck[];
}

/** chooseTransport for the environment as it is, never throwing: a refusal becomes 'none'. */
export function transportInUse(choose: () => TransportChoice = () => chooseTransport()): DoctorReport['fuse'] {
  try {
    return choose();
  } catch (err) {
    return { transport: 'none', reason: (err as Error).message };
  }
}

const SEARCH_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

/** Absolute path of an executable named `name` on PATH (or the usual system dirs), else null. */
export function findExecutable(name: string, pathEnv: string = process.env.PATH ?? ''): string | null {
  for (const dir of [...pathEnv.split(path.delimiter), ...SEARCH_DIRS]) {
    if (!dir) continue;
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return null;
}

export function checkFuseDevice(devicePath = '/dev/fuse'): DoctorCheck {
  const base = { id: 'fuse.device', title: 'FUSE device', essential: true };
  let st: fs.Stats;
  try {
    st = fs.statSync(devicePath);
  } catch {
    return {
      ...base,
      status: 'missing',
      detail: `${devicePath} does not exist`,
      hint: 'load the module (modprobe fuse); in a container run with --device /dev/fuse --cap-add SYS_ADMIN',
    };
  }
  if (!st.isCharacterDevice()) {
    return { ...base, status: 'missing', detail: `${devicePath} is not a character device`, hint: `recreate it: mknod -m 0666 ${devicePath} c 10 229` };
  }
  try {
    fs.closeSync(fs.openSync(devicePath, 'r+'));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    return {
      ...base,
      status: 'missing',
      detail: `${devicePath} present but cannot be opened (${code})`,
      hint: 'run as root, or give users access: chmod 0666 /dev/fuse, its usual mode (mount-helpers/setup-host does)',
    };
  }
  return { ...base, status: 'ok', detail: `${devicePath} present and openable`, hint: null };
}

/** Path of libfuse.so.2 from `ldconfig -p`, else from the usual library directories. */
export function findLibfuse2(ldconfigOutput?: string): string | null {
  let out = ldconfigOutput;
  if (out === undefined) {
    const ldconfig = findExecutable('ldconfig');
    out = ldconfig ? (spawnSync(ldconfig, ['-p'], { encoding: 'utf8' }).stdout ?? '') : '';
  }
  for (const line of out.split('\n')) {
    const m = /^\s*libfuse\.so\.2\s.*=>\s*(\S+)/.exec(line);
    if (m) return m[1];
  }
  if (ldconfigOutput !== undefined) return null;
  const dirs = ['/lib/x86_64-linux-gnu', '/usr/lib/x86_64-linux-gnu', '/lib/aarch64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64', '/lib64', '/usr/lib', '/lib'];
  for (const d of dirs) {
    const p = path.join(d, 'libfuse.so.2');
    if (fs.existsSync(p)) return p;
  }
  return null;
}

/** Which FUSE transport mounts use here: the kernel one (native addon, and root or a setuid fusermount3) or fuse-native. */
export function checkTransport(fuse: DoctorReport['fuse'] = transportInUse()): DoctorCheck {
  const base = { id: 'fuse.transport', title: 'FUSE transport', essential: false };
  if (fuse.transport === 'kernel') {
    return { ...base, status: 'ok', detail: `kernel: dmfs speaks the FUSE protocol on /dev/fuse (1 MiB requests, kernel caching); ${fuse.reason}`, hint: null };
  }
  if (fuse.transport === 'none') {
    return { ...base, essential: true, status: 'missing', detail: `no transport can mount: ${fuse.reason}`, hint: 'unset DMFS_FUSE_TRANSPORT (auto picks what works), or fix the cause above' };
  }
  return {
    ...base,
    status: 'warn',
    detail: `libfuse 2 via fuse-native (slower metadata, 128 KiB requests): ${fuse.reason}`,
    hint: 'for the kernel transport: the native addon, and root or a setuid fusermount3 with /dev/fuse mode 0666 (mount-helpers/setup-host)',
  };
}

/** libfuse.so.2: essential only when mounts go through fuse-native (`needed`). */
export function checkLibfuse(found: string | null = findLibfuse2(), needed = transportInUse().transport !== 'kernel'): DoctorCheck {
  const base = { id: 'fuse.library', title: 'libfuse.so.2', essential: needed };
  if (found) return { ...base, status: 'ok', detail: found, hint: null };
  return {
    ...base,
    status: needed ? 'missing' : 'warn',
    detail: `not in the ldconfig cache (fuse-native needs libfuse 2${needed ? '' : '; mounts here use the kernel transport'})`,
    hint: 'apt-get install libfuse2 (Debian 12) or libfuse2t64 (Debian 13, Ubuntu 24.04), then ldconfig',
  };
}

/** fusermount / fusermount3: present, and for a non-root user setuid root (both transports mount through it then). */
export function checkFusermount(pathEnv?: string, uid: number = process.geteuid?.() ?? 0): DoctorCheck {
  const base = { id: 'fuse.fusermount', title: 'fusermount', essential: true };
  const found = ['fusermount', 'fusermount3'].map((n) => findExecutable(n, pathEnv)).filter((p): p is string => p !== null);
  if (!found.length) return { ...base, status: 'missing', detail: 'neither fusermount nor fusermount3 on PATH', hint: 'apt-get install fuse3 (or fuse)' };
  const problem = uid === 0 ? null : found.map(fusermountSetuidProblem).find((p) => p !== null);
  if (problem) return { ...base, status: 'missing', detail: problem, hint: 'as root: mount-helpers/setup-host (restores the setuid bit)' };
  return { ...base, status: 'ok', detail: found.join(', '), hint: null };
}

export function checkNative(io: BlockIo = blockIo): DoctorCheck {
  const base = { id: 'native', title: 'native addon', essential: false };
  if (io.kind === 'native') {
    const crc = (io as { crc32cImpl?: string }).crc32cImpl;
    return { ...base, status: 'ok', detail: `loaded${crc ? ` (CRC-32C: ${crc})` : ''}`, hint: null };
  }
  const off = io.unavailableReason === 'DMFS_NATIVE=off';
  return {
    ...base,
    status: 'warn',
    detail: `not loaded: ${io.unavailableReason ?? 'unknown reason'}; using the TypeScript fallback`,
    // Without flock (env-open-lock.ts) a process opening the pool can lose another's commit.
    hint: off
      ? 'unset DMFS_NATIVE to use the addon; without it, do not run two dmfs processes on one pool while one writes'
      : 'install Rust (cargo) and run: node scripts/build-native.js (without it: slower copies, no hole punching, and no two dmfs processes on one pool while one writes)',
  };
}

export function checkKernel(release: string = os.release()): DoctorCheck {
  const [major, minor] = release.split('.').map((x) => parseInt(x, 10));
  const base = { id: 'kernel', title: 'kernel', essential: false };
  // copy_file_range across file systems needs 5.3; FICLONERANGE 4.5.
  if (major < 5 || (major === 5 && minor < 3)) {
    return { ...base, status: 'warn', detail: release, hint: 'Linux 5.3 or newer gives in-kernel copies between file systems' };
  }
  return { ...base, status: 'ok', detail: release, hint: null };
}

/** statfs f_type magic numbers (linux/magic.h) of file systems a pool may sit on. */
const FS_MAGIC: Record<number, string> = {
  0xef53: 'ext2/ext3/ext4',
  0x58465342: 'xfs',
  0x9123683e: 'btrfs',
  0x01021994: 'tmpfs',
  0x794c7630: 'overlay',
  0x2fc12fc1: 'zfs',
  0xf2f52010: 'f2fs',
  0xca451a4e: 'bcachefs',
  0x6969: 'nfs',
  0x65735546: 'fuse',
  0xff534d42: 'cifs',
  0x858458f6: 'ramfs',
};

/** Nearest existing ancestor of p (p itself when it exists). */
export function nearestExisting(p: string): string {
  let dir = path.resolve(p);
  while (!fs.existsSync(dir)) {
    const up = path.dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return dir;
}

/** Decodes the octal escapes of /proc/self/mountinfo fields (\040 is a space). */
function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** File system type of the mount holding dir: /proc/self/mountinfo, else statfs, else `stat -f`. */
export function fsTypeOf(dir: string): string {
  let real = dir;
  try {
    real = fs.realpathSync(dir);
  } catch {
    // keep dir
  }
  try {
    let best: { mount: string; type: string } | null = null;
    for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
      const [pre, post] = line.split(' - ');
      if (!post) continue;
      const mount = unescapeMountField(pre.split(' ')[4] ?? '');
      const type = post.split(' ')[0];
      const inside = mount === '/' || real === mount || real.startsWith(mount + '/');
      if (inside && (!best || mount.length >= best.mount.length)) best = { mount, type };
    }
    if (best) return best.type;
  } catch {
    // no /proc: try statfs
  }
  try {
    const magic = Number(fs.statfsSync(dir).type) >>> 0;
    if (FS_MAGIC[magic]) return FS_MAGIC[magic];
  } catch {
    // fall through
  }
  const r = spawnSync('stat', ['-f', '-c', '%T', dir], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : 'unknown';
}

function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

const FS_ADVICE: Record<string, string> = {
  tmpfs: 'tmpfs: the pool is lost at reboot and lives in memory; use a disk file system for real pools',
  ramfs: 'ramfs: the pool is lost at reboot and lives in memory; use a disk file system for real pools',
  overlay: 'overlay (probably a container root): works but slow; put the pool on a volume (ext4, xfs)',
  nfs: 'network file systems break pool locking and are slow; use a local file system',
  cifs: 'network file systems break pool locking and are slow; use a local file system',
  fuse: 'a FUSE file system under the pool is slow; use a local file system',
};

export function checkRootFilesystem(root: string): DoctorCheck {
  const dir = nearestExisting(root);
  const type = fsTypeOf(dir);
  let free = '';
  try {
    const s = fs.statfsSync(dir);
    free = `, ${formatBytes(Number(s.bavail) * Number(s.bsize))} free`;
  } catch {
    // leave out
  }
  const where = dir === path.resolve(root) ? dir : `${dir} (pool root ${root} not created yet)`;
  const advice = FS_ADVICE[type] ?? null;
  return {
    id: 'root.filesystem',
    title: 'pool file system',
    status: advice ? 'warn' : 'ok',
    essential: false,
    detail: `${type} at ${where}${free}`,
    hint: advice,
  };
}

/**
 * Free space of the host file system under the pool's data file (or the nearest existing
 * parent): warn when it is full (dmfs has stopped allocating: writes get ENOSPC) or
 * nearly full, saying what to do. statfs only; the pool is not opened.
 */
export function checkHostSpace(root: string, statfs: (dir: string) => { freeBytes: number; totalBytes: number } = statfsBytes): DoctorCheck {
  const base = { id: 'root.space', title: 'host free space', essential: false };
  const dir = nearestExisting(path.dirname(poolPaths(root).dataFile));
  let s: { freeBytes: number; totalBytes: number };
  try {
    s = statfs(dir);
  } catch (err) {
    return { ...base, status: 'warn', detail: `cannot statfs ${dir}: ${(err as Error).message}`, hint: null };
  }
  const host = describeHostSpace(dir, s.freeBytes, s.totalBytes, 64 * 1024);
  const figures = `${formatBytes(s.freeBytes)} free of ${formatBytes(s.totalBytes)} at ${dir}`;
  if (isReadOnlyFs(dir)) {
    return {
      ...base,
      status: 'warn',
      detail: `read-only file system: ${figures}`,
      hint: 'only read-only commands work (info, ls, inspect, check, export); remount it read-write to change the pool',
    };
  }
  if (host.state === 'ok') return { ...base, status: 'ok', detail: figures, hint: null };
  return {
    ...base,
    status: 'warn',
    detail: `host file system ${host.state === 'full' ? 'full' : 'nearly full'}: ${figures}`,
    hint: host.advice,
  };
}

function isReadOnlyFs(dir: string): boolean {
  try {
    fs.accessSync(dir, fs.constants.W_OK);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EROFS';
  }
}

function statfsBytes(dir: string): { freeBytes: number; totalBytes: number } {
  const s = fs.statfsSync(dir);
  return { freeBytes: Number(s.bavail) * Number(s.bsize), totalBytes: Number(s.blocks) * Number(s.bsize) };
}

export async function checkReflink(root: string, io: BlockIo = blockIo): Promise<DoctorCheck> {
  const base = { id: 'root.reflink', title: 'reflink', essential: false };
  const dir = nearestExisting(root);
  if (io.kind !== 'native') {
    return { ...base, status: 'warn', detail: 'not probed: needs the native addon', hint: 'build the native addon (see above)' };
  }
  try {
    if (await io.probeReflink(dir)) {
      return { ...base, status: 'ok', detail: `supported at ${dir}: copy-on-write copies share blocks`, hint: null };
    }
    return {
      ...base,
      status: 'warn',
      detail: `not supported at ${dir}: copy-on-write copies use copy_file_range`,
      hint: 'xfs (mkfs.xfs -m reflink=1) or btrfs under the pool root make block copies O(1)',
    };
  } catch (err) {
    return { ...base, status: 'warn', detail: `could not probe ${dir}: ${(err as Error).message}`, hint: 'run doctor as a user who can write the pool root' };
  }
}

export async function runDoctor(root: string, io: BlockIo = blockIo, fuse: DoctorReport['fuse'] = transportInUse()): Promise<DoctorReport> {
  const checks = [
    checkFuseDevice(),
    checkTransport(fuse),
    checkLibfuse(undefined, fuse.transport !== 'kernel'),
    checkFusermount(),
    checkNative(io),
    checkKernel(),
    checkRootFilesystem(root),
    checkHostSpace(root),
    await checkReflink(root, io),
  ];
  return { ok: checks.every((c) => !c.essential || c.status === 'ok'), root, fuse, checks };
}

export function formatReport(report: DoctorReport): string {
  const width = Math.max(...report.checks.map((c) => c.title.length));
  const lines = report.checks.map((c) => {
    const next = c.status !== 'ok' && c.hint ? ` -> ${c.hint}` : '';
    return `${c.status.padEnd(8)} ${c.title.padEnd(width)}  ${c.detail}${next}`;
  });
  lines.push(
    report.ok
      ? 'FUSE is usable: dmfs can mount layers here.'
      : 'FUSE is not usable: dmfs mount will fail until the missing items above are fixed (the other commands work).',
  );
  return lines.join('\n') + '\n';
}

export const command: Command = {
  name: 'doctor',
  summary: 'check that this host can run dmfs: FUSE and its transport, native addon, kernel, pool file system, host free space, reflink',
  usage: '[--json]',
  description:
    'Prints one line per check (ok, missing or warn) with what to do next. Exits 0 when FUSE is usable ' +
    '(device, fusermount, and libfuse.so.2 when mounts go through fuse-native), else 1. It names the FUSE ' +
    'transport mounts by this user will use and why (--json: fuse.transport and fuse.reason): kernel with the native addon as root, or as ' +
    'another user through a setuid fusermount3 with /dev/fuse openable; else libfuse 2. The native addon, the kernel, the pool file system and its free space ' +
    'only change speed and space and never fail the command. The reflink probe writes two temp files in the ' +
    'pool root (or its nearest existing parent) and removes them.',
  options: [],
  minArgs: 0,
  maxArgs: 0,
  async run(ctx) {
    const report = await runDoctor(ctx.root);
    ctx.stdout.write(ctx.json ? JSON.stringify(report) + '\n' : formatReport(report));
    return report.ok ? 0 : 1;
  },
};
