import * as fs from 'node:fs';

/**
 * Loop mode: host bytes new data blocks leave free on the file system under the pool, so
 * the metadata commits that follow (and the headroom it keeps, see metadata-env.ts)
 * still find room. Below it, allocation stops and writes get POOL_FULL (ENOSPC).
 */
export const HOST_RESERVE_BYTES = 8 * 1024 ** 2;
/** Host free space below which info and doctor call the host file system "nearly full" (also: under 5%). */
export const HOST_LOW_BYTES = 1024 ** 3;

/** Free space of the host file system under the pool (loop mode: the data file's directory). */
export interface HostSpace {
  path: string;
  freeBytes: number;
  totalBytes: number;
  /** full: allocation has stopped (free <= HOST_RESERVE_BYTES); low: under 5% or HOST_LOW_BYTES free. */
  state: 'ok' | 'low' | 'full';
  /** What to do, when state is not ok. */
  advice: string | null;
}


/** Classifies host free space (see HostSpace.state). */
export function describeHostSpace(dir: string, freeBytes: number, totalBytes: number, blockSizeBytes: number): HostSpace {
  let state: HostSpace['state'] = 'ok';
  if (freeBytes < HOST_RESERVE_BYTES + blockSizeBytes) state = 'full';
  else if (freeBytes < HOST_LOW_BYTES || freeBytes < totalBytes * 0.05) state = 'low';
  const advice =
    state === 'full'
      ? `the host file system is full: new data cannot be written (writes get ENOSPC, reads work). Free space on the host file system holding ${dir} (or remove layers / files in the pool), or move the pool to a larger one`
      : state === 'low'
        ? `the host file system holding ${dir} is nearly full: free space on it or move the pool before writes start failing with ENOSPC`
        : null;
  return { path: dir, freeBytes, totalBytes, state, advice };
}

/** Whether dir sits on a read-only file system (access(2) says EROFS). */
export function isOnReadOnlyFs(dir: string): boolean {
  try {
    fs.accessSync(dir, fs.constants.W_OK);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EROFS';
  }
}

/** Bytes the host has allocated to the file (st_blocks). */
export function fileAllocatedBytes(fd: number): number {
  return fs.fstatSync(fd).blocks * 512;
}

/** Bytes an unprivileged writer may still use on the file system holding dir; null when statfs fails. */
export function hostFreeBytes(dir: string): number | null {
  try {
    const s = fs.statfsSync(dir);
    return s.bavail * s.bsize;
  } catch {
    return null;
  }
}
