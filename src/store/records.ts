import { dmfsError } from '../errors';
import { blockIo } from '../native';
import { packRecord, unpackRecord } from '../pool/codec';
import type { FileKind, LayerKind, LayerState } from './layer-store';

/**
 * On-disk records of the layer store. Each has a version field `v` and one pack/unpack
 * pair. Keys (ordered-binary arrays) are built only by the `*Key` helpers below.
 *
 * Tables:
 *   layers      [layerId]                 → LayerRecord
 *   layer-names [name]                    → layerId (uint)
 *   inodes      [segment, ino]            → InodeRecord   (the inode as this segment sees it)
 *   dirents     [segment, dirIno, name]   → DirentRecord  (entry or whiteout)
 *   bmap        [segment, ino, fileBlock] → BlockRef      (data block number and checksums, or inline bytes)
 *   usage       [segment]                 → SegmentUsage
 *   orphans     [segment, ino]            → ''            (nlink 0 but open; freed at release or recovery)
 *   holders     [layerId, ownerId]        → HolderRecord  (open handles: writer lock, mounts)
 *   block-refs  [block]                   → uint48 sharers (blocks mapped by several entries: block-sharing.ts)
 */

/** Timestamps are stored as [seconds, nanoseconds]: exact and compact. */
export type StoredTime = [number, number];

export function timeToNs(t: StoredTime): bigint {
  return BigInt(t[0]) * 1_000_000_000n + BigInt(t[1]);
}

export function nsToTime(ns: bigint): StoredTime {
  let sec = ns / 1_000_000_000n;
  let nsec = ns % 1_000_000_000n;
  if (nsec < 0n) {
    nsec += 1_000_000_000n;
    sec -= 1n;
  }
  return [Number(sec), Number(nsec)];
}

let lastNowNs = 0n;

/**
 * The wall clock in ns, never going backwards within this process: Date.now()'s millisecond
 * and hrtime's sub-millisecond digits are not in phase, so two raw readings in one
 * millisecond could be out of order (an atime stamped after an mtime would read as older).
 */
export function nowTime(): StoredTime {
  let ns = BigInt(Date.now()) * 1_000_000n + (process.hrtime.bigint() % 1_000_000n);
  if (ns <= lastNowNs) ns = lastNowNs + 1n;
  lastNowNs = ns;
  return nsToTime(ns);
}

export interface InodeRecord {
  v: 1;
  kind: FileKind;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  rdev: number;
  atime: StoredTime;
  mtime: StoredTime;
  ctime: StoredTime;
  /**
   * Birth time (statx btime): set at creation, kept by copy-up (a container's copy is the
   * same file). Absent on inodes made before it was recorded: no btime is reported.
   */
  btime?: StoredTime;
  /** Symlink target. */
  target?: string;
  /** xattr name → value. */
  xattrs?: Record<string, Buffer>;
  /**
   * File blocks [0, inherit) may come from lower segments; blocks at or past it are
   * only this segment's (holes otherwise). 0 for inodes born in this segment.
   */
  inherit: number;
  /** Block-map entries this segment holds for the inode (st_blocks without a scan). */
  mapped?: number;
  /** Born in this segment (no lower segment knows it). */
  born: boolean;
  /** Directories: hides every lower entry. */
  opaque?: boolean;
  /** One link of this inode: parent directory and name. Exact for directories (one link). */
  parent: number;
  name: string;
}

export function packInode(r: InodeRecord): Buffer {
  return packRecord(r);
}

export function unpackInode(raw: Buffer): InodeRecord {
  const r = unpackRecord<InodeRecord>(raw);
  if (r?.v !== 1) throw dmfsError('METADATA_CORRUPT', `inode record has unknown version ${String((r as { v?: unknown })?.v)}`);
  if (r.xattrs) for (const k of Object.keys(r.xattrs)) r.xattrs[k] = Buffer.from(r.xattrs[k]);
  return r;
}

export type DirentRecord = { v: 1; ino: number; kind: FileKind } | { v: 1; whiteout: true };

export function packDirent(r: DirentRecord): Buffer {
  return packRecord(r);
}

export function unpackDirent(raw: Buffer): DirentRecord {
  const r = unpackRecord<DirentRecord>(raw);
  if (r?.v !== 1) throw dmfsError('METADATA_CORRUPT', 'directory entry record has an unknown version');
  return r;
}

export function isWhiteout(r: DirentRecord): r is { v: 1; whiteout: true } {
  return 'whiteout' in r;
}

/**
 * A file block's content: a data block with its checksums, or bytes kept inline in
 * metadata (shorter than a block; the rest reads as zeros).
 *
 * Inline content of no bytes is a punched hole (`HOLE_REF`, from fallocate PUNCH_HOLE):
 * it reads as zeros like any hole, but as an entry it stops the chain lookup, so a block
 * of a lower segment never shows through it.
 */
export type BlockRef = DataRef | Buffer;

/**
 * A data block the entry owns and the CRC-32C(s) of its content. The store writes
 * `SectorCrcRef`, and `UnwrittenRef` for blocks fallocate reserved; `BlockCrcRef` is how
 * blocks written before per-sector checksums stay readable (no format bump: the tag byte
 * tells them apart).
 */
export type DataRef = WrittenRef | UnwrittenRef;

/** A data block whose content its checksums cover. */
export type WrittenRef = BlockCrcRef | SectorCrcRef;

/**
 * Tag 3: a block taken for the file by fallocate and never written (ext4's unwritten
 * extent). Its content reads as zeros whatever the data device holds, so it is never
 * read; the first write to it writes the whole block. It owns its block like any data ref.
 */
export interface UnwrittenRef {
  block: number;
  unwritten: true;
}

export function isUnwrittenRef(ref: BlockRef): ref is UnwrittenRef {
  return !Buffer.isBuffer(ref) && 'unwritten' in ref;
}

/** The entry of a punched block (see BlockRef). */
export const HOLE_REF: Buffer = Buffer.alloc(0);

export function isHoleRef(ref: BlockRef): boolean {
  return Buffer.isBuffer(ref) && ref.length === 0;
}

/** Whether the entry holds bytes a read may see (SEEK_DATA's data): written blocks and inline content, not holes or unwritten blocks. */
export function holdsData(ref: BlockRef): boolean {
  return Buffer.isBuffer(ref) ? ref.length > 0 : !isUnwrittenRef(ref);
}

/** Tag 0: one CRC-32C of the whole block, so verifying any byte means reading the block whole. */
export interface BlockCrcRef {
  block: number;
  crc: number;
}

/**
 * Tag 2: one CRC-32C per sector. A block is SECTORS_PER_BLOCK sectors of
 * `sectorSizeBytes(blockSizeBytes)` each, `sectorCrcs[i]` covering
 * [i * sectorSize, (i + 1) * sectorSize), so a partial read verifies only the sectors it touches.
 */
export interface SectorCrcRef {
  block: number;
  /** Exactly SECTORS_PER_BLOCK entries, uint32. */
  sectorCrcs: number[];
}

/** Fixed for every block size: the sector size scales with the block (4 KiB at 64 KiB, 64 KiB at 1 MiB). */
export const SECTORS_PER_BLOCK = 16;

export function sectorSizeBytes(blockSizeBytes: number): number {
  return blockSizeBytes / SECTORS_PER_BLOCK;
}

export function isDataRef(ref: BlockRef): ref is DataRef {
  return !Buffer.isBuffer(ref);
}

export function hasSectorCrcs(ref: DataRef): ref is SectorCrcRef {
  return 'sectorCrcs' in ref;
}

/** Whether a whole block's content matches its ref's checksum(s). An unwritten block's content is never read: it always matches. */
export function blockContentMatches(ref: DataRef, content: Buffer): boolean {
  if (isUnwrittenRef(ref)) return true;
  if (hasSectorCrcs(ref)) return firstBadSector(ref, content, 0, sectorSizeBytes(content.length)) === -1;
  return blockIo.crc32c(content) === ref.crc;
}

/** CRC-32C of each sector of `bytes`, which is a whole number of `sectorBytes` sectors. */
export function sectorCrcsOf(bytes: Buffer, sectorBytes: number): number[] {
  const out: number[] = [];
  for (let at = 0; at < bytes.length; at += sectorBytes) out.push(blockIo.crc32c(bytes.subarray(at, at + sectorBytes)));
  return out;
}

/**
 * The first sector in [firstSector, firstSector + bytes.length / sectorBytes) whose
 * bytes (`bytes` starting at firstSector's first byte) fail their CRC, or -1.
 */
export function firstBadSector(ref: SectorCrcRef, bytes: Buffer, firstSector: number, sectorBytes: number): number {
  for (let i = 0, at = 0; at < bytes.length; i++, at += sectorBytes) {
    if (blockIo.crc32c(bytes.subarray(at, at + sectorBytes)) !== ref.sectorCrcs[firstSector + i]) return firstSector + i;
  }
  return -1;
}

const TAG0_BYTES = 11;
const TAG2_BYTES = 7 + 4 * SECTORS_PER_BLOCK;
/** Tag 3 carries a CRC of its block number, so a damaged entry is not read as a reservation. */
const TAG3_BYTES = 11;

/**
 * Tag 0 [0][block: 6 bytes LE][crc: 4 bytes LE] (the store no longer writes it; restore does),
 * tag 1 [1][crc of bytes: 4 bytes LE][bytes],
 * tag 2 [2][block: 6 bytes LE][SECTORS_PER_BLOCK x crc: 4 bytes LE each],
 * tag 3 [3][block: 6 bytes LE][crc of the 6 block bytes: 4 bytes LE] (unwritten).
 */
export function packBlockRef(ref: BlockRef): Buffer {
  if (isUnwrittenRef(ref)) {
    const b = Buffer.alloc(TAG3_BYTES);
    b[0] = 3;
    b.writeUIntLE(ref.block, 1, 6);
    b.writeUInt32LE(blockIo.crc32c(b.subarray(1, 7)), 7);
    return b;
  }
  if (isDataRef(ref) && hasSectorCrcs(ref)) {
    if (ref.sectorCrcs.length !== SECTORS_PER_BLOCK) {
      throw dmfsError('INVALID', `data block ${ref.block} has ${ref.sectorCrcs.length} sector checksums, not ${SECTORS_PER_BLOCK}`);
    }
    const b = Buffer.alloc(TAG2_BYTES);
    b[0] = 2;
    b.writeUIntLE(ref.block, 1, 6);
    ref.sectorCrcs.forEach((crc, i) => b.writeUInt32LE(crc >>> 0, 7 + 4 * i));
    return b;
  }
  if (isDataRef(ref)) {
    const b = Buffer.alloc(TAG0_BYTES);
    b[0] = 0;
    b.writeUIntLE(ref.block, 1, 6);
    b.writeUInt32LE(ref.crc >>> 0, 7);
    return b;
  }
  const b = Buffer.alloc(5 + ref.length);
  b[0] = 1;
  b.writeUInt32LE(blockIo.crc32c(ref), 1);
  ref.copy(b, 5);
  return b;
}

export function unpackBlockRef(raw: Buffer): BlockRef {
  if (raw[0] === 2 && raw.length === TAG2_BYTES) {
    const sectorCrcs: number[] = [];
    for (let i = 0; i < SECTORS_PER_BLOCK; i++) sectorCrcs.push(raw.readUInt32LE(7 + 4 * i));
    return { block: raw.readUIntLE(1, 6), sectorCrcs };
  }
  if (raw[0] === 0 && raw.length === TAG0_BYTES) return { block: raw.readUIntLE(1, 6), crc: raw.readUInt32LE(7) };
  if (raw[0] === 3 && raw.length === TAG3_BYTES) {
    if (blockIo.crc32c(raw.subarray(1, 7)) !== raw.readUInt32LE(7)) throw dmfsError('METADATA_CORRUPT', 'unwritten block map entry fails its checksum');
    return { block: raw.readUIntLE(1, 6), unwritten: true };
  }
  if (raw[0] === 1 && raw.length >= 5) {
    const bytes = Buffer.from(raw.subarray(5));
    if (blockIo.crc32c(bytes) !== raw.readUInt32LE(1)) throw dmfsError('METADATA_CORRUPT', 'inline block content fails its checksum');
    return bytes;
  }
  throw dmfsError('METADATA_CORRUPT', 'block map entry has an unknown tag');
}

/**
 * The data block a packed block-map entry points at, or null for inline content, without
 * unpacking the checksums (a copy moves the packed entry as it is). METADATA_CORRUPT for
 * an entry of unknown shape.
 */
export function dataBlockOfPacked(raw: Buffer): number | null {
  if ((raw[0] === 2 && raw.length === TAG2_BYTES) || (raw[0] === 0 && raw.length === TAG0_BYTES)) return raw.readUIntLE(1, 6);
  if (isUnwrittenPacked(raw)) return (unpackBlockRef(raw) as UnwrittenRef).block; // verifies the entry's own checksum
  if (raw[0] === 1 && raw.length >= 5) return null;
  throw dmfsError('METADATA_CORRUPT', 'block map entry has an unknown tag');
}

/** Whether a packed entry is an unwritten block (tag 3): it owns a block but reads as zeros. */
export function isUnwrittenPacked(raw: Buffer): boolean {
  return raw[0] === 3 && raw.length === TAG3_BYTES;
}

/** Bytes of inline content a packed inline entry holds (see dataBlockOfPacked). */
export function inlineBytesOfPacked(raw: Buffer): number {
  return raw.length - 5;
}

export interface LayerRecord {
  v: 1;
  id: number;
  name: string;
  kind: LayerKind;
  state: LayerState;
  parentId: number | null;
  /** Segment holding this layer's own records. */
  segment: number;
  createdMs: number;
  labels: Record<string, string>;
  sizeLimitBytes: number;
  /** Removal asked while in use: done at the last close. */
  deferredRemoval: boolean;
  /** Building image layers: the pool owner building it (removed at recovery if that owner died). */
  builderOwnerId?: number;
}

export function packLayer(r: LayerRecord): Buffer {
  return packRecord(r);
}

export function unpackLayer(raw: Buffer): LayerRecord {
  const r = unpackRecord<LayerRecord>(raw);
  if (r?.v !== 1) throw dmfsError('METADATA_CORRUPT', 'layer record has an unknown version');
  return r;
}

export interface SegmentUsage {
  v: 1;
  /** Data blocks referenced by the segment's block maps. */
  blocks: number;
  /** Bytes of inline block content. */
  inlineBytes: number;
}

export function packUsage(r: SegmentUsage): Buffer {
  return packRecord(r);
}

export function unpackUsage(raw: Buffer | undefined): SegmentUsage {
  if (!raw) return { v: 1, blocks: 0, inlineBytes: 0 };
  const r = unpackRecord<SegmentUsage>(raw);
  if (r?.v !== 1) throw dmfsError('METADATA_CORRUPT', 'segment usage record has an unknown version');
  return r;
}

/** Pool bytes a segment holds: its data blocks plus its inline block bytes. */
export function usageBytes(raw: Buffer | undefined, blockSizeBytes: number): number {
  const u = unpackUsage(raw);
  return u.blocks * blockSizeBytes + u.inlineBytes;
}

export interface HolderRecord {
  v: 1;
  /** Writable open: at most one holder per layer. */
  writable: boolean;
  mountpoint: string | null;
  readOnly: boolean;
  pid: number;
}

export function packHolder(r: HolderRecord): Buffer {
  return packRecord(r);
}

export function unpackHolder(raw: Buffer): HolderRecord {
  const r = unpackRecord<HolderRecord>(raw);
  if (r?.v !== 1) throw dmfsError('METADATA_CORRUPT', 'holder record has an unknown version');
  return r;
}

// ---- keys ------------------------------------------------------------------

export const inodeKey = (segment: number, ino: number) => [segment, ino];
export const direntKey = (segment: number, dirIno: number, name: string) => [segment, dirIno, name];
/** [start, end) of a directory's entries in one segment. */
export const direntRange = (segment: number, dirIno: number): [number[], number[]] => [[segment, dirIno], [segment, dirIno + 1]];
export const bmapKey = (segment: number, ino: number, fileBlock: number) => [segment, ino, fileBlock];
export const bmapRange = (segment: number, ino: number, fromBlock = 0): [number[], number[]] => [[segment, ino, fromBlock], [segment, ino + 1]];
export const segmentRange = (segment: number): [number[], number[]] => [[segment], [segment + 1]];
