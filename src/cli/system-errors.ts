import { constants as osConstants } from 'node:os';
import { DmfsError, type ErrorCode } from '../errors';

/**
 * The last word on errors no layer below wrapped: a Node system error (a failed open,
 * write or mkdir on the host) or a liblmdb error, turned into a DmfsError that says what
 * failed and what to do next, so the CLI never prints a stack trace for a host condition.
 * Anything else stays an internal error (a bug), with its stack.
 */

interface SystemError extends Error {
  code: string;
  syscall?: string;
  path?: string;
  dest?: string;
}

function isSystemError(err: unknown): err is SystemError {
  // Duck-typed: errors from another realm (a vm context, jest) are not `instanceof Error`.
  if (typeof err !== 'object' || err === null || typeof (err as Error).message !== 'string') return false;
  const code = (err as Partial<SystemError>).code;
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) && code in osConstants.errno;
}

/** liblmdb's return codes that mean the file's structure is not what liblmdb wrote. */
const LMDB_DAMAGE = /\bMDB_(CORRUPTED|PAGE_NOTFOUND|BAD_TXN|INVALID|VERSION_MISMATCH|PANIC|BAD_VALSIZE|BAD_DBI)\b/;

const USE_YOUR_OWN_POOL = "run as root, or use a pool you own (--root DIR or DMFS_ROOT; a non-root user's default pool is $XDG_DATA_HOME/dmfs)";

const ADVICE: Record<string, { code: ErrorCode; what: string; next: (root: string) => string }> = {
  EROFS: { code: 'POOL_READ_ONLY', what: 'the file system is read-only', next: () => 'read-only commands (ls, info, check, export, diff, save) still work; remount it read-write for this one' },
  EACCES: { code: 'ACCESS_DENIED', what: 'permission denied', next: () => USE_YOUR_OWN_POOL },
  EPERM: { code: 'NOT_PERMITTED', what: 'operation not permitted', next: () => USE_YOUR_OWN_POOL },
  ENOSPC: { code: 'POOL_FULL', what: 'no space left on the host file system', next: (root) => `free space on the file system holding ${root} (df -h ${root}), then retry` },
  EDQUOT: { code: 'POOL_FULL', what: 'disk quota exceeded', next: () => 'free space within your quota, then retry' },
  ENOENT: { code: 'NOT_FOUND', what: 'no such file or directory', next: () => 'create the missing directory, or give a path that exists' },
  ENOTDIR: { code: 'NOT_DIR', what: 'a component of the path is not a directory', next: () => 'give a path whose parents are directories' },
  EISDIR: { code: 'IS_DIR', what: 'it is a directory', next: () => 'give a file path' },
  EMFILE: { code: 'IO_ERROR', what: 'too many open files', next: () => 'raise the limit (ulimit -n) and retry' },
  ENFILE: { code: 'IO_ERROR', what: 'the system has too many open files', next: () => 'retry when fewer files are open' },
  EIO: { code: 'IO_ERROR', what: 'the device reported an I/O error', next: (root) => `look at the kernel log (dmesg), then run 'dmfs check --root ${root}'` },
};

/** `err` as a DmfsError with a message for the user, or null when it is not a host or liblmdb error. */
export function explainUnwrappedError(err: unknown, root: string): DmfsError | null {
  if (isSystemError(err)) {
    const advice = ADVICE[err.code];
    const target = err.path ? ` '${err.path}'${err.dest ? ` -> '${err.dest}'` : ''}` : '';
    const what = advice?.what ?? err.message.replace(/^[A-Z0-9]+: /, '').replace(/,.*$/, '');
    const message = `${err.syscall ?? 'a system call'}${target} failed: ${what} (${err.code})${advice ? `; ${advice.next(root)}` : ''}`;
    return new DmfsError(advice?.code ?? 'IO_ERROR', message, { cause: err });
  }
  if (typeof err === 'object' && err !== null && LMDB_DAMAGE.test(String((err as Error).message))) {
    return new DmfsError(
      'METADATA_CORRUPT',
      `the pool metadata could not be read (${(err as Error).message}). Run 'dmfs check --root ${root}' for a report, then 'dmfs check --repair --from-backup --root ${root}' to restore the last metadata backup`,
      { cause: err },
    );
  }
  return null;
}
