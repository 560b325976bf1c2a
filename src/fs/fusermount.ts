/**
 * Mounting /dev/fuse as a non-root user through the setuid fusermount3 (or fusermount), the
 * way libfuse 3 does (lib/mount.c, fuse_mount_fusermount), so that the kernel transport
 * (kernel-session.ts) serves non-root mounts too:
 *
 *   1. socketpair(AF_UNIX, SOCK_STREAM): one end stays here, the other becomes the child's
 *      fd 3 (_FUSE_COMMFD=3 tells fusermount which it is).
 *   2. `fusermount3 -o OPTIONS -- MOUNTPOINT` opens /dev/fuse with the caller's file system
 *      uid, checks the mountpoint (the caller must be able to write it) and the options
 *      (non-root: nosuid,nodev forced; allow_other only with user_allow_other in
 *      /etc/fuse.conf), mount(2)s as root with fd=,rootmode=,user_id=,group_id= added, sends
 *      the device fd in one SCM_RIGHTS message carrying one data byte, and exits 0.
 *   3. Once it has exited, the message waits in our end of the socket: one non-blocking
 *      recvmsg takes the fd (native/src/fd_passing.rs; Node cannot receive fds).
 *
 * Nothing here blocks the event loop: a mountpoint under another FUSE mount served by this
 * process still gets its requests answered while fusermount stats it. The kernel queued
 * INIT on the device at mount(2); the session reads it once it watches the fd, as after a
 * root mount. Unmounting is `fusermount3 -u` (mount-table.ts unmountFuse), which a user may
 * run on mounts that carry their user_id.
 */
import { spawn } from 'node:child_process';
import { closeSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { getSystemErrorName } from 'node:util';
import { dmfsError } from '../errors';
import type { FuseDevice } from '../native';
import { readMountTable, unmountFuse } from './mount-table';

const E = osConstants.errno;

/** The child's fd of its socket end: stdio slot 3, named in _FUSE_COMMFD. */
const CHILD_COMM_FD = 3;
/** fusermount stats the mountpoint and mounts; longer than this means it hangs (a dead mount in the path). */
export const FUSERMOUNT_TIMEOUT_MS = 30_000;

/** The addon calls this needs (FuseDevice's descriptor passing). */
export type FdPassing = Pick<FuseDevice, 'socketPair' | 'receive'>;

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  timedOut: boolean;
}

/** 'EAGAIN' for -11: the name of a negative errno as the addon returns it. */
function errnoName(negErrno: number): string {
  try {
    return getSystemErrorName(negErrno);
  } catch {
    return `errno ${-negErrno}`;
  }
}

/** Runs fusermount with `commFd` as its fd 3; closes our copy of commFd once the child has its own. */
function runFusermount(fusermount: string, args: string[], commFd: number, timeoutMs: number): Promise<Exit> {
  return new Promise((resolve, reject) => {
    let child;
    try {
      // env given explicitly: the caller's environment (PATH, locale) as it is now, also
      // where `process` is a copy (jest's test environment).
      child = spawn(fusermount, args, { stdio: ['ignore', 'ignore', 'pipe', commFd], env: { ...process.env, _FUSE_COMMFD: String(CHILD_COMM_FD) } });
    } finally {
      closeSync(commFd);
    }
    let stderr = '';
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    // Settled at 'close', which follows 'error' too (a failed spawn): by then the stderr pipe is closed.
    let spawnError: Error | null = null;
    child.on('error', (err) => (spawnError ??= err));
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (spawnError) reject(dmfsError('MOUNT_FAILED', `cannot run ${fusermount}: ${spawnError.message}`, spawnError));
      else resolve({ code, signal, stderr: stderr.trim(), timedOut });
    });
  });
}

/** Ids of the mounts at `mountpoint` now. */
async function mountIdsAt(mountpoint: string): Promise<Set<number>> {
  return new Set((await readMountTable()).filter((m) => m.mountpoint === mountpoint).map((m) => m.mountId));
}

/**
 * Mounts at `mountpoint` (absolute) through `fusermount` with `options` (its -o list) and
 * returns the mounted /dev/fuse fd (close-on-exec, blocking: the caller sets O_NONBLOCK).
 * Throws MOUNT_FAILED with fusermount's own words, or FUSE_UNAVAILABLE when `diagnose`
 * (called only after a failure) names a cause on this host. On failure nothing stays
 * mounted or open: a mount fusermount made but whose fd never arrived is detached.
 */
export async function mountWithFusermount(
  dev: FdPassing,
  fusermount: string,
  mountpoint: string,
  options: string,
  diagnose: () => string | null = () => null,
  timeoutMs = FUSERMOUNT_TIMEOUT_MS,
): Promise<number> {
  const before = await mountIdsAt(mountpoint);
  const pair = Buffer.alloc(8);
  const rc = dev.socketPair(pair);
  if (rc < 0) throw dmfsError('MOUNT_FAILED', `socketpair for ${fusermount} failed: ${errnoName(rc)}`);
  const ours = pair.readInt32LE(0);
  const theirs = pair.readInt32LE(4);
  try {
    const exit = await runFusermount(fusermount, ['-o', options, '--', mountpoint], theirs, timeoutMs);
    const fd = dev.receive(ours);
    if (fd >= 0 && exit.code === 0) return fd;
    if (fd >= 0) closeSync(fd);
    // It may have mounted and then failed (or been killed) before the fd reached us: that
    // mount has no server and would answer ENOTCONN until detached.
    if (exit.code === 0 || exit.timedOut) await detachNewMount(mountpoint, before);
    const said = exit.stderr ? `: ${exit.stderr}` : '';
    if (exit.timedOut) throw dmfsError('MOUNT_FAILED', `${fusermount} did not finish within ${timeoutMs / 1000} s (killed)${said}; is a dead mount on the path to ${mountpoint}?`);
    if (exit.code === 0) {
      throw dmfsError('MOUNT_FAILED', `${fusermount} exited without passing the /dev/fuse descriptor (${fd === -E.EAGAIN ? 'nothing received' : errnoName(fd)})${said}`);
    }
    const how = exit.signal ? `killed by ${exit.signal}` : `exit ${exit.code}`;
    const cause = diagnose();
    // fusermount's messages start with its own name.
    if (cause) throw dmfsError('FUSE_UNAVAILABLE', `${cause} (${exit.stderr || `${fusermount}: ${how}`})`);
    throw dmfsError('MOUNT_FAILED', `${fusermount} failed (${how})${said || ': no message'}`);
  } finally {
    closeSync(ours);
  }
}

async function detachNewMount(mountpoint: string, before: Set<number>): Promise<void> {
  const now = await mountIdsAt(mountpoint).catch(() => new Set<number>());
  if ([...now].some((id) => !before.has(id))) await unmountFuse(mountpoint, { lazy: true }).catch(() => undefined);
}
