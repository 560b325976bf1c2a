import * as fs from 'node:fs';
import { DmfsError } from '../errors';

/**
 * Structural validation of an LMDB data file (lmdb-js 2.9's liblmdb, "master3", 64-bit,
 * little-endian, no page checksums), done in TypeScript before liblmdb maps the file.
 *
 * Why: liblmdb trusts its pages. A page number or node offset it reads from a damaged
 * page is dereferenced as is: a segfault or an assertion abort in native code, which no
 * JavaScript try/catch can stop; or, worse, a lookup that finds nothing where a record
 * was (a block-map entry read as a hole). So every process proves the file sound here
 * before `lmdb.open`, and refuses it (METADATA_CORRUPT) otherwise.
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
 *
 * What is proved, for the snapshot liblmdb will open (and, skipping pages already proved,
 * the previous one, which a commit may fall back to): both meta pages sound; every page
 * reachable from the free DB, the main DB and each named DB (their MDB_db records live in
 * the main DB's leaves) has the page number of its position, valid flags for its role,
 * lower/upper in bounds, every node inside the page past the pointer array, keys in
 * order and inside the separator range of the parent, all leaves at the recorded depth,
 * children and overflow runs inside [2, last_pg], no page reachable twice, page txnids
 * not newer than the snapshot, page/entry counts equal to the MDB_db record's, free-list
 * records well formed; and every page of [2, last_pg] either in use or free, never both.
 *
 * Not proved: value bytes (records carry their own CRC-32C, see codec.ts) and the content
 * of free pages. liblmdb never reads a free page (it writes a whole page before reuse), so
 * damage there is harmless, and it cannot be told from stale bytes: a freed overflow run's
 * continuation pages hold a value's raw bytes (inline file data, up to 32 KiB), and once the
 * run's first page is reused nothing says they were ever part of a run.
 */

export const LMDB_MAGIC = 0xbeefc0de;
export const LMDB_DATA_VERSION = 2;

const PAGEHDRSZ = 24;
const NODESIZE = 8;
const DB_BYTES = 48;
const META_OFFSET = PAGEHDRSZ;
const NUM_METAS = 2;
const P_INVALID = 0xffffffffffffffffn;

const P_BRANCH = 0x01;
const P_LEAF = 0x02;
const P_OVERFLOW = 0x04;
const P_META = 0x08;
const P_LEAF2 = 0x20;
const P_SUBP = 0x40;

const F_BIGDATA = 0x01;
const F_SUBDATA = 0x02;
const F_DUPDATA = 0x04;

const MDB_REVERSEKEY = 0x02;
const MDB_DUPSORT = 0x04;
const MDB_INTEGERKEY = 0x08;
const MDB_DUPFIXED = 0x10;
const MDB_INTEGERDUP = 0x20;
const MDB_REVERSEDUP = 0x40;
const DB_FLAGS_KNOWN = MDB_REVERSEKEY | MDB_DUPSORT | MDB_INTEGERKEY | MDB_DUPFIXED | MDB_INTEGERDUP | MDB_REVERSEDUP;

/** Largest key liblmdb writes (MDB_MAXKEYSIZE of this build). */
const MAX_KEY_BYTES = 511;
/** Deeper than any tree of 2^64 pages with >= 2 keys per branch. */
const MAX_DEPTH = 64;

/** Where a damage was found: a page (or null for the file as a whole) of one database. */
export interface MetadataDamage {
  /** Page number, or null when the damage is not one page's (file size, counts). */
  pgno: number | null;
  /** 'meta', 'free-list' (LMDB's free DB), 'main', a named database's name, or 'file'. */
  db: string;
  message: string;
  /**
   * 'live': in what liblmdb would open (refuse to open); 'previous': only in the previous
   * snapshot, which liblmdb does not read unless the newest meta page is lost (harmless
   * now, reported by check); 'space': LMDB pages neither in use nor free (a leak of
   * metadata pages, harmless).
   */
  scope: 'live' | 'previous' | 'space';
}

export interface MetaInfo {
  pgno: number;
  txnid: number;
  lastPgno: number;
  mapSizeBytes: number;
  pageSizeBytes: number;
  sound: boolean;
}

export interface MetadataVerifyReport {
  /** No damage of scope 'live': liblmdb may open the file. */
  openable: boolean;
  /** No damage at all. */
  sound: boolean;
  damage: MetadataDamage[];
  metas: MetaInfo[];
  /** The meta page liblmdb would pick (higher txnid), or null if none is readable. */
  liveMeta: number | null;
  pageSizeBytes: number;
  lastPgno: number;
  /** Pages read and validated (both snapshots, without double counting). */
  pagesVisited: number;
  /** Named databases found in the main DB. */
  databases: string[];
  elapsedMs: number;
  /**
   * With `{ roles: true }`: per page of [0, lastPgno], what holds it: 'meta', '<db>'
   * (live snapshot), '<db> overflow' (continuation pages of a value), 'previous <db>',
   * 'free page', or 'unused' (neither; past last_pg is not listed).
   */
  roles?: string[];
}

/** Limits the report; the walk stops adding damage (not validating) past it. */
const MAX_DAMAGE = 200;
const EMPTY = Buffer.alloc(0);

interface DbRecord {
  flags: number;
  depth: number;
  branchPages: bigint;
  leafPages: bigint;
  overflowPages: bigint;
  entries: bigint;
  root: bigint;
}

/** A u64 field as a number: exact below 2^53; larger values (e.g. P_INVALID) come out >= 2^53. */
function u64(buf: Buffer, at: number): number {
  return buf.readUInt32LE(at) + buf.readUInt32LE(at + 4) * 0x100000000;
}

function readDb(buf: Buffer, at: number): DbRecord {
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
const CHUNK_BYTES = 64 * 1024;
/** Chunks kept (LRU by insertion): 64 MiB at most, whatever the metadata's size. */
const MAX_CHUNKS = 1024;

/** Reads pages of the file by number, through a bounded cache of 64 KiB chunks. */
class PageReader {
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

function compareKeys(a: Buffer, b: Buffer, dbFlags: number): number {
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
function readMeta(page: Buffer | null, i: number): { meta: MetaInfo; free: DbRecord; main: DbRecord; problems: string[] } | null {
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
function guessPageSize(fd: number): number {
  const head = Buffer.alloc(PAGEHDRSZ + 32);
  if (fs.readSync(fd, head, 0, head.length, 0) !== head.length) return 4096;
  const ps = head.readUInt32LE(META_OFFSET + 24);
  return ps >= 512 && ps <= 65536 && (ps & (ps - 1)) === 0 ? ps : 4096;
}

/**
 * Walks the LMDB data file at `file` and reports every structural damage found (up to a
 * limit), without opening it with liblmdb. Never throws for damage: only for an
 * unreadable file (the caller's open fails anyway).
 */
export function verifyMetadataFile(file: string, opts: { roles?: boolean } = {}): MetadataVerifyReport {
  const t0 = process.hrtime.bigint();
  const fd = fs.openSync(file, 'r');
  try {
    return walk(fd, t0, Boolean(opts.roles));
  } finally {
    fs.closeSync(fd);
  }
}

function walk(fd: number, t0: bigint, wantRoles: boolean): MetadataVerifyReport {
  const damage: MetadataDamage[] = [];
  let scope: MetadataDamage['scope'] = 'live';
  const add = (pgno: number | null, db: string, message: string) => {
    if (damage.length < MAX_DAMAGE) damage.push({ pgno, db, message, scope });
  };
  let ps = guessPageSize(fd);
  let roles: string[] | null = null;
  const finish = (metas: MetaInfo[], liveMeta: number | null, lastPgno: number, visited: number, databases: string[]): MetadataVerifyReport => ({
    ...(roles ? { roles } : {}),
    openable: !damage.some((d) => d.scope === 'live'),
    sound: damage.length === 0,
    damage,
    metas,
    liveMeta,
    pageSizeBytes: ps,
    lastPgno,
    pagesVisited: visited,
    databases,
    elapsedMs: Number(process.hrtime.bigint() - t0) / 1e6,
  });

  const fileBytes = fs.fstatSync(fd).size;
  if (fileBytes < NUM_METAS * ps) {
    add(null, 'file', `the file is ${fileBytes} bytes, shorter than its two meta pages`);
    return finish([], null, 0, 0, []);
  }
  const metaPages: Buffer[] = [];
  for (let i = 0; i < NUM_METAS; i++) {
    const b = Buffer.alloc(ps);
    fs.readSync(fd, b, 0, ps, i * ps);
    metaPages.push(b);
  }
  const metas = metaPages.map((p, i) => readMeta(p, i)!);
  for (const m of metas) for (const p of m.problems) add(m.meta.pgno, 'meta', p);
  // With MDB_OVERLAPPINGSYNC, liblmdb also keeps a "flushed" meta in the second half of page
  // 0 and may pick it by txnid alone. dmfs opens without it (noSync), so that half must be
  // zeros: anything else is either damage or a layout this walk does not prove.
  const half = metaPages[0].subarray(ps >> 1);
  if (half.some((b) => b !== 0)) add(0, 'meta', `the second half of meta page 0 is not empty (an overlapping-sync meta copy, or damage); this dmfs opens LMDB without overlappingSync`);
  // liblmdb picks the higher txnid without validating (mdb_env_pick_meta): a damaged meta
  // page with a high txnid would be opened. Any damaged meta page makes the file unopenable.
  const liveIdx = metas[1].meta.txnid > metas[0].meta.txnid ? 1 : 0;
  const order = [liveIdx, 1 - liveIdx].filter((i) => metas[i].meta.sound);
  if (order.length === 0) return finish(metas.map((m) => m.meta), null, 0, 0, []);
  if (metas[0].meta.sound && metas[1].meta.sound && metas[0].meta.pageSizeBytes !== metas[1].meta.pageSizeBytes) {
    add(null, 'meta', 'the two meta pages disagree on the page size');
    return finish(metas.map((m) => m.meta), null, 0, 0, []);
  }
  ps = metas[order[0]].meta.pageSizeBytes;
  const lastPgno = Math.max(...order.map((i) => metas[i].meta.lastPgno));
  const reader = new PageReader(fd, ps);
  /** Per page of [0, lastPgno]: 0 unseen, 1 proved in use by the live snapshot, 2 proved in the previous one, 3 listed free (live). */
  const state = new Uint8Array(lastPgno + 1);
  state[0] = state[1] = 1;
  roles = wantRoles ? new Array<string>(lastPgno + 1).fill('unused') : null;
  if (roles) roles[0] = roles[1] = 'meta';
  const role = (pgno: number, db: string, mark: number, overflow = false) => {
    if (roles) roles[pgno] = `${mark === 2 ? 'previous ' : ''}${db}${overflow ? ' overflow' : ''}`;
  };
  let visited = 0;
  const databases: string[] = [];

  /** Validates one snapshot; pages proved by an earlier walk (state != 0) are trusted with their subtree. */
  const walkSnapshot = (m: (typeof metas)[number], mark: 1 | 2) => {
    const snapLast = m.meta.lastPgno;
    const snapTxn = BigInt(m.meta.txnid);
    const freeListed: number[] = [];

    const snapTxnNum = m.meta.txnid;
    const inRange = (pgno: bigint | number) => (typeof pgno === 'number' ? pgno >= 2 && pgno <= snapLast : pgno >= 2n && pgno <= BigInt(snapLast));

    /**
     * Walks the tree of `db` (named `name`); returns false if it found damage. `onLeaf` sees
     * each leaf node's key, flags and value (inline or from its overflow run).
     */
    const walkTree = (name: string, db: DbRecord, onLeaf?: (key: Buffer, nodeFlags: number, value: Buffer | null, pgno: number) => void): void => {
      if (db.root === P_INVALID) {
        if (db.depth !== 0 || db.entries !== 0n) add(null, name, `empty database records depth ${db.depth} and ${db.entries} entries`);
        return;
      }
      if (!inRange(db.root)) {
        add(null, name, `root page ${db.root} is outside [2, ${snapLast}]`);
        return;
      }
      if (db.flags & ~DB_FLAGS_KNOWN || db.depth < 1 || db.depth > MAX_DEPTH) {
        add(null, name, `database record (flags 0x${db.flags.toString(16)}, depth ${db.depth}) is invalid`);
        return;
      }
      const counts = { branch: 0n, leaf: 0n, overflow: 0n, entries: 0n };
      // Values are only read where a caller looks at them (free and main DB); overflow runs of
      // other tables are checked by their header, their bytes by the records' CRC-32C.
      const wantValues = onLeaf !== undefined;
      let skipped = false;

      const visitPage = (pgno: number, depth: number, lo: Buffer | null, hi: Buffer | null): void => {
        if (state[pgno] === mark) {
          add(pgno, name, 'page is reachable twice');
          return;
        }
        if (state[pgno] === 1) {
          // Previous snapshot: proved by the live walk (same page, same bytes), its subtree too.
          // This DB's counts can't be summed then.
          skipped = true;
          return;
        }
        // state 3 (freed by the live transaction) is where the previous snapshot's own pages are.
        const page = reader.page(pgno);
        if (!page) {
          add(pgno, name, `page lies past the end of the file (${reader.fileBytes} bytes)`);
          return;
        }
        state[pgno] = mark;
        role(pgno, name, mark);
        visited++;
        const hdrPgno = u64(page, 0);
        const txnid = u64(page, 8);
        const flags = page.readUInt16LE(18);
        const lower = page.readUInt16LE(20);
        const upper = page.readUInt16LE(22);
        if (hdrPgno !== pgno) {
          add(pgno, name, `page header says page ${page.readBigUInt64LE(0)}`);
          return;
        }
        if (txnid > snapTxnNum) {
          add(pgno, name, `page txnid ${page.readBigUInt64LE(8)} is newer than the snapshot's ${snapTxn}`);
          return;
        }
        const isLeaf = depth === db.depth;
        const want = isLeaf ? P_LEAF : P_BRANCH;
        const kind = flags & (P_BRANCH | P_LEAF | P_OVERFLOW | P_META | P_LEAF2 | P_SUBP);
        if (kind !== want && !(isLeaf && kind === (P_LEAF | P_LEAF2) && db.flags & MDB_DUPFIXED)) {
          add(pgno, name, `page flags 0x${flags.toString(16)} at depth ${depth} of ${db.depth} (want ${isLeaf ? 'leaf' : 'branch'})`);
          return;
        }
        if (lower & 1 || lower > upper || PAGEHDRSZ + upper > ps) {
          add(pgno, name, `free-space bounds lower ${lower} / upper ${upper} are invalid`);
          return;
        }
        const nkeys = lower >> 1;
        if (kind & P_LEAF2) {
          // DUPFIXED leaf: fixed-size keys packed after the header (not used by dmfs's tables).
          if (isLeaf) counts.leaf++;
          return;
        }
        if (nkeys === 0 && !(isLeaf && depth === 1)) {
          add(pgno, name, `${isLeaf ? 'leaf' : 'branch'} page holds no nodes`);
          return;
        }
        if (isLeaf) counts.leaf++;
        else counts.branch++;
        const nodeLimit = ps;
        let prevKey: Buffer | null = null;
        const children: { pgno: number; key: Buffer | null }[] = [];
        for (let i = 0; i < nkeys; i++) {
          const ptr = page.readUInt16LE(PAGEHDRSZ + 2 * i);
          const at = ptr + PAGEHDRSZ;
          if (ptr & 1 || ptr < upper || at + NODESIZE > nodeLimit) {
            add(pgno, name, `node ${i} offset ${ptr} lies outside the page's node area [${upper}, ${ps - PAGEHDRSZ})`);
            return;
          }
          const nlo = page.readUInt16LE(at);
          const nhi = page.readUInt16LE(at + 2);
          const nflags = page.readUInt16LE(at + 4);
          const ksize = page.readUInt16LE(at + 6);
          const keyEnd = at + NODESIZE + ksize;
          if (ksize > MAX_KEY_BYTES || keyEnd > nodeLimit) {
            add(pgno, name, `node ${i} key of ${ksize} bytes overruns the page`);
            return;
          }
          const key = page.subarray(at + NODESIZE, keyEnd);
          // Branch node 0's key is implicit (empty): the subtree's lower bound is the parent's.
          const hasKey = isLeaf || i > 0;
          if (hasKey) {
            if (prevKey && compareKeys(prevKey, key, db.flags) >= 0) {
              add(pgno, name, `node ${i} key is not greater than node ${i - 1}'s`);
              return;
            }
            if ((lo && compareKeys(key, lo, db.flags) < 0) || (hi && compareKeys(key, hi, db.flags) >= 0)) {
              add(pgno, name, `node ${i} key lies outside the range its parent gives this page`);
              return;
            }
            prevKey = key;
          }
          if (!isLeaf) {
            const child = nlo + nhi * 0x10000 + nflags * 0x100000000;
            if (!inRange(child)) {
              add(pgno, name, `node ${i} points at page ${child}, outside [2, ${snapLast}]`);
              return;
            }
            children.push({ pgno: child, key: hasKey ? key : null });
            continue;
          }
          const dsize = nlo | (nhi << 16);
          if (nflags & ~(F_BIGDATA | F_SUBDATA | F_DUPDATA)) {
            add(pgno, name, `node ${i} flags 0x${nflags.toString(16)} are unknown`);
            return;
          }
          counts.entries++;
          let value: Buffer | null = null;
          if (nflags & F_BIGDATA) {
            if (nflags & (F_SUBDATA | F_DUPDATA) || keyEnd + 8 > nodeLimit) {
              add(pgno, name, `node ${i} big-data reference is malformed`);
              return;
            }
            const ov = u64(page, keyEnd);
            const nPages = Math.ceil((PAGEHDRSZ + dsize) / ps);
            if (!inRange(ov) || ov + nPages - 1 > snapLast) {
              add(pgno, name, `node ${i} overflow run at page ${page.readBigUInt64LE(keyEnd)} (${nPages} pages) lies outside [2, ${snapLast}]`);
              return;
            }
            value = visitOverflow(ov, nPages, dsize);
            if (value === null) return;
          } else {
            if (keyEnd + dsize > nodeLimit) {
              add(pgno, name, `node ${i} value of ${dsize} bytes overruns the page`);
              return;
            }
            value = page.subarray(keyEnd, keyEnd + dsize);
            if (nflags & F_SUBDATA) {
              if (dsize !== DB_BYTES) {
                add(pgno, name, `node ${i} sub-database record is ${dsize} bytes, not ${DB_BYTES}`);
                return;
              }
            } else if (nflags & F_DUPDATA) {
              // A DUPSORT sub-page (dmfs opens no DUPSORT table): bounds only.
              if (dsize < PAGEHDRSZ) {
                add(pgno, name, `node ${i} duplicate sub-page of ${dsize} bytes is malformed`);
                return;
              }
            }
          }
          if (onLeaf) onLeaf(Buffer.from(key), nflags, value, pgno);
          if (nflags & F_SUBDATA && nflags & F_DUPDATA) {
            const sub = readDb(value!, 0);
            walkTree(`${name} (duplicates)`, sub);
          }
        }
        for (let i = 0; i < children.length; i++) {
          visitPage(children[i].pgno, depth + 1, children[i].key ?? lo, i + 1 < children.length ? children[i + 1].key : hi);
        }
      };

      const visitOverflow = (first: number, nPages: number, dsize: number): Buffer | null => {
        for (let p = first; p < first + nPages; p++) {
          if (state[p] === mark) {
            add(p, name, 'overflow page is reachable twice');
            return null;
          }
        }
        const already = state[first] === 1 && mark === 2;
        const page = reader.page(first);
        if (!page || (first + nPages) * ps > reader.fileBytes) {
          add(first, name, `overflow run of ${nPages} pages lies past the end of the file`);
          return null;
        }
        if (!already) {
          visited++;
          const flags = page.readUInt16LE(18);
          const count = page.readUInt32LE(20);
          const txnid = page.readBigUInt64LE(8);
          // An overflow header's own page number is not checked: liblmdb never reads it, and a
          // compacted copy (mdb_env_copy2 MDB_CP_COMPACT: backups, restored pools) keeps the
          // source's number there. Flags and page count (32 bits) still catch a damaged header.
          if ((flags & (P_BRANCH | P_LEAF | P_OVERFLOW | P_META | P_LEAF2 | P_SUBP)) !== P_OVERFLOW) {
            add(first, name, `page flags 0x${flags.toString(16)} are not an overflow page's`);
            return null;
          }
          if (count !== nPages) {
            add(first, name, `overflow run holds ${count} pages, its node needs ${nPages}`);
            return null;
          }
          if (txnid > snapTxn) {
            add(first, name, `page txnid ${txnid} is newer than the snapshot's ${snapTxn}`);
            return null;
          }
          for (let p = first; p < first + nPages; p++) {
            state[p] = mark;
            role(p, name, mark, p !== first);
          }
        }
        counts.overflow += BigInt(nPages);
        if (!wantValues) return EMPTY;
        const out = Buffer.allocUnsafe(dsize);
        let got = 0;
        for (let p = first; got < dsize; p++) {
          const pg = reader.page(p)!;
          const from = p === first ? PAGEHDRSZ : 0;
          const n = Math.min(ps - from, dsize - got);
          pg.copy(out, got, from, from + n);
          got += n;
        }
        return out;
      };

      try {
        visitPage(Number(db.root), 1, null, null);
      } catch (err) {
        // A read past a buffer's end etc.: the bounds checks above should make this unreachable.
        add(null, name, `walk failed: ${(err as Error).message}`);
      }
      if (!skipped) {
        const c = counts;
        if (c.branch !== db.branchPages || c.leaf !== db.leafPages || c.overflow !== db.overflowPages || c.entries !== db.entries) {
          // Only meaningful when the walk itself found nothing: else the counts are short by the damaged subtree.
          if (!damage.some((d) => d.db === name && d.scope === scope)) {
            add(null, name, `database record counts ${db.branchPages} branch / ${db.leafPages} leaf / ${db.overflowPages} overflow pages, ${db.entries} entries; the tree holds ${c.branch} / ${c.leaf} / ${c.overflow}, ${c.entries}`);
          }
        }
      }
    };

    // Free DB: [txnid u64] -> IDL (count u64, then count page numbers u64).
    walkTree('free-list', m.free, (key, nflags, value, pgno) => {
      if (key.length !== 8 || nflags & (F_SUBDATA | F_DUPDATA)) {
        add(pgno, 'free-list', `free-list record key of ${key.length} bytes or flags 0x${nflags.toString(16)} is malformed`);
        return;
      }
      const freedBy = key.readBigUInt64LE(0);
      if (freedBy > snapTxn) add(pgno, 'free-list', `free-list record of txn ${freedBy} is newer than the snapshot's ${snapTxn}`);
      if (!value || value.length < 8 || value.length % 8 !== 0 || value.readBigUInt64LE(0) !== BigInt(value.length / 8 - 1)) {
        add(pgno, 'free-list', `free-list record of txn ${freedBy} has a malformed page list`);
        return;
      }
      for (let at = 8; at < value.length; at += 8) {
        const p = value.readBigUInt64LE(at);
        if (!inRange(p)) {
          add(pgno, 'free-list', `free-list record of txn ${freedBy} lists page ${p}, outside [2, ${snapLast}]`);
          return;
        }
        freeListed.push(Number(p));
      }
    });

    // Main DB: named databases are F_SUBDATA leaves whose key is the name.
    const named: { name: string; db: DbRecord }[] = [];
    walkTree('main', m.main, (key, nflags, value) => {
      if (nflags & F_SUBDATA && !(nflags & F_DUPDATA) && value) named.push({ name: key.toString('utf8').replace(/\0$/, ''), db: readDb(value, 0) });
    });
    for (const n of named) {
      if (mark === 1) databases.push(n.name);
      walkTree(n.name, n.db);
    }

    if (mark === 1) {
      // Every page of [2, last_pg] is in use or free, never both (liblmdb would hand a
      // live page out again, or lose the page).
      for (const p of freeListed) {
        if (state[p] === 1) add(p, 'free-list', 'page is listed free but is in use');
        else if (state[p] === 3) add(p, 'free-list', 'page is listed free twice');
        else {
          state[p] = 3;
          if (roles) roles[p] = 'free page';
        }
      }
    }
  };

  {
    walkSnapshot(metas[order[0]], 1);
    const liveLast = metas[order[0]].meta.lastPgno;
    if (!damage.some((d) => d.scope === 'live')) {
      const lost: number[] = [];
      for (let p = 2; p <= liveLast; p++) if (state[p] === 0) lost.push(p);
      scope = 'space';
      if (lost.length) add(lost[0], 'free-list', `${lost.length} page(s) neither in use nor free, from page ${lost[0]} (a leak of metadata pages)`);
    }
    if (order.length === 2) {
      scope = 'previous';
      walkSnapshot(metas[order[1]], 2);
    }
  }
  return finish(metas.map((mm) => mm.meta), metas[liveIdx].meta.sound ? liveIdx : null, metas[order[0]].meta.lastPgno, visited, databases);
}

// ---- the gate before liblmdb opens the file ------------------------------------

/**
 * 'full': walk the file at every open (check, mount: long-lived or there to find damage).
 * 'stamp': skip the walk when the file is unchanged since a walk proved it (same inode,
 * size, mtime, ctime and both meta txnids, see STAMP_FILE); any write, by dmfs or anything
 * else, changes at least one of them. A stamp is written after each walk that let the file
 * open, and at the exit of a 'stamp' process that proved the file (restampAtExit).
 */
export type MetadataVerifyMode = 'full' | 'stamp';

let processMode: MetadataVerifyMode = 'stamp';

/** Makes every later open in this process walk the file whatever its stamp (check, mount). */
export function requireFullMetadataVerify(): void {
  processMode = 'full';
}

/** Beside data.mdb: what the last walk that let the file open saw. */
export const STAMP_FILE = 'VERIFIED';

/** Walks racing a committing writer are repeated this many times before the result is trusted. */
const MAX_RACING_WALKS = 4;

interface Stamp {
  v: 1;
  dev: number;
  ino: number;
  sizeBytes: number;
  mtimeNs: string;
  ctimeNs: string;
  txnids: number[];
}

function metaTxnids(file: string): number[] {
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

function currentStamp(file: string): Stamp {
  const st = fs.statSync(file, { bigint: true });
  return {
    v: 1,
    dev: Number(st.dev),
    ino: Number(st.ino),
    sizeBytes: Number(st.size),
    mtimeNs: st.mtimeNs.toString(),
    ctimeNs: st.ctimeNs.toString(),
    txnids: metaTxnids(file),
  };
}

function sameStamp(a: Stamp, b: Stamp): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.sizeBytes === b.sizeBytes && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs && a.txnids.join() === b.txnids.join();
}

function readStamp(dir: string): Stamp | null {
  try {
    const s = JSON.parse(fs.readFileSync(`${dir}/${STAMP_FILE}`, 'utf8')) as Stamp;
    return s?.v === 1 ? s : null;
  } catch {
    return null;
  }
}

function writeStamp(dir: string, stamp: Stamp): void {
  const tmp = `${dir}/${STAMP_FILE}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(tmp, JSON.stringify(stamp) + '\n', { mode: 0o600 });
    fs.renameSync(tmp, `${dir}/${STAMP_FILE}`);
  } catch {
    // Read-only pool directory: the next open walks again, nothing else is lost.
    try {
      fs.unlinkSync(tmp);
    } catch {
      /* not created */
    }
  }
}

/** The walk that let this process open each metadata directory, when it found harmless damage. */
const reportsAtOpen = new Map<string, MetadataVerifyReport>();

/**
 * Damage the walk before the open found in `dir` and let pass (previous snapshot, leaked
 * pages): the open's own commits may have overwritten it since, but check reports it.
 */
export function damageSeenAtOpen(dir: string): MetadataDamage[] {
  return reportsAtOpen.get(dir)?.damage ?? [];
}

const restampArmed = new Set<string>();

/**
 * Every dmfs command commits (if only its pool-owner record), so a stamp taken at open is
 * stale at exit and the next command would walk again. A short command that proved the
 * file at open and exits 0 stamps what it leaves: since the proof, only liblmdb commits
 * (its own, or another dmfs process's) changed the file. Not done in 'full' processes
 * (mount, check): a mount lives for hours, long enough for damage from outside to land.
 * The price: damage from outside that lands while such a short command runs is not seen
 * until the next check or mount.
 */
function restampAtExit(dir: string): void {
  if (restampArmed.has(dir)) return;
  restampArmed.add(dir);
  process.once('exit', (code) => {
    if (code !== 0 || processMode !== 'stamp') return;
    try {
      writeStamp(dir, currentStamp(`${dir}/data.mdb`));
    } catch {
      // The pool was destroyed, or its directory is unreadable: nothing to stamp.
    }
  });
}

/** One line per damage, the first `max` of them. */
export function describeDamage(report: MetadataVerifyReport, max = 5): string {
  const lines = report.damage.slice(0, max).map((d) => `${d.pgno === null ? '' : `page ${d.pgno} `}(${d.db}): ${d.message}`);
  if (report.damage.length > max) lines.push(`... and ${report.damage.length - max} more`);
  return lines.join('; ');
}

/**
 * Walks `file` until no committing writer raced the walk (meta txnids equal before and
 * after), at most MAX_RACING_WALKS times. LMDB never rewrites a page of the newest two
 * snapshots, so a walk that saw the same metas at both ends read a consistent file.
 */
export function verifyMetadataStable(file: string): MetadataVerifyReport {
  let report = verifyMetadataFile(file);
  for (let i = 1; i < MAX_RACING_WALKS && !report.sound; i++) {
    const before = report.metas.map((m) => m.txnid).join();
    const now = metaTxnids(file).join();
    if (before === now) break;
    report = verifyMetadataFile(file);
  }
  return report;
}

/**
 * Proves the LMDB file of the metadata directory `dir` safe for liblmdb to open, or throws
 * METADATA_CORRUPT naming the damaged pages and what to do next; touches nothing in the
 * file either way. A missing file is not this function's business (the open reports it).
 */
export function proveMetadataSound(dir: string, mode: MetadataVerifyMode = processMode): MetadataVerifyReport | null {
  const file = `${dir}/data.mdb`;
  if (!fs.existsSync(file)) return null;
  const before = currentStamp(file);
  if (mode === 'stamp') {
    const stamp = readStamp(dir);
    if (stamp && sameStamp(stamp, before)) {
      restampAtExit(dir);
      return null;
    }
  }
  const report = verifyMetadataStable(file);
  if (!report.openable) {
    const root = dir.replace(/\/metadata\/?$/, '');
    const oneMetaLost = report.damage.every((d) => d.db === 'meta' || d.scope !== 'live') && report.metas.some((m) => m.sound);
    throw new DmfsError(
      'METADATA_CORRUPT',
      `the pool metadata ${file} is damaged, so it was not opened (nothing was changed): ${describeDamage(report)}. ` +
        (oneMetaLost ? `The other meta page (txn ${report.metas.find((m) => m.sound)!.txnid}) is sound, but LMDB could pick the damaged one. ` : '') +
        `Run 'dmfs check --root ${root}' for the full report, then 'dmfs check --repair --from-backup --root ${root}' to restore the last metadata backup.`,
      { cause: report },
    );
  }
  if (report.damage.length) reportsAtOpen.set(dir, report);
  else reportsAtOpen.delete(dir);
  const after = currentStamp(file);
  if (sameStamp(before, after)) writeStamp(dir, after);
  if (mode === 'stamp') restampAtExit(dir);
  return report;
}
