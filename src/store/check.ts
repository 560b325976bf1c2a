import * as path from 'node:path';
import { dmfsError, isDmfsError } from '../errors';
import { asDataBlock } from '../pool/block-address';
import { damageSeenAtOpen, withoutCommits } from '../pool/metadata-gate';
import { verifyMetadataStable, type MetadataDamage } from '../pool/metadata-verify';
import { MetadataSnapshot, type BackupInfo } from '../pool/metadata-backup';
import type { ThinPool } from '../pool/thin-pool';
import { backupOwnersOf, FileNamer, groupByFile } from './backup-refs';
import { checkBlockRefs } from './block-refs-check';
import { openStoreTables } from './store-tables';
import {
  blockContentMatches, bmapRange, firstBadSector, hasSectorCrcs, isDataRef, isUnwrittenRef, isWhiteout, packUsage, sectorSizeBytes, unpackBlockRef,
  packInode, unpackDirent, unpackInode, unpackLayer, unpackUsage, type DataRef,
} from './records';

export interface CheckProblem {
  /** Stable kind of problem, e.g. LEAKED_BLOCK, DOUBLE_MAPPED, DANGLING_ENTRY. */
  kind: string;
  message: string;
  repaired: boolean;
}

/** Files whose data repair keeps because dropping it needs --force (see checkPool). */
export interface ProtectedFile {
  layer: string;
  path: string;
  /** Data blocks of the file the live metadata no longer maps (by data-device block number). */
  blocks: number[];
  /** The backup that still maps them; absent when the owner is only inferred from damaged records. */
  backup?: string;
}

export interface CheckReport {
  ok: boolean;
  problems: CheckProblem[];
  /**
   * Data that repair would drop only with --force: unmapped blocks a metadata backup still
   * maps, and files whose records are damaged (their blocks' owner is unknown).
   */
  protectedFiles: ProtectedFile[];
  /** Unmapped blocks kept because damaged block-map records may own them (no backup names them). */
  unknownOwnerBlocks: number;
  /** With repair: what a fresh check finds after the repair (empty = clean). */
  remaining?: CheckProblem[];
  /** Metadata backups available for --from-backup. */
  backups: number;
  stats: {
    layers: number;
    segments: number;
    inodes: number;
    entries: number;
    /** Block-map entries pointing at data blocks (a shared block counts once per entry). */
    mappedBlocks: number;
    /** Data blocks mapped by more than one entry (block-sharing.ts). */
    sharedBlocks: number;
    usedBlocks: number;
    reservedBlocks: number;
  };
}

export interface CheckOptions {
  repair?: boolean;
  data?: boolean;
  /** With repair: also drop data that is still referenced (by a backup or a damaged record). */
  force?: boolean;
  /** Backups whose references protect unmapped blocks (default: the pool's own, newest first). */
  backups?: readonly BackupInfo[];
}

/**
 * Verifies metadata against itself and the space map (like thin_check): every mapped
 * block in range and used, a block mapped by several entries counted in block-refs
 * (block-refs-check.ts); no used block unreferenced (leak); usage
 * counters equal to the maps; parent chains valid; no records of unknown segments; no
 * directory entry pointing at a missing inode; every record decodes. With `data`, also
 * reads every mapped data block whole and checks it against its CRC-32Cs (per sector, or
 * one for the whole block on refs written before sectors).
 *
 * With `repair`, fixes the space map and counters and drops records nothing can reach,
 * and says so — but never drops data something may still own unless `force`:
 * - an unmapped ("leaked") block that a metadata backup maps is kept, and the file it
 *   belongs to (layer + path, from the backup) is named in `protectedFiles`;
 * - while any block-map or layer record is damaged, no unmapped block is freed: its owner
 *   may be the damaged record (the files with damaged records are named);
 * - records of unknown segments keep their blocks (their layer record may be the damaged one);
 * - a directory entry leading to a damaged inode is not "dangling".
 * With `force` those are dropped as well (records that do not decode are deleted).
 * A repair ends with a fresh check (`remaining`): what it could not fix, and why.
 */
export async function checkPool(pool: ThinPool, opts: CheckOptions = {}): Promise<CheckReport> {
  try {
    return await checkAndRecheck(pool, opts);
  } catch (err) {
    if (isDmfsError(err)) throw err;
    // lmdb (MDB_PAGE_NOTFOUND, MDB_CORRUPTED, ...) or a record of an unexpected shape: the
    // metadata is damaged in a way the walk before the open did not see.
    const root = pool.paths.root;
    throw dmfsError(
      'METADATA_CORRUPT',
      `reading the pool metadata failed: ${(err as Error)?.message ?? String(err)}. ` +
        `Restore the last metadata backup: dmfs check --repair --from-backup --root ${root}`,
      err,
    );
  }
}

async function checkAndRecheck(pool: ThinPool, opts: CheckOptions): Promise<CheckReport> {
  const report = await checkOnce(pool, opts);
  if (opts.repair) {
    const after = await checkOnce(pool, { backups: opts.backups });
    report.remaining = after.problems;
    report.ok = after.ok;
    report.protectedFiles = after.protectedFiles;
    report.unknownOwnerBlocks = after.unknownOwnerBlocks;
  }
  return report;
}

async function checkOnce(pool: ThinPool, opts: CheckOptions): Promise<CheckReport> {
  const t = openStoreTables(pool);
  const problems: CheckProblem[] = [];
  const repair = Boolean(opts.repair);
  const force = repair && Boolean(opts.force);
  const backups = opts.backups ?? pool.listBackups();
  const report = (kind: string, message: string, repaired = false) => problems.push({ kind, message, repaired });
  // Records that do not decode: their keys still say where they belong.
  const corruptKeys: { table: 'bmap' | 'dirents' | 'inodes'; key: unknown }[] = [];
  const corruptBmapFiles = new Map<string, { seg: number; ino: number; entries: number }>();
  const corruptInos = new Set<number>();
  let corruptLayers = 0;
  const lostBlocks = checkDataDeviceSize(pool, t, repair, report);

  // The LMDB file's structure, page by page (MetadataEnv.open refused damage in what LMDB
  // reads; what remains to report is damage in the previous snapshot and leaked pages).
  const md = verifyMetadataStable(path.join(pool.env.dir, 'data.mdb'), withoutCommits(pool.env.dir));
  const seen = new Set<string>();
  const damage: MetadataDamage[] = [];
  for (const d of [...damageSeenAtOpen(pool.env.dir), ...md.damage]) {
    const k = `${d.pgno}:${d.db}:${d.message}`;
    if (seen.has(k)) continue;
    seen.add(k);
    damage.push(d);
  }
  for (const d of damage) {
    const where = `${d.pgno === null ? '' : `page ${d.pgno} `}(${d.db}${d.scope === 'previous' ? ', previous snapshot' : ''})`;
    report(d.scope === 'space' ? 'METADATA_PAGES_LEAKED' : 'METADATA_PAGE', `metadata ${where}: ${d.message}`);
  }
  /** Some block-map entry or inode may be unreadable or lost: unmapped blocks may still be someone's. */
  let mapDamaged = md.damage.some((d) => d.scope === 'live');

  const layers = [...pool.table('layers').range(0, Number.MAX_SAFE_INTEGER)].flatMap(({ key, value }) => {
    try {
      return [unpackLayer(value)];
    } catch (err) {
      corruptLayers++;
      report('CORRUPT_RECORD', `layer record ${String(key)}: ${(err as Error).message}; only 'dmfs check --repair --from-backup' can bring it back`);
      return [];
    }
  });
  const byId = new Map(layers.map((l) => [l.id, l]));
  const segments = new Set(layers.map((l) => l.segment));
  for (const l of layers) {
    let cur = l;
    for (let depth = 0; cur.parentId !== null; depth++) {
      const p = byId.get(cur.parentId);
      if (!p || depth > 10000) {
        report('BROKEN_CHAIN', `layer '${l.name}' has a broken parent chain at layer ${cur.parentId}`);
        break;
      }
      cur = p;
    }
    if (l.state !== 'removing' && cur.kind !== 'base') report('BROKEN_CHAIN', `layer '${l.name}' does not reach the base layer`);
  }

  // Block maps: in range, used, mapped once; usage per segment.
  const nrBlocks = pool.superblock.nrBlocks;
  const referenced = new Set<number>();
  const usage = new Map<number, { blocks: number; inlineBytes: number }>();
  const badKeys: { table: 'bmap' | 'dirents' | 'inodes'; key: unknown }[] = [];
  let mappedBlocks = 0;
  const dataChecks: { where: string; ref: DataRef }[] = [];
  let unknownSegmentEntries = 0;
  const unknownSegmentFiles = new Map<string, { seg: number; ino: number; blocks: number[] }>();
  /** Block-map entries per `${segment}:${ino}`, readable or not: the inode records' `mapped` must match. */
  const mapEntries = new Map<string, number>();
  /** Of those, the damaged ones --force drops: the inode's count must follow. */
  const droppedEntries = new Map<string, number>();
  const recountedInodes: { key: unknown; rec: ReturnType<typeof unpackInode> }[] = [];
  /** Data blocks mapped by more than one entry, and by how many. */
  const sharers = new Map<number, number>();
  for (const { key, value } of t.bmap.range([0], [Number.MAX_SAFE_INTEGER])) {
    const [seg, ino] = key as number[];
    mapEntries.set(`${seg}:${ino}`, (mapEntries.get(`${seg}:${ino}`) ?? 0) + 1);
    let ref;
    try {
      ref = unpackBlockRef(value);
    } catch (err) {
      report('CORRUPT_RECORD', `block map entry ${(key as number[]).join(':')}: ${(err as Error).message}`, force);
      corruptKeys.push({ table: 'bmap', key });
      if (force) droppedEntries.set(`${seg}:${ino}`, (droppedEntries.get(`${seg}:${ino}`) ?? 0) + 1);
      mapDamaged = true;
      const f = corruptBmapFiles.get(`${seg}:${ino}`) ?? { seg, ino, entries: 0 };
      f.entries++;
      corruptBmapFiles.set(`${seg}:${ino}`, f);
      continue;
    }
    if (!segments.has(seg)) {
      // Its layer record may be the damaged one: the entry still owns its block unless forced.
      unknownSegmentEntries++;
      if (unknownSegmentEntries <= 20) {
        report('UNKNOWN_SEGMENT', `block map entry ${(key as number[]).join(':')} belongs to no layer${force ? ' (dropped, --force)' : ''}`, force);
      }
      if (force) badKeys.push({ table: 'bmap', key });
      else if (isDataRef(ref) && ref.block >= 0 && ref.block < pool.superblock.nrBlocks) referenced.add(ref.block);
      if (isDataRef(ref)) {
        const f = unknownSegmentFiles.get(`${seg}:${ino}`) ?? { seg, ino, blocks: [] };
        f.blocks.push(ref.block);
        unknownSegmentFiles.set(`${seg}:${ino}`, f);
      }
      continue;
    }
    const u = usage.get(seg) ?? { blocks: 0, inlineBytes: 0 };
    if (isDataRef(ref)) {
      mappedBlocks++;
      const b = ref.block;
      // Keys run in segment order, so a block is first seen in its home segment, whose
      // usage counts it; later sightings are sharers (checked against block-refs below).
      if (b < 0 || b >= nrBlocks) {
        u.blocks++;
        report('BLOCK_OUT_OF_RANGE', `${(key as number[]).join(':')} maps data block ${b}, past the device's ${nrBlocks}`);
      } else if (referenced.has(b)) sharers.set(b, (sharers.get(b) ?? 1) + 1);
      else {
        u.blocks++;
        referenced.add(b);
        // Blocks lost with a short data device are reported (DATA_LOST) already; an unwritten
        // block's content is never read, so it has nothing to verify.
        if (opts.data && !lostBlocks.has(b) && !isUnwrittenRef(ref)) dataChecks.push({ where: (key as number[]).join(':'), ref });
      }
    } else u.inlineBytes += ref.length;
    usage.set(seg, u);
  }

  // Data blocks against their checksums (--data): reads the whole data device's mapped blocks.
  // One problem per damaged block; per-sector refs also say the first damaged sector.
  const layerOfSegment = new Map(layers.map((l) => [l.segment, l.name]));
  const bs = pool.blockSizeBytes;
  for (let i = 0; i < dataChecks.length; i += 16) {
    const batch = dataChecks.slice(i, i + 16);
    const bufs = batch.map(() => Buffer.allocUnsafe(bs));
    await pool.readBlocks(batch.map((c) => asDataBlock(c.ref.block)), batch.map(() => 0), bufs);
    batch.forEach((c, j) => {
      if (blockContentMatches(c.ref, bufs[j])) return;
      const [seg, ino, fileBlock] = c.where.split(':');
      const sector = hasSectorCrcs(c.ref) ? ` in sector ${firstBadSector(c.ref, bufs[j], 0, sectorSizeBytes(bs))}` : '';
      report('DATA_CORRUPT', `data block ${c.ref.block} (layer ${layerOfSegment.get(Number(seg)) ?? seg}, inode ${ino}, file block ${fileBlock}) fails its checksum${sector}`);
    });
  }

  // Inodes and entries.
  const inodeKeys = new Set<string>();
  const inos = new Set<number>();
  let nrInodes = 0;
  for (const { key, value } of t.inodes.range([0], [Number.MAX_SAFE_INTEGER])) {
    const [seg, ino] = key as number[];
    if (!segments.has(seg)) {
      if (++unknownSegmentEntries <= 20) report('UNKNOWN_SEGMENT', `inode record ${seg}:${ino} belongs to no layer${force ? ' (dropped, --force)' : ''}`, force);
      if (force) badKeys.push({ table: 'inodes', key });
      continue;
    }
    let rec;
    try {
      rec = unpackInode(value);
    } catch (err) {
      report('CORRUPT_RECORD', `inode ${seg}:${ino}: ${(err as Error).message}`, force);
      corruptKeys.push({ table: 'inodes', key });
      corruptInos.add(ino);
      mapDamaged = true;
      continue;
    }
    const held = mapEntries.get(`${seg}:${ino}`) ?? 0;
    const kept = held - (droppedEntries.get(`${seg}:${ino}`) ?? 0);
    if (rec.mapped !== undefined && rec.mapped !== held) {
      // Fewer: entries were lost (a damaged key or page), their blocks look unreferenced.
      // --force accepts the loss: the count follows the map (those blocks read as holes).
      report(
        held < rec.mapped ? 'MAP_ENTRIES_LOST' : 'MAP_COUNT_MISMATCH',
        `inode ${ino} in layer ${layers.find((l) => l.segment === seg)?.name ?? seg} records ${rec.mapped} block-map entries, the map holds ${held}` +
          (force ? ` (count set to ${kept}, --force: the missing blocks are lost)` : ''),
        force,
      );
      mapDamaged = true;
    }
    if (force && rec.mapped !== undefined && rec.mapped !== kept) recountedInodes.push({ key, rec: { ...rec, mapped: kept } });
    nrInodes++;
    inodeKeys.add(`${seg}:${ino}`);
    inos.add(ino);
  }
  // --force drops a damaged inode record; its block-map entries in that segment go with it
  // (else their blocks would stay mapped by a file nothing can reach).
  if (force) {
    const damaged = corruptKeys.filter((c) => c.table === 'inodes').map((c) => c.key as number[]);
    for (const [seg, ino] of damaged) {
      const entries = [...t.bmap.range(...bmapRange(seg, ino))];
      for (const { key, value } of entries) {
        let ref;
        try {
          ref = unpackBlockRef(value);
        } catch {
          continue; // already dropped as a damaged record
        }
        badKeys.push({ table: 'bmap', key });
        const u = usage.get(seg);
        if (isDataRef(ref)) {
          mappedBlocks--;
          const n = sharers.get(ref.block);
          if (n === undefined) {
            referenced.delete(ref.block);
            if (u) u.blocks--;
          } else if (n > 2) sharers.set(ref.block, n - 1);
          else sharers.delete(ref.block);
        } else if (u) u.inlineBytes -= ref.length;
      }
      if (entries.length) report('CORRUPT_RECORD', `the ${entries.length} block-map entries of damaged inode ${seg}:${ino} were dropped with it (--force)`, true);
    }
  }
  let nrEntries = 0;
  for (const { key, value } of t.dirents.range([0], [Number.MAX_SAFE_INTEGER])) {
    const [seg, dirIno, name] = key as [number, number, string];
    if (!segments.has(seg)) {
      if (++unknownSegmentEntries <= 20) report('UNKNOWN_SEGMENT', `directory entry ${seg}:${dirIno}:${name} belongs to no layer${force ? ' (dropped, --force)' : ''}`, force);
      if (force) badKeys.push({ table: 'dirents', key });
      continue;
    }
    let d;
    try {
      d = unpackDirent(value);
    } catch (err) {
      report('CORRUPT_RECORD', `directory entry ${seg}:${dirIno}:${name}: ${(err as Error).message}`, force);
      corruptKeys.push({ table: 'dirents', key });
      continue;
    }
    nrEntries++;
    // An entry leading to a damaged inode names a file that still exists: not dangling (unless --force drops the inode).
    if (!isWhiteout(d) && !inos.has(d.ino) && (force || !corruptInos.has(d.ino))) {
      report('DANGLING_ENTRY', `entry '${name}' in directory ${dirIno} (segment ${seg}) points at missing inode ${d.ino}`, repair);
      badKeys.push({ table: 'dirents', key });
    }
  }

  if (unknownSegmentEntries > 20) report('UNKNOWN_SEGMENT', `${unknownSegmentEntries - 20} more records of unknown segments`, force);

  // Space map against references and reservations.
  const reserved = pool.reservedBlocks();
  let usedBlocks = 0;
  const leaked: number[] = [];
  for (const b of pool.usedBlocksFromMap()) {
    usedBlocks++;
    if (!referenced.has(b) && !reserved.has(b)) leaked.push(b);
  }

  // Unmapped blocks something may still own: kept unless --force (see the doc comment).
  const protectedFiles: ProtectedFile[] = [];
  const kept = new Set<number>();
  let unknownOwnerBlocks = 0;
  if (leaked.length) {
    const { owners } = await backupOwnersOf(backups, new Set(leaked));
    const ownerUnknown = mapDamaged || corruptLayers > 0;
    const free: number[] = [];
    for (const b of leaked) {
      if (owners.has(b) || ownerUnknown) kept.add(b);
      else free.push(b);
    }
    for (const f of groupByFile([...owners].filter(([b]) => kept.has(b)))) protectedFiles.push(f);
    unknownOwnerBlocks = [...kept].filter((b) => !owners.has(b)).length;
    if (ownerUnknown && corruptBmapFiles.size) {
      const namer = new FileNamer(pool);
      for (const f of corruptBmapFiles.values()) protectedFiles.push({ ...namer.name(f.seg, f.ino), blocks: [] });
    }
    for (const b of free.slice(0, 20)) report('LEAKED_BLOCK', `data block ${b} is marked used but nothing maps it (no backup maps it either)`, repair);
    if (free.length > 20) report('LEAKED_BLOCK', `${free.length - 20} more leaked blocks`, repair);
    for (const f of protectedFiles.filter((p) => p.backup)) {
      report(
        'UNREFERENCED_DATA',
        `${f.blocks.length} data block(s) (${f.blocks.slice(0, 8).join(', ')}${f.blocks.length > 8 ? ', ...' : ''}) are unmapped in the live metadata, but backup ${f.backup} maps them to '${f.path}' in layer '${f.layer}'` +
          (force ? ': freed (--force), that data is gone' : ': kept'),
        force,
      );
    }
    if (unknownOwnerBlocks) {
      const damaged = protectedFiles.filter((p) => !p.backup).map((p) => `'${p.path}' in layer '${p.layer}'`);
      const blocks = [...kept].filter((b) => !owners.has(b));
      report(
        'UNREFERENCED_DATA',
        `${unknownOwnerBlocks} unmapped data block(s) (${blocks.slice(0, 8).join(', ')}${blocks.length > 8 ? ', ...' : ''}) may belong to damaged records` +
          (damaged.length
            ? ` (block map of ${damaged.slice(0, 8).join(', ')}${damaged.length > 8 ? ', ...' : ''})`
            : corruptLayers ? ' (a layer record is damaged)' : ' (the metadata lost block-map entries)') +
          (force ? ': freed (--force), that data is gone' : ': kept'),
        force,
      );
    }
  }
  if (force) kept.clear();
  // Files of unknown segments: named from the newest backup that still knows their layer.
  if (unknownSegmentFiles.size && !force) {
    const names = await namesFromBackups(backups, [...unknownSegmentFiles.values()]);
    for (const f of unknownSegmentFiles.values()) {
      const n = names.get(`${f.seg}:${f.ino}`);
      protectedFiles.push({ layer: n?.layer ?? `<segment ${f.seg}>`, path: n?.path ?? `<inode ${f.ino}>`, blocks: f.blocks, ...(n ? { backup: n.backup } : {}) });
    }
  }
  const unmarked = [...referenced].filter((b) => !pool.isBlockUsed(b as never));
  for (const b of unmarked.slice(0, 20)) report('FREE_BUT_MAPPED', `data block ${b} is mapped but marked free`, repair);
  if (unmarked.length > 20) report('FREE_BUT_MAPPED', `${unmarked.length - 20} more mapped-but-free blocks`, repair);
  for (const b of reserved) {
    if (referenced.has(b)) report('RESERVED_AND_MAPPED', `data block ${b} is both reserved and mapped`);
  }

  for (const seg of segments) {
    const stored = unpackUsage(t.usage.get([seg]));
    const actual = usage.get(seg) ?? { blocks: 0, inlineBytes: 0 };
    if (stored.blocks !== actual.blocks || stored.inlineBytes !== actual.inlineBytes) {
      report('USAGE_MISMATCH', `segment ${seg} counts ${stored.blocks} blocks / ${stored.inlineBytes} inline bytes, maps hold ${actual.blocks} / ${actual.inlineBytes}`, repair);
      if (repair) pool.txn(() => t.usage.put([seg], packUsage({ v: 1, ...actual })));
    }
  }

  checkBlockRefs(t.blockRefs, sharers, referenced, { repair, force, mapDamaged, report }, pool);

  if (repair) {
    pool.txn(() => {
      for (const { table, key } of badKeys) t[table].del(key as never);
    });
    if (force && corruptKeys.length) pool.txn(() => corruptKeys.forEach(({ table, key }) => t[table].del(key as never)));
    if (recountedInodes.length) pool.txn(() => recountedInodes.forEach(({ key, rec }) => t.inodes.put(key as never, packInode(rec))));
    // Kept blocks count as referenced: repairSpaceMap frees only what nothing may own.
    if (leaked.length > kept.size || unmarked.length) pool.repairSpaceMap(new Set([...referenced, ...kept]));
    await pool.sync();
  }

  return {
    ok: problems.every((p) => p.repaired),
    problems,
    protectedFiles,
    unknownOwnerBlocks,
    backups: backups.length,
    stats: {
      layers: layers.length,
      segments: segments.size,
      inodes: nrInodes,
      entries: nrEntries,
      mappedBlocks,
      sharedBlocks: sharers.size,
      usedBlocks,
      reservedBlocks: reserved.size,
    },
  };
}

/** Names (segment, ino) pairs from the newest backup whose layers know the segment. */
async function namesFromBackups(backups: readonly BackupInfo[], files: { seg: number; ino: number }[]): Promise<Map<string, { layer: string; path: string; backup: string }>> {
  const out = new Map<string, { layer: string; path: string; backup: string }>();
  for (const b of backups) {
    if (out.size === files.length) break;
    let snap: MetadataSnapshot;
    try {
      snap = MetadataSnapshot.open(b.dir);
    } catch {
      continue;
    }
    try {
      const namer = new FileNamer(snap);
      for (const f of files) {
        const k = `${f.seg}:${f.ino}`;
        if (!out.has(k) && namer.layerOfSegment(f.seg)) out.set(k, { ...namer.name(f.seg, f.ino), backup: b.name });
      }
    } finally {
      await snap.close();
    }
  }
  return out;
}
// ---- data device size ----

/**
 * The data device against the metadata (ThinPool.dataDeviceCheck): a data file cut short
 * (`truncate -s`) loses the blocks past its end. Reports DATA_DEVICE_SHORT and one
 * DATA_LOST per block map entry past the end (first 20, then a count) naming layer, inode
 * and file block. With repair, grows the file back to its size (sparse): the lost blocks
 * then read as zeros, which their checksums reject (EIO), so the loss is never silent;
 * the problems count as repaired because nothing more can be done short of a backup.
 */
function checkDataDeviceSize(
  pool: ThinPool,
  t: ReturnType<typeof openStoreTables>,
  repair: boolean,
  report: (kind: string, message: string, repaired?: boolean) => void,
): Set<number> {
  const lostBlocks = new Set<number>();
  const dev = pool.dataDeviceCheck();
  if (!dev.short) return lostBlocks;
  const layerOfSegment = new Map<number, string>();
  for (const { value } of pool.table('layers').range(0, Number.MAX_SAFE_INTEGER)) {
    try {
      const l = unpackLayer(value);
      layerOfSegment.set(l.segment, l.name);
    } catch {
      /* reported by the layer pass */
    }
  }
  const lost: string[] = [];
  for (const { key, value } of t.bmap.range([0], [Number.MAX_SAFE_INTEGER])) {
    let ref;
    try {
      ref = unpackBlockRef(value);
    } catch {
      continue; // reported by the block map pass
    }
    if (!isDataRef(ref) || ref.block < dev.deviceBlocks || ref.block >= pool.superblock.nrBlocks) continue;
    const [seg, ino, fileBlock] = key as number[];
    lostBlocks.add(ref.block);
    lost.push(`layer ${layerOfSegment.get(seg) ?? seg}, inode ${ino}, file block ${fileBlock} (data block ${ref.block})`);
  }
  const grown = repair ? pool.growDataDevice() : 0;
  report(
    'DATA_DEVICE_SHORT',
    `the data device ${pool.dataPath} has ${dev.deviceBytes} bytes, the pool's metadata says ${dev.expectedBytes} ` +
      `(${dev.usedBlocksBeyondEnd} used blocks past its end, highest used block ${dev.highestUsedBlock})` +
      (repair ? `; grown back by ${grown} bytes (sparse)` : '; restore the data file from a backup, or --repair grows it back (the blocks past the end stay lost)'),
    repair,
  );
  for (const where of lost.slice(0, 20)) {
    report('DATA_LOST', `${where} was past the end of the data device: its content is lost${repair ? ' (reads fail with EIO: restore or delete the file)' : ''}`, repair);
  }
  if (lost.length > 20) report('DATA_LOST', `${lost.length - 20} more block map entries past the end of the data device`, repair);
  return lostBlocks;
}
