import * as fs from 'node:fs';

/**
 * The on-disk layout of an LMDB data file as liblmdb writes it (lmdb-js 2.9's "master3",
 * 64-bit, little-endian, no page checksums), and the readers metadata-verify.ts walks it with.
 *
 * Layout (from mdb.c; all fields little-endian, pgno_t / txnid_t / mdb_size_t 8 bytes):
 *   MDB_page_header (24 bytes): pgno u64 @0, txnid u64 @8, pad u16 @16, flags u16 @18,
 *     lower u16 @20, upper u16 @22 (overflow pages: page count u32 @20).
 *     lower/upper are offsets from the end of the header (PAGEBASE = 24); the node
 *     pointers mp_ptrs[i] (u16 each) start at byte 24, NUMKEYS = lower / 2.
 *   MDB_node (8-byte header): lo u16, hi u16, flags u16, ksize u16, then key, then data.
 *     Branch: child pgno = lo | hi << 16 | flags << 32. Leaf: data size = lo | hi << 16;
 *     F_BIGDATA: the data is the u64 pgno of an overflow run holding the value;
 *     F_SUBDATA: the data is an MDB_db (a named database, or a DUPSORT sub-tree).
 *   MDB_db (48 bytes): pad u32, flags u16, depth u16, branch/leaf/overflow pages u64,
 *     entries u64, root u64 (P_INVALID = 2^64-1 for an empty tree).
 *   MDB_meta, at byte 24 of pages 0 and 1: magic u32 (0xBEEFC0DE), version u32 (2),
 *     address u64, mapsize u64, dbs[FREE, MAIN] (2 x MDB_db; FREE's pad is the page size),
 *     last_pg u64, txnid u64. liblmdb opens the snapshot of the meta with the higher txnid.
 */

export const LMDB_MAGIC = 0xbeefc0de;
export const LMDB_DATA_VERSION = 2;

export const PAGEHDRSZ = 24;
export const NODESIZE = 8;
export const DB_BYTES = 48;
export const META_OFFSET = PAGEHDRSZ;
export const NUM_METAS = 2;
export const P_INVALID = 0xffffffffffffffffn;

export const P_BRANCH = 0x01;
export const P_LEAF = 0x02;
export const P_OVERFLOW = 0x04;
export const P_META = 0x08;
export const P_LEAF2 = 0x20;
export const P_SUBP = 0x40;

export const F_BIGDATA = 0x01;
export const F_SUBDATA = 0x02;
export const F_DUPDATA = 0x04;

export const MDB_REVERSEKEY = 0x02;
export const MDB_DUPSORT = 0x04;
export const MDB_INTEGERKEY = 0x08;
export const MDB_DUPFIXED = 0x10;
export const MDB_INTEGERDUP = 0x20;
export const MDB_REVERSEDUP = 0x40;
export const DB_FLAGS_KNOWN = MDB_REVERSEKEY | MDB_DUPSORT | MDB_INTEGERKEY | MDB_DUPFIXED | MDB_INTEGERDUP | MDB_REVERSEDUP;

/** Largest key liblmdb writes (MDB_MAXKEYSIZE of this build). */
export const MAX_KEY_BYTES = 511;
/** Deeper than any tree of 2^64 pages with >= 2 keys per branch. */
export const MAX_DEPTH = 64;

export interface MetaInfo {
  pgno: number;
  txnid: number;
  lastPgno: number;
  mapSizeBytes: number;
  pageSizeBytes: number;
  sound: boolean;
}

export interface DbRecord {
  flags: number;
  depth: number;
  branchPages: bigint;
  leafPages: bigint;
  overflowPages: bigint;
  entries: bigint;
  root: bigint;
}

/** A u64 field as a number: exact below 2^53; larger values (e.g. P_INVALID) come out >= 2^53. */
export function u64(buf: Buffer, at: number): number {
  return buf.readUInt32LE(at) + buf.readUInt32LE(at + 4) * 0x100000000;
}

export function readDb(buf: Buffer, at: number): DbRecord {
  return {
    flags: buf.readUInt16LE(at + 4),
    depth: buf.readUInt16LE(at + 6),
    branchPages: buf.readBigUInt64LE(at + 8),
    leafPages: buf.readBigUInt64LE(at + 16),
    overflowPages: buf.readBigUInt64LE(at + 24),
    entries: buf.readBigUInt64LE(at + 32),
    root: buf.readBigUInt64LE(at + 40),
  };
}

/** Bytes per read: sequential 64 KiB reads of a page-cached file cost ~0.2 us per page, 4 KiB preads ~4 us. */
export const CHUNK_BYTES = 64 * 1024;
/** Chunks kept (LRU by insertion): 64 MiB at most, whatever the metadata's size. */
export const MAX_CHUNKS = 1024;

/** Reads pages of the file by number, through a bounded cache of 64 KiB chunks. */
export class PageReader {
  readonly fileBytes: number;
  private readonly chunks = new Map<number, Buffer>();
  private readonly pagesPerChunk: number;
  constructor(private readonly fd: number, readonly pageSize: number) {
    this.fileBytes = fs.fstatSync(fd).size;
    this.pagesPerChunk = Math.max(1, CHUNK_BYTES / pageSize);
  }
  /** The page's bytes (a view into a cached chunk), or null past the end of the file. */
  page(pgno: number): Buffer | null {
    const at = pgno * this.pageSize;
    if (at + this.pageSize > this.fileBytes) return null;
    const c = Math.floor(pgno / this.pagesPerChunk);
    let chunk = this.chunks.get(c);
    if (!chunk) {
      const bytes = this.pagesPerChunk * this.pageSize;
      chunk = Buffer.allocUnsafe(bytes);
      let done = 0;
      while (done < bytes) {
        const n = fs.readSync(this.fd, chunk, done, bytes - done, c * bytes + done);
        if (n <= 0) break;
        done += n;
      }
      chunk = chunk.subarray(0, done);
      if (this.chunks.size >= MAX_CHUNKS) this.chunks.delete(this.chunks.keys().next().value as number);
      this.chunks.set(c, chunk);
    }
    const off = (pgno - c * this.pagesPerChunk) * this.pageSize;
    return off + this.pageSize <= chunk.length ? chunk.subarray(off, off + this.pageSize) : null;
  }
}

export function compareKeys(a: Buffer, b: Buffer, dbFlags: number): number {
  if (dbFlags & MDB_INTEGERKEY && a.length === b.length && (a.length === 8 || a.length === 4)) {
    const x = a.length === 8 ? a.readBigUInt64LE(0) : BigInt(a.readUInt32LE(0));
    const y = b.length === 8 ? b.readBigUInt64LE(0) : BigInt(b.readUInt32LE(0));
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (dbFlags & MDB_REVERSEKEY) {
    return Buffer.compare(Buffer.from(a).reverse(), Buffer.from(b).reverse());
  }
  return Buffer.compare(a, b);
}

/** Meta page i's content and whether its header alone is sound. */
export function readMeta(page: Buffer | null, i: number): { meta: MetaInfo; free: DbRecord; main: DbRecord; problems: string[] } | null {
  if (!page) return null;
  const problems: string[] = [];
  const pgno = page.readBigUInt64LE(0);
  const flags = page.readUInt16LE(18);
  const magic = page.readUInt32LE(META_OFFSET);
  const version = page.readUInt32LE(META_OFFSET + 4);
  const mapSize = page.readBigUInt64LE(META_OFFSET + 16);
  const free = readDb(page, META_OFFSET + 24);
  const main = readDb(page, META_OFFSET + 24 + DB_BYTES);
  const pageSize = page.readUInt32LE(META_OFFSET + 24);
  const lastPg = page.readBigUInt64LE(META_OFFSET + 24 + 2 * DB_BYTES);
  const txnid = page.readBigUInt64LE(META_OFFSET + 24 + 2 * DB_BYTES + 8);
  if (!(flags & P_META) || (flags & ~P_META) !== 0) problems.push(`page flags 0x${flags.toString(16)} are not a meta page's`);
  if (pgno !== BigInt(i)) problems.push(`page number field is ${pgno}, not ${i}`);
  if (magic !== LMDB_MAGIC) problems.push(`magic is 0x${magic.toString(16)}, not 0x${LMDB_MAGIC.toString(16)}`);
  if ((version & 0xffff) !== LMDB_DATA_VERSION) problems.push(`format version ${version & 0xffff}, not ${LMDB_DATA_VERSION}`);
  if (pageSize !== page.length) problems.push(`page size ${pageSize}, not ${page.length}`);
  const maxPg = BigInt(Number.MAX_SAFE_INTEGER);
  if (lastPg < 1n || lastPg > maxPg) problems.push(`last page ${lastPg} is out of range`);
  else if (mapSize < (lastPg + 1n) * BigInt(page.length)) problems.push(`map size ${mapSize} is smaller than its ${lastPg + 1n} pages`);
  if (txnid > maxPg) problems.push(`txnid ${txnid} is out of range`);
  for (const [name, db] of [['free', free], ['main', main]] as const) {
    const empty = db.root === P_INVALID;
    if (empty ? db.depth !== 0 || db.entries !== 0n : db.root < 2n || db.root > lastPg || db.depth < 1 || db.depth > MAX_DEPTH) {
      problems.push(`${name} DB record (root ${db.root === P_INVALID ? 'none' : db.root}, depth ${db.depth}, ${db.entries} entries) is inconsistent`);
    }
  }
  if (main.flags & ~DB_FLAGS_KNOWN) problems.push(`main DB flags 0x${main.flags.toString(16)} are unknown`);
  return {
    meta: {
      pgno: i,
      txnid: Number(txnid > maxPg ? maxPg : txnid),
      lastPgno: Number(lastPg > maxPg ? maxPg : lastPg),
      mapSizeBytes: Number(mapSize > maxPg ? maxPg : mapSize),
      pageSizeBytes: pageSize,
      sound: problems.length === 0,
    },
    free,
    main,
    problems,
  };
}

/** Page size from meta page 0 when it is plausible, else 4096 (this build's default). */
export function guessPageSize(fd: number): number {
  const head = Buffer.alloc(PAGEHDRSZ + 32);
  if (fs.readSync(fd, head, 0, head.length, 0) !== head.length) return 4096;
  const ps = head.readUInt32LE(META_OFFSET + 24);
  return ps >= 512 && ps <= 65536 && (ps & (ps - 1)) === 0 ? ps : 4096;
}

/** The txnids of both meta pages (-1 for one that cannot be read). */
export function metaTxnids(file: string): number[] {
  const fd = fs.openSync(file, 'r');
  try {
    const ps = guessPageSize(fd);
    const out: number[] = [];
    const b = Buffer.alloc(PAGEHDRSZ + 24 + 2 * DB_BYTES + 16);
    for (let i = 0; i < NUM_METAS; i++) {
      const n = fs.readSync(fd, b, 0, b.length, i * ps);
      out.push(n === b.length ? u64(b, META_OFFSET + 24 + 2 * DB_BYTES + 8) : -1);
    }
    return out;
  } finally {
    fs.closeSync(fd);
  }
}
