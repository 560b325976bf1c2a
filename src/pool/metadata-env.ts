import * as fs from 'node:fs';
import * as path from 'node:path';
import { open, type Database, type RootDatabase, type Key } from 'lmdb';
import { dmfsError } from '../errors';

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
    const o = opts.reverse ? { start: end, end: start, reverse: true } : { start, end };
    return this.db.getRange({ ...o, ...(opts.limit !== undefined ? { limit: opts.limit } : {}) }) as Iterable<{ key: TableKey; value: Buffer }>;
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

/**
 * The pool's metadata: one LMDB environment (ACID, multi-process). Every change happens
 * in `txn`, a synchronous write transaction: atomic against other processes and against
 * a kill at any point. Commits are not flushed one by one; `sync()` flushes the file, and
 * the pool orders it after the data device's flush (data before the metadata pointing at it).
 */
export class MetadataEnv {
  private readonly tables = new Map<string, Table>();
  private inTxn = false;
  private afterCommitHooks: (() => void)[] = [];
  private dataMdbFd: number | null = null;

  private constructor(private readonly root: RootDatabase<Buffer, Key>, readonly dir: string) {}

  static open(dir: string, opts: { create: boolean }): MetadataEnv {
    const marker = path.join(dir, FORMAT_FILE);
    if (!opts.create) {
      if (!fs.existsSync(path.join(dir, 'data.mdb'))) throw dmfsError('POOL_NOT_FOUND', `no pool metadata at ${dir}`);
      // The LMDB build's on-disk format must match: another build's file can abort the process.
      let found = '';
      try {
        found = fs.readFileSync(marker, 'utf8').trim();
      } catch {
        /* missing: an older dmfs */
      }
      if (found !== METADATA_FORMAT) {
        const root = path.dirname(dir);
        throw dmfsError(
          'POOL_FORMAT',
          `the pool at ${root} has metadata format '${found || 'unknown'}', this dmfs reads '${METADATA_FORMAT}'. ` +
            `Recreate it: dmfs pool destroy --force --root ${root} && dmfs pool create --root ${root}`,
        );
      }
    }
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (opts.create) fs.writeFileSync(marker, METADATA_FORMAT + '\n', { mode: 0o600 });
    const root = open<Buffer, Key>({
      path: dir,
      maxDbs: 32,
      noSync: true,
      encoding: 'binary',
      mapSize: 64 * 1024 ** 3,
      maxReaders: 512,
      // Commits write dirty pages in place in the shared map instead of copying them out
      // with pwrite: ~40% less time per metadata operation. LMDB never overwrites live
      // pages, so a process killed mid-transaction still leaves the last commit intact.
      // The price: data.mdb is a sparse file of the full map size.
      useWritemap: true,
    });
    return new MetadataEnv(root, dir);
  }

  table(name: string): Table {
    let t = this.tables.get(name);
    if (!t) {
      t = new LmdbTable(this.root.openDB<Buffer, Key>({ name, encoding: 'binary' }));
      this.tables.set(name, t);
    }
    return t;
  }

  /** Runs fn in one write transaction; a throw aborts every change made in it. Nested calls join the outer one. */
  txn<T>(fn: () => T): T {
    if (this.inTxn) return fn();
    let result: T | undefined;
    let failure: unknown;
    this.afterCommitHooks = [];
    this.root.transactionSync(() => {
      this.inTxn = true;
      try {
        result = fn();
      } catch (err) {
        failure = err ?? new Error('transaction aborted');
        return ABORT;
      } finally {
        this.inTxn = false;
      }
      return undefined;
    }, TXN_FLAGS);
    const hooks = this.afterCommitHooks;
    this.afterCommitHooks = [];
    if (failure !== undefined) throw failure;
    for (const hook of hooks) hook();
    return result as T;
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
    await this.sync().catch(() => undefined);
    if (this.dataMdbFd !== null) fs.closeSync(this.dataMdbFd);
    this.dataMdbFd = null;
    await this.root.close();
  }
}

// lmdb's abort sentinel (exported as ABORT); imported lazily to keep types simple.
// eslint-disable-next-line @typescript-eslint/no-var-requires
const ABORT: unknown = require('lmdb').ABORT;
