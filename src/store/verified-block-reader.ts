import { LRUCache } from 'lru-cache';
import { dmfsError } from '../errors';
import { blockIo } from '../native';
import { asDataBlock, type DataBlock } from '../pool/block-address';
import type { ThinPool } from '../pool/thin-pool';
import type { LayerContext } from './layer-context';
import type { ReadOptions } from './layer-store';
import { firstBadSector, hasSectorCrcs, isUnwrittenRef, sectorCrcsOf, type DataRef, type WrittenRef } from './records';

/** Bytes [inBlock, inBlock + dst.length) of a data block, to land in dst; inside one block. */
export interface BlockRead {
  ref: DataRef;
  inBlock: number;
  dst: Buffer;
}

/**
 * Reads of data blocks checked against the CRCs their refs carry (per sector, or one for
 * the whole block: tag 0), for one open layer. Never hands out unverified bytes.
 */
export class VerifiedBlockReader {
  private readonly pool: ThinPool;
  private readonly bs: number;
  private readonly sectorBytes: number;
  /**
   * Tag-0 data blocks (one whole-block CRC) whose content matched when this layer last
   * read them whole: partial reads of them read only what they need. Per-sector blocks
   * verify every read, which costs no extra I/O, so they are never entered here. Made on
   * first use: only pools written before per-sector CRCs have tag-0 blocks.
   */
  private verifiedCache: LRUCache<number, true> | null = null;
  private get verified(): LRUCache<number, true> {
    return (this.verifiedCache ??= new LRUCache<number, true>({ max: 262144 }));
  }

  constructor(private readonly ctx: LayerContext) {
    this.pool = ctx.pool;
    this.bs = ctx.blockSizeBytes;
    this.sectorBytes = ctx.sectorBytes;
  }

  /** The block's content changes or the block is recycled: what was verified of it no longer holds. */
  forget(block: number): void {
    this.verifiedCache?.delete(block);
  }

  /**
   * Reads data blocks into their targets (one gathered read), never handing out
   * unverified bytes. A per-sector ref reads and verifies just the sectors covering the
   * request, straight into the target when the request is sector-aligned. A whole-block
   * ref (tag 0) is read whole and verified the first time this layer reads it; later
   * partial reads of it read only what they need. A mismatch is DATA_CORRUPT (EIO)
   * naming the block, and leaves every target zeroed. An unwritten ref reads as zeros
   * without I/O.
   */
  async read(reads: BlockRead[], opts?: ReadOptions): Promise<void> {
    const ss = this.sectorBytes;
    const blocks: DataBlock[] = [];
    const offsets: number[] = [];
    const targets: Buffer[] = [];
    /** `bytes` holds block bytes from firstSector's start; `from` is where the request starts in it. */
    const checks: { ref: WrittenRef; bytes: Buffer; firstSector: number; copyTo: { dst: Buffer; from: number } | null }[] = [];
    for (const r of reads) {
      if (isUnwrittenRef(r.ref)) {
        r.dst.fill(0);
        continue;
      }
      const end = r.inBlock + r.dst.length;
      let begin = 0;
      let stop = this.bs;
      if (hasSectorCrcs(r.ref)) {
        begin = Math.floor(r.inBlock / ss) * ss;
        stop = Math.ceil(end / ss) * ss;
      } else if (r.dst.length !== this.bs && this.verifiedCache?.has(r.ref.block)) {
        blocks.push(asDataBlock(r.ref.block));
        offsets.push(r.inBlock);
        targets.push(r.dst);
        continue;
      }
      const direct = begin === r.inBlock && stop === end;
      const bytes = direct ? r.dst : Buffer.allocUnsafe(stop - begin);
      blocks.push(asDataBlock(r.ref.block));
      offsets.push(begin);
      targets.push(bytes);
      checks.push({ ref: r.ref, bytes, firstSector: begin / ss, copyTo: direct ? null : { dst: r.dst, from: r.inBlock - begin } });
    }
    await this.pool.readBlocks(blocks, offsets, targets, opts);
    for (const c of checks) {
      const ref = c.ref;
      if (hasSectorCrcs(ref)) {
        const bad = firstBadSector(ref, c.bytes, c.firstSector, ss);
        if (bad >= 0) this.failRead(reads, ref, ` (sector ${bad})`);
      } else {
        if (blockIo.crc32c(c.bytes) !== ref.crc) this.failRead(reads, ref, '');
        this.verified.set(ref.block, true);
      }
      if (c.copyTo) c.bytes.copy(c.copyTo.dst, 0, c.copyTo.from, c.copyTo.from + c.copyTo.dst.length);
    }
  }

  /** A read found ref's content damaged: no target keeps what was read. */
  private failRead(reads: BlockRead[], ref: DataRef, where: string): never {
    this.verifiedCache?.delete(ref.block);
    for (const r of reads) r.dst.fill(0);
    throw dmfsError('DATA_CORRUPT', `data block ${ref.block}${where} of layer ${this.ctx.layerName} fails its checksum`);
  }

  /**
   * The sector CRCs an own data block will have once `slice` lands at inBlock (the caller
   * writes only the slice). Per-sector refs read (and verify) only the old bytes of the
   * sectors the slice covers partly, and keep the other sectors' CRCs; a whole-block CRC
   * can only be checked on the whole block, so a tag-0 block is read whole. Not for an
   * unwritten ref: its bytes on the device are not zeros, so its first write is whole.
   */
  async rewrittenSectorCrcs(ref: DataRef, slice: Buffer, inBlock: number): Promise<number[]> {
    const ss = this.sectorBytes;
    if (isUnwrittenRef(ref)) throw dmfsError('INVALID', `data block ${ref.block} is unwritten: write it whole`);
    if (!hasSectorCrcs(ref)) {
      const merged = Buffer.allocUnsafe(this.bs);
      await this.read([{ ref, inBlock: 0, dst: merged }]);
      slice.copy(merged, inBlock);
      return sectorCrcsOf(merged, ss);
    }
    const first = Math.floor(inBlock / ss);
    const stop = Math.ceil((inBlock + slice.length) / ss);
    const merged = Buffer.allocUnsafe((stop - first) * ss);
    const partlyCovered = new Set<number>();
    if (inBlock % ss !== 0) partlyCovered.add(first);
    if ((inBlock + slice.length) % ss !== 0) partlyCovered.add(stop - 1);
    const edges = [...partlyCovered].map((sector) => ({ ref, inBlock: sector * ss, dst: merged.subarray((sector - first) * ss, (sector - first + 1) * ss) }));
    if (edges.length) await this.read(edges);
    slice.copy(merged, inBlock - first * ss);
    const crcs = [...ref.sectorCrcs];
    crcs.splice(first, stop - first, ...sectorCrcsOf(merged, ss));
    return crcs;
  }
}
