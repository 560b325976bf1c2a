import { constants } from 'node:os';

const E = constants.errno;

/**
 * Stable error codes of dmfs. Tests assert these, never messages.
 * Each code maps to exactly one errno (for FUSE) and one CLI exit code.
 */
export const ERROR_CODES = {
  NOT_FOUND: E.ENOENT,
  EXISTS: E.EEXIST,
  NOT_DIR: E.ENOTDIR,
  IS_DIR: E.EISDIR,
  NOT_EMPTY: E.ENOTEMPTY,
  INVALID: E.EINVAL,
  NAME_TOO_LONG: E.ENAMETOOLONG,
  POOL_FULL: E.ENOSPC,
  LAYER_FULL: E.ENOSPC,
  FILE_TOO_BIG: E.EFBIG,
  READ_ONLY_LAYER: E.EROFS,
  LAYER_IN_USE: E.EBUSY,
  LAYER_HAS_CHILDREN: E.EBUSY,
  LAYER_NOT_FOUND: E.ENOENT,
  LAYER_EXISTS: E.EEXIST,
  WRONG_LAYER_KIND: E.EINVAL,
  NO_XATTR: E.ENODATA,
  XATTR_EXISTS: E.EEXIST,
  XATTR_RANGE: E.ERANGE,
  NOT_PERMITTED: E.EPERM,
  ACCESS_DENIED: E.EACCES,
  CROSS_DEVICE: E.EXDEV,
  TOO_MANY_LINKS: E.EMLINK,
  LOOP: E.ELOOP,
  METADATA_CORRUPT: E.EIO,
  DATA_CORRUPT: E.EIO,
  IO_ERROR: E.EIO,
  POOL_NOT_FOUND: E.ENOENT,
  POOL_EXISTS: E.EEXIST,
  POOL_LOCKED: E.EBUSY,
  POOL_FORMAT: E.EPROTO,
  BAD_OPTION: E.EINVAL,
  BAD_CONFIG: E.EINVAL,
  BAD_IMAGE: E.EINVAL,
  UNSAFE_PATH: E.EPERM,
  DEVICE_HAS_FILESYSTEM: E.EBUSY,
  NOT_SUPPORTED: E.EOPNOTSUPP,
  /** lseek SEEK_DATA / SEEK_HOLE at or past the end of the file, or SEEK_DATA with only holes after the offset. */
  PAST_END_OF_FILE: E.ENXIO,
  /** An operation this file system leaves out on purpose (FUSE then stops asking, e.g. FLUSH). */
  NOT_IMPLEMENTED: E.ENOSYS,
  NATIVE_UNAVAILABLE: E.ENOSYS,
  FUSE_UNAVAILABLE: E.ENODEV,
  MOUNT_FAILED: E.EIO,
  NOT_MOUNTED: E.EINVAL,
  USAGE: E.EINVAL,
  POOL_READ_ONLY: E.EROFS,
  DATA_DEVICE_SHORT: E.EIO,
  /** A path the user named (output, mountpoint, import source) resolves into the pool, or contains it. */
  PATH_IN_POOL: E.EINVAL,
  /** A registry refused the request (401/403, or its token server refused the credentials). */
  REGISTRY_AUTH: E.EACCES,
  /** A registry answered something the distribution spec does not allow, or a server error. */
  REGISTRY_ERROR: E.EPROTO,
  /** No connection to the registry (refused, unknown host, timed out, cut and not resumable). */
  REGISTRY_UNREACHABLE: E.EHOSTUNREACH,
  /** TLS with the registry failed: an unverified certificate, or a server without TLS. */
  REGISTRY_TLS: E.EPROTO,
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

/** Codes that are the caller's fault; the CLI exits 2 for them (usage / bad input). */
const USAGE_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'USAGE', 'BAD_OPTION', 'BAD_CONFIG', 'INVALID', 'NAME_TOO_LONG', 'WRONG_LAYER_KIND',
  'PATH_IN_POOL',
]);

/**
 * The one error class of dmfs: a stable string `code`, the errno derived from it,
 * and the lower-level `cause` kept when wrapping.
 */
export class DmfsError extends Error {
  readonly code: ErrorCode;
  readonly errno: number;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DmfsError';
    this.code = code;
    this.errno = ERROR_CODES[code];
  }

  /** CLI exit code: 2 for usage/bad input, 1 for everything else. */
  get exitCode(): number {
    return USAGE_CODES.has(this.code) ? 2 : 1;
  }
}

export function dmfsError(code: ErrorCode, message: string, cause?: unknown): DmfsError {
  return new DmfsError(code, message, cause === undefined ? undefined : { cause });
}

export function isDmfsError(err: unknown, code?: ErrorCode): err is DmfsError {
  return err instanceof DmfsError && (code === undefined || err.code === code);
}

const ERRNO_BY_NODE_CODE: Record<string, number> = Object.fromEntries(
  Object.entries(E).map(([name, value]) => [name, value]),
);

/** Positive errno for any thrown value: DmfsError by code, Node system errors by their code, else EIO. */
export function errnoOf(err: unknown): number {
  if (err instanceof DmfsError) return err.errno;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && code in ERRNO_BY_NODE_CODE) return ERRNO_BY_NODE_CODE[code];
  return E.EIO;
}
