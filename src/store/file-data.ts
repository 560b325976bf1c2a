import { dmfsError } from '../errors';
import { asDataBlock, type DataBlock } from '../pool/block-address';
import type { Table } from '../pool/metadata-env';
import type { ThinPool } from '../pool/thin-pool';
import { BlockSharing } from './block-sharing';
import type { InodeInChain, InodeRecords } from './inode-records';
import type { LayerContext } from './layer-context';
import type { Ino, ReadOptions } from './layer-store';
import {
  bmapKey, bmapRange, blockContentMatches, isDataRef, isUnwrittenRef, nowTime, packBlockRef, packUsage, sectorCrcsOf, unpackBlockRef, unpackUsage,
  usageBytes, type BlockRef, type InodeRecord,
} from './records';
import type { BlockRead, VerifiedBlockReader } from './verified-block-reader';

/** A new file's content in written blocks and inline refs, not yet mapped (FileData.placeContents). */
export interface PlacedContent {
  /** Ref of each file block, from block 0. */
  refs: BlockRef[];
  /** Blocks taken from the pool for it; given back unless the creating transaction maps them. */
  taken: DataBlock[];
  sizeBytes: number;
  inlineBytes: number;
}

/** Proved-complete block maps remembered per open layer; past it the set starts over (a recount each). */
const INTACT_MAPS_MAX = 65536;

/**
 * The content of regular files in one open layer: reads through the chain's block maps,
 * writes with block-level copy-on-write, small blocks and tails kept inline in metadata,
 * truncation, and the own segment's usage against the layer's size limit.
 *
 * Data writes put bytes into blocks this layer owns (or freshly taken ones) before the
 * transaction that maps them; blocks taken and not mapped go back to the pool. Writes and
 * truncations of one inode run under its mutex. A block several entries map (block-sharing.ts)
 * is never written in place: a write into it copies it first.
 */
export class FileData {
  private readonly pool: ThinPool;
  private readonly bmap: Table;
  private readonly top: number;
  private readonly bs: number;
  private readonly lowerUsageBytes: number;
  readonly sharing: BlockSharing;
  /** `${segment}:${ino}` whose block map was counted complete (see assertNoLostEntries). */
  private readonly intactMaps = new Set<string>();

  constructor(
    private readonly ctx: LayerContext,
    private readonly records: InodeRecords,
    private readonly reader: VerifiedBlockReader,
  ) {
    this.pool = ctx.pool;
    this.bmap = ctx.tables.bmap;
    this.top = ctx.top;
    this.bs = ctx.blockSizeBytes;
    this.sharing = new BlockSharing(ctx.tables.blockRefs);
    let lower = 0;
    for (const s of ctx.segments.slice(1)) lower += this.segmentBytes(s);
    this.lowerUsageBytes = lower;
  }

  /** Bytes of pool space the chain holds (blocks + inline data): the layer's used space. */
  chainUsedBytes(): number {
    return this.lowerUsageBytes + this.segmentBytes(this.top);
  }

  private segmentBytes(segment: number): number {
    return usageBytes(this.ctx.tables.usage.get([segment]), this.bs);
  }

  /**
   * The visible content of file block idx: nearest segment's ref, honouring `inherit` cuts.
   * null is a hole, proved one: see assertNoLostEntries. (Also FileSpace's lookup.)
   */
  blockRef(ino: Ino, idx: number): { ref: BlockRef; level: number } | null {
    const chain = this.records.inodeChain(ino);
    for (let i = 0; i < chain.length; i++) {
      const { level, rec } = chain[i];
      const raw = this.bmap.get(bmapKey(this.ctx.segments[level], ino, idx));
      if (raw) return { ref: unpackBlockRef(raw), level };
      if (idx >= rec.inherit) {
        this.assertNoLostEntries(ino, idx, chain, i + 1);
        return null;
      }
    }
    this.assertNoLostEntries(ino, idx, chain, chain.length);
    return null;
  }

  /**
   * A hole must not be a lost block-map entry (a damaged key or page makes the entry
   * vanish, and the block would read as zeros). Each segment's inode record counts its
   * entries (`mapped`): the first hole looked up in an inode counts the entries of each
   * segment consulted, chain[0, upTo), once; a segment short of its count is
   * METADATA_CORRUPT (EIO), never zeros. Proved counts stay proved: lower segments never
   * change, and this layer's own writes change entries and count together.
   */
  private assertNoLostEntries(ino: Ino, idx: number, chain: InodeInChain[], upTo: number): void {
    for (let i = 0; i < upTo; i++) {
      const { level, rec } = chain[i];
      if (rec.mapped === undefined) continue; // written before the count existed
      const seg = this.ctx.segments[level];
      const key = `${seg}:${ino}`;
      if (this.intactMaps.has(key)) continue;
      const held = this.records.countMapped(seg, ino, Infinity);
      if (held < rec.mapped) {
        const root = this.pool.paths.root;
        throw dmfsError(
          'METADATA_CORRUPT',
          `inode ${ino} of layer ${this.ctx.layerName}: its record counts ${rec.mapped} block-map entries in segment ${seg}, the map holds ${held}, ` +
            `so file block ${idx} may be a lost entry and is not read as zeros. Run 'dmfs check --root ${root}', then 'dmfs check --repair --from-backup --root ${root}'`,
        );
      }
      if (this.intactMaps.size >= INTACT_MAPS_MAX) this.intactMaps.clear();
      this.intactMaps.add(key);
    }
  }

  /** METADATA_CORRUPT unless each segment of ino's chain holds the block-map entries its record counts (SEEK_DATA's holes are not lost entries either). */
  assertMapsIntact(ino: Ino, idx: number): void {
    const chain = this.records.inodeChain(ino);
    this.assertNoLostEntries(ino, idx, chain, chain.length);
  }

  async read(ino: Ino, target: Buffer, offsetBytes: number, opts?: ReadOptions): Promise<number> {
    this.ctx.assertOpen();
    if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0) throw dmfsError('INVALID', `bad offset ${offsetBytes}`);
    const found = this.records.mustInode(ino);
    if (found.rec.kind === 'dir') throw dmfsError('IS_DIR', 'is a directory');
    if (found.rec.kind !== 'file') throw dmfsError('INVALID', 'not a regular file');
    const size = found.rec.size;
    if (offsetBytes >= size) return 0;
    const length = Math.min(target.length, size - offsetBytes);
    const reads: BlockRead[] = [];
    let pos = offsetBytes;
    while (pos < offsetBytes + length) {
      const idx = Math.floor(pos / this.bs);
      const inBlock = pos - idx * this.bs;
      const n = Math.min(this.bs - inBlock, offsetBytes + length - pos);
      const dst = target.subarray(pos - offsetBytes, pos - offsetBytes + n);
      const r = this.blockRef(ino, idx);
      if (r === null) dst.fill(0);
      else if (isDataRef(r.ref)) reads.push({ ref: r.ref, inBlock, dst });
      else {
        dst.fill(0);
        if (inBlock < r.ref.length) r.ref.copy(dst, 0, inBlock, Math.min(r.ref.length, inBlock + n));
      }
      pos += n;
    }
    if (reads.length) await this.reader.read(reads, opts);
    return length;
  }

  /** Content of file block idx as the chain sees it, `length` bytes (zeros for holes), verified. */
  async blockContent(ino: Ino, idx: number, length: number): Promise<Buffer> {
    const buf = Buffer.alloc(length);
    const r = this.blockRef(ino, idx);
    if (r === null) return buf;
    if (isDataRef(r.ref)) await this.reader.read([{ ref: r.ref, inBlock: 0, dst: buf }]);
    else r.ref.copy(buf, 0, 0, Math.min(length, r.ref.length));
    return buf;
  }

  takeBlockOrThrow(): DataBlock {
    const b = this.pool.takeBlock();
    // The pool names the limit hit (dm.min_free_space, or the host file system under it).
    if (b === null) throw this.pool.noSpaceError();
    return b;
  }

  /** Inside txn: LAYER_FULL unless the chain can hold newBlocks more blocks and newInlineBytes more inline bytes. */
  checkLayerSpace(newBlocks: number, newInlineBytes: number): void {
    if (newBlocks <= 0 && newInlineBytes <= 0) return;
    const used = this.chainUsedBytes();
    if (used + newBlocks * this.bs + newInlineBytes > this.ctx.sizeLimitBytes) {
      throw dmfsError('LAYER_FULL', `layer ${this.ctx.layerName} is full (size limit ${this.ctx.sizeLimitBytes} bytes)`);
    }
  }

  async write(ino: Ino, data: Buffer, offsetBytes: number): Promise<number> {
    this.ctx.assertWritable();
    if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0) throw dmfsError('INVALID', `bad offset ${offsetBytes}`);
    if (data.length === 0) return 0;
    const end = offsetBytes + data.length;
    if (end > this.ctx.sizeLimitBytes) throw dmfsError('FILE_TOO_BIG', `write past the layer's size limit of ${this.ctx.sizeLimitBytes} bytes`);
    await this.ctx.inodeMutex.run(ino, () => this.writeLocked(ino, data, offsetBytes));
    this.ctx.markDirty();
    return data.length;
  }

  /** write() for a caller that holds the inode's mutex and checked the arguments (FileRangeCopy). */
  async writeLocked(ino: Ino, data: Buffer, offsetBytes: number): Promise<void> {
    const found = this.records.mustInode(ino);
    if (found.rec.kind === 'dir') throw dmfsError('IS_DIR', 'is a directory');
    if (found.rec.kind !== 'file') throw dmfsError('INVALID', 'not a regular file');
    const end = offsetBytes + data.length;
    const newSize = Math.max(found.rec.size, end);
    const lastIdx = Math.floor((newSize - 1) / this.bs);
    const taken: DataBlock[] = [];
    /** New block-map entries; `fresh` marks blocks taken from the reservation. */
    const mapped: { idx: number; ref: BlockRef; fresh: boolean; replacesInline: number; replacesShared: number | null }[] = [];
    /** Block-map entries this write adds (where the own segment had none). */
    let newEntries = 0;
    /** Data to put into blocks, issued together (one gathered write) before the commit. */
    const pendingWrites: { block: DataBlock; offset: number; data: Buffer }[] = [];
    try {
      for (let pos = offsetBytes; pos < end; ) {
        const idx = Math.floor(pos / this.bs);
        const inBlock = pos - idx * this.bs;
        const n = Math.min(this.bs - inBlock, end - pos);
        const slice = data.subarray(pos - offsetBytes, pos - offsetBytes + n);
        const whole = inBlock === 0 && n === this.bs;
        pos += n;
        const ownRaw = this.bmap.get(bmapKey(this.top, ino, idx));
        const own = ownRaw ? unpackBlockRef(ownRaw) : null;
        if (!own) newEntries++;
        const ownShared = own !== null && isDataRef(own) && this.sharing.isShared(own.block);
        if (own && isUnwrittenRef(own) && !ownShared) {
          // Reserved by fallocate, never written, this file's alone: its first write is whole (zeros around the slice).
          const full = Buffer.alloc(this.bs);
          slice.copy(full, inBlock);
          pendingWrites.push({ block: asDataBlock(own.block), offset: 0, data: full });
          mapped.push({ idx, ref: { block: own.block, sectorCrcs: sectorCrcsOf(full, this.ctx.sectorBytes) }, fresh: false, replacesInline: 0, replacesShared: null });
          continue;
        }
        if (own && isDataRef(own) && !ownShared) {
          // The layer's own, unshared block: written in place; its checksums follow the new content.
          const sectorCrcs = whole ? sectorCrcsOf(slice, this.ctx.sectorBytes) : await this.reader.rewrittenSectorCrcs(own, slice, inBlock);
          this.reader.forget(own.block);
          pendingWrites.push({ block: asDataBlock(own.block), offset: inBlock, data: slice });
          mapped.push({ idx, ref: { block: own.block, sectorCrcs }, fresh: false, replacesInline: 0, replacesShared: null });
          continue;
        }
        const contentLen = idx === lastIdx ? newSize - idx * this.bs : this.bs;
        const ownInlineLen = own && !isDataRef(own) ? own.length : 0;
        const replacesShared = own && isDataRef(own) ? own.block : null;
        if (contentLen <= this.ctx.inlineMaxBytes) {
          const merged = Buffer.alloc(contentLen);
          if (own && !isDataRef(own)) own.copy(merged, 0, 0, Math.min(own.length, contentLen));
          else (await this.blockContent(ino, idx, contentLen)).copy(merged);
          slice.copy(merged, inBlock);
          mapped.push({ idx, ref: merged, fresh: false, replacesInline: ownInlineLen, replacesShared });
          continue;
        }
        const fresh = this.takeBlockOrThrow();
        taken.push(fresh);
        let sectorCrcs: number[];
        // What the block holds now: a lower segment's block, or this layer's shared one (copied
        // like a lower block: its other sharers keep the old content).
        const lower = whole ? null : own ? (isDataRef(own) ? { ref: own as BlockRef } : null) : this.blockRef(ino, idx);
        if (whole) {
          pendingWrites.push({ block: fresh, offset: 0, data: slice });
          sectorCrcs = sectorCrcsOf(slice, this.ctx.sectorBytes);
        } else if (lower && isDataRef(lower.ref) && !isUnwrittenRef(lower.ref)) {
          // Copy-on-write of one block: the native path (reflink / copy_file_range), then the
          // change. The copy is verified against the lower ref, whichever form it has.
          await this.pool.copyBlock(asDataBlock(lower.ref.block), fresh);
          const copied = Buffer.allocUnsafe(this.bs);
          await this.pool.readBlocks([fresh], [0], [copied]);
          if (!blockContentMatches(lower.ref, copied)) {
            throw dmfsError('DATA_CORRUPT', `data block ${lower.ref.block} (copied up by layer ${this.ctx.layerName}) fails its checksum`);
          }
          slice.copy(copied, inBlock);
          sectorCrcs = sectorCrcsOf(copied, this.ctx.sectorBytes);
          pendingWrites.push({ block: fresh, offset: inBlock, data: slice });
        } else {
          const full = Buffer.alloc(this.bs);
          // Inline content, or zeros (a hole; an unwritten block, shared or not, is zeros too).
          if (own && !isDataRef(own)) own.copy(full);
          else if (lower && !isDataRef(lower.ref)) lower.ref.copy(full);
          slice.copy(full, inBlock);
          pendingWrites.push({ block: fresh, offset: 0, data: full });
          sectorCrcs = sectorCrcsOf(full, this.ctx.sectorBytes);
        }
        mapped.push({ idx, ref: { block: fresh, sectorCrcs }, fresh: true, replacesInline: ownInlineLen, replacesShared });
      }
      if (pendingWrites.length) await this.pool.writeBlocks(pendingWrites);
      const newBlocks = mapped.filter((m) => m.fresh).length;
      const inlineDelta = mapped.reduce((s, m) => s + (isDataRef(m.ref) ? 0 : m.ref.length) - m.replacesInline, 0);
      this.pool.txn(() => {
        this.checkLayerSpace(newBlocks, inlineDelta);
        const rec = this.records.ownRecord(ino);
        let freedBlocks = 0;
        for (const m of mapped) {
          this.bmap.put(bmapKey(this.top, ino, m.idx), packBlockRef(m.ref));
          if (m.fresh && isDataRef(m.ref)) this.pool.consumeBlock(asDataBlock(m.ref.block));
          // The shared block this entry left: freed only if its other sharers left meanwhile.
          if (m.replacesShared !== null && this.dropBlock(m.replacesShared)) freedBlocks++;
        }
        this.addUsage(newBlocks - freedBlocks, inlineDelta);
        rec.mapped = (rec.mapped ?? this.records.countMapped(this.top, ino, Infinity) - newEntries) + newEntries;
        const now = nowTime();
        rec.size = Math.max(rec.size, end);
        rec.mtime = now;
        rec.ctime = now;
        this.records.putRecord(ino, rec);
      });
    } catch (err) {
      for (const b of taken) this.pool.untakeBlock(b);
      throw err;
    }
  }

  /**
   * The whole content of files that have none yet, each laid out as write() lays it out
   * (full blocks, the tail inline when small enough, else zero-padded in a block) in
   * freshly taken blocks, all written (one gathered write) before this returns. Nothing is
   * mapped: `mapPlacedContent` maps each inside the transaction that creates its file, and
   * `unplace` gives the blocks back when that transaction does not commit.
   */
  async placeContents(contents: readonly Buffer[]): Promise<PlacedContent[]> {
    const all: PlacedContent[] = [];
    const pendingWrites: { block: DataBlock; offset: number; data: Buffer }[] = [];
    try {
      for (const data of contents) {
        const placed: PlacedContent = { refs: [], taken: [], sizeBytes: data.length, inlineBytes: 0 };
        all.push(placed);
        for (let off = 0; off < data.length; off += this.bs) {
          const slice = data.subarray(off, Math.min(off + this.bs, data.length));
          if (slice.length <= this.ctx.inlineMaxBytes) {
            placed.refs.push(Buffer.from(slice));
            placed.inlineBytes += slice.length;
            continue;
          }
          const block = this.takeBlockOrThrow();
          placed.taken.push(block);
          let full = slice;
          if (slice.length < this.bs) {
            full = Buffer.alloc(this.bs);
            slice.copy(full);
          }
          pendingWrites.push({ block, offset: 0, data: full });
          placed.refs.push({ block, sectorCrcs: sectorCrcsOf(full, this.ctx.sectorBytes) });
        }
      }
      if (pendingWrites.length) await this.pool.writeBlocks(pendingWrites);
    } catch (err) {
      for (const placed of all) this.unplace(placed);
      throw err;
    }
    return all;
  }

  /**
   * Inside the transaction that creates ino (a regular file with no blocks yet): maps placed
   * content; sets rec's size and count, not its times. The caller checks the layer's space
   * (checkLayerSpace) and adds the usage (addUsage) of everything it maps in the transaction.
   */
  mapPlacedContent(ino: Ino, rec: InodeRecord, placed: PlacedContent): void {
    placed.refs.forEach((ref, idx) => {
      this.bmap.put(bmapKey(this.top, ino, idx), packBlockRef(ref));
      if (isDataRef(ref)) this.pool.consumeBlock(asDataBlock(ref.block));
    });
    rec.mapped = placed.refs.length;
    rec.size = placed.sizeBytes;
  }

  /** Gives back the blocks of content that was placed and not mapped. */
  unplace(placed: PlacedContent): void {
    for (const b of placed.taken) this.pool.untakeBlock(b);
    placed.taken = [];
  }

  /**
   * setattr's size change: truncates or extends a regular file to sizeBytes (an extension
   * is a hole), under the inode's mutex. The caller checked the layer is writable.
   */
  async truncate(ino: Ino, sizeBytes: number): Promise<void> {
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) throw dmfsError('INVALID', `bad size ${sizeBytes}`);
    if (sizeBytes > this.ctx.sizeLimitBytes) throw dmfsError('FILE_TOO_BIG', `size ${sizeBytes} exceeds the layer's size limit of ${this.ctx.sizeLimitBytes} bytes`);
    await this.ctx.inodeMutex.run(ino, () => this.truncateLocked(ino, sizeBytes));
  }

  private async truncateLocked(ino: Ino, size: number): Promise<void> {
    const found = this.records.mustInode(ino);
    if (found.rec.kind === 'dir') throw dmfsError('IS_DIR', 'is a directory');
    if (found.rec.kind !== 'file') throw dmfsError('INVALID', 'not a regular file');
    const oldSize = found.rec.size;
    if (size >= oldSize) {
      // Same size still counts as a change (O_TRUNC of an empty file, `: > f`): mtime and ctime move, as on ext4.
      this.pool.txn(() => {
        const rec = this.records.ownRecord(ino);
        rec.size = size;
        const now = nowTime();
        rec.mtime = now;
        rec.ctime = now;
        this.records.putRecord(ino, rec);
      });
      return;
    }
    const keepBlocks = Math.ceil(size / this.bs);
    const partialIdx = size % this.bs === 0 ? -1 : Math.floor(size / this.bs);
    const tailLen = size - partialIdx * this.bs;
    // The partial last block: copy-on-write with the tail zeroed, so a crash before the
    // commit leaves the old content, and lower segments never show past the cut.
    let partialRef: BlockRef | null = null;
    let taken: DataBlock | null = null;
    if (partialIdx >= 0) {
      const current = this.blockRef(ino, partialIdx);
      if (current) {
        const content = await this.blockContent(ino, partialIdx, tailLen);
        if (tailLen <= this.ctx.inlineMaxBytes) partialRef = content;
        else {
          taken = this.takeBlockOrThrow();
          const full = Buffer.alloc(this.bs);
          content.copy(full);
          await this.pool.writeBlocks([{ block: taken, offset: 0, data: full }]);
          partialRef = { block: taken, sectorCrcs: sectorCrcsOf(full, this.ctx.sectorBytes) };
        }
      }
    }
    try {
      this.pool.txn(() => {
        const rec = this.records.ownRecord(ino);
        const from = partialIdx >= 0 ? partialIdx : keepBlocks;
        const before = rec.mapped ?? this.records.countMapped(this.top, ino, Infinity);
        rec.mapped = before - this.truncateOwnBlocks(ino, from) + (partialRef !== null ? 1 : 0);
        if (partialRef !== null) {
          this.bmap.put(bmapKey(this.top, ino, partialIdx), packBlockRef(partialRef));
          if (isDataRef(partialRef)) {
            this.pool.consumeBlock(asDataBlock(partialRef.block));
            this.addUsage(1, 0);
          } else this.addUsage(0, partialRef.length);
        }
        rec.inherit = Math.min(rec.inherit, Math.floor(size / this.bs));
        rec.size = size;
        const now = nowTime();
        rec.mtime = now;
        rec.ctime = now;
        this.records.putRecord(ino, rec);
      });
    } catch (err) {
      if (taken !== null) this.pool.untakeBlock(taken);
      throw err;
    }
  }

  /** Inside txn: removes own block-map entries in [fromBlock, toBlock) (freeing their blocks); returns how many. */
  truncateOwnBlocks(ino: Ino, fromBlock: number, toBlock = Infinity): number {
    const [start, fullEnd] = bmapRange(this.top, ino, fromBlock);
    const end = toBlock === Infinity ? fullEnd : bmapKey(this.top, ino, toBlock);
    const entries = [...this.bmap.range(start, end)];
    if (!entries.length) return 0;
    let blocks = 0;
    let inlineBytes = 0;
    for (const { key, value } of entries) {
      const ref = unpackBlockRef(value);
      if (isDataRef(ref)) {
        if (this.dropBlock(ref.block)) blocks++;
      } else inlineBytes += ref.length;
      this.bmap.del(key);
    }
    this.addUsage(-blocks, -inlineBytes);
    return entries.length;
  }

  /**
   * Inside txn: an own block-map entry stopped pointing at data block `block` (the caller
   * deletes or replaces the entry). Frees the block when no other entry maps it; true then
   * (the caller takes it off the segment's usage).
   */
  dropBlock(block: number): boolean {
    if (!this.sharing.dropSharer(block)) return false;
    this.pool.recycleBlock(asDataBlock(block));
    this.reader.forget(block);
    return true;
  }

  /** Inside txn: the own segment's usage moves by this many blocks and inline bytes. */
  addUsage(blocks: number, inlineBytes: number): void {
    if (!blocks && !inlineBytes) return;
    const u = unpackUsage(this.ctx.tables.usage.get([this.top]));
    u.blocks += blocks;
    u.inlineBytes += inlineBytes;
    this.ctx.tables.usage.put([this.top], packUsage(u));
  }
}
