/**
 * Why a FUSE mount cannot work on this host, in words that say what to do. libfuse 2
 * answers every failure with "fuse failed" (its own line on stderr aside), and open(2) of
 * /dev/fuse gives a bare errno; the user needs the real cause: /dev/fuse missing, not
 * openable by this user, no usable fusermount for a non-root mount, allow_other not
 * permitted. Checked after a mount failed (never on the fast path of a mount that works),
 * and by the choice of transport (kernelFusermount).
 *
 * How libfuse 2 mounts (lib/mount.c): it opens /dev/fuse itself and tries mount(2); a
 * failed open is final (no fusermount fallback), so a non-root user needs a /dev/fuse it
 * may open (mode 0666, the usual one) as well as a setuid-root fusermount, looked up in
 * FUSERMOUNT_DIR (/usr/bin) and then on PATH. The kernel transport, as non-root, runs
 * fusermount3 itself (src/fs/fusermount.ts), which opens /dev/fuse as the calling user: it
 * needs the same two things.
 */
import { accessSync, closeSync, constants as fsConstants, openSync, readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { S_ISUID } from './posix-rules';

/** What the diagnosis looks at; tests point it elsewhere. */
export interface FuseHostView {
  devFusePath: string;
  /** The effective uid of the mounting process. */
  uid: number;
  /** Where libfuse 2 looks for fusermount, in order. */
  fusermountDirs: string[];
  fuseConfPath: string;
}

export function defaultFuseHostView(): FuseHostView {
  return {
    devFusePath: '/dev/fuse',
    uid: process.geteuid?.() ?? process.getuid?.() ?? 0,
    fusermountDirs: ['/usr/bin', ...(process.env.PATH ?? '').split(':').filter(Boolean)],
    fuseConfPath: '/etc/fuse.conf',
  };
}

const SETUP_HOST = 'mount-helpers/setup-host';

/** The problem with the FUSE device itself (missing, not a device, not openable), or null. */
export function devFuseProblem(host: FuseHostView = defaultFuseHostView()): string | null {
  const dev = host.devFusePath;
  let isCharDevice: boolean;
  try {
    isCharDevice = statSync(dev).isCharacterDevice();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      return `${dev} is missing: load the fuse module (modprobe fuse), or in a container run it with --device /dev/fuse --cap-add SYS_ADMIN (see ${SETUP_HOST})`;
    }
    return `cannot stat ${dev}: ${code ?? (err as Error).message}`;
  }
  if (!isCharDevice) return `${dev} is not a character device: recreate it (mknod ${dev} c 10 229; chmod 0666 ${dev}) or load the fuse module`;
  try {
    closeSync(openSync(dev, fsConstants.O_RDWR));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM') {
      let mode = '';
      try {
        mode = ` (mode ${(statSync(dev).mode & 0o7777).toString(8).padStart(4, '0')})`;
      } catch {
        /* the mode is only a detail of the message */
      }
      return host.uid === 0
        ? `${dev}: permission denied${mode} even for root: the container or a security module blocks it (run the container with --device /dev/fuse)`
        : `${dev}: permission denied${mode} for uid ${host.uid}: run dmfs mount as root, or let users mount: chmod 0666 ${dev} (its usual mode) with fuse3 installed so fusermount works (${SETUP_HOST})`;
    }
    if (code === 'ENODEV' || code === 'ENXIO') return `${dev} has no driver behind it: load the fuse module (modprobe fuse)`;
    return `cannot open ${dev}: ${code ?? (err as Error).message}`;
  }
  return null;
}

/** What libfuse 2 runs for a non-root mount. */
export const LIBFUSE2_FUSERMOUNTS: readonly string[] = ['fusermount'];
/**
 * What the kernel transport runs for a non-root mount, in order: fusermount3 (fuse3), as
 * libfuse 3 does, then fusermount (a link to it, or fuse 2's, which speaks the same
 * protocol and takes the same options).
 */
export const KERNEL_FUSERMOUNTS: readonly string[] = ['fusermount3', 'fusermount'];

/** The first of `names` found executable in host.fusermountDirs (each name in every dir before the next name), or null. */
export function findFusermount(host: FuseHostView = defaultFuseHostView(), names: readonly string[] = LIBFUSE2_FUSERMOUNTS): string | null {
  for (const name of names) {
    for (const dir of host.fusermountDirs) {
      const file = path.join(dir, name);
      try {
        accessSync(file, fsConstants.X_OK);
        return file;
      } catch {
        /* next */
      }
    }
  }
  return null;
}

/** Why `fusermount` cannot mount for a non-root user (not setuid root), or null. */
export function fusermountSetuidProblem(fusermount: string): string | null {
  try {
    const st = statSync(fusermount); // follows the link to fusermount3
    if (st.uid !== 0 || !(st.mode & S_ISUID)) {
      return `${fusermount} is not setuid root, so a non-root user cannot mount with it: reinstall fuse3 (or chmod u+s it as root), or run dmfs mount as root`;
    }
  } catch (err) {
    return `cannot stat ${fusermount}: ${(err as Error).message}`;
  }
  return null;
}

/** Why a non-root user may not use allow_other here (no user_allow_other in fuse.conf), or null. */
export function allowOtherProblem(host: FuseHostView = defaultFuseHostView()): string | null {
  if (host.uid === 0) return null;
  let conf = '';
  try {
    conf = readFileSync(host.fuseConfPath, 'utf8');
  } catch {
    /* missing: the option is not set */
  }
  if (/^\s*user_allow_other\s*$/m.test(conf)) return null;
  return `--allow-other by a non-root user needs 'user_allow_other' in ${host.fuseConfPath}: add that line as root, or mount as root`;
}

/**
 * The setuid fusermount a non-root kernel-transport mount goes through, or why there is
 * none usable: /dev/fuse must be openable by this user too (fusermount opens it with the
 * caller's file system uid, util/fusermount.c), and `allowOther` needs user_allow_other.
 */
export function kernelFusermount(opts: { allowOther?: boolean } = {}, host: FuseHostView = defaultFuseHostView()): { fusermount: string } | { problem: string } {
  const dev = devFuseProblem(host);
  if (dev) return { problem: dev };
  const fusermount = findFusermount(host, KERNEL_FUSERMOUNTS);
  if (!fusermount) {
    return {
      problem: `no ${KERNEL_FUSERMOUNTS.join(' or ')} for a non-root mount (looked in ${host.fusermountDirs[0]} and on PATH): install fuse3 (${SETUP_HOST} does), or run dmfs mount as root`,
    };
  }
  const problem = fusermountSetuidProblem(fusermount) ?? (opts.allowOther ? allowOtherProblem(host) : null);
  return problem ? { problem } : { fusermount };
}

/**
 * The cause of a failed FUSE mount through libfuse 2 that this host shows, or null when
 * nothing here explains it (then libfuse's own message is all there is).
 */
export function libfuseMountProblem(opts: { allowOther?: boolean }, host: FuseHostView = defaultFuseHostView()): string | null {
  const dev = devFuseProblem(host);
  if (dev) return dev;
  if (host.uid === 0) return null; // root mounts with mount(2); fusermount is not needed
  const fusermount = findFusermount(host);
  if (!fusermount) {
    return `no fusermount for a non-root mount (libfuse 2 looks in ${host.fusermountDirs[0]} and on PATH): install fuse3 and link fusermount to fusermount3 (${SETUP_HOST} does both), or run dmfs mount as root`;
  }
  return fusermountSetuidProblem(fusermount) ?? (opts.allowOther ? allowOtherProblem(host) : null);
}
