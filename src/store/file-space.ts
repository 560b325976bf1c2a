import { dmfsError } from '../errors';
import { asDataBlock, type DataBlock } from '../pool/block-address';
import type { Table } from '../pool/metadata-env';
import type { FileData } from './file-data';
import type { InodeRecords } from './inode-records';
import type { LayerContext } from './layer-context';
import type { FallocateHow, Ino } from './layer-store';
import {
  bmapKey, bmapRange, HOLE_REF, holdsData, isDataRef, isHoleRef, isUnwrittenRef, nowTime, packBlockRef, sectorCrcsOf,
  unpackBlockRef, type BlockRef,
} from './records';

/** Blocks whose content one gathered write carries at most (copy-ups of fallocate, collapse, insert). */
const WRITE_BATCH_BLOCKS = 256;

/** A block-map entry to put: `fresh` blocks come from the reservation, `content` goes into them first. */
interface PlannedEntry {
  idx: number;
  ref: BlockRef;
  fresh: DataBlock | null;
  content: Buffer | null;
}

/**
 * The space of regular files in one open layer: fallocate's modes (reserve, punch,
 * zero, collapse, insert; see FallocateHow) and SEEK_DATA / SEEK_HOLE, over the block
 * maps FileData reads and writes.
 *
 * Invariants kept, besides FileData's:
 * - reserved blocks are own `UnwrittenRef`s (read as zeros, never read from the device)
 *   or own written blocks; a reservation may lie past the end of the file (KEEP_SIZE);
 * - a punched whole block that a lower segment maps becomes an own `HOLE_REF` entry, so
 *   the lower block never shows again (through commit too: the segment keeps it);
 * - collapse and insert move own entries and cut the inheritance at the offset (copying
 *   up what lower segments showed past it), so no lower block shows at a shifted index;
 * - every entry put or dropped moves the inode's `mapped` count and the segment's usage
 *   in the same transaction; blocks taken and not mapped go back to the pool.
 *
 * Partial blocks of punch and zero-range are zeroed through FileData.write (copy-on-write
 * where the block is a lower one's), then the whole blocks change under the inode's mutex.
 */
export class FileSpace {
  private readonly bmap: Table;
  private readonly top: number;
  private readonly bs: number;

  constructor(
    private readonly ctx: LayerContext,
    private readonly records: InodeRecords,
    private readonly data: FileData,
  ) {
    this.bmap = ctx.tables.bmap;
    this.top = ctx.top;
    this.bs = ctx.blockSizeBytes;
  }

  async fallocate(ino: Ino, offsetBytes: number, lengthBytes: number, how: FallocateHow): Promise<void> {
    this.ctx.assertWritable();
    const end = offsetBytes + lengthBytes;
    if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0 || !Number.isSafeInteger(lengthBytes) || lengthBytes <= 0 || !Number.isSafeInteger(end)) {
      throw dmfsError('INVALID', `bad fallocate range: offset ${offsetBytes}, length ${lengthBytes}`);
    }
    if (how.mode === 'punch-hole' && !how.keepSize) throw dmfsError('NOT_SUPPORTED', 'punching a hole needs KEEP_SIZE (as on Linux)');
    this.regularFile(ino);
    if ((how.mode === 'allocate' || how.mode === 'zero-range') && end > this.ctx.sizeLimitBytes) {
      throw dmfsError('FILE_TOO_BIG', `range end ${end} exceeds the layer's size limit of ${this.ctx.sizeLimitBytes} bytes`);
    }
    switch (how.mode) {
      case 'allocate':
        await this.ctx.inodeMutex.run(ino, () => this.reserveLocked(ino, offsetBytes, end, how.keepSize, null));
        break;
      case 'punch-hole':
        await this.punch(ino, offsetBytes, end);
        break;
      case 'zero-range':
        await this.zeroRange(ino, offsetBytes, end, how.keepSize);
        break;
      case 'collapse-range':
      case 'insert-range':
        if (how.keepSize) throw dmfsError('INVALID', `${how.mode} takes no other flag`);
        if (offsetBytes % this.bs !== 0 || lengthBytes % this.bs !== 0) {
          throw dmfsError('INVALID', `${how.mode} needs an offset and a length that are multiples of the block size (${this.bs} bytes)`);
        }
        await this.ctx.inodeMutex.run(ino, () => this.shiftLocked(ino, offsetBytes / this.bs, lengthBytes / this.bs, how.mode === 'insert-range'));
        break;
      default:
        throw dmfsError('NOT_SUPPORTED', `unknown fallocate mode ${String((how as { mode: unknown }).mode)}`);
    }
    this.ctx.markDirty();
  }

  /** See LayerFs.seekData. */
  async seekData(ino: Ino, offsetBytes: number, what: 'data' | 'hole'): Promise<number> {
    this.ctx.assertOpen();
    if (!Number.isSafeInteger(offsetBytes)) throw dmfsError('INVALID', `bad offset ${offsetBytes}`);
    const size = this.regularFile(ino);
    if (offsetBytes < 0 || offsetBytes >= size) throw dmfsError('PAST_END_OF_FILE', `offset ${offsetBytes} is not before the end of the file (${size} bytes)`);
    const endIdx = Math.ceil(size / this.bs);
    const idx = Math.floor(offsetBytes / this.bs);
    // The search skips holes by their keys: a lost entry must not pass for one.
    this.data.assertMapsIntact(ino, idx);
    if (what === 'hole') return Math.min(size, Math.max(offsetBytes, this.nextHoleIndex(ino, idx, endIdx) * this.bs));
    const found = this.nextDataIndex(ino, idx, endIdx);
    if (found < 0) throw dmfsError('PAST_END_OF_FILE', `no data after offset ${offsetBytes}`);
    return Math.max(offsetBytes, found * this.bs);
  }

  /** The file's size; IS_DIR / INVALID for anything but a regular file. */
  private regularFile(ino: Ino): number {
    const { rec } = this.records.mustInode(ino);
    if (rec.kind === 'dir') throw dmfsError('IS_DIR', 'is a directory');
    if (rec.kind !== 'file') throw dmfsError('INVALID', 'not a regular file');
    return rec.size;
  }

  private visibleData(ino: Ino, idx: number): boolean {
    const r = this.data.blockRef(ino, idx);
    return r !== null && holdsData(r.ref);
  }

  /**
   * The first file block in [fromIdx, toIdx) without data as the chain sees it, or toIdx.
   * A file whose chain is one segment is read in key order (one range scan); otherwise
   * each block is looked up through the chain.
   */
  private nextHoleIndex(ino: Ino, fromIdx: number, toIdx: number): number {
    const chain = this.records.inodeChain(ino);
    if (chain.length === 1) {
      const seg = this.ctx.segments[chain[0].level];
      let next = fromIdx;
      for (const { key, value } of this.bmap.range(bmapKey(seg, ino, fromIdx), bmapKey(seg, ino, toIdx))) {
        if ((key as number[])[2] !== next || !holdsData(unpackBlockRef(value))) return next;
        next++;
      }
      return next;
    }
    let idx = fromIdx;
    while (idx < toIdx && this.visibleData(ino, idx)) idx++;
    return idx;
  }

  /**
   * The first file block in [fromIdx, toIdx) holding data as the chain sees it, or -1. Looks
   * only at entries (each segment's next key), never at every index of a long hole.
   */
  private nextDataIndex(ino: Ino, fromIdx: number, toIdx: number): number {
    const chain = this.records.inodeChain(ino);
    let from = fromIdx;
    while (from < toIdx) {
      let next = Infinity;
      let limit = toIdx;
      for (const { level, rec } of chain) {
        if (limit <= from) break;
        const seg = this.ctx.segments[level];
        for (const key of this.bmap.keys(bmapKey(seg, ino, from), bmapKey(seg, ino, limit), { limit: 1 })) next = Math.min(next, (key as number[])[2]);
        limit = Math.min(limit, rec.inherit);
      }
      if (next === Infinity) return -1;
      if (this.visibleData(ino, next)) return next;
      from = next + 1;
    }
    return -1;
  }

  /**
   * File blocks in [fromIdx, toIdx) whose content comes from a lower segment and holds
   * data: what a punch must hide with a HOLE_REF once the own entry is gone.
   */
  private lowerDataIndexes(ino: Ino, fromIdx: number, toIdx: number): number[] {
    const seen = new Set<number>();
    const out: number[] = [];
    let limit = toIdx;
    for (const { level, rec } of this.records.inodeChain(ino)) {
      if (level > 0 && limit > fromIdx) {
        const seg = this.ctx.segments[level];
        for (const { key, value } of this.bmap.range(bmapKey(seg, ino, fromIdx), bmapKey(seg, ino, limit))) {
          const idx = (key as number[])[2];
          if (seen.has(idx)) continue; // a nearer segment decides
          seen.add(idx);
          if (holdsData(unpackBlockRef(value))) out.push(idx);
        }
      }
      limit = Math.min(limit, rec.inherit);
    }
    return out;
  }

  /**
   * Zeroes [begin, end) inside the blocks the range only partly covers, up to the end of
   * the file (bytes past it read as zeros already), where the chain holds data there.
   * Returns the whole blocks of the range: [first, stop), the last one reaching the end
   * of the file counting as whole.
   */
  private async zeroPartialBlocks(ino: Ino, begin: number, end: number): Promise<{ first: number; stop: number }> {
    const size = this.records.mustInode(ino).rec.size;
    const zeroEnd = Math.min(end, size);
    const first = Math.ceil(begin / this.bs);
    const stop = zeroEnd === size ? Math.ceil(size / this.bs) : Math.floor(zeroEnd / this.bs);
    const edges: [number, number][] = [];
    if (begin < zeroEnd) {
      const headEnd = Math.min(first * this.bs, zeroEnd);
      if (begin < headEnd) edges.push([begin, headEnd]);
      const tailBegin = Math.max(stop * this.bs, headEnd, begin);
      if (tailBegin < zeroEnd) edges.push([tailBegin, zeroEnd]);
    }
    for (const [a, b] of edges) {
      if (this.visibleData(ino, Math.floor(a / this.bs))) await this.data.write(ino, Buffer.alloc(b - a), a);
    }
    return { first, stop: Math.max(first, stop) };
  }

  private async punch(ino: Ino, begin: number, end: number): Promise<void> {
    // At or past the end of the file a punch changes nothing, times included (as ext4).
    if (begin >= this.records.mustInode(ino).rec.size) return;
    const { first, stop } = await this.zeroPartialBlocks(ino, begin, end);
    if (first >= stop) return this.touch(ino);
    await this.ctx.inodeMutex.run(ino, async () => {
      this.ctx.pool.txn(() => {
        const rec = this.records.ownRecord(ino);
        const before = rec.mapped ?? this.records.countMapped(this.top, ino, Infinity);
        const dropped = this.data.truncateOwnBlocks(ino, first, stop);
        const hidden = this.lowerDataIndexes(ino, first, Math.min(stop, rec.inherit));
        for (const idx of hidden) this.bmap.put(bmapKey(this.top, ino, idx), packBlockRef(HOLE_REF));
        rec.mapped = before - dropped + hidden.length;
        const now = nowTime();
        rec.mtime = now;
        rec.ctime = now;
        this.records.putRecord(ino, rec);
      });
    });
  }

  private async zeroRange(ino: Ino, begin: number, end: number, keepSize: boolean): Promise<void> {
    const { first, stop } = await this.zeroPartialBlocks(ino, begin, end);
    // Past the end of the file the blocks the range covers whole are whole ones too.
    const wholeStop = Math.max(stop, Math.floor(end / this.bs));
    await this.ctx.inodeMutex.run(ino, () => this.reserveLocked(ino, begin, end, keepSize, { first, stop: wholeStop }));
  }

  /**
   * Gives every block of [begin, end) an own block (see FallocateHow's allocate), keeping
   * what the chain shows there, except in `discard` (whole blocks of a zero-range), which
   * read as zeros afterwards. The size grows to `end` unless keepSize.
   */
  private async reserveLocked(ino: Ino, begin: number, end: number, keepSize: boolean, discard: { first: number; stop: number } | null): Promise<void> {
    const firstIdx = Math.floor(begin / this.bs);
    const stopIdx = Math.ceil(end / this.bs);
    const planned: PlannedEntry[] = [];
    /** Planned blocks whose content is not on the data device yet. */
    const unwrittenContent: PlannedEntry[] = [];
    /** Inline bytes of own entries that planned blocks replace. */
    let replacedInline = 0;
    let newEntries = 0;
    const taken: DataBlock[] = [];
    /** Shared blocks that entries of the range leave for blocks of their own. */
    const leftShared: number[] = [];
    try {
      for (let idx = firstIdx; idx < stopIdx; idx++) {
        const dropContent = discard !== null && idx >= discard.first && idx < discard.stop;
        const raw = this.bmap.get(bmapKey(this.top, ino, idx));
        const own = raw ? unpackBlockRef(raw) : null;
        const ownShared = own !== null && isDataRef(own) && this.data.sharing.isShared(own.block);
        if (own && isDataRef(own) && !ownShared) {
          // Already this layer's block, and this entry's alone: a zeroed one becomes unwritten (nothing to write).
          if (dropContent && !isUnwrittenRef(own)) planned.push({ idx, ref: { block: own.block, unwritten: true }, fresh: null, content: null });
          continue;
        }
        // A block this entry shares (copy_file_range, or borrowed from a lower layer) is never
        // reserved or zeroed in place: the entry gets a block of its own, and leaves the shared one.
        if (own && isDataRef(own)) leftShared.push(own.block);
        else if (own) replacedInline += own.length;
        else newEntries++;
        const content = dropContent || !this.visibleData(ino, idx) ? null : await this.data.blockContent(ino, idx, this.bs);
        const fresh = this.data.takeBlockOrThrow();
        taken.push(fresh);
        const ref: BlockRef = content ? { block: fresh, sectorCrcs: sectorCrcsOf(content, this.ctx.sectorBytes) } : { block: fresh, unwritten: true };
        planned.push({ idx, ref, fresh, content });
        if (content) {
          unwrittenContent.push(planned[planned.length - 1]);
          await this.writeContents(unwrittenContent, WRITE_BATCH_BLOCKS);
        }
      }
      await this.writeContents(unwrittenContent, 1);
      this.ctx.pool.txn(() => {
        this.data.checkLayerSpace(taken.length, -replacedInline);
        const rec = this.records.ownRecord(ino);
        const before = rec.mapped ?? this.records.countMapped(this.top, ino, Infinity);
        this.putPlanned(ino, planned);
        // Freed only if the other sharers left meanwhile.
        const freed = leftShared.filter((b) => this.data.dropBlock(b)).length;
        this.data.addUsage(taken.length - freed, -replacedInline);
        rec.mapped = before + newEntries;
        const now = nowTime();
        if (!keepSize && end > rec.size) {
          rec.size = end;
          rec.mtime = now;
        }
        if (discard) rec.mtime = now;
        rec.ctime = now;
        this.records.putRecord(ino, rec);
      });
    } catch (err) {
      for (const b of taken) this.ctx.pool.untakeBlock(b);
      throw err;
    }
  }

  /**
   * Collapse (insert false): file blocks [s, s + n) leave the file and every block past
   * them moves down by n. Insert: every block from s moves up by n, [s, s + n) is a hole.
   * Own entries move with their blocks; what lower segments show past s is copied up,
   * and the inheritance is cut at s.
   */
  private async shiftLocked(ino: Ino, s: number, n: number, insert: boolean): Promise<void> {
    const size = this.records.mustInode(ino).rec.size;
    const shiftBytes = n * this.bs;
    if (insert) {
      if (s * this.bs >= size) throw dmfsError('INVALID', `insert-range at ${s * this.bs} is not before the end of the file (${size} bytes)`);
      if (size + shiftBytes > this.ctx.sizeLimitBytes) throw dmfsError('FILE_TOO_BIG', `inserting ${shiftBytes} bytes exceeds the layer's size limit of ${this.ctx.sizeLimitBytes} bytes`);
    } else if ((s + n) * this.bs >= size) {
      throw dmfsError('INVALID', `collapse-range [${s * this.bs}, ${(s + n) * this.bs}) must end before the end of the file (${size} bytes)`);
    }
    const sizeBlocks = Math.ceil(size / this.bs);
    const moved = (idx: number): number => (insert ? idx + n : idx - n);
    // Lower content past s that stays in the file: copied up to its new index.
    const planned: PlannedEntry[] = [];
    /** Planned blocks whose content is not on the data device yet. */
    const unwrittenContent: PlannedEntry[] = [];
    const taken: DataBlock[] = [];
    let copiedInline = 0;
    try {
      for (let idx = insert ? s : s + n; idx < sizeBlocks; idx++) {
        const r = this.data.blockRef(ino, idx);
        if (r === null || r.level === 0 || !holdsData(r.ref)) continue;
        if (!isDataRef(r.ref)) {
          planned.push({ idx: moved(idx), ref: r.ref, fresh: null, content: null });
          copiedInline += r.ref.length;
          continue;
        }
        const content = await this.data.blockContent(ino, idx, this.bs);
        const fresh = this.data.takeBlockOrThrow();
        taken.push(fresh);
        planned.push({ idx: moved(idx), ref: { block: fresh, sectorCrcs: sectorCrcsOf(content, this.ctx.sectorBytes) }, fresh, content });
        unwrittenContent.push(planned[planned.length - 1]);
        await this.writeContents(unwrittenContent, WRITE_BATCH_BLOCKS);
      }
      await this.writeContents(unwrittenContent, 1);
      this.ctx.pool.txn(() => {
        this.data.checkLayerSpace(taken.length, copiedInline);
        const rec = this.records.ownRecord(ino);
        const before = rec.mapped ?? this.records.countMapped(this.top, ino, Infinity);
        const [start, stop] = bmapRange(this.top, ino, s);
        const own = [...this.bmap.range(start, stop)].map(({ key, value }) => ({ idx: (key as number[])[2], ref: unpackBlockRef(value) }));
        // Collapse: entries in [s, s + n) leave the file; the rest of them move.
        const leaving = insert ? 0 : own.filter((e) => e.idx < s + n).length;
        const dropped = insert ? 0 : this.data.truncateOwnBlocks(ino, s, s + n);
        if (dropped !== leaving) throw dmfsError('METADATA_CORRUPT', `inode ${ino}: block map changed under its mutex`);
        const staying = own.filter((e) => insert || e.idx >= s + n);
        for (const e of staying) this.bmap.del(bmapKey(this.top, ino, e.idx));
        for (const e of staying) this.bmap.put(bmapKey(this.top, ino, moved(e.idx)), packBlockRef(e.ref));
        this.putPlanned(ino, planned);
        this.data.addUsage(taken.length, copiedInline);
        rec.mapped = before - dropped + planned.length;
        rec.inherit = Math.min(rec.inherit, s);
        rec.size = insert ? size + shiftBytes : size - shiftBytes;
        const now = nowTime();
        rec.mtime = now;
        rec.ctime = now;
        this.records.putRecord(ino, rec);
      });
    } catch (err) {
      for (const b of taken) this.ctx.pool.untakeBlock(b);
      throw err;
    }
  }

  /**
   * Once `due` holds at least `atLeast` planned blocks, puts their content on the data
   * device in one gathered write (before any metadata maps them), lets it go and empties `due`.
   */
  private async writeContents(due: PlannedEntry[], atLeast: number): Promise<void> {
    if (due.length === 0 || due.length < atLeast) return;
    await this.ctx.pool.writeBlocks(due.map((p) => ({ block: p.fresh as DataBlock, offset: 0, data: p.content as Buffer })));
    for (const p of due) p.content = null;
    due.length = 0;
  }

  /** Inside txn: the planned entries go into the own block map, their fresh blocks out of the reservation. */
  private putPlanned(ino: Ino, planned: readonly PlannedEntry[]): void {
    for (const p of planned) {
      this.bmap.put(bmapKey(this.top, ino, p.idx), packBlockRef(p.ref));
      if (p.fresh !== null) this.ctx.pool.consumeBlock(asDataBlock(p.fresh));
    }
  }

  /** A punch inside the file that dropped no block still changes its times, as on ext4. */
  private touch(ino: Ino): void {
    this.ctx.pool.txn(() => {
      const rec = this.records.ownRecord(ino);
      const now = nowTime();
      rec.mtime = now;
      rec.ctime = now;
      this.records.putRecord(ino, rec);
    });
  }
}
