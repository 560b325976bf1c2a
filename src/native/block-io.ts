/**
 * The one native seam: byte moves on file descriptors, offsets and lengths in, counts out.
 * It knows nothing of layers or pools. `src/native/index.ts` returns the Rust addon when it
 * loads, else the pure TypeScript fallback with this identical signature.
 *
 * Every method validates its arguments (fd an integer in [0, 2^31 - 1], offsets/lengths
 * non-negative safe integers with offset + length <= 2^53 - 1, buffers Uint8Arrays (Buffer),
 * buffers/offsets arrays of equal length) and throws a DmfsError(INVALID) on bad ones, or an
 * IO_ERROR on a failed system call whose `cause` is a Node-style system error (`code`
 * 'EBADF', negative `errno`, `syscall`). Never crashes. Promise-returning methods reject,
 * never throw synchronously. Offsets need no alignment: alignment only decides whether
 * copyRange can reflink.
 */
export interface ReadBlocksOptions {
  mayBlock?: boolean;
}

export interface BlockIo {
  /** 'native' when the Rust addon is loaded, 'fallback' otherwise. */
  readonly kind: 'native' | 'fallback';
  /** Why the addon is not loaded (null when it is). */
  readonly unavailableReason: string | null;

  /**
   * Copies lengthBytes from fdIn at inOffsetBytes to fdOut at outOffsetBytes. Tries
   * FICLONERANGE (reflink) when offsets and length are aligned to the file system block,
   * then copy_file_range, then pread/pwrite. Runs off the JS thread. Returns bytes copied
   * (short only at EOF of fdIn; bytes past EOF are not written). Overlapping ranges in one
   * file are INVALID. Works on regular files and block devices (no reflink on the latter).
   */
  copyRange(fdIn: number, inOffsetBytes: number, fdOut: number, outOffsetBytes: number, lengthBytes: number): Promise<number>;

  /**
   * Gathered read: fills buffers[i] from offsetsBytes[i] (preadv per contiguous run). Returns
   * total bytes read; a short read at EOF leaves the rest of that buffer untouched.
   * `opts.mayBlock`: the caller has nothing else to do meanwhile, so a read that must wait
   * for the disk may wait on the calling thread instead of a pool thread (one hand-off less).
   */
  readBlocks(fd: number, buffers: Buffer[], offsetsBytes: number[], opts?: ReadBlocksOptions): Promise<number>;

  /** Gathered write: writes buffers[i] at offsetsBytes[i] (pwritev per contiguous run). Returns total bytes written. */
  writeBlocks(fd: number, buffers: Buffer[], offsetsBytes: number[]): Promise<number>;

  /**
   * fallocate(PUNCH_HOLE | KEEP_SIZE): the range reads as zeros and its blocks go back to the
   * file system; the file size is unchanged. Resolves false when the file system or the
   * fallback cannot punch (nothing changed). A zero length punches nothing (true on the addon).
   */
  punchHole(fd: number, offsetBytes: number, lengthBytes: number): Promise<boolean>;

  /** CRC-32C (Castagnoli) of data, continuing from seed (default 0). Synchronous: cheap. */
  crc32c(data: Buffer, seed?: number): number;

  /**
   * True when FICLONERANGE works between two files in directory dirPath (probe with two temp
   * files, removed afterwards). Rejects IO_ERROR when dirPath is missing, not a directory or
   * not writable; always false on the fallback.
   */
  probeReflink(dirPath: string): Promise<boolean>;
}
