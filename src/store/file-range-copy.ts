import { dmfsError } from '../errors';
import type { FileData } from './file-data';
import type { InodeRecords } from './inode-records';
import type { LayerContext } from './layer-context';
import type { Ino } from './layer-store';
import { bmapKey, dataBlockOfPacked, inlineBytesOfPacked, isDataRef, isUnwrittenPacked, nowTime, packBlockRef } from './records';

/** Most data blocks shared by one call (one metadata transaction); a longer copy returns short and the caller goes on. */
const SHARE_MAX_BLOCKS = 65536;
/** Most bytes one call copies as data (ranges whose offsets differ within a block); short counts as above. */
const DATA_COPY_MAX_BYTES = 64 * 1024 * 1024;
/** Bytes read and written per step of a data copy. */
const DATA_COPY_STEP_BYTES = 1024 * 1024;

/** Inline content of no bytes: reads as zeros, hides lower segments (see shareBlocks). */
const EMPTY_INLINE = packBlockRef(Buffer.alloc(0));

interface Visible {
  /** The block-map entry, packed. */
  raw: Buffer;
  /** Its data block; null for inline content. */
  block: number | null;
  /** Index into the chain's segments (0 = own). */
  level: number;
}

/**
 * copy_file_range(2) inside one open layer (see block-sharing.ts for the rules). Whole
 * blocks of the range whose source and destination offsets agree within a block are
 * shared: the destination maps the source's data blocks, with their checksums, in one
 * metadata transaction, and no data moves. The partial blocks at the ends, and ranges
 * whose offsets differ within a block, are copied as data through the write path.
 *
 * Both inodes' mutexes are held for the whole copy (taken in inode order, so two copies
 * in opposite directions cannot deadlock): no write changes a source block while it is
 * being shared, and a block becomes shared only under its inode's mutex, which is what
 * lets FileData write an unshared block in place.
 */
export class FileRangeCopy {
  constructor(
    private readonly ctx: LayerContext,
    private readonly records: InodeRecords,
    private readonly data: FileData,
  ) {}

  /**
   * Copies up to lengthBytes from inoIn at offInBytes to inoOut at offOutBytes (extending
   * it); resolves to the bytes copied: short at the source's end (0 past it) or for a very
   * long range, as copy_file_range(2) may be. Overlapping ranges of one file are INVALID.
   */
  async copy(inoIn: Ino, offInBytes: number, inoOut: Ino, offOutBytes: number, lengthBytes: number): Promise<number> {
    this.ctx.assertWritable();
    for (const [what, n] of [['source offset', offInBytes], ['destination offset', offOutBytes], ['length', lengthBytes]] as const) {
      if (!Number.isSafeInteger(n) || n < 0) throw dmfsError('INVALID', `bad ${what} ${n}`);
    }
    this.regularFile(inoIn);
    this.regularFile(inoOut);
    if (lengthBytes === 0) return 0;
    const mutex = this.ctx.inodeMutex;
    const work = () => this.copyLocked(inoIn, offInBytes, inoOut, offOutBytes, lengthBytes);
    const copied = inoIn === inoOut
      ? await mutex.run(inoIn, work)
      : await mutex.run(Math.min(inoIn, inoOut), () => mutex.run(Math.max(inoIn, inoOut), work));
    if (copied > 0) this.ctx.markDirty();
    return copied;
  }

  private regularFile(ino: Ino): void {
    const { rec } = this.records.mustInode(ino);
    if (rec.kind === 'dir') throw dmfsError('IS_DIR', 'is a directory');
    if (rec.kind !== 'file') throw dmfsError('INVALID', 'copy_file_range needs regular files');
  }

  private async copyLocked(inoIn: Ino, offIn: number, inoOut: Ino, offOut: number, length: number): Promise<number> {
    const bs = this.ctx.blockSizeBytes;
    const srcSize = this.records.mustInode(inoIn).rec.size;
    if (offIn >= srcSize) return 0;
    let n = Math.min(length, srcSize - offIn);
    if (inoIn === inoOut && offOut < offIn + n && offIn < offOut + n) {
      throw dmfsError('INVALID', 'source and destination ranges of one file overlap');
    }
    const sameAlignment = (offIn - offOut) % bs === 0;
    if (!sameAlignment) n = Math.min(n, DATA_COPY_MAX_BYTES);
    const head = sameAlignment ? Math.min(n, (bs - (offIn % bs)) % bs) : n;
    n = Math.min(n, head + SHARE_MAX_BLOCKS * bs);
    if (offOut + n > this.ctx.sizeLimitBytes) {
      throw dmfsError('FILE_TOO_BIG', `copy past the layer's size limit of ${this.ctx.sizeLimitBytes} bytes`);
    }
    const wholeBlocks = Math.floor((n - head) / bs);
    const tail = n - head - wholeBlocks * bs;
    if (head) await this.copyData(inoIn, offIn, inoOut, offOut, head);
    if (wholeBlocks) this.shareBlocks(inoIn, (offIn + head) / bs, inoOut, (offOut + head) / bs, wholeBlocks);
    if (tail) await this.copyData(inoIn, offIn + n - tail, inoOut, offOut + n - tail, tail);
    return n;
  }

  /** The bytes themselves, through the write path (copy-on-write, inline tails, usage). */
  private async copyData(inoIn: Ino, offIn: number, inoOut: Ino, offOut: number, length: number): Promise<void> {
    const buf = Buffer.allocUnsafe(Math.min(length, DATA_COPY_STEP_BYTES));
    for (let done = 0; done < length; ) {
      const step = Math.min(buf.length, length - done);
      const got = await this.data.read(inoIn, buf.subarray(0, step), offIn + done);
      if (got === 0) break;
      await this.data.writeLocked(inoOut, buf.subarray(0, got), offOut + done);
      done += got;
    }
  }

  /**
   * One transaction: file blocks [dstIdx, dstIdx + count) of inoOut take the content of
   * [srcIdx, srcIdx + count) of inoIn. Data blocks are shared (one sharer more each),
   * inline content is copied, a source hole becomes a hole (an empty inline entry where a
   * lower segment would otherwise show through). The destination's own entries replaced
   * drop their blocks (freed when nothing else maps them). Entries move packed, as they
   * are, checksums included: a 1 GiB copy is 16,384 of them.
   */
  private shareBlocks(inoIn: Ino, srcIdx: number, inoOut: Ino, dstIdx: number, count: number): void {
    const { pool, top, tables } = this.ctx;
    const sharing = this.data.sharing;
    pool.txn(() => {
      const src = this.visibleBlocks(inoIn, srcIdx, count);
      const dst = this.visibleBlocks(inoOut, dstIdx, count);
      const rec = this.records.ownRecord(inoOut);
      let inlineDelta = 0;
      let entriesDelta = 0;
      const dropped: Buffer[] = [];
      const shared: number[] = [];
      for (let k = 0; k < count; k++) {
        const s = src[k];
        const d = dst[k];
        const own = d !== null && d.level === 0 ? d.raw : null;
        const key = bmapKey(top, inoOut, dstIdx + k);
        let put: Buffer | null;
        // An unwritten source block (fallocate) is zeros: copied as a hole, never shared, since
        // its first write goes into the block in place.
        if (s === null || isUnwrittenPacked(s.raw)) {
          if (d === null) continue;
          // A lower segment may map this block: an empty inline entry hides it (reads zeros).
          put = own !== null && dstIdx + k >= rec.inherit ? null : EMPTY_INLINE;
        } else if (own !== null && s.block !== null && dataBlockOfPacked(own) === s.block) {
          continue; // already this very block
        } else put = s.raw;
        if (put === null) tables.bmap.del(key);
        else {
          tables.bmap.put(key, put);
          const block = put === EMPTY_INLINE ? null : s!.block;
          if (block !== null) shared.push(block);
          else inlineDelta += inlineBytesOfPacked(put);
        }
        if (own !== null) dropped.push(own);
        entriesDelta += (put === null ? 0 : 1) - (own === null ? 0 : 1);
      }
      // Sharers are added before any is dropped: a replaced block that is also a source
      // block of this copy is never freed in between.
      sharing.addSharers(shared);
      let freedBlocks = 0;
      for (const raw of dropped) {
        const block = dataBlockOfPacked(raw);
        if (block === null) inlineDelta -= inlineBytesOfPacked(raw);
        else if (this.data.dropBlock(block)) freedBlocks++;
      }
      this.data.checkLayerSpace(0, inlineDelta);
      this.data.addUsage(-freedBlocks, inlineDelta);
      rec.mapped = rec.mapped !== undefined ? rec.mapped + entriesDelta : this.records.countMapped(top, inoOut, Infinity);
      const now = nowTime();
      rec.size = Math.max(rec.size, (dstIdx + count) * this.ctx.blockSizeBytes);
      rec.mtime = now;
      rec.ctime = now;
      this.records.putRecord(inoOut, rec);
    });
  }

  /**
   * What file blocks [from, from + count) of ino read as, nearest segment first (as
   * FileData.blockRef, with one range scan per segment instead of a lookup per block);
   * null for a hole. Holes inside the file are confirmed through FileData.blockRef, which
   * refuses a hole that may be a lost entry.
   */
  private visibleBlocks(ino: Ino, from: number, count: number): (Visible | null)[] {
    const out: (Visible | null | undefined)[] = new Array(count).fill(undefined);
    let cutoff = Infinity;
    for (const { level, rec } of this.records.inodeChain(ino)) {
      const seg = this.ctx.segments[level];
      const end = Math.min(from + count, cutoff);
      if (end > from) {
        for (const { key, value } of this.ctx.tables.bmap.range(bmapKey(seg, ino, from), bmapKey(seg, ino, end))) {
          const k = (key as number[])[2] - from;
          if (out[k] === undefined) out[k] = { raw: value, block: dataBlockOfPacked(value), level };
        }
      }
      cutoff = Math.min(cutoff, rec.inherit);
      if (cutoff <= from) break;
    }
    // No segment maps a block at or past ceil(size / blockSize): those are holes, surely.
    const endOfFile = Math.ceil(this.records.mustInode(ino).rec.size / this.ctx.blockSizeBytes);
    for (let k = 0; k < count; k++) {
      if (out[k] !== undefined) continue;
      const ref = from + k >= endOfFile ? null : this.data.blockRef(ino, from + k);
      out[k] = ref && { raw: packBlockRef(ref.ref), block: isDataRef(ref.ref) ? ref.ref.block : null, level: ref.level };
    }
    return out as (Visible | null)[];
  }
}
