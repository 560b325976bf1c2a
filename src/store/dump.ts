import { dmfsError } from '../errors';
import { packUint48 } from '../pool/codec';
import type { ThinPool } from '../pool/thin-pool';
import { packSharers } from './block-sharing';
import { openStoreTables } from './store-tables';
import {
  SECTORS_PER_BLOCK, hasSectorCrcs, isDataRef, isUnwrittenRef, packBlockRef, packDirent, packInode, packLayer, packUsage, unpackBlockRef,
  unpackDirent, unpackInode, unpackLayer, unpackUsage, type DataRef, type DirentRecord, type InodeRecord, type LayerRecord,
  type SegmentUsage,
} from './records';

/**
 * Metadata dump (like thin_dump): every layer and every record of its segment as
 * readable JSON. Inline block bytes and xattr values are base64; a data block is
 * `{ block, sectorCrcs: [16 CRCs] }`, or `{ block, crc }` if written before per-sector
 * checksums, and restores in the same form. `restore` reads a whole dump back into a pool
 * with the same data device (like thin_restore).
 */
export interface MetadataDump {
  dmfsDump: 1;
  pool: { poolName: string; blockSizeBytes: number; nrBlocks: number };
  /** A dump of selected layers cannot be restored. */
  partial: boolean;
  layers: LayerRecord[];
  segments: Record<string, SegmentDump>;
}

export interface SegmentDump {
  usage: SegmentUsage;
  inodes: [number, JsonInode][];
  entries: [number, string, DirentRecord][];
  blocks: [number, number, DataRef | { inline: string }][];
  orphans: number[];
}

type JsonInode = Omit<InodeRecord, 'xattrs'> & { xattrs?: Record<string, string> };

export function dumpMetadata(pool: ThinPool, opts: { layers?: string[] } = {}): MetadataDump {
  const t = openStoreTables(pool);
  let layers = [...pool.table('layers').range(0, Number.MAX_SAFE_INTEGER)].map(({ value }) => unpackLayer(value));
  if (opts.layers?.length) {
    const wanted = new Set(opts.layers);
    for (const name of wanted) {
      if (!layers.some((l) => l.name === name)) throw dmfsError('LAYER_NOT_FOUND', `no layer named '${name}'`);
    }
    layers = layers.filter((l) => wanted.has(l.name));
  }
  const segments: Record<string, SegmentDump> = {};
  for (const l of layers) {
    const seg = l.segment;
    const s: SegmentDump = { usage: unpackUsage(t.usage.get([seg])), inodes: [], entries: [], blocks: [], orphans: [] };
    for (const { key, value } of t.inodes.range([seg], [seg + 1])) {
      const rec = unpackInode(value);
      const json: JsonInode = { ...rec, xattrs: undefined };
      if (rec.xattrs) json.xattrs = Object.fromEntries(Object.entries(rec.xattrs).map(([k, v]) => [k, v.toString('base64')]));
      else delete json.xattrs;
      s.inodes.push([(key as number[])[1], json]);
    }
    for (const { key, value } of t.dirents.range([seg], [seg + 1])) {
      const [, dirIno, name] = key as [number, number, string];
      s.entries.push([dirIno, name, unpackDirent(value)]);
    }
    for (const { key, value } of t.bmap.range([seg], [seg + 1])) {
      const [, ino, fileBlock] = key as number[];
      const ref = unpackBlockRef(value);
      s.blocks.push([ino, fileBlock, !isDataRef(ref) ? { inline: ref.toString('base64') }
        : isUnwrittenRef(ref) ? { block: ref.block, unwritten: true }
        : hasSectorCrcs(ref) ? { block: ref.block, sectorCrcs: ref.sectorCrcs } : { block: ref.block, crc: ref.crc }]);
    }
    for (const key of t.orphans.keys([seg], [seg + 1])) s.orphans.push((key as number[])[1]);
    segments[String(seg)] = s;
  }
  const sb = pool.superblock;
  return {
    dmfsDump: 1,
    pool: { poolName: sb.poolName, blockSizeBytes: sb.blockSizeBytes, nrBlocks: sb.nrBlocks },
    partial: Boolean(opts.layers?.length),
    layers,
    segments,
  };
}

/**
 * Replaces the pool's layer metadata with a dump: every store table is rewritten and the
 * space map rebuilt from the block maps. Refused while another process has the pool open,
 * for partial dumps, and for dumps of another block size or a larger device.
 */
export async function restoreMetadata(pool: ThinPool, dump: MetadataDump): Promise<{ layers: number; blocks: number }> {
  if (dump?.dmfsDump !== 1) throw dmfsError('BAD_IMAGE', 'not a dmfs metadata dump (dmfsDump: 1)');
  if (dump.partial) throw dmfsError('INVALID', 'a dump of selected layers (--layer) cannot be restored; dump the whole pool');
  const sb = pool.superblock;
  if (dump.pool.blockSizeBytes !== sb.blockSizeBytes) throw dmfsError('INVALID', `dump has ${dump.pool.blockSizeBytes}-byte blocks, this pool ${sb.blockSizeBytes}`);
  if (pool.hasOtherLiveOwners()) throw dmfsError('LAYER_IN_USE', 'another process has the pool open (a mount?); stop it before restoring');
  const t = openStoreTables(pool);
  const tables = [pool.table('layers'), pool.table('layer-names'), pool.table('holders'), t.inodes, t.dirents, t.bmap, t.usage, t.orphans, t.blockRefs];
  const referenced = new Set<number>();
  const sharers = new Map<number, number>();
  let maxIno = 1;
  let maxLayer = 0;
  let maxSegment = 0;
  pool.txn(() => {
    for (const table of tables) for (const key of [...table.allKeys()]) table.del(key);
    for (const l of dump.layers) {
      if (l.v !== 1 || typeof l.id !== 'number' || typeof l.segment !== 'number') throw dmfsError('BAD_IMAGE', 'a layer record of the dump is malformed');
      pool.table('layers').put(l.id, packLayer(l));
      if (l.state !== 'removing') pool.table('layer-names').put(l.name, packUint48(l.id));
      maxLayer = Math.max(maxLayer, l.id);
      maxSegment = Math.max(maxSegment, l.segment);
    }
    for (const [segText, s] of Object.entries(dump.segments)) {
      const seg = Number(segText);
      t.usage.put([seg], packUsage(s.usage));
      for (const [ino, json] of s.inodes) {
        const rec: InodeRecord = { ...json, xattrs: undefined } as InodeRecord;
        if (json.xattrs) rec.xattrs = Object.fromEntries(Object.entries(json.xattrs).map(([k, v]) => [k, Buffer.from(v, 'base64')]));
        else delete rec.xattrs;
        t.inodes.put([seg, ino], packInode(rec));
        maxIno = Math.max(maxIno, ino);
      }
      for (const [dirIno, name, d] of s.entries) t.dirents.put([seg, dirIno, name], packDirent(d));
      for (const [ino, fileBlock, ref] of s.blocks) {
        if ('inline' in ref) t.bmap.put([seg, ino, fileBlock], packBlockRef(Buffer.from(ref.inline, 'base64')));
        else {
          checkJsonDataRef(ref);
          if (ref.block >= sb.nrBlocks) throw dmfsError('BAD_IMAGE', `dump maps data block ${ref.block}, past this device's ${sb.nrBlocks}`);
          // A block mapped by several entries is shared (block-sharing.ts): counted below.
          if (referenced.has(ref.block)) sharers.set(ref.block, (sharers.get(ref.block) ?? 1) + 1);
          referenced.add(ref.block);
          t.bmap.put([seg, ino, fileBlock], packBlockRef(ref));
        }
      }
      for (const ino of s.orphans) t.orphans.put([seg, ino], Buffer.alloc(0));
    }
    for (const [block, n] of sharers) t.blockRefs.put(block, packSharers(n));
    pool.raiseCounter('ino', maxIno + 1);
    pool.raiseCounter('layer', maxLayer + 1);
    pool.raiseCounter('segment', maxSegment + 1);
  });
  pool.repairSpaceMap(referenced);
  await pool.sync();
  return { layers: dump.layers.length, blocks: referenced.size };
}

const isUint32 = (n: unknown): boolean => Number.isInteger(n) && (n as number) >= 0 && (n as number) <= 0xffffffff;

/** A dumped data block must be one of the three forms with well-formed numbers (BAD_IMAGE otherwise). */
function checkJsonDataRef(ref: DataRef): void {
  const okBlock = Number.isSafeInteger(ref.block) && ref.block >= 0;
  const okCrcs = isUnwrittenRef(ref) ? ref.unwritten === true
    : hasSectorCrcs(ref)
    ? Array.isArray(ref.sectorCrcs) && ref.sectorCrcs.length === SECTORS_PER_BLOCK && ref.sectorCrcs.every(isUint32)
    : isUint32(ref.crc);
  if (!okBlock || !okCrcs) throw dmfsError('BAD_IMAGE', `a block of the dump is malformed: ${JSON.stringify(ref)}`);
}
