import { asDataBlock, type DataBlock } from './block-address';
import { packUint48, unpackUint48 } from './codec';
import type { MetadataEnv, Table } from './metadata-env';

/** Bits per space-map chunk record: 4 KiB of bitmap covers 32768 data blocks. */
export const BLOCKS_PER_CHUNK = 32768;
const COUNTER_KEY = 'used';

/**
 * Which data blocks are in use: a bitmap in the metadata environment, one record per
 * chunk of 32768 blocks (an absent chunk is all free), plus a used-blocks counter.
 * Knows blocks only. Every method must run inside `MetadataEnv.txn`, so allocation and
 * the mapping that uses a block commit together.
 */
export class SpaceMap {
  private readonly chunks: Table;
  private readonly counters: Table;
  /** Where the next search starts (not persisted: only a hint). */
  private searchFrom = 0;

  constructor(env: MetadataEnv, private nrBlocks: number) {
    this.chunks = env.table('space-map');
    this.counters = env.table('space-counters');
  }

  get totalBlocks(): number {
    return this.nrBlocks;
  }

  /** Grows the device (pool resize / auto-extend). Shrinking is not supported. */
  setTotalBlocks(nrBlocks: number): void {
    this.nrBlocks = nrBlocks;
  }

  usedBlocks(): number {
    return unpackUint48(this.counters.get(COUNTER_KEY));
  }

  private setUsed(n: number): void {
    this.counters.put(COUNTER_KEY, packUint48(n));
  }

  private chunk(index: number): Buffer {
    const raw = this.chunks.get(index);
    return raw ? Buffer.from(raw) : Buffer.alloc(BLOCKS_PER_CHUNK / 8);
  }

  isUsed(block: DataBlock): boolean {
    const raw = this.chunks.get(Math.floor(block / BLOCKS_PER_CHUNK));
    if (!raw) return false;
    const bit = block % BLOCKS_PER_CHUNK;
    return (raw[bit >> 3] & (1 << (bit & 7))) !== 0;
  }

  /**
   * Marks up to `count` free blocks used and returns them. Returns fewer (possibly none)
   * when the device is full: "empty" is not failure, the caller decides.
   */
  allocate(count: number): DataBlock[] {
    const out: DataBlock[] = [];
    const nrChunks = Math.ceil(this.nrBlocks / BLOCKS_PER_CHUNK);
    if (nrChunks === 0 || count <= 0) return out;
    let chunkIndex = Math.floor(this.searchFrom / BLOCKS_PER_CHUNK) % nrChunks;
    for (let visited = 0; visited <= nrChunks && out.length < count; visited++) {
      const base = chunkIndex * BLOCKS_PER_CHUNK;
      const limit = Math.min(BLOCKS_PER_CHUNK, this.nrBlocks - base);
      const bits = this.chunk(chunkIndex);
      let changed = false;
      for (let byte = 0; byte * 8 < limit && out.length < count; byte++) {
        if (bits[byte] === 0xff) continue;
        for (let bit = 0; bit < 8 && out.length < count; bit++) {
          const i = byte * 8 + bit;
          if (i >= limit) break;
          if ((bits[byte] & (1 << bit)) === 0) {
            bits[byte] |= 1 << bit;
            out.push(asDataBlock(base + i));
            changed = true;
          }
        }
      }
      if (changed) this.chunks.put(chunkIndex, bits);
      if (out.length < count) chunkIndex = (chunkIndex + 1) % nrChunks;
    }
    if (out.length) {
      this.searchFrom = out[out.length - 1] + 1;
      this.setUsed(this.usedBlocks() + out.length);
    }
    return out;
  }

  /** Marks one block used without searching (check --repair; the caller recounts). */
  markUsed(block: DataBlock): void {
    const chunkIndex = Math.floor(block / BLOCKS_PER_CHUNK);
    const bits = this.chunk(chunkIndex);
    const bit = block % BLOCKS_PER_CHUNK;
    bits[bit >> 3] |= 1 << (bit & 7);
    this.chunks.put(chunkIndex, bits);
  }

  /** Marks blocks free. Freeing a free block is metadata corruption and throws. */
  release(blocks: readonly DataBlock[]): void {
    if (!blocks.length) return;
    const byChunk = new Map<number, DataBlock[]>();
    for (const b of blocks) {
      const c = Math.floor(b / BLOCKS_PER_CHUNK);
      let list = byChunk.get(c);
      if (!list) byChunk.set(c, (list = []));
      list.push(b);
    }
    for (const [chunkIndex, list] of byChunk) {
      const bits = this.chunk(chunkIndex);
      for (const b of list) {
        const bit = b % BLOCKS_PER_CHUNK;
        if ((bits[bit >> 3] & (1 << (bit & 7))) === 0) {
          throw new Error(`space map: data block ${b} freed twice`);
        }
        bits[bit >> 3] &= ~(1 << (bit & 7));
      }
      if (bits.every((x) => x === 0)) this.chunks.del(chunkIndex);
      else this.chunks.put(chunkIndex, bits);
    }
    this.setUsed(this.usedBlocks() - blocks.length);
    const lowest = Math.min(...blocks.slice(0, 1024));
    if (lowest < this.searchFrom) this.searchFrom = lowest;
  }

  /** Every used block, in order (for check). */
  *usedBlockList(): Iterable<DataBlock> {
    const nrChunks = Math.ceil(this.nrBlocks / BLOCKS_PER_CHUNK);
    for (const { key, value } of this.chunks.range(0, nrChunks + 1)) {
      const base = (key as number) * BLOCKS_PER_CHUNK;
      for (let byte = 0; byte < value.length; byte++) {
        if (value[byte] === 0) continue;
        for (let bit = 0; bit < 8; bit++) if (value[byte] & (1 << bit)) yield asDataBlock(base + byte * 8 + bit);
      }
    }
  }

  /** The highest used block, or -1 when none is used (data device size check). */
  highestUsedBlock(): number {
    for (const { key, value } of this.chunks.range(0, Number.MAX_SAFE_INTEGER, { reverse: true, limit: 1 })) {
      for (let byte = value.length - 1; byte >= 0; byte--) {
        if (value[byte] === 0) continue;
        for (let bit = 7; bit >= 0; bit--) if (value[byte] & (1 << bit)) return (key as number) * BLOCKS_PER_CHUNK + byte * 8 + bit;
      }
    }
    return -1;
  }

  /** How many used blocks lie at or past `begin` (the range [begin, end of map)). */
  usedBlocksFrom(begin: number): number {
    let n = 0;
    const firstChunk = Math.floor(begin / BLOCKS_PER_CHUNK);
    for (const { key, value } of this.chunks.range(firstChunk, Number.MAX_SAFE_INTEGER)) {
      const base = (key as number) * BLOCKS_PER_CHUNK;
      for (let byte = 0; byte < value.length; byte++) {
        if (value[byte] === 0) continue;
        for (let bit = 0; bit < 8; bit++) if (value[byte] & (1 << bit) && base + byte * 8 + bit >= begin) n++;
      }
    }
    return n;
  }

  /** Recomputes the counter from the bitmap (check --repair). */
  recount(): number {
    let n = 0;
    for (const _ of this.usedBlockList()) n++;
    this.setUsed(n);
    return n;
  }
}
