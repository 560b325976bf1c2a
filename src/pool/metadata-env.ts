import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFile, execFileSync } from 'node:child_process';
import { constants } from 'node:os';
import { open, type Database, type RootDatabase, type Key } from 'lmdb';
import { EnvOpenLock } from './env-open-lock';
import { DmfsError, dmfsError, isDmfsError } from '../errors';
import { AbsentTable } from './absent-table';
import { proveMetadataSound } from './metadata-gate';

/**
 * On-disk format of the metadata environment, kept in a file beside it (readable without
 * opening LMDB): the record layout version and the LMDB build that writes the file.
 */
export const METADATA_FORMAT = 'dmfs-metadata-1 lmdb-2.9';
const FORMAT_FILE = 'FORMAT';

/** lmdb's TransactionFlags: abortable, committed before returning, flushed later by us. */
const TXN_FLAGS = 1 | 2 | 0x10000;

export type TableKey = Key;

/**
 * A table of the metadata environment: ordered binary keys (arrays sort element-wise),
 * raw Buffer values (each record type packs itself). Writes are only legal inside
 * `MetadataEnv.txn`.
 */
export interface Table {
  get(key: TableKey): Buffer | undefined;
  has(key: TableKey): boolean;
  put(key: TableKey, value: Buffer): void;
  del(key: TableKey): void;
  /** Entries with start <= key < end, in key order. */
  range(start: TableKey, end: TableKey, opts?: { limit?: number; reverse?: boolean }): Iterable<{ key: TableKey; value: Buffer }>;
  keys(start: TableKey, end: TableKey, opts?: { limit?: number }): Iterable<TableKey>;
  count(start: TableKey, end: TableKey): number;
  /** Every key of the table, in order. */
  allKeys(): Iterable<TableKey>;
}

function keyEquals(a: TableKey, b: TableKey): boolean {
  if (a === b) return true;
  return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => x === b[i]);
}

class LmdbTable implements Table {
  constructor(private readonly db: Database<Buffer, Key>) {}
  get(key: TableKey): Buffer | undefined {
    return this.db.getBinary(key) ?? undefined;
  }
  has(key: TableKey): boolean {
    return this.db.doesExist(key);
  }
  put(key: TableKey, value: Buffer): void {
    this.db.putSync(key, value);
  }
  del(key: TableKey): void {
    this.db.removeSync(key);
  }
  range(start: TableKey, end: TableKey, opts: { limit?: number; reverse?: boolean } = {}) {
    if (opts.reverse) return this.reverseRange(start, end, opts.limit ?? Infinity);
    return this.db.getRange({ start, end, ...(opts.limit !== undefined ? { limit: opts.limit } : {}) }) as Iterable<{ key: TableKey; value: Buffer }>;
  }
  /**
   * [start, end) from the top down. lmdb's reverse range runs from its start (inclusive)
   * down to its end (exclusive), the other way round: skip `end`, add `start` last.
   */
  private *reverseRange(start: TableKey, end: TableKey, limit: number): Iterable<{ key: TableKey; value: Buffer }> {
    let n = 0;
    for (const e of this.db.getRange({ start: end, end: start, reverse: true }) as Iterable<{ key: TableKey; value: Buffer }>) {
      if (n >= limit) return;
      if (keyEquals(e.key, end)) continue;
      yield e;
      n++;
    }
    const first = n < limit ? this.db.getBinary(start) : undefined;
    if (first) yield { key: start, value: first };
  }
  keys(start: TableKey, end: TableKey, opts: { limit?: number } = {}) {
    return this.db.getKeys({ start, end, ...(opts.limit !== undefined ? { limit: opts.limit } : {}) }) as Iterable<TableKey>;
  }
  count(start: TableKey, end: TableKey): number {
    return this.db.getKeysCount({ start, end });
  }
  allKeys() {
    return this.db.getKeys({}) as Iterable<TableKey>;
  }
}

/** Table and key of the format record stored inside the environment (proves the format without FORMAT). */
const FORMAT_TABLE = 'env-format';
const FORMAT_KEY = 'format';

/**
 * LMDB meta page header of the build this dmfs writes: at byte 24 of each of the two meta
 * pages (page 0 and page 1, 4 KiB pages), magic 0xBEEFC0DE then data version 2. Checked
 * before LMDB ever maps a file whose FORMAT file is missing, so another build's file is
 * refused instead of aborting the process.
 */
const LMDB_META_MAGIC_OFFSET = 24;
const LMDB_META_MAGIC = 0xbeefc0de;
const LMDB_DATA_VERSION = 2;
const LMDB_PAGE_BYTES = 4096;

/**
 * Host space kept allocated (fallocate) in data.mdb beyond the pages in use, so metadata
 * commits (rm, umount bookkeeping) still succeed when something fills the host file
 * system. Re-extended by `sync()` once less than half of it is left.
 */
export const METADATA_HEADROOM_BYTES = 16 * 1024 ** 2;

/** Errno names meaning "the host file system has no room" (quota counts as full). */
const HOST_FULL_CODES = new Set(['ENOSPC', 'EDQUOT']);

/** Whether err is a host-out-of-space failure: a Node system error, an LMDB error (numeric code), or its cause. */
export function isHostFullError(err: unknown): boolean {
  for (let e = err as { code?: unknown; errno?: unknown; cause?: unknown } | null, depth = 0; e && depth < 4; e = e.cause as typeof e, depth++) {
    if (typeof e.code === 'string' && HOST_FULL_CODES.has(e.code)) return true;
    if (typeof e.code === 'number' && (e.code === ENOSPC || e.code === EDQUOT)) return true;
  }
  return false;
}

const ENOSPC = constants.errno.ENOSPC;
const EDQUOT = constants.errno.EDQUOT;
const EIO = constants.errno.EIO;

export interface MetadataOpenOptions {
  create: boolean;
  /**
   * Open without writing anything (pool on a read-only file system): LMDB read-only, no
   * lock file writes, no FORMAT repair, no headroom. `txn` then fails with POOL_READ_ONLY.
   */
  readOnly?: boolean;
  /**
   * Called when neither the FORMAT file nor the format record names the format, after the
   * LMDB header matched this build: true when the records read fine as this format (the
   * pool's superblock decodes), which proves it; the missing marker and record are then
   * rewritten (writable opens only).
   */
  provesFormat?: (env: MetadataEnv) => boolean;
}

/** How the format of an opened environment was established. */
export type FormatEvidence = 'marker' | 'record' | 'records-read' | 'created';

/**
 * The pool's metadata: one LMDB environment (ACID, multi-process). Every change happens
 * in `txn`, a synchronous write transaction: atomic against other processes and against
 * a kill at any point. Commits are not flushed one by one; `sync()` flushes the file, and
 * the pool orders it after the data device's flush (data before the metadata pointing at it).
 *
 * Host space: commits write pages with pwrite (no write map), so a full host file system
 * fails a commit with ENOSPC, which `txn` rolls back and reports as POOL_FULL; nothing is
 * ever written through a mapped page the host might not back (that was a SIGBUS). The lock
 * file is fully allocated at each writable open and data.mdb keeps METADATA_HEADROOM_BYTES
 * allocated ahead of use, so metadata keeps working when data writes have filled the host.
 */
export class MetadataEnv {
  private readonly tables = new Map<string, Table>();
  private inTxn = false;
  private afterCommitHooks: (() => void)[] = [];
  private openedInTxn: string[] = [];
  private dataMdbFd: number | null = null;
  /** A headroom reservation under way (sync), so concurrent syncs start one. */
  private reserving: Promise<void> | null = null;
  /** data.mdb bytes [0, reservedEndBytes) are known to be allocated on the host. */
  private reservedEndBytes = 0;
  /** The last headroom reservation failed for lack of host space. */
  private headroomShortFlag = false;
  /** How the format was established at open. */
  formatEvidence: FormatEvidence = 'marker';

  private constructor(
    private readonly root: RootDatabase<Buffer, Key>,
    readonly dir: string,
    readonly readOnly: boolean,
    /** Keeps this process's commits and other processes' opens apart (env-open-lock.ts). */
    private readonly openLock: EnvOpenLock,
  ) {}

  static open(dir: string, opts: MetadataOpenOptions): MetadataEnv {
    const marker = path.join(dir, FORMAT_FILE);
    const readOnly = Boolean(opts.readOnly) && !opts.create;
    let markerOk = opts.create;
    if (!opts.create) {
      if (!fs.existsSync(path.join(dir, 'data.mdb'))) throw dmfsError('POOL_NOT_FOUND', `no pool metadata at ${dir}`);
      // The LMDB build's on-disk format must match: another build's file can abort the process.
      let found: string | null = null;
      try {
        found = fs.readFileSync(marker, 'utf8').trim();
      } catch {
        /* missing: deleted, or an older dmfs; the metadata itself may prove the format */
      }
      if (found !== null && found !== METADATA_FORMAT) {
        const root = path.dirname(dir);
        throw dmfsError(
          'POOL_FORMAT',
          `the pool at ${root} has metadata format '${found || 'unknown'}' (${marker}), this dmfs reads '${METADATA_FORMAT}'. ` +
            `Open it with the dmfs that made it (export what you need), or recreate it: dmfs pool destroy --force --root ${root} && dmfs pool create --root ${root}`,
        );
      }
      if (found === null) checkLmdbHeader(dir);
      markerOk = found !== null;
    }
    // liblmdb trusts every page it maps (a damaged one is a segfault, or data read as a hole):
    // prove the file's structure sound before it does (throws METADATA_CORRUPT).
    if (!opts.create) proveMetadataSound(dir);
    if (!readOnly) fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (opts.create) fs.writeFileSync(marker, METADATA_FORMAT + '\n', { mode: 0o600 });
    const openLock = EnvOpenLock.acquire(dir, readOnly);
    let root: RootDatabase<Buffer, Key>;
    try {
      root = openLock.whileOpening(() => openEnvironment(dir, readOnly));
    } catch (err) {
      openLock.release();
      throw err;
    }
    const env = new MetadataEnv(root, dir, readOnly, openLock);
    try {
      env.establishFormat(opts, markerOk);
      if (!readOnly) env.reserveHostSpace(true);
    } catch (err) {
      void env.closeEnvironment();
      throw err;
    }
    return env;
  }

  /** Makes the FORMAT file and the format record agree with what proved the format, or throws POOL_FORMAT. */
  private establishFormat(opts: MetadataOpenOptions, markerOk: boolean): void {
    const marker = path.join(this.dir, FORMAT_FILE);
    let record: string | undefined;
    try {
      record = this.table(FORMAT_TABLE).get(FORMAT_KEY)?.toString('utf8');
    } catch {
      record = undefined; // read-only open of a pool from before the record: the table does not exist
    }
    if (record !== undefined && record !== METADATA_FORMAT) {
      throw dmfsError('POOL_FORMAT', `the pool metadata at ${this.dir} records format '${record}', this dmfs reads '${METADATA_FORMAT}'`);
    }
    if (opts.create) this.formatEvidence = 'created';
    else if (markerOk) this.formatEvidence = 'marker';
    else if (record === METADATA_FORMAT) this.formatEvidence = 'record';
    else if (opts.provesFormat?.(this)) this.formatEvidence = 'records-read';
    else {
      const root = path.dirname(this.dir);
      throw dmfsError(
        'POOL_FORMAT',
        `the pool at ${root} has no ${marker} and its metadata does not prove its format (no format record, no readable superblock). ` +
          `If this pool was made by this dmfs, restore the marker: echo '${METADATA_FORMAT}' > ${marker}; then run dmfs check --root ${root}. Nothing was changed.`,
      );
    }
    if (this.readOnly) return;
    if (record === undefined) this.txn(() => this.table(FORMAT_TABLE).put(FORMAT_KEY, Buffer.from(METADATA_FORMAT, 'utf8')));
    if (!markerOk) {
      // Written whole then renamed: a crash never leaves a half-written marker.
      const tmp = `${marker}.tmp-${process.pid}`;
      fs.writeFileSync(tmp, METADATA_FORMAT + '\n', { mode: 0o600 });
      fs.renameSync(tmp, marker);
      process.emitWarning(`dmfs: ${marker} was missing; the metadata proved format '${METADATA_FORMAT}' (${this.formatEvidence}) and it was recreated`, { code: 'DMFS_FORMAT_RECREATED' });
    }
  }

  /**
   * Allocates host space ahead of use (fallocate never changes contents, so it is safe
   * beside other processes' commits): the whole lock file, whose reader slots LMDB writes
   * through a shared map, and METADATA_HEADROOM_BYTES past data.mdb's pages in use. A
   * failure for lack of space leaves `headroomShort` set; anything else is ignored (the
   * headroom is a margin, not a correctness condition: commits fail cleanly without it).
   */
  private reserveHostSpace(opening = false): void {
    if (opening) {
      const lockFile = path.join(this.dir, 'lock.mdb');
      try {
        const st = fs.statSync(lockFile);
        if (st.blocks * 512 < st.size) fallocate(lockFile, 0, st.size, false);
      } catch {
        /* no lock file or no fallocate: nothing to reserve */
      }
    }
    const needEnd = this.headroomToReserve();
    if (needEnd === null) return;
    try {
      fallocate(path.join(this.dir, 'data.mdb'), 0, needEnd, true);
      this.headroomReserved(needEnd);
    } catch (err) {
      this.headroomNotReserved(err);
    }
  }

  /** sync()'s reserveHostSpace: fallocate runs without blocking the event loop (a fork and wait took ~30 ms of a large process). */
  private reserveHostSpaceInBackground(): Promise<void> {
    if (this.reserving) return this.reserving;
    const needEnd = this.headroomToReserve();
    if (needEnd === null) return Promise.resolve();
    this.reserving = fallocateInBackground(path.join(this.dir, 'data.mdb'), 0, needEnd, true)
      .then(() => this.headroomReserved(needEnd), (err: unknown) => this.headroomNotReserved(err))
      .finally(() => {
        this.reserving = null;
      });
    return this.reserving;
  }

  /** The end data.mdb's allocation must reach, or null when it does (less than half the headroom used). */
  private headroomToReserve(): number | null {
    const needEnd = this.pagesInUseBytes() + METADATA_HEADROOM_BYTES;
    if (this.reservedEndBytes >= needEnd - METADATA_HEADROOM_BYTES / 2) return null;
    try {
      // Allocated blocks beyond the pages in use (st_blocks counts KEEP_SIZE extents too):
      // already reserved by an earlier process, no need to run fallocate.
      if (fs.statSync(path.join(this.dir, 'data.mdb')).blocks * 512 >= needEnd) {
        this.headroomReserved(needEnd);
        return null;
      }
    } catch {
      /* fallocate says why */
    }
    return needEnd;
  }

  private headroomReserved(endBytes: number): void {
    this.reservedEndBytes = Math.max(this.reservedEndBytes, endBytes);
    this.headroomShortFlag = false;
  }

  private headroomNotReserved(err: unknown): void {
    if (isHostFullError(err)) this.headroomShortFlag = true;
    // No fallocate here (missing tool, file system without it): stop trying every sync.
    else this.reservedEndBytes = Number.MAX_SAFE_INTEGER;
  }

  /** Whether the metadata headroom could not be reserved for lack of host space. */
  get headroomShort(): boolean {
    return this.headroomShortFlag;
  }

  /** Bytes of data.mdb up to the last page in use. */
  private pagesInUseBytes(): number {
    const stats = this.root.getStats() as { pageSize: number; lastPageNumber: number };
    return (stats.lastPageNumber + 1) * (stats.pageSize || LMDB_PAGE_BYTES);
  }

  table(name: string): Table {
    let t = this.tables.get(name);
    if (!t) {
      // Opening a table the file lacks creates it: a write transaction of lmdb's own.
      const openDb = () => this.root.openDB<Buffer, Key>({ name, encoding: 'binary' }) as Database<Buffer, Key> | undefined;
      const db = this.inTxn || this.readOnly ? openDb() : this.openLock.whileCommitting(openDb);
      // Read-only, a table the file does not have yet opens as nothing (see AbsentTable).
      t = db === undefined ? new AbsentTable(name) : new LmdbTable(db);
      this.tables.set(name, t);
      // A table first opened inside a transaction that then aborts has a handle LMDB
      // invalidates with it: forgotten on abort, reopened on next use.
      if (this.inTxn) this.openedInTxn.push(name);
    }
    return t;
  }

  /** Runs fn in one write transaction; a throw aborts every change made in it. Nested calls join the outer one. */
  txn<T>(fn: () => T): T {
    if (this.inTxn) return fn();
    this.assertWritable();
    let result: T | undefined;
    let failure: unknown;
    this.afterCommitHooks = [];
    this.openedInTxn = [];
    try {
      this.commitSync(() => {
        this.inTxn = true;
        try {
          result = fn();
        } catch (err) {
          // LMDB itself can hit ENOSPC inside the body (spilling dirty pages to the file).
          failure = err instanceof DmfsError || !isHostFullError(err) ? (err ?? new Error('transaction aborted')) : this.hostFull(err);
          return ABORT;
        } finally {
          this.inTxn = false;
        }
        return undefined;
      });
    } catch (err) {
      // The commit itself failed (the body ran to its end): LMDB has rolled it back, the
      // last committed state stands, and afterCommit hooks are dropped.
      this.inTxn = false;
      this.afterCommitHooks = [];
      this.forgetTablesOpenedInTxn();
      // The open lock was not had: nothing began (see env-open-lock.ts).
      if (isDmfsError(err, 'POOL_LOCKED')) throw err;
      // LMDB reports a short pwrite (the host filled up mid-write) as EIO: a commit that
      // fails with EIO while the host file system has no room is a host-full failure too.
      if (isHostFullError(err) || ((err as { code?: unknown }).code === EIO && this.hostHasNoRoom())) throw this.hostFull(err);
      throw dmfsError('IO_ERROR', `metadata commit failed and was rolled back: ${(err as Error).message}`, err);
    }
    const hooks = this.afterCommitHooks;
    this.afterCommitHooks = [];
    if (failure !== undefined) {
      this.forgetTablesOpenedInTxn();
      throw failure;
    }
    for (const hook of hooks) hook();
    return result as T;
  }

  /** Whether the file system holding the environment has under 1 MiB available (statfs). */
  private hostHasNoRoom(): boolean {
    try {
      const st = fs.statfsSync(this.dir);
      return Number(st.bavail) * Number(st.bsize) < 1024 ** 2;
    } catch {
      return false;
    }
  }

  /** POOL_FULL for a metadata transaction that failed for lack of host space (logged once per failure). */
  private hostFull(err: unknown): DmfsError {
    process.emitWarning(`dmfs: a metadata transaction failed with ENOSPC (host file system under ${this.dir} full) and was rolled back`, { code: 'DMFS_HOST_FULL' });
    return dmfsError(
      'POOL_FULL',
      `the host file system under the pool (${this.dir}) is full: a metadata transaction failed and was rolled back. Free space on the host or move the pool`,
      err,
    );
  }

  /** Throws POOL_READ_ONLY when the environment was opened read-only (pool on a read-only file system). */
  assertWritable(): void {
    if (!this.readOnly) return;
    throw dmfsError(
      'POOL_READ_ONLY',
      `the pool at ${path.dirname(this.dir)} is on a read-only file system: this command writes to the pool. ` +
        'Read-only commands (info, ls, inspect, check without --repair, export) work; remount the file system read-write to change the pool.',
    );
  }

  /** One LMDB write transaction committed before returning; tests replace it to inject commit failures. */
  private commitSync(body: () => unknown): void {
    this.openLock.whileCommitting(() => this.root.transactionSync(body, TXN_FLAGS));
  }

  private forgetTablesOpenedInTxn(): void {
    for (const name of this.openedInTxn) this.tables.delete(name);
    this.openedInTxn = [];
  }

  /** Inside txn: runs fn once the transaction has committed; dropped if it aborts. */
  afterCommit(fn: () => void): void {
    if (!this.inTxn) fn();
    else this.afterCommitHooks.push(fn);
  }

  get inTransaction(): boolean {
    return this.inTxn;
  }

  /** Flushes committed transactions to stable storage (fsync of the environment file). */
  async sync(): Promise<void> {
    if (this.readOnly) return;
    await this.reserveHostSpaceInBackground();
    if (this.dataMdbFd === null) this.dataMdbFd = fs.openSync(path.join(this.dir, 'data.mdb'), 'r');
    await new Promise<void>((resolve, reject) => fs.fsync(this.dataMdbFd!, (err) => (err ? reject(err) : resolve())));
  }

  /** Bytes used by live pages and the map size (the metadata space "total"). */
  usage(): { usedBytes: number; totalBytes: number } {
    const stats = this.root.getStats() as { pageSize: number; lastPageNumber: number; treeBranchPageCount?: number; mapSize: number; free?: { count?: number } };
    const pageSize = stats.pageSize || 4096;
    const freePages = stats.free?.count ?? 0;
    const used = Math.max(0, (stats.lastPageNumber + 1 - freePages)) * pageSize;
    return { usedBytes: used, totalBytes: stats.mapSize };
  }

  /**
   * Writes a consistent copy of the environment into `dir` (which must exist) as
   * `dir/data.mdb` (mdb_env_copy2, from one read transaction: safe while other processes
   * write). `compact` (MDB_CP_COMPACT) leaves free pages out and renumbers. Used by
   * metadata-backup.ts. lmdb-js's own `backup(path, compact)` drops the compact flag.
   */
  copyTo(dir: string, opts: { compact: boolean }): Promise<void> {
    const env = (this.root as unknown as { env: { copy(p: string, compact: boolean, cb: (err?: Error) => void): void } }).env;
    return new Promise((resolve, reject) => env.copy(dir, opts.compact, (err) => (err ? reject(err) : resolve())));
  }

  /** Id of the last committed write transaction (grows with every commit). */
  lastTxnId(): number {
    return (this.root.getStats() as { lastTxnId: number }).lastTxnId;
  }

  async close(): Promise<void> {
    if (!this.readOnly) await this.sync().catch(() => undefined);
    if (this.dataMdbFd !== null) fs.closeSync(this.dataMdbFd);
    this.dataMdbFd = null;
    await this.closeEnvironment();
  }

  /** Closes the LMDB environment and gives up this env's share of the open lock. */
  private async closeEnvironment(): Promise<void> {
    try {
      await this.root.close();
    } finally {
      this.openLock.release();
    }
  }
}

/** lmdb's open of the pool's environment; the caller holds the open lock. */
function openEnvironment(dir: string, readOnly: boolean): RootDatabase<Buffer, Key> {
  return open<Buffer, Key>({
    path: dir,
    maxDbs: 32,
    noSync: true,
    encoding: 'binary',
    mapSize: 64 * 1024 ** 3,
    maxReaders: 512,
    readOnly,
    // No write map: with it, commits write dirty pages in place in the shared map and
    // data.mdb is a sparse file of the full map size, so on a full host file system the
    // first page the host cannot back kills the process with SIGBUS. pwrite instead
    // fails with ENOSPC and the transaction rolls back. Measured cost (bench/writemap-cost.js,
    // 2 shared cores, noisy): a bare 3-put commit 12 -> 27 us; store operations mostly
    // 25-50% slower (mknod 81-107 -> 114-133 us, 64 KiB block write 112-139 -> 142-199 us).
    // A write map with fallocated headroom cannot bound the pages one large transaction
    // touches, so it cannot promise "no SIGBUS ever".
    useWritemap: false,
  });
}

// lmdb's abort sentinel (exported as ABORT); imported lazily to keep types simple.
// eslint-disable-next-line @typescript-eslint/no-var-requires
const ABORT: unknown = require('lmdb').ABORT;

/**
 * Refuses, before LMDB maps it, a data.mdb whose meta pages are not this LMDB build's
 * (a FORMAT-less pool could be anything; mapping a foreign file can abort the process).
 */
function checkLmdbHeader(dir: string): void {
  const file = path.join(dir, 'data.mdb');
  const root = path.dirname(dir);
  const buf = Buffer.alloc(2 * LMDB_PAGE_BYTES);
  let n = 0;
  try {
    const fd = fs.openSync(file, 'r');
    try {
      n = fs.readSync(fd, buf, 0, buf.length, 0);
    } finally {
      fs.closeSync(fd);
    }
  } catch (err) {
    throw dmfsError('IO_ERROR', `cannot read ${file}: ${(err as Error).message}`, err);
  }
  const ok = [0, LMDB_PAGE_BYTES].some(
    (page) => n >= page + LMDB_META_MAGIC_OFFSET + 8 &&
      buf.readUInt32LE(page + LMDB_META_MAGIC_OFFSET) === LMDB_META_MAGIC &&
      buf.readUInt32LE(page + LMDB_META_MAGIC_OFFSET + 4) === LMDB_DATA_VERSION,
  );
  if (!ok) {
    throw dmfsError(
      'POOL_FORMAT',
      `the pool at ${root} has no ${path.join(dir, FORMAT_FILE)} and ${file} is not an LMDB file this dmfs reads ` +
        `(no meta page with magic 0xbeefc0de version ${LMDB_DATA_VERSION}). Nothing was changed; restore the metadata from a backup ` +
        `or open the pool with the dmfs that made it.`,
    );
  }
}

/**
 * fallocate(2) of [offsetBytes, offsetBytes + lengthBytes) through util-linux's fallocate
 * (Node has no binding; the native addon only moves data blocks). keepSize: FALLOC_FL_KEEP_SIZE.
 * Throws an error whose code is 'ENOSPC' when the host has no room.
 */
/** fallocate(1) (Node has no fallocate): ENOSPC when the host is full. */
function fallocate(file: string, offsetBytes: number, lengthBytes: number, keepSize: boolean): void {
  try {
    execFileSync('fallocate', fallocateArgs(file, offsetBytes, lengthBytes, keepSize), { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    throw fallocateError(file, err);
  }
}

function fallocateInBackground(file: string, offsetBytes: number, lengthBytes: number, keepSize: boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('fallocate', fallocateArgs(file, offsetBytes, lengthBytes, keepSize), (err, _stdout, stderr) => {
      if (err) reject(fallocateError(file, Object.assign(err, { stderr })));
      else resolve();
    });
  });
}

function fallocateArgs(file: string, offsetBytes: number, lengthBytes: number, keepSize: boolean): string[] {
  return [...(keepSize ? ['-n'] : []), '-o', String(offsetBytes), '-l', String(lengthBytes), file];
}

function fallocateError(file: string, err: unknown): unknown {
  const stderr = String((err as { stderr?: unknown }).stderr ?? '');
  if (/No space left|Disk quota/i.test(stderr)) return Object.assign(new Error(`fallocate ${file}: ${stderr.trim()}`), { code: 'ENOSPC' });
  return err;
}
