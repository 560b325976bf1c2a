import { dmfsError } from '../errors';
import { blockIo, type ReadBlocksOptions } from '../native';
import type { DataBlock } from './block-address';
import { isHostFullError } from './metadata-env';

/** What block I/O needs of its pool. */
export interface DataBlockIoHost {
  readonly blockSizeBytes: number;
  /** The data file or device path (for messages). */
  readonly dataPath: string;
  /** Blocks of the data device per the superblock; `fresh` re-reads it (another process may have grown the pool). */
  nrBlocks(fresh: boolean): number;
  /** Says once per episode that the host file system stopped a write. */
  warnHostFull(detail: string): void;
}

/**
 * Reads and writes of whole or partial data blocks on the pool's data device, through the
 * native block path. Every block number is checked against the device first: a number
 * outside it comes from damaged metadata (METADATA_CORRUPT), never from a read of
 * something else. ENOSPC/EDQUOT from the host becomes POOL_FULL (ENOSPC to a FUSE writer,
 * not EIO).
 */
export class DataBlockIo {
  constructor(readonly fd: number, private readonly host: DataBlockIoHost) {}

  /** Fills targets[i] from block blocks[i] at offsetsInBlock[i] (gathered). `opts.mayBlock`: see BlockIo.readBlocks. */
  async readBlocks(blocks: readonly DataBlock[], offsetsInBlockBytes: readonly number[], targets: Buffer[], opts?: ReadBlocksOptions): Promise<void> {
    const bs = this.host.blockSizeBytes;
    const offsets = blocks.map((b, i) => {
      this.checkBlock(b);
      return b * bs + offsetsInBlockBytes[i];
    });
    await blockIo.readBlocks(this.fd, targets, offsets, opts);
  }

  /** Writes several (block, offset in block, data) pieces in one gathered call. */
  async writeBlocks(pieces: readonly { block: DataBlock; offset: number; data: Buffer }[]): Promise<void> {
    const bs = this.host.blockSizeBytes;
    for (const p of pieces) {
      this.checkBlock(p.block);
      if (p.offset + p.data.length > bs) throw dmfsError('INVALID', 'write crosses a block boundary');
    }
    try {
      await blockIo.writeBlocks(this.fd, pieces.map((p) => p.data), pieces.map((p) => p.block * bs + p.offset));
    } catch (err) {
      throw this.hostFullOr(err);
    }
  }

  /** Copies a whole block (native path: reflink or copy_file_range when possible). */
  async copyBlock(from: DataBlock, to: DataBlock): Promise<void> {
    this.checkBlock(from);
    this.checkBlock(to);
    const bs = this.host.blockSizeBytes;
    try {
      const n = await blockIo.copyRange(this.fd, from * bs, this.fd, to * bs, bs);
      if (n < bs) {
        // The source lies (partly) beyond the end of a short device file: the rest is zeros.
        await blockIo.writeBlocks(this.fd, [Buffer.alloc(bs - n)], [to * bs + n]);
      }
    } catch (err) {
      throw this.hostFullOr(err);
    }
  }

  /** Punches the blocks out of the data file (runs of neighbours in one call each). */
  async punch(blocks: readonly DataBlock[]): Promise<void> {
    const sorted = [...blocks].sort((a, b) => a - b);
    const bs = this.host.blockSizeBytes;
    for (let i = 0; i < sorted.length; ) {
      let j = i + 1;
      while (j < sorted.length && sorted[j] === sorted[j - 1] + 1) j++;
      await blockIo.punchHole(this.fd, sorted[i] * bs, (j - i) * bs);
      i = j;
    }
  }

  private checkBlock(block: DataBlock): void {
    const inside = (n: number) => Number.isSafeInteger(block) && block >= 0 && block < n;
    if (inside(this.host.nrBlocks(false))) return;
    const nrBlocks = this.host.nrBlocks(true);
    if (!inside(nrBlocks)) throw dmfsError('METADATA_CORRUPT', `data block ${block} is outside the data device (${nrBlocks} blocks)`);
  }

  private hostFullOr(err: unknown): unknown {
    if (!isHostFullError(err)) return err;
    this.host.warnHostFull(`writing the data file ${this.host.dataPath} failed with ENOSPC`);
    return dmfsError(
      'POOL_FULL',
      `the host file system under the pool is full (writing ${this.host.dataPath} failed with ENOSPC): free space on the host or move the pool`,
      err,
    );
  }
}
