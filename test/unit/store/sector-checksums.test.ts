import * as fs from 'node:fs';
import { Pool } from '../../../src/api';
import { blockIo } from '../../../src/native';
import { dumpMetadata, restoreMetadata } from '../../../src/store/dump';
import { S_IFREG, type Ino, type LayerFs } from '../../../src/store/layer-store';
import {
  hasSectorCrcs, isDataRef, packBlockRef, unpackBlockRef, unpackLayer, type DataRef,
} from '../../../src/store/records';
import { tempPool } from '../../support/temp-pool';

/**
 * Per-sector checksums (tag-2 block refs): partial reads read and verify only the sectors
 * they touch, partial writes read only partly covered sectors, damage is confined to its
 * sector, and pools holding whole-block (tag 0) refs keep reading, checking and dumping.
 */

const BS = 64 * 1024;
const SS = BS / 16;

/** Deterministic bytes that differ from sector to sector. */
function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

async function layerWithFile(pool: Pool, name: string, content: Buffer, seal = true): Promise<Ino> {
  await pool.store.createLayer(name, { kind: 'image', building: true });
  const l = await pool.store.openLayer(name);
  const f = await l.mknod(l.rootIno, 'data', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
  await l.write(f.ino, content, 0);
  await l.close();
  if (seal) await pool.store.sealLayer(name);
  return f.ino;
}

function segmentOf(pool: Pool, layerName: string): number {
  for (const { value } of pool.thinPool.table('layers').range(0, Number.MAX_SAFE_INTEGER)) {
    const l = unpackLayer(value);
    if (l.name === layerName) return l.segment;
  }
  throw new Error(`no layer ${layerName}`);
}

/** The data ref of file block idx of ino in the layer's own segment. */
function ownRef(pool: Pool, layerName: string, ino: Ino, idx: number): DataRef {
  const raw = pool.thinPool.table('bmap').get([segmentOf(pool, layerName), ino, idx]);
  const ref = raw ? unpackBlockRef(raw) : null;
  if (!ref || !isDataRef(ref)) throw new Error(`file block ${idx} of inode ${ino} is no data block of ${layerName}`);
  return ref;
}

function readBlockFromDisk(pool: Pool, block: number): Buffer {
  const buf = Buffer.alloc(BS);
  const fd = fs.openSync(pool.thinPool.paths.dataFile, 'r');
  try {
    fs.readSync(fd, buf, 0, BS, block * BS);
  } finally {
    fs.closeSync(fd);
  }
  return buf;
}

function flipByteOnDisk(pool: Pool, at: number): void {
  const fd = fs.openSync(pool.thinPool.paths.dataFile, 'r+');
  try {
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, at);
    b[0] ^= 0x5a;
    fs.writeSync(fd, b, 0, 1, at);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Rewrites the layer's data refs of ino (file blocks `only`, else all) as tag 0 with the
 * whole-block CRC of the block on disk: what a pool from before per-sector checksums holds.
 */
function downgradeToWholeBlockCrc(pool: Pool, layerName: string, ino: Ino, only?: number[]): void {
  const seg = segmentOf(pool, layerName);
  const bmap = pool.thinPool.table('bmap');
  pool.thinPool.txn(() => {
    for (const { key, value } of [...bmap.range([seg, ino], [seg, ino + 1])]) {
      const ref = unpackBlockRef(value);
      const idx = (key as number[])[2];
      if (!isDataRef(ref) || (only && !only.includes(idx))) continue;
      bmap.put(key as number[], packBlockRef({ block: ref.block, crc: blockIo.crc32c(readBlockFromDisk(pool, ref.block)) }));
    }
  });
}

/** Records every pool.readBlocks call as (offset in block, bytes) pieces, one array per call. */
function spyReads(pool: Pool): { calls: () => { offset: number; bytes: number }[][]; reset: () => void; restore: () => void } {
  const spy = jest.spyOn(pool.thinPool, 'readBlocks');
  return {
    calls: () => spy.mock.calls.map(([, offsets, targets]) => targets.map((t, i) => ({ offset: offsets[i], bytes: t.length }))),
    reset: () => spy.mockClear(),
    restore: () => spy.mockRestore(),
  };
}

async function readAt(l: LayerFs, ino: Ino, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  expect(await l.read(ino, buf, offset)).toBe(length);
  return buf;
}

test('a partial read of a per-sector block reads and verifies only the sectors it covers, in one gathered read', async () => {
  const { pool, remove } = await tempPool();
  try {
    const content = pattern(4 * BS, 7);
    const ino = await layerWithFile(pool, 'img', content);
    expect(hasSectorCrcs(ownRef(pool, 'img', ino, 0))).toBe(true);
    const l = await pool.store.openLayer('img');
    const reads = spyReads(pool);

    // 4 KiB at 8 KiB of a 64 KiB block: exactly sector 2, 4 KiB from disk (a tag-0 block reads 64 KiB).
    expect(await readAt(l, ino, 2 * SS, SS)).toEqual(content.subarray(2 * SS, 3 * SS));
    expect(reads.calls()).toEqual([[{ offset: 2 * SS, bytes: SS }]]);

    // Unaligned: 100 bytes across the sector 0/1 boundary reads those two sectors.
    reads.reset();
    expect(await readAt(l, ino, SS - 50, 100)).toEqual(content.subarray(SS - 50, SS + 50));
    expect(reads.calls()).toEqual([[{ offset: 0, bytes: 2 * SS }]]);

    // Across a block boundary: the last sector of block 1 and the first of block 2, one call.
    reads.reset();
    expect(await readAt(l, ino, 2 * BS - SS, 2 * SS)).toEqual(content.subarray(2 * BS - SS, 2 * BS + SS));
    expect(reads.calls()).toEqual([[{ offset: 15 * SS, bytes: SS }, { offset: 0, bytes: SS }]]);

    // Whole blocks read whole (and verify all 16 sectors).
    reads.reset();
    expect(await readAt(l, ino, 0, 4 * BS)).toEqual(content);
    expect(reads.calls()).toEqual([Array.from({ length: 4 }, () => ({ offset: 0, bytes: BS }))]);
    reads.restore();
    await l.close();
  } finally {
    await remove();
  }
});

test('read hands its mayBlock hint down to the pool unchanged (the FUSE side sets it when a read is alone in flight)', async () => {
  const { pool, remove } = await tempPool();
  try {
    const content = pattern(BS, 3);
    const ino = await layerWithFile(pool, 'img', content);
    const l = await pool.store.openLayer('img');
    const spy = jest.spyOn(pool.thinPool, 'readBlocks');
    const buf = Buffer.alloc(SS);
    await l.read(ino, buf, SS, { mayBlock: true });
    await l.read(ino, buf, SS);
    expect(spy.mock.calls.map((c) => c[3])).toEqual([{ mayBlock: true }, undefined]);
    expect(buf).toEqual(content.subarray(SS, 2 * SS));
    spy.mockRestore();
    await l.close();
  } finally {
    await remove();
  }
});

test('one damaged byte in sector 5 fails reads of sector 5 only; check --data names the block and sector', async () => {
  const { pool, remove } = await tempPool();
  try {
    const content = pattern(2 * BS, 11);
    const ino = await layerWithFile(pool, 'img', content);
    const { block } = ownRef(pool, 'img', ino, 1);
    flipByteOnDisk(pool, block * BS + 5 * SS + 123);

    const l = await pool.store.openLayer('img');
    const target = Buffer.alloc(SS, 0xaa);
    await expect(l.read(ino, target, BS + 5 * SS)).rejects.toMatchObject({ code: 'DATA_CORRUPT', errno: 5, message: expect.stringContaining(`data block ${block}`) });
    expect(target.every((b) => b === 0)).toBe(true); // the damaged bytes never reach the caller
    await expect(l.read(ino, Buffer.alloc(10), BS + 5 * SS + 120)).rejects.toMatchObject({ code: 'DATA_CORRUPT' });
    await expect(l.read(ino, Buffer.alloc(3 * SS), BS + 4 * SS)).rejects.toMatchObject({ code: 'DATA_CORRUPT' });
    await expect(l.read(ino, Buffer.alloc(2 * BS), 0)).rejects.toMatchObject({ code: 'DATA_CORRUPT' });
    // The block's other sectors, and the other block, still read.
    expect(await readAt(l, ino, BS + 2 * SS, SS)).toEqual(content.subarray(BS + 2 * SS, BS + 3 * SS));
    expect(await readAt(l, ino, BS + 6 * SS, 10 * SS)).toEqual(content.subarray(BS + 6 * SS, 2 * BS));
    expect(await readAt(l, ino, BS + 5 * SS - 100, 100)).toEqual(content.subarray(BS + 5 * SS - 100, BS + 5 * SS));
    expect(await readAt(l, ino, 0, BS)).toEqual(content.subarray(0, BS));
    await l.close();

    const report = await pool.check({ data: true });
    expect(report.ok).toBe(false);
    expect(report.problems).toEqual([
      expect.objectContaining({
        kind: 'DATA_CORRUPT',
        message: expect.stringMatching(new RegExp(`data block ${block} \\(layer img, inode ${ino}, file block 1\\).* sector 5$`)),
      }),
    ]);
  } finally {
    await remove();
  }
});

test('partial writes into an own per-sector block read only the sectors they cover partly', async () => {
  const { pool, remove } = await tempPool();
  try {
    const model = pattern(3 * BS, 3);
    const ino = await layerWithFile(pool, 'img', model, false);
    const l = await pool.store.openLayer('img');
    const reads = spyReads(pool);
    const write = async (offset: number, data: Buffer): Promise<void> => {
      await l.write(ino, data, offset);
      data.copy(model, offset);
    };

    await write(2 * SS, pattern(SS, 21)); // exactly sector 2: no old bytes needed
    expect(reads.calls()).toEqual([]);
    await write(SS - 50, pattern(100, 22)); // ends of sectors 0 and 1
    expect(reads.calls()).toEqual([[{ offset: 0, bytes: SS }, { offset: SS, bytes: SS }]]);
    reads.reset();
    await write(4 * SS + 10, pattern(10, 23)); // inside sector 4
    expect(reads.calls()).toEqual([[{ offset: 4 * SS, bytes: SS }]]);
    reads.reset();
    await write(7 * SS, pattern(3 * SS + 1, 24)); // sectors 7..9 whole, 1 byte of sector 10
    expect(reads.calls()).toEqual([[{ offset: 10 * SS, bytes: SS }]]);
    reads.reset();
    reads.restore();

    // Unaligned writes all over the file, against the model.
    let seed = 99;
    for (let i = 0; i < 40; i++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      const offset = seed % (3 * BS - 1);
      const length = 1 + ((seed >>> 7) % Math.min(3 * SS, 3 * BS - offset));
      await write(offset, pattern(length, seed));
    }
    expect(await readAt(l, ino, 0, 3 * BS)).toEqual(model);
    await l.close();
    expect((await pool.check({ data: true })).problems).toEqual([]);

    const again = await pool.store.openLayer('img');
    expect(await readAt(again, ino, 0, 3 * BS)).toEqual(model);
    for (let idx = 0; idx < 3; idx++) expect(hasSectorCrcs(ownRef(pool, 'img', ino, idx))).toBe(true);
    await again.close();
  } finally {
    await remove();
  }
});

test('a pool holding whole-block (tag 0) refs reads, checks, rewrites and copies them up with sector CRCs', async () => {
  const { pool, remove } = await tempPool();
  try {
    const model = pattern(3 * BS, 5);
    const ino = await layerWithFile(pool, 'img', model, false);
    downgradeToWholeBlockCrc(pool, 'img', ino);
    for (let idx = 0; idx < 3; idx++) expect(ownRef(pool, 'img', ino, idx)).toEqual({ block: expect.any(Number), crc: expect.any(Number) });
    expect((await pool.check({ data: true })).problems).toEqual([]);

    const l = await pool.store.openLayer('img');
    const reads = spyReads(pool);
    // A tag-0 block is read whole to verify a 4 KiB read; once verified, partial reads read what they need.
    expect(await readAt(l, ino, 2 * SS, SS)).toEqual(model.subarray(2 * SS, 3 * SS));
    expect(reads.calls()).toEqual([[{ offset: 0, bytes: BS }]]);
    reads.reset();
    expect(await readAt(l, ino, 3 * SS, SS)).toEqual(model.subarray(3 * SS, 4 * SS));
    expect(reads.calls()).toEqual([[{ offset: 3 * SS, bytes: SS }]]);
    reads.reset();
    // A partial write into an own tag-0 block verifies it whole and leaves sector CRCs.
    const patch = pattern(100, 6);
    await l.write(ino, patch, SS - 50);
    patch.copy(model, SS - 50);
    expect(reads.calls()).toEqual([[{ offset: 0, bytes: BS }]]);
    reads.restore();
    expect(hasSectorCrcs(ownRef(pool, 'img', ino, 0))).toBe(true);
    expect(hasSectorCrcs(ownRef(pool, 'img', ino, 1))).toBe(false);
    expect(await readAt(l, ino, 0, 3 * BS)).toEqual(model);
    await l.close();
    await pool.store.sealLayer('img');

    // Copy-up of a tag-0 lower block: verified with its whole-block CRC, the copy gets sector CRCs.
    await pool.store.createLayer('c', { kind: 'container', parent: 'img' });
    const c = await pool.store.openLayer('c');
    const patch2 = pattern(10, 8);
    await c.write(ino, patch2, BS + 30000);
    const upper = Buffer.from(model);
    patch2.copy(upper, BS + 30000);
    const copied = ownRef(pool, 'c', ino, 1);
    expect(hasSectorCrcs(copied)).toBe(true);
    expect(copied.block).not.toBe(ownRef(pool, 'img', ino, 1).block);
    expect(await readAt(c, ino, 0, 3 * BS)).toEqual(upper);
    expect((await pool.check({ data: true })).problems).toEqual([]);

    // Damage to a tag-0 block fails every read of it (its one CRC covers all of it) and check names it.
    const { block } = ownRef(pool, 'img', ino, 2);
    flipByteOnDisk(pool, block * BS + 40000);
    await c.close();
    const c2 = await pool.store.openLayer('c');
    await expect(c2.read(ino, Buffer.alloc(SS), 2 * BS)).rejects.toMatchObject({ code: 'DATA_CORRUPT' });
    await expect(c2.write(ino, Buffer.from('x'), 2 * BS + 5)).rejects.toMatchObject({ code: 'DATA_CORRUPT' });
    expect(await readAt(c2, ino, BS, BS)).toEqual(upper.subarray(BS, 2 * BS));
    await c2.close();
    const report = await pool.check({ data: true });
    expect(report.problems).toEqual([
      expect.objectContaining({ kind: 'DATA_CORRUPT', message: expect.stringMatching(new RegExp(`data block ${block} \\(layer img, inode ${ino}, file block 2\\) fails its checksum$`)) }),
    ]);
  } finally {
    await remove();
  }
});

test('dump and restore keep both data ref forms exactly; malformed dumped blocks are BAD_IMAGE', async () => {
  const { pool, remove } = await tempPool();
  try {
    const content = pattern(2 * BS, 13);
    const ino = await layerWithFile(pool, 'img', content);
    downgradeToWholeBlockCrc(pool, 'img', ino, [0]);
    const bmap = pool.thinPool.table('bmap');
    const before = [...bmap.range([0], [Number.MAX_SAFE_INTEGER])].map(({ key, value }) => [key, Buffer.from(value)]);

    const dump = JSON.parse(JSON.stringify(dumpMetadata(pool.thinPool)));
    const blocks = dump.segments[String(segmentOf(pool, 'img'))].blocks;
    expect(blocks).toEqual([
      [ino, 0, { block: expect.any(Number), crc: expect.any(Number) }],
      [ino, 1, { block: expect.any(Number), sectorCrcs: expect.arrayContaining([expect.any(Number)]) }],
    ]);
    expect(blocks[1][2].sectorCrcs).toHaveLength(16);

    pool.thinPool.txn(() => {
      for (const k of [...bmap.allKeys()]) bmap.del(k);
    });
    await restoreMetadata(pool.thinPool, dump);
    expect([...bmap.range([0], [Number.MAX_SAFE_INTEGER])].map(({ key, value }) => [key, Buffer.from(value)])).toEqual(before);
    expect((await pool.check({ data: true })).problems).toEqual([]);
    const l = await pool.store.openLayer('img');
    expect(await readAt(l, ino, 0, 2 * BS)).toEqual(content);
    await l.close();

    const withBlock = (ref: unknown) => {
      const bad = structuredClone(dump);
      bad.segments[String(segmentOf(pool, 'img'))].blocks[1][2] = ref;
      return bad;
    };
    const { block } = blocks[1][2];
    await expect(restoreMetadata(pool.thinPool, withBlock({ block, sectorCrcs: blocks[1][2].sectorCrcs.slice(1) }))).rejects.toMatchObject({ code: 'BAD_IMAGE' });
    await expect(restoreMetadata(pool.thinPool, withBlock({ block, sectorCrcs: [...blocks[1][2].sectorCrcs.slice(1), -1] }))).rejects.toMatchObject({ code: 'BAD_IMAGE' });
    await expect(restoreMetadata(pool.thinPool, withBlock({ block, crc: 'x' }))).rejects.toMatchObject({ code: 'BAD_IMAGE' });
    // A refused restore changes nothing.
    expect([...bmap.range([0], [Number.MAX_SAFE_INTEGER])].map(({ key, value }) => [key, Buffer.from(value)])).toEqual(before);
  } finally {
    await remove();
  }
});
