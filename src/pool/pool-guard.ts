/**
 * Is a user-named path inside the pool? The guard every command runs on a path it is
 * about to write (an output file or directory, a mountpoint) or to read as a whole tree
 * (an import source), so that nothing a user types can overwrite or mount over the pool's
 * own files (data file, metadata, run records, backups).
 *
 * Contract of `assertOutsidePool(poolRoot, target, what, opts)`:
 * - The target is resolved as the kernel would resolve it for open(2)/rename(2): component
 *   by component from the current directory, following every symlink (dangling ones too:
 *   writing through a dangling link creates its target), with `..` taken after the symlink
 *   before it is followed (so `link/../x` is not `x`). Components that do not exist yet are
 *   appended as they are.
 * - Refused (PATH_IN_POOL, exit 2) when the resolved target is the pool root or below it;
 *   when the target, or its nearest existing ancestor, has the st_dev+st_ino of a file or
 *   directory of the pool (a hard link to a pool file, a bind mount of a pool directory);
 *   when it is a block device with the same st_rdev as one of `opts.extraPaths` (direct
 *   mode's data device under another name); and with `opts.refuseAncestor` (directory
 *   outputs that get filled, mountpoints that get covered, import sources that get read
 *   whole) when the pool root is below the target.
 * - Nothing is created or changed; the caller writes only after this returns. The check
 *   is not atomic with the write (a path changed in between by someone else is not caught):
 *   it guards against mistakes, not against an attacker who owns the directories.
 *
 * Cost: one walk of the pool directory (a handful of files: data file, data.mdb, lock.mdb,
 * FORMAT, run/*, backups), a few lstat calls per target component.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { dmfsError } from '../errors';

/** Symlinks followed while resolving one path before giving up, as Linux's MAXSYMLINKS. */
const MAX_SYMLINKS = 40;

export interface ResolvedPath {
  /** Absolute path with every existing component's symlinks resolved. */
  realPath: string;
  /** The longest prefix of realPath that exists (realPath itself when `exists`). */
  existingPath: string;
  exists: boolean;
}

function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/** Resolves `p` the way the kernel walks it (see the module contract); throws LOOP on a symlink cycle. */
export function resolvePath(p: string): ResolvedPath {
  const start = path.isAbsolute(p) ? p : `${process.cwd()}/${p}`;
  const pending = start.split('/');
  let cur = '/';
  let existingPath = '/';
  let missing = false;
  let opaque = false;
  let links = 0;
  while (pending.length) {
    const comp = pending.shift() as string;
    if (comp === '' || comp === '.') continue;
    if (comp === '..') {
      cur = path.dirname(cur);
      if (!missing) existingPath = cur;
      continue;
    }
    const next = cur === '/' ? `/${comp}` : `${cur}/${comp}`;
    if (missing) {
      cur = next;
      continue;
    }
    let st: fs.Stats;
    try {
      st = fs.lstatSync(next);
    } catch (err) {
      cur = next;
      if (isMissing(err)) {
        missing = true;
        continue;
      }
      // There but unreadable (a dead FUSE mount: ENOTCONN; EACCES; EIO): nothing below it
      // can be looked at, so the rest is taken as written. Not a symlink (lstat of a
      // symlink itself does not fail this way), so not a way into the pool.
      existingPath = cur;
      opaque = true;
      break;
    }
    if (st.isSymbolicLink()) {
      if (++links > MAX_SYMLINKS) throw dmfsError('LOOP', `too many symbolic links resolving ${p}`);
      const target = fs.readlinkSync(next);
      pending.unshift(...target.split('/'));
      if (path.isAbsolute(target)) cur = '/';
      existingPath = cur;
      continue;
    }
    cur = next;
    existingPath = cur;
  }
  if (opaque) {
    for (const comp of pending) {
      if (comp === '' || comp === '.') continue;
      missing = true;
      cur = comp === '..' ? path.dirname(cur) : path.join(cur, comp);
    }
  }
  return { realPath: cur, existingPath, exists: !missing };
}

function isInside(child: string, parent: string): boolean {
  return child === parent || child.startsWith(parent === '/' ? '/' : `${parent}/`);
}

interface PoolIdentity {
  realRoot: string;
  /** `${dev}:${ino}` of every file and directory of the pool, the root included. */
  inodes: Set<string>;
  /** st_rdev of block devices the pool uses (direct mode's data device). */
  rdevs: Set<bigint>;
}

const key = (st: fs.BigIntStats) => `${st.dev}:${st.ino}`;

function poolIdentity(poolRoot: string, extraPaths: string[]): PoolIdentity {
  const realRoot = resolvePath(poolRoot).realPath;
  const inodes = new Set<string>();
  const rdevs = new Set<bigint>();
  let rootDev: bigint | null = null;
  const walk = (dir: string) => {
    let st: fs.BigIntStats;
    try {
      st = fs.lstatSync(dir, { bigint: true });
    } catch {
      return; // gone meanwhile, or unreadable: nothing there to protect by identity
    }
    inodes.add(key(st));
    rootDev ??= st.dev;
    // Never descend into another filesystem mounted inside the pool (a mount there is
    // itself what this guard refuses; walking it could take forever).
    if (!st.isDirectory() || st.dev !== rootDev) return;
    let names: string[];
    try {
      names = fs.readdirSync(dir);
    } catch {
      return;
    }
    for (const name of names) walk(path.join(dir, name));
  };
  walk(realRoot);
  for (const extra of extraPaths) {
    try {
      const st = fs.statSync(extra, { bigint: true });
      inodes.add(key(st));
      if (st.isBlockDevice()) rdevs.add(st.rdev);
    } catch {
      /* missing or unreadable: nothing to compare with */
    }
  }
  return { realRoot, inodes, rdevs };
}

export interface GuardOptions {
  /** Paths outside the root that belong to the pool (direct mode's data device). */
  extraPaths?: string[];
  /** Also refuse a target that contains the pool (directory outputs, mountpoints, import sources). */
  refuseAncestor?: boolean;
}

/**
 * Throws PATH_IN_POOL when `target` resolves into the pool rooted at `poolRoot` (see the
 * module contract). `what` names the target in the message ("output", "mountpoint").
 * Returns the resolution, for callers that want the real path.
 */
export function assertOutsidePool(poolRoot: string, target: string, what: string, opts: GuardOptions = {}): ResolvedPath {
  const resolved = resolvePath(target);
  const pool = poolIdentity(poolRoot, opts.extraPaths ?? []);
  const R = pool.realRoot;
  const refuse = (why: string) => dmfsError('PATH_IN_POOL', `${what} ${target} ${why}; refused, nothing was changed. Choose a path outside the pool.`);
  if (isInside(resolved.realPath, R)) {
    if (resolved.realPath === R) throw refuse(`is the pool directory ${R}`);
    const via = path.resolve(target) === resolved.realPath ? '' : ` (it resolves to ${resolved.realPath})`;
    throw refuse(`is inside the pool ${R}${via}`);
  }
  if (opts.refuseAncestor && isInside(R, resolved.realPath)) throw refuse(`contains the pool ${R}`);
  // Identity checks catch what path resolution cannot see: hard links and bind mounts.
  const probe = (p: string, how: string) => {
    let st: fs.BigIntStats;
    try {
      st = fs.statSync(p, { bigint: true });
    } catch {
      return; // missing or unreadable (a dead mount): not a file of the pool one can reach
    }
    if (pool.inodes.has(key(st))) throw refuse(how);
    if (st.isBlockDevice() && pool.rdevs.has(st.rdev)) throw refuse(`is the data device of the pool ${R}`);
  };
  if (resolved.exists) probe(resolved.realPath, `is the same file as one of the pool ${R} (a hard link or a bind mount of it)`);
  else probe(resolved.existingPath, `is in a directory of the pool ${R} (${resolved.existingPath} is a bind mount of it)`);
  return resolved;
}

/**
 * Throws PATH_IN_POOL when the open descriptor `fd` (a command's standard output, which the
 * shell opened: `dmfs export X -o - >> POOL/data/data-file`) is a file of the pool. With
 * `>` the shell has already truncated it; refusing still keeps the command from writing
 * into it, and the message says to check the pool.
 */
export function assertFdOutsidePool(poolRoot: string, fd: number, what: string, opts: GuardOptions = {}): void {
  let st: fs.BigIntStats;
  try {
    st = fs.fstatSync(fd, { bigint: true });
  } catch {
    return;
  }
  if (!st.isFile() && !st.isBlockDevice()) return; // terminals, pipes, sockets, /dev/null
  const pool = poolIdentity(poolRoot, opts.extraPaths ?? []);
  if (pool.inodes.has(key(st)) || (st.isBlockDevice() && pool.rdevs.has(st.rdev))) {
    throw dmfsError(
      'PATH_IN_POOL',
      `${what} is a file of the pool ${pool.realRoot}; refused, nothing was written to it. ` +
        "If the shell truncated it ('>'), the pool is damaged: run 'dmfs check'.",
    );
  }
}
