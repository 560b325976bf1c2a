import * as fs from 'node:fs';
import * as path from 'node:path';
import { open, type Key, type RootDatabase } from 'lmdb';
import { dmfsError } from '../errors';
import { METADATA_FORMAT, type MetadataEnv, type Table, type TableKey } from './metadata-env';
import { isProcessAlive, processStartTicks } from './process-identity';
import { verifyMetadataFile } from './metadata-verify';

/**
 * Metadata backups, like LVM's metadata archive (/etc/lvm/archive): consistent, compacted
 * copies of the pool's metadata environment, kept inside the pool so they travel with it.
 *
 * Layout: METADATA_DIR/backups/<stamp>-<txnid>-<reason>/{data.mdb, FORMAT, backup.json},
 * mode 0600, where <stamp> is the UTC time (yyyymmddThhmmssmmmZ), <txnid> the last
 * committed transaction the copy contains, <reason> what changed since the previous one.
 *
 * Atomicity: a backup is written under `.tmp-<pid>-<stamp>`, each file fsynced, then the
 * directory is renamed to its final name and the parent fsynced. Only final names with a
 * readable backup.json are listed, so a kill mid-backup leaves nothing listed; stale
 * temporaries of dead processes are removed by the next backup.
 *
 * When: the layer store marks the metadata "changed since the last backup" inside the
 * transactions of layer create/commit/rm/import and when a writable layer closes (unmount)
 * — one small put, O(1) — and `ThinPool.close()` takes the backup if the mark is set.
 * The mark is in the metadata, so a process killed before closing leaves it for the next
 * process that closes the pool.
 */

export const BACKUP_INFO_FILE = 'backup.json';
/**
 * Present while a check found problems it did not fix: pruning stops, so backups taken of
 * damaged metadata (a close after the damage) cannot push the last good ones out. Removed
 * by a clean check or a restore. Holds the time and the problem count, for people.
 */
const HOLD_FILE = 'HOLD';
const TMP_PREFIX = '.tmp-';

export interface BackupInfo {
  /** Directory name under metadata/backups (also the backup's id on the command line). */
  name: string;
  dir: string;
  /** The copied LMDB file. */
  file: string;
  createdMs: number;
  /** Last committed metadata transaction in the copy. */
  txnId: number;
  /** What changed since the previous backup: create, commit, rm, import, unmount, ... */
  reasons: string[];
  /** Layers in the copy, when the store said (null otherwise). */
  layers: number | null;
  sizeBytes: number;
  format: string;
}

interface BackupInfoFile {
  v: 1;
  createdMs: number;
  txnId: number;
  reasons: string[];
  layers: number | null;
  sizeBytes: number;
  format: string;
}

export function backupsDir(metadataDir: string): string {
  return path.join(metadataDir, 'backups');
}

function stampOf(ms: number): string {
  return new Date(ms).toISOString().replace(/[-:]/g, '').replace('.', '');
}

function fsyncPath(p: string): void {
  const fd = fs.openSync(p, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Complete backups, newest first (by transaction id, then time). Unreadable entries are skipped. */
export function listBackups(metadataDir: string): BackupInfo[] {
  const dir = backupsDir(metadataDir);
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  const out: BackupInfo[] = [];
  for (const name of names) {
    if (name.startsWith(TMP_PREFIX)) continue;
    const bdir = path.join(dir, name);
    try {
      const info = JSON.parse(fs.readFileSync(path.join(bdir, BACKUP_INFO_FILE), 'utf8')) as BackupInfoFile;
      const file = path.join(bdir, 'data.mdb');
      if (info.v !== 1 || !fs.existsSync(file)) continue;
      out.push({
        name, dir: bdir, file, createdMs: info.createdMs, txnId: info.txnId, reasons: info.reasons,
        layers: info.layers, sizeBytes: fs.statSync(file).size, format: info.format,
      });
    } catch {
      /* half-written or foreign: not a backup */
    }
  }
  return out.sort((a, b) => b.txnId - a.txnId || b.createdMs - a.createdMs || (a.name < b.name ? 1 : -1));
}

/**
 * Takes one backup of `env` and prunes to the newest `keep`. `layers` is the store's count
 * for the listing. Returns the new backup.
 */
export async function takeBackup(env: MetadataEnv, opts: { reasons: string[]; layers: number | null; keep: number }): Promise<BackupInfo> {
  const dir = backupsDir(env.dir);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  removeStaleTemporaries(dir);
  const createdMs = Date.now();
  const tmp = path.join(dir, `${TMP_PREFIX}${process.pid}-${processStartTicks(process.pid) ?? 0}-${stampOf(createdMs)}`);
  fs.mkdirSync(tmp, { mode: 0o700 });
  try {
    // The txn id is read before the copy starts, so the copy holds at least that transaction.
    const txnId = env.lastTxnId();
    await env.copyTo(tmp, { compact: true });
    const file = path.join(tmp, 'data.mdb');
    fs.chmodSync(file, 0o600);
    fsyncPath(file);
    fs.writeFileSync(path.join(tmp, 'FORMAT'), METADATA_FORMAT + '\n', { mode: 0o600 });
    const info: BackupInfoFile = {
      v: 1, createdMs, txnId, reasons: opts.reasons, layers: opts.layers, sizeBytes: fs.statSync(file).size, format: METADATA_FORMAT,
    };
    fs.writeFileSync(path.join(tmp, BACKUP_INFO_FILE), JSON.stringify(info) + '\n', { mode: 0o600 });
    fsyncPath(path.join(tmp, 'FORMAT'));
    fsyncPath(path.join(tmp, BACKUP_INFO_FILE));
    fsyncPath(tmp);
    const reason = (opts.reasons.join('+') || 'manual').replace(/[^a-z0-9+]/gi, '').slice(0, 60);
    const name = `${stampOf(createdMs)}-${String(txnId).padStart(8, '0')}-${reason}`;
    const final = path.join(dir, name);
    fs.renameSync(tmp, final);
    fsyncPath(dir);
    pruneBackups(env.dir, opts.keep);
    return { name, dir: final, file: path.join(final, 'data.mdb'), ...info };
  } catch (err) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw dmfsError('IO_ERROR', `cannot write a metadata backup under ${dir}: ${(err as Error).message}`, err);
  }
}

/** Keeps the newest `keep` backups, deletes the rest; keeps all while a hold is set. */
export function pruneBackups(metadataDir: string, keep: number): void {
  if (isPruningHeld(metadataDir)) return;
  for (const b of listBackups(metadataDir).slice(Math.max(0, keep))) fs.rmSync(b.dir, { recursive: true, force: true });
}

/** `.tmp-<pid>-<startTicks>-...` of processes that are gone: a backup killed mid-way. */
function removeStaleTemporaries(dir: string): void {
  for (const name of fs.readdirSync(dir)) {
    if (!name.startsWith(TMP_PREFIX)) continue;
    const [pid, startTicks] = name.slice(TMP_PREFIX.length).split('-').map(Number);
    if (!isProcessAlive({ pid, startTicks })) fs.rmSync(path.join(dir, name), { recursive: true, force: true });
  }
}

/**
 * A metadata file opened read-only, outside any pool (a backup, or a damaged copy set
 * aside): tables with the same read methods as MetadataEnv's. Writes throw.
 */
export class MetadataSnapshot {
  private readonly dbs = new Map<string, Table>();
  private constructor(private readonly root: RootDatabase<Buffer, Key>, readonly dir: string) {}

  /**
   * Opens `dir/data.mdb`; METADATA_CORRUPT when it is damaged (walked first: liblmdb
   * trusts every page it maps, so a damaged backup would crash the process) or LMDB
   * cannot open it.
   */
  static open(dir: string): MetadataSnapshot {
    if (!fs.existsSync(path.join(dir, 'data.mdb'))) throw dmfsError('NOT_FOUND', `no metadata file in ${dir}`);
    const damage = verifyStructure(path.join(dir, 'data.mdb'));
    if (damage.length) throw dmfsError('METADATA_CORRUPT', `${dir}/data.mdb is damaged: ${damage.slice(0, 3).join('; ')}`);
    try {
      const root = open<Buffer, Key>({ path: dir, readOnly: true, maxDbs: 32, encoding: 'binary', maxReaders: 16 });
      return new MetadataSnapshot(root, dir);
    } catch (err) {
      throw dmfsError('METADATA_CORRUPT', `${dir}/data.mdb cannot be opened: ${(err as Error).message}`, err);
    }
  }

  table(name: string): Table {
    let t = this.dbs.get(name);
    if (!t) {
      const db = this.root.openDB<Buffer, Key>({ name, encoding: 'binary' });
      const readOnly = () => {
        throw dmfsError('NOT_PERMITTED', `metadata snapshot ${this.dir} is read-only`);
      };
      t = {
        get: (key: TableKey) => db.getBinary(key) ?? undefined,
        has: (key: TableKey) => db.doesExist(key),
        put: readOnly,
        del: readOnly,
        range: (start: TableKey, end: TableKey, o: { limit?: number; reverse?: boolean } = {}) =>
          db.getRange(o.reverse ? { start: end, end: start, reverse: true, limit: o.limit } : { start, end, limit: o.limit }) as Iterable<{ key: TableKey; value: Buffer }>,
        keys: (start: TableKey, end: TableKey, o: { limit?: number } = {}) => db.getKeys({ start, end, limit: o.limit }) as Iterable<TableKey>,
        count: (start: TableKey, end: TableKey) => db.getKeysCount({ start, end }),
        allKeys: () => db.getKeys({}) as Iterable<TableKey>,
      };
      this.dbs.set(name, t);
    }
    return t;
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}

/**
 * Structural damage of an LMDB file that would stop liblmdb reading it right (the walker
 * of metadata-verify.ts: damage in what liblmdb opens). Empty = sound. An unreadable file
 * counts as one problem.
 */
export function verifyStructure(file: string): string[] {
  try {
    return verifyMetadataFile(file)
      .damage.filter((d) => d.scope === 'live')
      .map((d) => `${d.pgno === null ? '' : `page ${d.pgno} `}(${d.db}): ${d.message}`);
  } catch (err) {
    return [(err as Error).message];
  }
}

/** Stops (`problems` > 0) or resumes (0) pruning: see HOLD_FILE. */
export function setPruningHold(metadataDir: string, problems: number): void {
  const file = path.join(backupsDir(metadataDir), HOLD_FILE);
  if (problems > 0) {
    fs.mkdirSync(backupsDir(metadataDir), { recursive: true, mode: 0o700 });
    fs.writeFileSync(file, JSON.stringify({ v: 1, sinceMs: Date.now(), problems }) + '\n', { mode: 0o600 });
  } else fs.rmSync(file, { force: true });
}

export function isPruningHeld(metadataDir: string): boolean {
  return fs.existsSync(path.join(backupsDir(metadataDir), HOLD_FILE));
}
