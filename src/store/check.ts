import * as path from 'node:path';
import { dmfsError, isDmfsError } from '../errors';
import { asDataBlock } from '../pool/block-address';
import { damageSeenAtOpen, verifyMetadataStable, type MetadataDamage } from '../pool/metadata-verify';
import type { ThinPool } from '../pool/thin-pool';
import { openStoreTables } from './chain-layer-fs';
import {
  blockContentMatches, firstBadSector, hasSectorCrcs, isDataRef, isWhiteout, packUsage, sectorSizeBytes, unpackBlockRef,
  unpackDirent, unpackInode, unpackLayer, unpackUsage, type DataRef,
} from './records';

export interface CheckProblem {
  /** Stable kind of problem, e.g. LEAKED_BLOCK, DOUBLE_MAPPED, DANGLING_ENTRY. */
  kind: string;
  message: string;
  repaired: boolean;
}

export interface CheckReport {
  ok: boolean;
  problems: CheckProblem[];
  stats: {
    layers: number;
    segments: number;
    inodes: number;
    entries: number;
    mappedBlocks: number;
    usedBlocks: number;
    reservedBlocks: number;
  };
}

/**
 * Verifies metadata against itself and the space map (like thin_check): every mapped
 * block in range, used, and mapped once; no used block unreferenced (leak); usage
 * counters equal to the maps; parent chains valid; no records of unknown segments; no
 * directory entry pointing at a missing inode; every record decodes. With `repair`,
 * fixes the space map and counters and drops unreachable records, and says so.
 * With `data`, also reads every mapped data block whole and checks it against its
 * CRC-32Cs (per sector, or one for the whole block on refs written before sectors).
 */
export async function checkPool(pool: ThinPool, opts: { repair?: boolean; data?: boolean } = {}): Promise<CheckReport> {
  try {
    return await checkPoolInner(pool, opts);
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

async function checkPoolInner(pool: ThinPool, opts: { repair?: boolean; data?: boolean }): Promise<CheckReport> {
  const t = openStoreTables(pool);
  const problems: CheckProblem[] = [];
  const repair = Boolean(opts.repair);
  const report = (kind: string, message: string, repaired = false) => problems.push({ kind, message, repaired });
  const lostBlocks = checkDataDeviceSize(pool, t, repair, report);

  // The LMDB file's structure, page by page (MetadataEnv.open refused damage in what LMDB
  // reads; what remains to report is damage in the previous snapshot and leaked pages).
  const md = verifyMetadataStable(path.join(pool.env.dir, 'data.mdb'));
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
  /** Some block-map entry or inode may be unreadable: unreferenced blocks may still be someone's. */
  let mapDamaged = md.damage.some((d) => d.scope === 'live');

  const layers = [...pool.table('layers').range(0, Number.MAX_SAFE_INTEGER)].flatMap(({ key, value }) => {
    try {
      return [unpackLayer(value)];
    } catch (err) {
      report('CORRUPT_RECORD', `layer record ${String(key)}: ${(err as Error).message}`);
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
  /** Block-map entries per `${segment}:${ino}`, readable or not: the inode records' `mapped` must match. */
  const mapEntries = new Map<string, number>();
  for (const { key, value } of t.bmap.range([0], [Number.MAX_SAFE_INTEGER])) {
    const [seg, entryIno] = key as number[];
    const inoKey = `${seg}:${entryIno}`;
    mapEntries.set(inoKey, (mapEntries.get(inoKey) ?? 0) + 1);
    if (!segments.has(seg)) {
      report('UNKNOWN_SEGMENT', `block map entry ${(key as number[]).join(':')} belongs to no layer`, repair);
      badKeys.push({ table: 'bmap', key });
      continue;
    }
    let ref;
    try {
      ref = unpackBlockRef(value);
    } catch (err) {
      report('CORRUPT_RECORD', `block map entry ${(key as number[]).join(':')}: ${(err as Error).message}`);
      mapDamaged = true;
      continue;
    }
    const u = usage.get(seg) ?? { blocks: 0, inlineBytes: 0 };
    if (isDataRef(ref)) {
      mappedBlocks++;
      u.blocks++;
      const b = ref.block;
      if (b < 0 || b >= nrBlocks) report('BLOCK_OUT_OF_RANGE', `${(key as number[]).join(':')} maps data block ${b}, past the device's ${nrBlocks}`);
      else if (referenced.has(b)) report('DOUBLE_MAPPED', `data block ${b} is mapped more than once (again by ${(key as number[]).join(':')})`);
      else {
        referenced.add(b);
        // Blocks lost with a short data device are reported (DATA_LOST) already.
        if (opts.data && !lostBlocks.has(b)) dataChecks.push({ where: (key as number[]).join(':'), ref });
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
      report('UNKNOWN_SEGMENT', `inode record ${seg}:${ino} belongs to no layer`, repair);
      badKeys.push({ table: 'inodes', key });
      continue;
    }
    let rec;
    try {
      rec = unpackInode(value);
    } catch (err) {
      report('CORRUPT_RECORD', `inode ${seg}:${ino}: ${(err as Error).message}`);
      mapDamaged = true;
      continue;
    }
    const held = mapEntries.get(`${seg}:${ino}`) ?? 0;
    if (rec.mapped !== undefined && rec.mapped !== held) {
      // Fewer: entries were lost (a damaged key or page), their blocks look unreferenced.
      report(
        held < rec.mapped ? 'MAP_ENTRIES_LOST' : 'MAP_COUNT_MISMATCH',
        `inode ${ino} in layer ${layers.find((l) => l.segment === seg)?.name ?? seg} records ${rec.mapped} block-map entries, the map holds ${held}`,
      );
      mapDamaged = true;
    }
    nrInodes++;
    inodeKeys.add(`${seg}:${ino}`);
    inos.add(ino);
  }
  let nrEntries = 0;
  for (const { key, value } of t.dirents.range([0], [Number.MAX_SAFE_INTEGER])) {
    const [seg, dirIno, name] = key as [number, number, string];
    if (!segments.has(seg)) {
      report('UNKNOWN_SEGMENT', `directory entry ${seg}:${dirIno}:${name} belongs to no layer`, repair);
      badKeys.push({ table: 'dirents', key });
      continue;
    }
    let d;
    try {
      d = unpackDirent(value);
    } catch (err) {
      report('CORRUPT_RECORD', `directory entry ${seg}:${dirIno}:${name}: ${(err as Error).message}`);
      continue;
    }
    nrEntries++;
    if (!isWhiteout(d) && !inos.has(d.ino)) {
      report('DANGLING_ENTRY', `entry '${name}' in directory ${dirIno} (segment ${seg}) points at missing inode ${d.ino}`, repair);
      badKeys.push({ table: 'dirents', key });
    }
  }

  // Space map against references and reservations.
  const reserved = pool.reservedBlocks();
  let usedBlocks = 0;
  const leaked: number[] = [];
  for (const b of pool.usedBlocksFromMap()) {
    usedBlocks++;
    if (!referenced.has(b) && !reserved.has(b)) leaked.push(b);
  }
  // With damaged maps, an unreferenced block may belong to an entry that can't be read:
  // it is reported apart and never freed (its owner can't be known; a backup may know it).
  const suspect = mapDamaged ? leaked.splice(0) : [];
  for (const b of suspect.slice(0, 20)) report('POSSIBLY_REFERENCED', `data block ${b} is marked used and no readable map entry references it; damaged metadata may reference it (kept, not freed)`);
  if (suspect.length > 20) report('POSSIBLY_REFERENCED', `${suspect.length - 20} more blocks possibly referenced by damaged metadata (not freed)`);
  for (const b of leaked.slice(0, 20)) report('LEAKED_BLOCK', `data block ${b} is marked used but nothing maps it`, repair);
  if (leaked.length > 20) report('LEAKED_BLOCK', `${leaked.length - 20} more leaked blocks`, repair);
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

  if (repair) {
    pool.txn(() => {
      for (const { table, key } of badKeys) t[table].del(key as never);
    });
    if (leaked.length || unmarked.length) pool.repairSpaceMap(suspect.length ? new Set([...referenced, ...suspect]) : referenced);
    await pool.sync();
  }

  return {
    ok: problems.every((p) => p.repaired),
    problems,
    stats: {
      layers: layers.length,
      segments: segments.size,
      inodes: nrInodes,
      entries: nrEntries,
      mappedBlocks,
      usedBlocks,
      reservedBlocks: reserved.size,
    },
  };
}

// ---- data device size (wt-hostenv hook) ---------------------------------------------

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
