import * as fs from 'node:fs';
import {
  compareKeys,
  DB_BYTES,
  DB_FLAGS_KNOWN,
  type DbRecord,
  F_BIGDATA,
  F_DUPDATA,
  F_SUBDATA,
  guessPageSize,
  MAX_DEPTH,
  MAX_KEY_BYTES,
  MDB_DUPFIXED,
  type MetaInfo,
  metaTxnids,
  NODESIZE,
  NUM_METAS,
  P_BRANCH,
  P_INVALID,
  P_LEAF,
  P_LEAF2,
  P_META,
  P_OVERFLOW,
  P_SUBP,
  PAGEHDRSZ,
  PageReader,
  readDb,
  readMeta,
  u64,
} from './lmdb-layout';

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

/** One line per damage, the first `max` of them. */
export function describeDamage(report: MetadataVerifyReport, max = 5): string {
  const lines = report.damage.slice(0, max).map((d) => `${d.pgno === null ? '' : `page ${d.pgno} `}(${d.db}): ${d.message}`);
  if (report.damage.length > max) lines.push(`... and ${report.damage.length - max} more`);
  return lines.join('; ');
}

/**
 * How long walks that raced committing writers are repeated before the last one is trusted.
 * Several dmfs commands committing at once (a burst of `dmfs create`) can race a few walks
 * in a row: each walk that raced is repeated after a pause that grows (1 ms doubling to 50
 * ms, jittered), so the walk finds a gap between commits.
 */
const RACING_WALKS_BUDGET_MS = 3000;

const pauseCell = new Int32Array(new SharedArrayBuffer(4));

/**
 * Walks `file` until no committing writer raced the walk (meta txnids equal before and
 * after), for at most RACING_WALKS_BUDGET_MS. LMDB never rewrites a page of the newest two
 * snapshots, so a walk that saw the same metas at both ends read a consistent file; one
 * that raced may have read pages recycled by later commits (a "page txnid newer than the
 * snapshot"), which says nothing about damage. A writer committing without pause can race
 * every walk: once the budget is spent, one last walk runs inside `withoutCommits` (which
 * holds every committing process off, for that one walk), so a sound file is never called
 * damaged for being busy.
 */
export function verifyMetadataStable(file: string, withoutCommits: (walk: () => MetadataVerifyReport) => MetadataVerifyReport): MetadataVerifyReport {
  const deadline = Date.now() + RACING_WALKS_BUDGET_MS;
  let report = verifyMetadataFile(file);
  for (let pauseMs = 1; !report.sound; pauseMs = Math.min(pauseMs * 2, 50)) {
    const before = report.metas.map((m) => m.txnid).join();
    const now = metaTxnids(file).join();
    if (before === now) break;
    if (Date.now() >= deadline) return withoutCommits(() => verifyMetadataFile(file));
    Atomics.wait(pauseCell, 0, 0, pauseMs * (1 + Math.random()));
    report = verifyMetadataFile(file);
  }
  return report;
}
