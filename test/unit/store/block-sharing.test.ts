import { randomBytes } from 'node:crypto';
import type { Pool } from '../../../src/api';
import { isDmfsError } from '../../../src/errors';
import { packSharers } from '../../../src/store/block-sharing';
import { dumpMetadata, restoreMetadata } from '../../../src/store/dump';
import { S_IFREG, type Ino, type LayerFs } from '../../../src/store/layer-store';
import { tempPool } from '../../support/temp-pool';

const BS = 65536;
const owner = { uid: 0, gid: 0 };

let env: Awaited<ReturnType<typeof tempPool>>;
let pool: Pool;

beforeEach(async () => {
  env = await tempPool({ options: ['dm.min_free_space=0'] });
  pool = env.pool;
});

afterEach(async () => {
  await env.remove();
});

const usedBlocks = () => pool.thinPool.space().usedBlocks;
const exclusive = async (layer: string) => (await pool.store.getLayer(layer)).exclusiveBytes;
const refsTable = () => pool.thinPool.table('block-refs');

async function newFile(fs: LayerFs, name: string, content?: Buffer): Promise<Ino> {
  const a = await fs.mknod(fs.rootIno, name, { mode: S_IFREG | 0o644, ...owner });
  if (content) await fs.write(a.ino, content, 0);
  return a.ino;
}

async function readAll(fs: LayerFs, ino: Ino): Promise<Buffer> {
  const a = await fs.getattr(ino);
  const buf = Buffer.alloc(a.sizeBytes);
  expect(await fs.read(ino, buf, 0)).toBe(a.sizeBytes);
  return buf;
}

/** Copies the whole of ino into a new file, looping on short counts as cp does. */
async function copyWhole(fs: LayerFs, ino: Ino, name: string): Promise<Ino> {
  const dst = await newFile(fs, name);
  const size = (await fs.getattr(ino)).sizeBytes;
  for (let done = 0; done < size; ) {
    const n = await fs.copyFileRange!(ino, done, dst, done, size - done);
    expect(n).toBeGreaterThan(0);
    done += n;
  }
  return dst;
}

async function expectClean(): Promise<void> {
  const report = await pool.check();
  expect(report.problems).toEqual([]);
}

async function container(name = 'c', parent?: string): Promise<LayerFs> {
  await pool.store.createLayer(name, { kind: 'container', ...(parent ? { parent } : {}) });
  return pool.store.openLayer(name);
}

/** A container with file 'a' of sizeBytes random bytes and 'b', its whole copy. */
async function copiedPair(sizeBytes: number): Promise<{ fs: LayerFs; content: Buffer; src: Ino; dst: Ino }> {
  const fs = await container();
  const content = randomBytes(sizeBytes);
  const src = await newFile(fs, 'a', content);
  const dst = await copyWhole(fs, src, 'b');
  return { fs, content, src, dst };
}

/** Makes the layer's writes durable, checks the pool clean, closes the layer. */
async function syncCheckClose(fs: LayerFs): Promise<void> {
  await fs.fsync();
  await expectClean();
  await fs.close();
}

test('a block-aligned copy shares every block: no pool growth, same content, exclusive bytes counted once', async () => {
  const fs = await container();
  const content = randomBytes(16 * BS);
  const src = await newFile(fs, 'a', content);
  const before = usedBlocks();
  const exclusiveBefore = await exclusive('c');
  const dst = await copyWhole(fs, src, 'b');
  expect(usedBlocks()).toBe(before);
  expect(await exclusive('c')).toBe(exclusiveBefore);
  expect((await readAll(fs, dst)).equals(content)).toBe(true);
  expect((await fs.getattr(dst)).blocks512).toBe((16 * BS) / 512);
  expect(refsTable().count(0, Number.MAX_SAFE_INTEGER)).toBe(16);
  await syncCheckClose(fs);
});

test('a 4 KiB write into the copy changes one block of the copy only; the source keeps its content', async () => {
  const { fs, content, src, dst } = await copiedPair(16 * BS);
  const before = usedBlocks();
  const patch = randomBytes(4096);
  await fs.write(dst, patch, 5 * BS + 100);
  expect(usedBlocks()).toBe(before + 1);
  expect((await readAll(fs, src)).equals(content)).toBe(true);
  const expected = Buffer.from(content);
  patch.copy(expected, 5 * BS + 100);
  expect((await readAll(fs, dst)).equals(expected)).toBe(true);
  // The block written is no longer shared; the other 15 still are.
  expect(refsTable().count(0, Number.MAX_SAFE_INTEGER)).toBe(15);
  // Writing the source's copy of that block now writes in place (nothing else maps it).
  await fs.write(src, patch, 5 * BS);
  expect(usedBlocks()).toBe(before + 1);
  await syncCheckClose(fs);
});

test('unlinking the source leaves the copy readable; unlinking both frees every block', async () => {
  const fs = await container();
  const empty = usedBlocks();
  const content = randomBytes(8 * BS + 1234);
  const src = await newFile(fs, 'a', content);
  const dst = await copyWhole(fs, src, 'b');
  await fs.unlink(fs.rootIno, 'a');
  expect((await readAll(fs, dst)).equals(content)).toBe(true);
  expect(refsTable().count(0, Number.MAX_SAFE_INTEGER)).toBe(0);
  await fs.fsync();
  await expectClean();
  await fs.unlink(fs.rootIno, 'b');
  await fs.fsync();
  expect(usedBlocks()).toBe(empty);
  expect(await exclusive('c')).toBe(0);
  await expectClean();
  await fs.close();
});

test('truncating a copy drops its shares; the source is unchanged', async () => {
  const { fs, content, src, dst } = await copiedPair(10 * BS);
  const before = usedBlocks();
  await fs.setattr(dst, { sizeBytes: 3 * BS + 40000 });
  // The partial last block (past the inline limit) is copied to one new block; blocks 4..9
  // lose a sharer, 0..2 stay shared.
  expect(usedBlocks()).toBe(before + 1);
  expect(refsTable().count(0, Number.MAX_SAFE_INTEGER)).toBe(3);
  expect((await readAll(fs, dst)).equals(content.subarray(0, 3 * BS + 40000))).toBe(true);
  expect((await readAll(fs, src)).equals(content)).toBe(true);
  await syncCheckClose(fs);
});

test('partial blocks at the ends are copied as data, whole blocks in between are shared', async () => {
  const fs = await container();
  const content = randomBytes(12 * BS);
  const src = await newFile(fs, 'a', content);
  const dst = await newFile(fs, 'b', Buffer.alloc(20 * BS, 7));
  const before = usedBlocks();
  // Same offset within a block (1000): head 64536 bytes, 9 whole blocks, tail.
  const n = await fs.copyFileRange!(src, BS + 1000, dst, 4 * BS + 1000, 10 * BS);
  expect(n).toBe(10 * BS);
  // Nine blocks now shared; b's own blocks 5..13 freed, 4 and 14 rewritten in place.
  expect(refsTable().count(0, Number.MAX_SAFE_INTEGER)).toBe(9);
  expect(usedBlocks()).toBe(before - 9);
  const expected = Buffer.alloc(20 * BS, 7);
  content.copy(expected, 4 * BS + 1000, BS + 1000, 11 * BS + 1000);
  expect((await readAll(fs, dst)).equals(expected)).toBe(true);
  await syncCheckClose(fs);
});

test('offsets that differ within a block copy the data; short at the end of the source, 0 past it', async () => {
  const fs = await container();
  const content = randomBytes(3 * BS + 77);
  const src = await newFile(fs, 'a', content);
  const dst = await newFile(fs, 'b');
  expect(await fs.copyFileRange!(src, 0, dst, 512, 10 * BS)).toBe(content.length);
  expect(refsTable().count(0, Number.MAX_SAFE_INTEGER)).toBe(0);
  const expected = Buffer.alloc(512 + content.length);
  content.copy(expected, 512);
  expect((await readAll(fs, dst)).equals(expected)).toBe(true);
  expect(await fs.copyFileRange!(src, content.length, dst, 0, BS)).toBe(0);
  await syncCheckClose(fs);
});

test('overlapping ranges of one file are refused; holes stay holes', async () => {
  const fs = await container();
  const f = await newFile(fs, 'a', randomBytes(4 * BS));
  await expect(fs.copyFileRange!(f, 0, f, BS, 2 * BS)).rejects.toMatchObject({ code: 'INVALID' });
  // A sparse source: block 1 is a hole, copied over data it becomes zeros.
  const sparse = await newFile(fs, 's');
  await fs.write(sparse, Buffer.alloc(BS, 1), 0);
  await fs.write(sparse, Buffer.alloc(BS, 3), 2 * BS);
  const dst = await newFile(fs, 'd', Buffer.alloc(3 * BS, 9));
  expect(await fs.copyFileRange!(sparse, 0, dst, 0, 3 * BS)).toBe(3 * BS);
  const expected = Buffer.concat([Buffer.alloc(BS, 1), Buffer.alloc(BS), Buffer.alloc(BS, 3)]);
  expect((await readAll(fs, dst)).equals(expected)).toBe(true);
  await syncCheckClose(fs);
});

test('a copy of a lower layer\'s file borrows its blocks; writes copy them; removing the container frees only its own', async () => {
  await pool.store.createLayer('img', { kind: 'image', building: true });
  const img = await pool.store.openLayer('img');
  const content = randomBytes(8 * BS);
  await newFile(img, 'base-file', content);
  await img.close();
  await pool.store.sealLayer('img');
  const fs = await container('c', 'img');
  const src = (await fs.lookup(fs.rootIno, 'base-file'))!.ino;
  const before = usedBlocks();
  const dst = await copyWhole(fs, src, 'copy');
  expect(usedBlocks()).toBe(before);
  expect(await exclusive('c')).toBe(0);
  await fs.write(dst, Buffer.alloc(4096, 5), 0);
  expect(usedBlocks()).toBe(before + 1);
  expect(await exclusive('c')).toBe(BS);
  expect((await readAll(fs, src)).equals(content)).toBe(true);
  await syncCheckClose(fs);
  await pool.store.removeLayer('c');
  expect(usedBlocks()).toBe(before);
  expect(refsTable().count(0, Number.MAX_SAFE_INTEGER)).toBe(0);
  await expectClean();
  const check = await pool.store.openLayer('img');
  expect((await readAll(check, src)).equals(content)).toBe(true);
  await check.close();
});

test('commit keeps counts right, and a container on the committed image shares again', async () => {
  const fs = await container();
  const content = randomBytes(6 * BS);
  const src = await newFile(fs, 'a', content);
  await copyWhole(fs, src, 'b');
  await fs.close();
  await pool.store.commit('c', 'img1');
  await expectClean();
  const exclusiveImg = await exclusive('img1');
  expect(exclusiveImg).toBe(6 * BS);
  const c2 = await container('c2', 'img1');
  const b = (await c2.lookup(c2.rootIno, 'b'))!.ino;
  const before = usedBlocks();
  const third = await copyWhole(c2, b, 'third');
  expect(usedBlocks()).toBe(before);
  expect(refsTable().count(0, Number.MAX_SAFE_INTEGER)).toBe(6);
  await c2.write(third, Buffer.alloc(100, 1), 2 * BS);
  await c2.unlink(c2.rootIno, 'a');
  expect((await readAll(c2, b)).equals(content)).toBe(true);
  await c2.fsync();
  await expectClean();
  await c2.close();
  await pool.store.removeLayer('c2');
  await pool.store.removeLayer('c');
  await pool.store.removeLayer('img1');
  expect(usedBlocks()).toBe(0);
  expect(refsTable().count(0, Number.MAX_SAFE_INTEGER)).toBe(0);
  await expectClean();
});

test('check finds a wrong, a missing and a stale reference count; --repair fixes them without freeing shared data', async () => {
  const { fs, content, src, dst } = await copiedPair(4 * BS);
  await fs.fsync();
  const refs = refsTable();
  const blocks = [...refs.keys(0, Number.MAX_SAFE_INTEGER)] as number[];
  expect(blocks).toHaveLength(4);
  pool.thinPool.txn(() => {
    refs.put(blocks[0], packSharers(5)); // too high
    refs.del(blocks[1]); // missing: two entries, no count
    refs.put(123456, packSharers(2)); // a block nothing maps
  });
  const found = await pool.check();
  const kinds = found.problems.map((p) => p.kind);
  expect(kinds.filter((k) => k === 'REFCOUNT_MISMATCH')).toHaveLength(3);
  expect(found.ok).toBe(false);
  const repaired = await pool.check({ repair: true });
  expect(repaired.remaining).toEqual([]);
  expect(repaired.ok).toBe(true);
  expect([...refs.keys(0, Number.MAX_SAFE_INTEGER)].sort()).toEqual([...blocks].sort());
  // The repaired counts protect both files: a write into the copy leaves the source alone.
  await fs.write(dst, Buffer.alloc(BS, 0xee), BS);
  expect((await readAll(fs, src)).equals(content)).toBe(true);
  await syncCheckClose(fs);
});

test('dump and restore keep shared blocks shared and counted', async () => {
  const fs = await container();
  const content = randomBytes(5 * BS);
  const src = await newFile(fs, 'a', content);
  await copyWhole(fs, src, 'b');
  await fs.close();
  const dump = await dumpMetadata(pool.thinPool);
  await restoreMetadata(pool.thinPool, dump);
  expect(refsTable().count(0, Number.MAX_SAFE_INTEGER)).toBe(5);
  await expectClean();
  const back = await pool.store.openLayer('c');
  const b = (await back.lookup(back.rootIno, 'b'))!.ino;
  expect((await readAll(back, b)).equals(content)).toBe(true);
  await back.close();
});

test('a copy past the size limit fails with FILE_TOO_BIG; directories are refused', async () => {
  await pool.store.createLayer('small', { kind: 'container', sizeLimitBytes: 8 * BS });
  const fs = await pool.store.openLayer('small');
  const src = await newFile(fs, 'a', randomBytes(4 * BS));
  const dst = await newFile(fs, 'b');
  const err = await fs.copyFileRange!(src, 0, dst, 6 * BS, 4 * BS).catch((e: unknown) => e);
  expect(isDmfsError(err) && err.code).toBe('FILE_TOO_BIG');
  const dir = await fs.mkdir(fs.rootIno, 'd', { mode: 0o755, ...owner });
  await expect(fs.copyFileRange!(dir.ino, 0, dst, 0, BS)).rejects.toMatchObject({ code: 'IS_DIR' });
  // Shared blocks do not count against the limit a second time (as a reflink on btrfs/XFS).
  await copyWhole(fs, src, 'c');
  await copyWhole(fs, src, 'd2');
  expect(await exclusive('small')).toBe(4 * BS);
  await fs.close();
});

test('a lost entry of a copy still reads METADATA_CORRUPT, never zeros (the copy counts its entries)', async () => {
  const fs = await container();
  const src = await newFile(fs, 'a', randomBytes(4 * BS));
  const dst = await copyWhole(fs, src, 'b');
  await fs.close();
  const bmap = pool.thinPool.table('bmap');
  const key = [...bmap.keys([0], [Number.MAX_SAFE_INTEGER])].find((k) => (k as number[])[1] === dst && (k as number[])[2] === 2)!;
  pool.thinPool.txn(() => bmap.del(key));
  const again = await pool.store.openLayer('c', { readOnly: true });
  const err = await again.read(dst, Buffer.alloc(BS), 2 * BS).catch((e: unknown) => e);
  expect(isDmfsError(err) && err.code).toBe('METADATA_CORRUPT');
  await again.close();
  const kinds = (await pool.check()).problems.map((p) => p.kind).sort();
  // The count of the inode and the block's reference count both say an entry is missing.
  expect(kinds).toEqual(['MAP_ENTRIES_LOST', 'REFCOUNT_MISMATCH']);
});

describe('fallocate over shared blocks never writes a sharer in place', () => {
  test('zero-range of a copy reads zeros in the copy; the source keeps its bytes', async () => {
    const fs = await container();
    const content = randomBytes(4 * BS);
    const src = await newFile(fs, 'a', content);
    const dst = await copyWhole(fs, src, 'b');
    await fs.fallocate!(dst, BS, 2 * BS, { mode: 'zero-range', keepSize: false });
    const expected = Buffer.from(content);
    expected.fill(0, BS, 3 * BS);
    expect((await readAll(fs, dst)).equals(expected)).toBe(true);
    expect((await readAll(fs, src)).equals(content)).toBe(true);
    // The zeroed range of the copy is unwritten now: its first write goes to the copy's own block.
    await fs.write(dst, Buffer.alloc(100, 0xab), BS + 10);
    expected.fill(0xab, BS + 10, BS + 110);
    expect((await readAll(fs, dst)).equals(expected)).toBe(true);
    expect((await readAll(fs, src)).equals(content)).toBe(true);
    await fs.close();
    await expectClean();
  });

  test('a reserved (mode 0) range of a copy gets blocks of its own; writes there leave the source alone', async () => {
    const fs = await container();
    const content = randomBytes(3 * BS);
    const src = await newFile(fs, 'a', content);
    const dst = await copyWhole(fs, src, 'b');
    await fs.fallocate!(dst, 0, 3 * BS, { mode: 'allocate', keepSize: true });
    expect((await readAll(fs, dst)).equals(content)).toBe(true);
    await fs.write(dst, Buffer.alloc(BS, 0x11), 0);
    expect((await readAll(fs, src)).equals(content)).toBe(true);
    expect((await readAll(fs, dst)).subarray(0, BS).equals(Buffer.alloc(BS, 0x11))).toBe(true);
    await fs.close();
    await expectClean();
  });

  test('copies of a reserved, never written range do not share a block that a write could hit in place', async () => {
    const fs = await container();
    const src = await newFile(fs, 'a');
    await fs.fallocate!(src, 0, 2 * BS, { mode: 'allocate', keepSize: false });
    const dst = await copyWhole(fs, src, 'b');
    await fs.write(src, Buffer.alloc(BS, 0x22), 0);
    await fs.write(dst, Buffer.alloc(BS, 0x33), BS);
    expect((await readAll(fs, src)).equals(Buffer.concat([Buffer.alloc(BS, 0x22), Buffer.alloc(BS)]))).toBe(true);
    expect((await readAll(fs, dst)).equals(Buffer.concat([Buffer.alloc(BS), Buffer.alloc(BS, 0x33)]))).toBe(true);
    await fs.close();
    await expectClean();
  });
});
