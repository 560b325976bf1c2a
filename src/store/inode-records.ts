import { LRUCache } from 'lru-cache';
import { dmfsError } from '../errors';
import type { Table } from '../pool/metadata-env';
import type { LayerContext } from './layer-context';
import { S_IFMT, type Attr, type Ino, type SetAttr } from './layer-store';
import { bmapKey, bmapRange, inodeKey, nowTime, nsToTime, packInode, timeToNs, unpackInode, type InodeRecord } from './records';

export const ROOT_INO: Ino = 1;
/** Entries of each lower-segment cache of an open layer. */
const LOWER_CACHE_ENTRIES = 16384;
const DIR_SIZE_BYTES = 4096;

export interface InodeInChain {
  /** Index into segments (0 = own). */
  level: number;
  rec: InodeRecord;
}

/**
 * The inode records of one open layer's chain: the nearest record of an inode, its
 * records down to the segment where it was born, copy-up into the own segment, and the
 * attributes (stat) they make.
 *
 * Records of lower segments are cached and handed out frozen and shared; only ownRecord
 * gives a record to change (the own one, or a clone of the nearest lower one).
 */
export class InodeRecords {
  private readonly inodes: Table;
  private readonly segs: readonly number[];
  private readonly top: number;
  private readonly readOnly: boolean;
  /**
   * Lower segments never change while a chain is open: cache what they hold. Sizes are
   * modest because lru-cache allocates every slot up front (65,536 slots take ~5 ms, paid
   * at each layer open, i.e. each mount).
   */
  private readonly lowerInodeCache = new LRUCache<number, InodeInChain | 0>({ max: LOWER_CACHE_ENTRIES });
  private readonly lowerMappedCache = new LRUCache<string, number>({ max: LOWER_CACHE_ENTRIES });

  constructor(private readonly ctx: LayerContext) {
    this.inodes = ctx.tables.inodes;
    this.segs = ctx.segments;
    this.top = ctx.top;
    this.readOnly = ctx.readOnly;
  }

  /** The inode as the layer sees it: the nearest segment's record. */
  findInode(ino: Ino): InodeInChain | null {
    if (!this.readOnly || this.segs.length === 1) {
      const raw = this.inodes.get(inodeKey(this.top, ino));
      if (raw) return { level: 0, rec: unpackInode(raw) };
      if (this.segs.length === 1) return null;
      return this.findLowerInode(ino, 1);
    }
    return this.findLowerInode(ino, 0);
  }

  private findLowerInode(ino: Ino, fromLevel: number): InodeInChain | null {
    const cacheKey = ino * 64 + fromLevel;
    const cached = this.lowerInodeCache.get(cacheKey);
    // Cached records are frozen and shared: writers copy them up through ownRecord (which clones).
    if (cached !== undefined) return cached === 0 ? null : cached;
    for (let level = fromLevel; level < this.segs.length; level++) {
      const raw = this.inodes.get(inodeKey(this.segs[level], ino));
      if (raw) {
        const found: InodeInChain = { level, rec: Object.freeze(unpackInode(raw)) };
        this.lowerInodeCache.set(cacheKey, found);
        return found;
      }
    }
    this.lowerInodeCache.set(cacheKey, 0);
    return null;
  }

  /** The nearest record, NOT_FOUND when there is none or the inode is gone (no link, no open handle, not a directory). */
  mustInode(ino: Ino): InodeInChain {
    const found = this.findInode(ino);
    if (!found || found.rec.nlink === 0 && !this.ctx.openCounts.get(ino) && found.rec.kind !== 'dir') {
      throw dmfsError('NOT_FOUND', `inode ${ino} does not exist in layer ${this.ctx.layerName}`);
    }
    return found;
  }

  /** The record segment `level` itself holds, if any (read from the cache when that segment is immutable). */
  recordAt(ino: Ino, level: number): InodeRecord | undefined {
    if (level === 0 && !this.readOnly) return this.findInodeAt(ino, 0)?.rec;
    const found = this.findLowerInode(ino, level);
    return found && found.level === level ? found.rec : undefined;
  }

  private findInodeAt(ino: Ino, level: number): InodeInChain | null {
    const raw = this.inodes.get(inodeKey(this.segs[level], ino));
    return raw ? { level, rec: unpackInode(raw) } : null;
  }

  /** Records of one inode down the chain (top-down), stopping at the segment where it was born. */
  inodeChain(ino: Ino): InodeInChain[] {
    const out: InodeInChain[] = [];
    let level = 0;
    while (level < this.segs.length) {
      const found = level === 0 && !this.readOnly ? this.findInodeAt(ino, 0) ?? this.findLowerInode(ino, 1) : this.findLowerInode(ino, level);
      if (!found) break;
      out.push(found);
      if (found.rec.born) break;
      level = found.level + 1;
    }
    return out;
  }

  /** Inside txn: the inode's record in the own segment, copied up from below if needed. */
  ownRecord(ino: Ino): InodeRecord {
    const found = this.mustInode(ino);
    if (found.level === 0 && (!this.readOnly)) return found.rec;
    const rec: InodeRecord = {
      ...structuredClone(found.rec),
      born: false,
      opaque: false,
      inherit: found.rec.kind === 'file' ? Math.ceil(found.rec.size / this.ctx.blockSizeBytes) : 0,
      mapped: 0,
    };
    return rec;
  }

  putRecord(ino: Ino, rec: InodeRecord): void {
    this.inodes.put(inodeKey(this.top, ino), packInode(rec));
  }

  /** Block-map entries segment `seg` holds for ino below file block `limit` (Infinity: all of them). */
  countMapped(seg: number, ino: Ino, limit: number): number {
    const [start, fullEnd] = bmapRange(seg, ino);
    return this.ctx.tables.bmap.count(start, limit === Infinity ? fullEnd : bmapKey(seg, ino, limit));
  }

  toAttr(ino: Ino, rec: InodeRecord): Attr {
    return {
      ino,
      kind: rec.kind,
      mode: rec.mode,
      uid: rec.uid,
      gid: rec.gid,
      sizeBytes: rec.kind === 'dir' ? DIR_SIZE_BYTES : rec.size,
      nlink: rec.nlink,
      rdev: rec.rdev,
      atimeNs: timeToNs(rec.atime),
      mtimeNs: timeToNs(rec.mtime),
      ctimeNs: timeToNs(rec.ctime),
      btimeNs: rec.btime ? timeToNs(rec.btime) : undefined,
      blocks512: rec.kind === 'file' ? this.allocatedSectors(ino, rec) : rec.kind === 'dir' ? 8 : 0,
    };
  }

  /**
   * st_blocks: visible mapped blocks, capped by the size rounded up to 4 KiB. The own
   * segment's count is kept in the inode record; lower counts are cached (immutable).
   */
  private allocatedSectors(ino: Ino, rec: InodeRecord): number {
    if (rec.size === 0) return 0;
    const capSectors = Math.ceil(rec.size / 4096) * 8;
    let mapped = 0;
    let limit = Infinity;
    for (const { level, rec: r } of this.inodeChain(ino)) {
      const seg = this.segs[level];
      const mutable = level === 0 && !this.readOnly;
      if (limit === Infinity && r.mapped !== undefined) mapped += r.mapped;
      else if (mutable) mapped += this.countMapped(seg, ino, limit);
      else {
        const key = `${seg}:${ino}:${limit}`;
        let n = this.lowerMappedCache.get(key);
        if (n === undefined) this.lowerMappedCache.set(key, (n = this.countMapped(seg, ino, limit)));
        mapped += n;
      }
      limit = Math.min(limit, r.inherit);
      if (limit === 0 || mapped * (this.ctx.blockSizeBytes / 512) >= capSectors) break;
    }
    return Math.min(capSectors, mapped * (this.ctx.blockSizeBytes / 512));
  }

  async getattr(ino: Ino): Promise<Attr> {
    this.ctx.assertOpen();
    return this.toAttr(ino, this.mustInode(ino).rec);
  }

  async readlink(ino: Ino): Promise<string> {
    this.ctx.assertOpen();
    const rec = this.mustInode(ino).rec;
    if (rec.kind !== 'symlink') throw dmfsError('INVALID', `inode ${ino} is not a symlink`);
    return rec.target ?? '';
  }

  /**
   * setattr's attributes: mode bits, owner, times; ctime moves (to changes.ctimeNs when
   * given; not for an accessOnly update). The caller checked the layer is writable and made any size change before.
   */
  setAttributes(ino: Ino, changes: SetAttr): Attr {
    if (changes.accessOnly) {
      // A read of a lower file is no change of this layer (as on overlayfs, where it never
      // copies up): its atime is not copied up, so diff, commit and export do not see it.
      const found = this.mustInode(ino);
      if (found.level !== 0 || this.readOnly) return this.toAttr(ino, found.rec);
    }
    const rec = this.ctx.pool.txn(() => {
      const own = this.ownRecord(ino);
      const now = nowTime();
      if (changes.mode !== undefined) own.mode = (own.mode & S_IFMT) | (changes.mode & 0o7777);
      if (changes.uid !== undefined) own.uid = changes.uid;
      if (changes.gid !== undefined) own.gid = changes.gid;
      if (changes.atimeNs !== undefined) own.atime = nsToTime(changes.atimeNs);
      else if (changes.accessOnly) own.atime = now;
      if (changes.mtimeNs !== undefined) own.mtime = nsToTime(changes.mtimeNs);
      if (changes.ctimeNs !== undefined) own.ctime = nsToTime(changes.ctimeNs);
      else if (!changes.accessOnly) own.ctime = now;
      this.putRecord(ino, own);
      return own;
    });
    this.ctx.markDirty();
    return this.toAttr(ino, rec);
  }
}
