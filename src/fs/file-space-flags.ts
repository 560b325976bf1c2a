/**
 * Linux's fallocate(2) mode flags and lseek(2) whence values as FUSE carries them
 * (FUSE_FALLOCATE, FUSE_LSEEK), decoded into the store's terms. The kernel's VFS checks
 * the same rules before it asks (vfs_fallocate); they are checked again here because the
 * table is also called by tests and by other transports.
 */
import { dmfsError } from '../errors';
import type { FallocateHow } from '../store/layer-store';

/** <linux/falloc.h> */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_COLLAPSE_RANGE = 0x08;
export const FALLOC_FL_ZERO_RANGE = 0x10;
export const FALLOC_FL_INSERT_RANGE = 0x20;

/** <unistd.h> whence values the file system answers; SEEK_SET / CUR / END are the kernel's own. */
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

const KNOWN_FLAGS = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_ZERO_RANGE | FALLOC_FL_INSERT_RANGE;

/**
 * What fallocate mode `mode` asks, as ext4 takes it: unknown flags (NO_HIDE_STALE,
 * UNSHARE_RANGE, ...) and PUNCH_HOLE without KEEP_SIZE or with ZERO_RANGE are
 * NOT_SUPPORTED (EOPNOTSUPP); COLLAPSE_RANGE and INSERT_RANGE with any other flag are INVALID.
 */
export function fallocateHowOf(mode: number): FallocateHow {
  if ((mode & ~KNOWN_FLAGS) !== 0) throw dmfsError('NOT_SUPPORTED', `fallocate flags 0x${(mode >>> 0).toString(16)} are not supported`);
  const keepSize = (mode & FALLOC_FL_KEEP_SIZE) !== 0;
  const rest = mode & ~FALLOC_FL_KEEP_SIZE;
  switch (rest) {
    case 0:
      return { mode: 'allocate', keepSize };
    case FALLOC_FL_PUNCH_HOLE:
      if (!keepSize) throw dmfsError('NOT_SUPPORTED', 'FALLOC_FL_PUNCH_HOLE needs FALLOC_FL_KEEP_SIZE');
      return { mode: 'punch-hole', keepSize };
    case FALLOC_FL_ZERO_RANGE:
      return { mode: 'zero-range', keepSize };
    case FALLOC_FL_COLLAPSE_RANGE:
    case FALLOC_FL_INSERT_RANGE:
      if (keepSize) throw dmfsError('INVALID', 'FALLOC_FL_COLLAPSE_RANGE and FALLOC_FL_INSERT_RANGE take no other flag');
      return { mode: rest === FALLOC_FL_COLLAPSE_RANGE ? 'collapse-range' : 'insert-range', keepSize: false };
    default:
      if ((rest & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE)) !== 0) throw dmfsError('INVALID', 'FALLOC_FL_COLLAPSE_RANGE and FALLOC_FL_INSERT_RANGE take no other flag');
      throw dmfsError('NOT_SUPPORTED', 'FALLOC_FL_PUNCH_HOLE and FALLOC_FL_ZERO_RANGE exclude each other');
  }
}

/** SEEK_DATA / SEEK_HOLE as the store's seekData asks them; any other whence is INVALID. */
export function seekWhatOf(whence: number): 'data' | 'hole' {
  if (whence === SEEK_DATA) return 'data';
  if (whence === SEEK_HOLE) return 'hole';
  throw dmfsError('INVALID', `lseek whence ${whence} is answered by the kernel, not the file system`);
}
