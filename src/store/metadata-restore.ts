import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { dmfsError } from '../errors';
import { packRecord, packUint48, unpackRecord, unpackUint48 } from '../pool/codec';
import { listBackups, MetadataSnapshot, setPruningHold, verifyStructure, type BackupInfo } from '../pool/metadata-backup';
import { MetadataEnv } from '../pool/metadata-env';
import { poolPaths } from '../pool/pool-paths';
import { isProcessAlive, type ProcessIdentity } from '../pool/process-identity';
import type { Superblock } from '../pool/superblock';
import { ThinPool } from '../pool/thin-pool';
import { FileNamer, type TableSource } from './backup-refs';
import { checkPool, type CheckProblem } from './check';
import { isDataRef, unpackBlockRef } from './records';
import { ThinLayerStore } from './thin-layer-store';

/** Files listed one by one in a restore report (the total is always given). */
const MAX_LISTED_FILES = 1000;
/** Counters carried over from the damaged metadata, so ids handed out since are never reused. */
const COUNTERS = ['layer', 'segment', 'ino', 'nextOwner'];

export interface LostFile {
  layer: string;
  path: string;
  /** created: exists only in the damaged metadata; changed: differs; deleted: removed after the backup (comes back). */
  change: 'created' | 'changed' | 'deleted';
}

export interface RestoreLoss {
  /** False when the damaged metadata could not be opened: nothing can be said about what changed. */
  currentReadable: boolean;
  currentError?: string;
  layersCreated: { name: string; kind: string; createdMs: number }[];
  layersRemoved: { name: string; kind: string }[];
  files: LostFile[];
  filesTotal: number;
  /** Blocks the damaged metadata mapped and the backup does not: writes since the backup. */
  lostBlocks: number;
  /** Files of the backup with blocks the damaged metadata had reused for other data. */
  overwritten: { layer: string; path: string }[];
}

export interface RestoreReport {
  backup: BackupInfo;
  /** Newer backups that did not check clean, and why. */
  skipped: { name: string; problems: string[] }[];
  damagedDir: string;
  lost: RestoreLoss;
  /** A fresh check of the restored pool. */
  check: { ok: boolean; problems: CheckProblem[] };
}

function stamp(): string {
  return new Date().toISOString().replace(/[-:]/g, '').replace('.', '');
}

function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Mount daemons recorded under run/ that are still alive (the pool is in use even if its metadata cannot be read). */
export function liveMountRecords(runDir: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(runDir);
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const n of names.filter((x) => /^mount-.*\.json$/.test(x) && !x.endsWith('.exit.json'))) {
    try {
      const rec = JSON.parse(fs.readFileSync(path.join(runDir, n), 'utf8')) as ProcessIdentity & { mountpoint?: string };
      if (isProcessAlive(rec)) out.push(rec.mountpoint ?? `pid ${rec.pid}`);
    } catch {
      /* not a mount record */
    }
  }
  return out;
}

/** Per file (segment:ino): a digest of its inode record and block-map entries; and block → file key. */
function fileDigests(src: TableSource): { files: Map<string, string>; blocks: Map<number, string[]> } {
  const hashes = new Map<string, ReturnType<typeof createHash>>();
  /** Data block → where it is mapped (several places for a shared block: block-sharing.ts). */
  const blocks = new Map<number, string[]>();
  const h = (k: string) => {
    let x = hashes.get(k);
    if (!x) hashes.set(k, (x = createHash('sha1')));
    return x;
  };
  for (const { key, value } of src.table('inodes').range([0], [Number.MAX_SAFE_INTEGER])) {
    const [seg, ino] = key as number[];
    h(`${seg}:${ino}`).update(value);
  }
  for (const { key, value } of src.table('bmap').range([0], [Number.MAX_SAFE_INTEGER])) {
    const [seg, ino, fileBlock] = key as number[];
    const k = `${seg}:${ino}`;
    h(k).update(`${fileBlock}:`).update(value);
    try {
      const ref = unpackBlockRef(value);
      if (isDataRef(ref)) {
        const at = blocks.get(ref.block);
        if (at) at.push(`${k}:${fileBlock}`);
        else blocks.set(ref.block, [`${k}:${fileBlock}`]);
      }
    } catch {
      /* damaged entry: its block is unknown */
    }
  }
  return { files: new Map([...hashes].map(([k, x]) => [k, x.digest('hex')])), blocks };
}

/** What rolling back from `current` to `backup` loses. */
function compare(current: TableSource, backup: TableSource): RestoreLoss {
  const cn = new FileNamer(current);
  const bn = new FileNamer(backup);
  const live = (l: { state: string }) => l.state !== 'removing';
  const bIds = new Set(bn.layers.map((l) => l.id));
  const cIds = new Set(cn.layers.map((l) => l.id));
  const layersCreated = cn.layers.filter((l) => live(l) && !bIds.has(l.id)).map((l) => ({ name: l.name, kind: l.kind, createdMs: l.createdMs }));
  const layersRemoved = bn.layers.filter((l) => live(l) && !cIds.has(l.id)).map((l) => ({ name: l.name, kind: l.kind }));
  const cur = fileDigests(current);
  const bak = fileDigests(backup);
  const newSegments = new Set(cn.layers.filter((l) => !bIds.has(l.id)).map((l) => l.segment));
  const files: LostFile[] = [];
  let filesTotal = 0;
  const add = (f: LostFile) => {
    filesTotal++;
    if (files.length < MAX_LISTED_FILES) files.push(f);
  };
  const nameOf = (key: string, namer: FileNamer, other: FileNamer) => {
    const [seg, ino] = key.split(':').map(Number);
    const n = namer.layerOfSegment(seg) ? namer : other;
    return n.name(seg, ino);
  };
  for (const [k, d] of cur.files) {
    // Files of layers created since are covered by layersCreated.
    if (newSegments.has(Number(k.split(':')[0]))) continue;
    const b = bak.files.get(k);
    if (b === undefined) add({ ...nameOf(k, cn, bn), change: 'created' });
    else if (b !== d) add({ ...nameOf(k, cn, bn), change: 'changed' });
  }
  for (const k of bak.files.keys()) if (!cur.files.has(k)) add({ ...nameOf(k, bn, cn), change: 'deleted' });
  let lostBlocks = 0;
  for (const b of cur.blocks.keys()) if (!bak.blocks.has(b)) lostBlocks++;
  const overwrittenKeys = new Set<string>();
  for (const [b, wheres] of bak.blocks) {
    const now = cur.blocks.get(b);
    if (now === undefined) continue;
    for (const where of wheres) if (!now.includes(where)) overwrittenKeys.add(where.split(':').slice(0, 2).join(':'));
  }
  const overwritten = [...overwrittenKeys].map((k) => nameOf(k, bn, cn));
  return { currentReadable: true, layersCreated, layersRemoved, files, filesTotal, lostBlocks, overwritten };
}

/**
 * Stages a copy of `backup` as a pool root of its own (its metadata, the live data device)
 * and runs dmfs's check on it. Nothing in the copy can touch the data device: discards are
 * off in the staged superblock while it is checked. Returns the staged metadata file on
 * success, else the problems found.
 */
async function stageAndCheck(
  backup: BackupInfo,
  stagingRoot: string,
  live: { dataFile: string; nrBlocks: number | null; counters: Map<string, number> },
  opts: { data: boolean },
): Promise<{ ok: true; file: string } | { ok: false; problems: string[] }> {
  const structural = verifyStructure(backup.file);
  if (structural.length) return { ok: false, problems: structural.map((p) => `structure: ${p}`) };
  const sp = poolPaths(stagingRoot);
  fs.mkdirSync(sp.metadataDir, { recursive: true, mode: 0o700 });
  fs.mkdirSync(path.dirname(sp.dataFile), { recursive: true, mode: 0o700 });
  fs.copyFileSync(backup.file, path.join(sp.metadataDir, 'data.mdb'));
  fs.copyFileSync(path.join(backup.dir, 'FORMAT'), path.join(sp.metadataDir, 'FORMAT'));
  let original: Superblock;
  try {
    const env = MetadataEnv.open(sp.metadataDir, { create: false });
    try {
      const raw = env.table('pool-meta').get('superblock');
      if (!raw) return { ok: false, problems: ['no superblock'] };
      original = unpackRecord<Superblock>(raw);
      if (!fs.existsSync(sp.dataFile) && original.dataMode === 'loop') fs.symlinkSync(live.dataFile, sp.dataFile);
      env.txn(() => {
        const meta = env.table('pool-meta');
        // Resizes after the backup stay: the data device does not shrink back.
        const nrBlocks = Math.max(original.nrBlocks, live.nrBlocks ?? 0);
        meta.put('superblock', packRecord({ ...original, nrBlocks, options: { ...original.options, blkDiscard: false } }));
        for (const name of COUNTERS) {
          const cur = live.counters.get(name);
          if (cur === undefined) continue;
          const key = `counter:${name}`;
          const had = meta.get(key);
          if (unpackUint48(had) < cur) meta.put(key, packUint48(cur));
        }
      });
      await env.sync();
    } finally {
      await env.close();
    }
  } catch (err) {
    return { ok: false, problems: [(err as Error).message] };
  }
  try {
    const staged = await ThinPool.open(stagingRoot);
    staged.backupsSuspended = true;
    try {
      // Its own references only: the other backups say nothing about the restored world.
      const r = await checkPool(staged, { data: opts.data, backups: [] });
      if (!r.ok) return { ok: false, problems: r.problems.filter((p) => !p.repaired).map((p) => `${p.kind}: ${p.message}`) };
      // Back to the backup's own discard setting, and a backup of the restored state at the next close.
      staged.txn(() => {
        const meta = staged.table('pool-meta');
        const sb = unpackRecord<Superblock>(meta.get('superblock')!);
        meta.put('superblock', packRecord({ ...sb, options: { ...sb.options, blkDiscard: original.options.blkDiscard } }));
        staged.noteMetadataChange('restore', { replace: true });
      });
    } finally {
      await staged.close();
    }
  } catch (err) {
    return { ok: false, problems: [(err as Error).message] };
  }
  return { ok: true, file: path.join(sp.metadataDir, 'data.mdb') };
}

/**
 * `dmfs check --repair --from-backup`: rolls the pool's metadata back to the newest backup
 * that checks clean. Refuses while any other process has the pool open. Order, each step
 * crash-safe: stage and check a copy; hard-link the live (damaged) data.mdb into
 * metadata/damaged-<stamp>/ (kept, never deleted); rename the staged copy over the live
 * data.mdb (atomic). The space map is the backup's own, which matches what the backup
 * maps: blocks it references stay used; blocks written since are free again (their data
 * stays on disk until reused, and the damaged copy still maps them).
 */
export async function restoreFromBackup(root: string, opts: { data?: boolean } = {}): Promise<RestoreReport> {
  const paths = poolPaths(root);
  const backups = listBackups(paths.metadataDir);
  if (!backups.length) {
    throw dmfsError('NOT_FOUND', `no metadata backups in ${paths.metadataDir}/backups: nothing to roll back to. 'dmfs check --repair' fixes what it can without one.`);
  }
  const mounts = liveMountRecords(paths.runDir);
  if (mounts.length) throw dmfsError('POOL_LOCKED', `the pool is mounted (${mounts.join(', ')}); unmount first (dmfs umount MOUNTPOINT)`);

  // The damaged metadata is read in a child process: a damaged LMDB file can crash the
  // process that opens it (SIGSEGV), and the restore must still run then.
  const probe = await probeCurrent(root, null);
  if (probe.ok && probe.otherOwners) {
    throw dmfsError('POOL_LOCKED', 'other processes have the pool open (mounts or commands); unmount its layers (dmfs umount) and try again');
  }
  // Left by a restore that was killed: nothing else uses them (the pool is not in use).
  for (const n of fs.readdirSync(paths.metadataDir)) if (n.startsWith('restore-')) fs.rmSync(path.join(paths.metadataDir, n), { recursive: true, force: true });
  const stampNow = stamp();
  const stagingBase = path.join(paths.metadataDir, `restore-${stampNow}`);
  const skipped: RestoreReport['skipped'] = [];
  let chosen: { backup: BackupInfo; file: string } | null = null;
  let lost: RestoreLoss;
  try {
    const live = {
      dataFile: probe.ok ? probe.dataPath : paths.dataFile,
      nrBlocks: probe.ok ? probe.nrBlocks : null,
      counters: new Map(probe.ok ? Object.entries(probe.counters) : []),
    };
    for (const [i, b] of backups.entries()) {
      const r = await stageAndCheck(b, path.join(stagingBase, String(i)), live, { data: Boolean(opts.data) });
      if (!r.ok) {
        skipped.push({ name: b.name, problems: r.problems });
        continue;
      }
      chosen = { backup: b, file: r.file };
      break;
    }
    if (!chosen) {
      throw dmfsError(
        'METADATA_CORRUPT',
        `none of the ${backups.length} metadata backups checks clean (${skipped.map((s) => `${s.name}: ${s.problems[0]}`).join('; ')}); the live metadata is unchanged`,
      );
    }
    if (probe.ok) {
      const withLoss = await probeCurrent(root, chosen.backup.dir);
      lost = withLoss.ok && withLoss.lost ? withLoss.lost : emptyLoss(withLoss.ok ? 'no answer' : withLoss.error);
    } else lost = emptyLoss(probe.error);
  } catch (err) {
    fs.rmSync(stagingBase, { recursive: true, force: true });
    throw err;
  }

  // Swap: the damaged file is linked aside first, then the checked copy renamed over it.
  const damagedDir = path.join(paths.metadataDir, `damaged-${stampNow}`);
  fs.mkdirSync(damagedDir, { recursive: true, mode: 0o700 });
  const liveFile = path.join(paths.metadataDir, 'data.mdb');
  if (fs.existsSync(liveFile)) {
    try {
      fs.linkSync(liveFile, path.join(damagedDir, 'data.mdb'));
    } catch {
      fs.copyFileSync(liveFile, path.join(damagedDir, 'data.mdb'));
    }
  }
  for (const f of ['FORMAT']) if (fs.existsSync(path.join(paths.metadataDir, f))) fs.copyFileSync(path.join(paths.metadataDir, f), path.join(damagedDir, f));
  fsyncDir(damagedDir);
  fs.renameSync(chosen.file, liveFile);
  fs.copyFileSync(path.join(path.dirname(chosen.file), 'FORMAT'), path.join(paths.metadataDir, 'FORMAT'));
  // LMDB's lock file describes the old file's readers and transactions: set it aside too.
  const lockFile = path.join(paths.metadataDir, 'lock.mdb');
  if (fs.existsSync(lockFile)) fs.renameSync(lockFile, path.join(damagedDir, 'lock.mdb'));
  fsyncDir(paths.metadataDir);
  fs.rmSync(stagingBase, { recursive: true, force: true });

  // The restored pool, opened as any command would (finishing what the backup's processes left), then checked.
  const restored = await ThinPool.open(root);
  let check: RestoreReport['check'];
  try {
    const store = await ThinLayerStore.open(restored);
    await store.close();
    const r = await checkPool(restored, { data: Boolean(opts.data) });
    check = { ok: r.ok, problems: r.problems.filter((p) => !p.repaired) };
    setPruningHold(paths.metadataDir, check.problems.length);
  } finally {
    await restored.close();
  }
  return { backup: chosen.backup, skipped, damagedDir, lost, check };
}

function emptyLoss(error: string): RestoreLoss {
  return { currentReadable: false, currentError: error, layersCreated: [], layersRemoved: [], files: [], filesTotal: 0, lostBlocks: 0, overwritten: [] };
}

/** What the damaged (live) metadata still tells: who has the pool open, its ids and size, and (given a backup) what a rollback loses. */
type CurrentProbe =
  | { ok: true; otherOwners: boolean; counters: Record<string, number>; nrBlocks: number; dataPath: string; lost?: RestoreLoss }
  | { ok: false; error: string };

/** In this process: opens the live metadata, reads, closes (no backup at that close). */
export async function readCurrentMetadata(root: string, backupDir: string | null): Promise<CurrentProbe> {
  let current: ThinPool;
  try {
    current = await ThinPool.open(root);
  } catch (err) {
    return { ok: false, error: (err as Error).message };
  }
  current.backupsSuspended = true;
  try {
    const meta = current.table('pool-meta');
    const counters: Record<string, number> = {};
    for (const name of COUNTERS) {
      const raw = meta.get(`counter:${name}`);
      if (raw) counters[name] = unpackUint48(raw);
    }
    let lost: RestoreLoss | undefined;
    if (backupDir) {
      const snap = MetadataSnapshot.open(backupDir);
      try {
        lost = compare(current, snap);
      } catch (err) {
        lost = emptyLoss(`reading it failed: ${(err as Error).message}`);
      } finally {
        await snap.close();
      }
    }
    return { ok: true, otherOwners: current.hasOtherLiveOwners(), counters, nrBlocks: current.superblock.nrBlocks, dataPath: current.dataPath, ...(lost ? { lost } : {}) };
  } finally {
    await current.close().catch(() => undefined);
  }
}

/**
 * readCurrentMetadata in a child process (this compiled module, run by node), so a crash
 * of LMDB on a damaged file is an answer ("unreadable"), not the end of the restore.
 * Under ts-node/ts-jest (no compiled file beside this one) it runs in this process.
 */
async function probeCurrent(root: string, backupDir: string | null): Promise<CurrentProbe> {
  if (!__filename.endsWith('.js')) return readCurrentMetadata(root, backupDir);
  const script = `require(${JSON.stringify(__filename)}).readCurrentMetadata(${JSON.stringify(root)}, ${JSON.stringify(backupDir)})` +
    '.then((r) => process.stdout.write(JSON.stringify(r)), (e) => process.stdout.write(JSON.stringify({ ok: false, error: String(e && e.message) })))';
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024, stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.signal) return { ok: false, error: `reading it crashed the reader (${r.signal}): its structure is damaged` };
  try {
    return JSON.parse(r.stdout) as CurrentProbe;
  } catch {
    return { ok: false, error: `the reader failed (exit ${r.status}): ${(r.stderr || '').trim().split('\n').pop() ?? ''}` };
  }
}
