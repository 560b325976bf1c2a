/**
 * Keeps every process from opening the pool's LMDB environment while another one commits.
 *
 * Why: lmdb-js 2.9's LMDB (mdb_env_open2) reads the newest meta page when a process opens
 * the environment and, a little later, stores that meta page's txnid into the lock file's
 * shared "last committed txnid", whatever was committed in between. A commit by another
 * process inside that window moves the shared txnid back by one; the next write transaction
 * of any process then starts from the older meta page and commits over the newer one. The
 * newer commit is lost although its writer was told it committed, and pages that readers of
 * the lost snapshot still use are handed out again (stale reads, MDB_BAD_TXN, segfaults).
 * Two bare lmdb-js processes reproduce it (one committing in a loop, one opening the
 * environment); in dmfs it showed as fsynced writes lost when `dmfs check` opened the pool
 * beside a daemon that was serving writes.
 *
 * The rule: every write transaction holds a shared flock on `metadata/lmdb-open.lock` from
 * its begin to its commit, and every opening of the environment (read-only ones too: they
 * store the txnid as well) holds an exclusive one. So no open ever overlaps a commit, and the
 * txnid an open stores is the newest. Cost: two flock calls per commit (~3.5 us measured on
 * the 2-core CI VM, against ~11 us for the commit itself).
 *
 * flock needs the native addon. Without it (DMFS_NATIVE=off) the lock does nothing and
 * processes must not open a pool that another process writes: `dmfs doctor` says so.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { dmfsError } from '../errors';
import { loadFileLock, type FileLockMode } from '../native';

export const ENV_OPEN_LOCK_FILE = 'lmdb-open.lock';

type FlockFn = NonNullable<ReturnType<typeof loadFileLock>>;

interface LockFile {
  /** -1: no lock file (read-only file system, or no addon): locking is skipped. */
  fd: number;
  /** The addon's flock, found once (per commit it would cost more than the flock itself); null with fd -1. */
  flock: FlockFn | null;
  users: number;
  /** What this process holds now, and how many nested holders share it. */
  held: FileLockMode;
  depth: number;
}

/** One descriptor per metadata directory and process: flock locks belong to the open file, so two would deadlock each other. */
const lockFiles = new Map<string, LockFile>();

export class EnvOpenLock {
  private released = false;

  private constructor(private readonly key: string, private readonly file: LockFile) {}

  /** The lock of the environment in `metadataDir` (shared by every MetadataEnv of this process on it); release() when closed. */
  static acquire(metadataDir: string, readOnly: boolean): EnvOpenLock {
    const key = path.resolve(metadataDir);
    let file = lockFiles.get(key);
    if (!file) {
      const flock = loadFileLock();
      const fd = flock ? openLockFile(key, readOnly) : -1;
      file = { fd, flock: fd >= 0 ? flock : null, users: 0, held: 0, depth: 0 };
      lockFiles.set(key, file);
    }
    file.users++;
    return new EnvOpenLock(key, file);
  }

  /** Runs fn (an mdb_env_open) while no other process commits. */
  whileOpening<T>(fn: () => T): T {
    return this.holding(2, fn);
  }

  /** Runs fn (one write transaction, begin to commit) while no other process opens the environment. */
  whileCommitting<T>(fn: () => T): T {
    return this.holding(1, fn);
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    if (--this.file.users > 0) return;
    lockFiles.delete(this.key);
    if (this.file.fd >= 0) fs.closeSync(this.file.fd);
  }

  private holding<T>(mode: FileLockMode, fn: () => T): T {
    const file = this.file;
    const flock = file.flock;
    if (flock === null) return fn();
    // Nested (a commit inside an open, or the reverse): the outer hold already keeps the
    // other processes out; changing an flock lock in place is not atomic, so it is not done.
    if (file.depth > 0) {
      file.depth++;
      try {
        return fn();
      } finally {
        file.depth--;
      }
    }
    setLock(flock, file.fd, mode, this.key);
    file.held = mode;
    file.depth = 1;
    try {
      return fn();
    } finally {
      file.depth = 0;
      file.held = 0;
      setLock(flock, file.fd, 0, this.key);
    }
  }
}

const EWOULDBLOCK = 11;
/**
 * Longest wait for the lock: opens hold it for milliseconds, so this only ends a stopped or
 * stuck holder's hold on us. DMFS_OPEN_LOCK_WAIT_MS changes it (tests).
 */
function lockWaitMs(): number {
  const v = Number(process.env.DMFS_OPEN_LOCK_WAIT_MS);
  return Number.isFinite(v) && v >= 0 ? v : 30_000;
}
const sleeper = new Int32Array(new SharedArrayBuffer(4));

function setLock(lock: FlockFn, fd: number, mode: FileLockMode, dir: string): void {
  let rc = lock(fd, mode);
  if (rc === -EWOULDBLOCK) {
    // Synchronous on purpose (a commit is): short sleeps, growing to 5 ms.
    const deadline = Date.now() + lockWaitMs();
    for (let pause = 0.2; rc === -EWOULDBLOCK && Date.now() < deadline; pause = Math.min(pause * 2, 5)) {
      Atomics.wait(sleeper, 0, 0, pause);
      rc = lock(fd, mode);
    }
  }
  if (rc === -EWOULDBLOCK) {
    throw dmfsError(
      'POOL_LOCKED',
      `another process has held ${path.join(dir, ENV_OPEN_LOCK_FILE)} for ${lockWaitMs() / 1000} s while opening the pool's metadata (stopped, or stuck on I/O?): ` +
        `${mode === 2 ? 'the pool was not opened' : 'this change was not committed'}. Find it with: fuser -v ${path.join(dir, ENV_OPEN_LOCK_FILE)}`,
    );
  }
  if (rc < 0) {
    throw dmfsError('IO_ERROR', `cannot ${mode ? 'lock' : 'unlock'} ${path.join(dir, ENV_OPEN_LOCK_FILE)} (errno ${-rc}): metadata is not opened or committed without it`);
  }
}

function openLockFile(dir: string, readOnly: boolean): number {
  const file = path.join(dir, ENV_OPEN_LOCK_FILE);
  try {
    // Created by read-only opens too where they can: a writer may start after them.
    return fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (readOnly && (code === 'EROFS' || code === 'EACCES')) {
      try {
        return fs.openSync(file, 'r');
      } catch {
        // A read-only file system without the file: no process can write there, so there
        // is no commit to keep apart from.
        return -1;
      }
    }
    throw dmfsError('IO_ERROR', `cannot open ${file}: ${(err as Error).message}`, err);
  }
}
