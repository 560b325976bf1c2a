/**
 * fallocate's modes and SEEK_DATA / SEEK_HOLE in the store (FileSpace): contents against
 * a byte model, through the chain (image below, container above, commit, a container on
 * the committed image), with space accounting, `dmfs check` and dump/restore after each.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Pool } from '../../../src/api';
import { exportLayer } from '../../../src/image/exporter';
import { dumpMetadata, restoreMetadata } from '../../../src/store/dump';
import { S_IFREG, type FallocateHow, type LayerFs } from '../../../src/store/layer-store';
import { readAll } from '../../support/layer-read';
import { tempPool } from '../../support/temp-pool';

const BS = 65536;
const ALLOCATE: FallocateHow = { mode: 'allocate', keepSize: false };
const KEEP: FallocateHow = { mode: 'allocate', keepSize: true };
const PUNCH: FallocateHow = { mode: 'punch-hole', keepSize: true };
const ZERO: FallocateHow = { mode: 'zero-range', keepSize: false };
const COLLAPSE: FallocateHow = { mode: 'collapse-range', keepSize: false };
const INSERT: FallocateHow = { mode: 'insert-range', keepSize: false };

/** Deterministic non-zero bytes. */
function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  let x = seed * 2654435761 >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    b[i] = (x & 0xff) | 1;
  }
  return b;
}

async function newFile(l: LayerFs, name: string): Promise<number> {
  return (await l.mknod(l.rootIno, name, { mode: S_IFREG | 0o644, uid: 0, gid: 0 })).ino;
}

/** An image layer 'img' holding /f with `content`; returns f's inode. */
async function imageWith(pool: Pool, content: Buffer): Promise<number> {
  await pool.store.createLayer('img', { kind: 'image', building: true });
  const l = await pool.store.openLayer('img');
  const ino = await newFile(l, 'f');
  await l.write(ino, content, 0);
  await l.close();
  await pool.store.sealLayer('img');
  return ino;
}

/** A container 'c' on an image 'img' whose /f holds `content`, open for writing. */
async function containerOver(pool: Pool, content: Buffer): Promise<{ ino: number; l: LayerFs }> {
  const ino = await imageWith(pool, content);
  await pool.store.createLayer('c', { kind: 'container', parent: 'img' });
  return { ino, l: await pool.store.openLayer('c') };
}

/** Container 'c' is clean, commits as 'img2', and 'img2' reads `model` as /f's content and is clean too. */
async function expectCommitted(pool: Pool, ino: number, model: Buffer): Promise<void> {
  await expectClean(pool);
  await pool.store.commit('c', 'img2');
  const r = await pool.store.openLayer('img2', { readOnly: true });
  expect((await readAll(r, ino)).equals(model)).toBe(true);
  await r.close();
  await expectClean(pool);
}

/** Runs fn on a fresh pool, removed afterwards whatever happens. */
async function withPool(fn: (pool: Pool) => Promise<void>, opts?: Parameters<typeof tempPool>[0]): Promise<void> {
  const { pool, remove } = await tempPool(opts);
  try {
    await fn(pool);
  } finally {
    await remove();
  }
}

/** The content of `name` in the OCI layer tar `dmfs export LAYER` writes, extracted by tar(1). */
async function exportedFile(pool: Pool, layer: string, name: string): Promise<Buffer> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-export-'));
  try {
    const chunks: Buffer[] = [];
    await exportLayer(pool.store, layer, (c) => void chunks.push(Buffer.from(c)));
    fs.writeFileSync(path.join(dir, 'layer.tar'), Buffer.concat(chunks));
    fs.mkdirSync(path.join(dir, 'x'));
    execFileSync('tar', ['-xf', path.join(dir, 'layer.tar'), '-C', path.join(dir, 'x')]);
    return fs.readFileSync(path.join(dir, 'x', name));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function expectClean(pool: Pool): Promise<void> {
  const report = await pool.check({ data: true });
  expect(report.problems).toEqual([]);
}

function usedBlocks(pool: Pool): number {
  return pool.thinPool.space().usedBlocks;
}

describe('fallocate: reserving (mode 0, KEEP_SIZE)', () => {
  test('mode 0 extends the size and reads zeros; later writes there take no new block', () => withPool(async (pool) => {
    await pool.store.createLayer('c', { kind: 'container' });
    const l = await pool.store.openLayer('c');
    const ino = await newFile(l, 'f');
    const before = usedBlocks(pool);
    await l.fallocate!(ino, 1000, 3 * BS, ALLOCATE);
    const a = await l.getattr(ino);
    expect(a.sizeBytes).toBe(1000 + 3 * BS);
    expect(a.blocks512).toBe(Math.ceil((1000 + 3 * BS) / 4096) * 8);
    expect(usedBlocks(pool) - before).toBe(4);
    expect((await readAll(l, ino)).every((b) => b === 0)).toBe(true);
    // Writes into the reservation: no block taken, zeros around what was written.
    const data = pattern(5000, 1);
    await l.write(ino, data, BS + 300);
    await l.write(ino, pattern(10, 2), 0);
    expect(usedBlocks(pool) - before).toBe(4);
    const model = Buffer.alloc(1000 + 3 * BS);
    data.copy(model, BS + 300);
    pattern(10, 2).copy(model, 0);
    expect((await readAll(l, ino)).equals(model)).toBe(true);
    await l.close();
    await expectClean(pool);
    // Reopened, the same.
    const r = await pool.store.openLayer('c', { readOnly: true });
    expect((await readAll(r, ino)).equals(model)).toBe(true);
    await r.close();
  }));

  test('KEEP_SIZE reserves past the end without changing the size; truncate up shows zeros, down frees', () => withPool(async (pool) => {
    await pool.store.createLayer('c', { kind: 'container' });
    const l = await pool.store.openLayer('c');
    const ino = await newFile(l, 'f');
    await l.write(ino, pattern(100, 3), 0);
    const before = usedBlocks(pool);
    await l.fallocate!(ino, 0, 4 * BS, KEEP);
    expect((await l.getattr(ino)).sizeBytes).toBe(100);
    expect(usedBlocks(pool) - before).toBe(4); // the inline tail became a block too
    expect((await readAll(l, ino)).equals(pattern(100, 3))).toBe(true);
    await l.setattr(ino, { sizeBytes: 3 * BS });
    const grown = await readAll(l, ino);
    expect(grown.subarray(0, 100).equals(pattern(100, 3))).toBe(true);
    expect(grown.subarray(100).every((b) => b === 0)).toBe(true);
    await l.setattr(ino, { sizeBytes: 50 });
    expect(usedBlocks(pool)).toBeLessThanOrEqual(before);
    await l.close();
    await expectClean(pool);
  }));

  test('over a lower file, the container gets its own copies (content kept), so later writes copy nothing', () => withPool(async (pool) => {
    const content = pattern(3 * BS + 777, 4);
    const { ino, l } = await containerOver(pool, content);
    const before = usedBlocks(pool);
    await l.fallocate!(ino, 0, 5 * BS, KEEP);
    expect(usedBlocks(pool) - before).toBe(5);
    expect((await readAll(l, ino)).equals(content)).toBe(true);
    await l.write(ino, pattern(9, 5), 2 * BS + 1);
    expect(usedBlocks(pool) - before).toBe(5);
    pattern(9, 5).copy(content, 2 * BS + 1);
    expect((await readAll(l, ino)).equals(content)).toBe(true);
    await l.close();
    await expectClean(pool);
  }));

  test('no room: LAYER_FULL / POOL_FULL, and nothing is left reserved', () => withPool(async (pool) => {
    await pool.store.createLayer('small', { kind: 'container', sizeLimitBytes: 16 * BS });
    const l = await pool.store.openLayer('small');
    const ino = await newFile(l, 'f');
    const before = usedBlocks(pool);
    await expect(l.fallocate!(ino, 0, 17 * BS, KEEP)).rejects.toMatchObject({ code: 'FILE_TOO_BIG' });
    await l.write(ino, pattern(10 * BS, 6), 0);
    const other = await newFile(l, 'g');
    await expect(l.fallocate!(other, 0, 8 * BS, ALLOCATE)).rejects.toMatchObject({ code: 'LAYER_FULL', errno: 28 });
    expect(usedBlocks(pool) - before).toBe(10);
    expect((await l.getattr(other)).sizeBytes).toBe(0);
    expect((await l.getattr(other)).blocks512).toBe(0);
    await l.fallocate!(other, 0, 5 * BS, ALLOCATE);
    expect(usedBlocks(pool) - before).toBe(15);
    await l.close();

    await pool.store.createLayer('big', { kind: 'container', sizeLimitBytes: 1024 ** 3 });
    const b = await pool.store.openLayer('big');
    const g = await newFile(b, 'g');
    const used = usedBlocks(pool);
    await expect(b.fallocate!(g, 0, 2000 * BS, ALLOCATE)).rejects.toMatchObject({ code: 'POOL_FULL', errno: 28 });
    expect(usedBlocks(pool)).toBe(used);
    expect((await b.getattr(g)).sizeBytes).toBe(0);
    await b.close();
    await expectClean(pool);
  }, { sizeBytes: 64 * 1024 ** 2, options: ['dm.min_free_space=0'] }));
});

describe('fallocate: punching and zeroing', () => {
  test('punch in a file of the layer: partial blocks zeroed, whole ones freed, size kept', () => withPool(async (pool) => {
    await pool.store.createLayer('c', { kind: 'container' });
    const l = await pool.store.openLayer('c');
    const ino = await newFile(l, 'f');
    const model = pattern(6 * BS + 123, 7);
    await l.write(ino, model, 0);
    const before = usedBlocks(pool);
    await l.fallocate!(ino, BS / 2, 3 * BS, PUNCH); // [0.5, 3.5) blocks: 1 and 2 whole
    model.fill(0, BS / 2, BS / 2 + 3 * BS);
    expect(before - usedBlocks(pool)).toBe(2);
    expect((await l.getattr(ino)).sizeBytes).toBe(model.length);
    expect((await readAll(l, ino)).equals(model)).toBe(true);
    // Past the end: nothing changes; over the end: the tail is dropped, the size stays.
    await l.fallocate!(ino, 10 * BS, BS, PUNCH);
    await l.fallocate!(ino, 5 * BS, 4 * BS, PUNCH);
    model.fill(0, 5 * BS);
    expect((await readAll(l, ino)).equals(model)).toBe(true);
    await expect(l.fallocate!(ino, 0, BS, { mode: 'punch-hole', keepSize: false })).rejects.toMatchObject({ code: 'NOT_SUPPORTED' });
    await l.close();
    await expectClean(pool);
  }));

  test('a punched range over a lower file reads zeros in the container, after commit, and in a container on the commit', () => withPool(async (pool) => {
    const model = pattern(5 * BS + 999, 8);
    const { ino, l } = await containerOver(pool, model);
    await l.fallocate!(ino, BS - 10, 3 * BS + 20, PUNCH); // partial 0 and 4, whole 1..3
    model.fill(0, BS - 10, 4 * BS + 10);
    expect((await readAll(l, ino)).equals(model)).toBe(true);
    expect(await l.seekData!(ino, 0, 'hole')).toBe(BS);
    expect(await l.seekData!(ino, BS, 'data')).toBe(4 * BS);
    await l.close();
    await expectClean(pool);
    // Export of the container's changes carries the punched file as it reads: zeros there.
    expect((await exportedFile(pool, 'c', 'f')).equals(model)).toBe(true);

    await pool.store.commit('c', 'img2');
    await pool.store.createLayer('c2', { kind: 'container', parent: 'img2' });
    for (const name of ['img2', 'c', 'c2']) {
      const r = await pool.store.openLayer(name, { readOnly: true });
      expect({ name, same: (await readAll(r, ino)).equals(model) }).toEqual({ name, same: true });
      await r.close();
    }
    // The image below still has its bytes.
    const below = await pool.store.openLayer('img', { readOnly: true });
    expect((await readAll(below, ino)).subarray(2 * BS, 3 * BS).equals(pattern(5 * BS + 999, 8).subarray(2 * BS, 3 * BS))).toBe(true);
    await below.close();
    // A write into a punched block of the lower image copies zeros, not the old bytes.
    const w = await pool.store.openLayer('c2');
    await w.write(ino, Buffer.from('xy'), 2 * BS + 7);
    Buffer.from('xy').copy(model, 2 * BS + 7);
    expect((await readAll(w, ino)).equals(model)).toBe(true);
    await w.close();
    await expectClean(pool);

    // dump / restore keep the punched entries.
    const dump = JSON.parse(JSON.stringify(dumpMetadata(pool.thinPool)));
    await restoreMetadata(pool.thinPool, dump);
    await expectClean(pool);
    const back = await pool.store.openLayer('img2', { readOnly: true });
    const again = await readAll(back, ino);
    expect(again.subarray(BS, 4 * BS).every((b) => b === 0)).toBe(true);
    await back.close();
  }));

  test('zero-range: zeros that stay allocated; mode 0 grows the size', () => withPool(async (pool) => {
    const model = pattern(3 * BS, 9);
    const { ino, l } = await containerOver(pool, model);
    const before = usedBlocks(pool);
    await l.fallocate!(ino, 100, 4 * BS, ZERO);
    const grown = Buffer.alloc(100 + 4 * BS);
    model.copy(grown);
    grown.fill(0, 100);
    expect((await l.getattr(ino)).sizeBytes).toBe(grown.length);
    expect((await readAll(l, ino)).equals(grown)).toBe(true);
    expect(usedBlocks(pool) - before).toBe(5); // every block of the range is the container's own
    expect(await l.seekData!(ino, 0, 'hole')).toBe(BS);
    await expect(l.seekData!(ino, BS, 'data')).rejects.toMatchObject({ code: 'PAST_END_OF_FILE', errno: 6 });
    await l.close();
    await expectClean(pool);
  }));
});

describe('fallocate: collapse and insert', () => {
  test('rules as ext4: block multiples, before the end of the file', () => withPool(async (pool) => {
    await pool.store.createLayer('c', { kind: 'container' });
    const l = await pool.store.openLayer('c');
    const ino = await newFile(l, 'f');
    await l.write(ino, pattern(4 * BS, 10), 0);
    await expect(l.fallocate!(ino, 4096, BS, COLLAPSE)).rejects.toMatchObject({ code: 'INVALID' });
    await expect(l.fallocate!(ino, 0, 4096, INSERT)).rejects.toMatchObject({ code: 'INVALID' });
    await expect(l.fallocate!(ino, 2 * BS, 2 * BS, COLLAPSE)).rejects.toMatchObject({ code: 'INVALID' });
    await expect(l.fallocate!(ino, 4 * BS, BS, INSERT)).rejects.toMatchObject({ code: 'INVALID' });
    await expect(l.fallocate!(ino, 0, BS, { mode: 'collapse-range', keepSize: true })).rejects.toMatchObject({ code: 'INVALID' });
    expect((await readAll(l, ino)).equals(pattern(4 * BS, 10))).toBe(true);
    await l.close();
  }));

  test('shifts own and lower blocks, through commit', () => withPool(async (pool) => {
    let model = pattern(6 * BS + 500, 11);
    const { ino, l } = await containerOver(pool, model);
    await l.write(ino, pattern(10, 12), 3 * BS + 5); // block 3 is the container's own
    pattern(10, 12).copy(model, 3 * BS + 5);
    await l.fallocate!(ino, BS, 2 * BS, COLLAPSE);
    model = Buffer.concat([model.subarray(0, BS), model.subarray(3 * BS)]);
    expect((await readAll(l, ino)).equals(model)).toBe(true);
    await l.fallocate!(ino, 2 * BS, 3 * BS, INSERT);
    model = Buffer.concat([model.subarray(0, 2 * BS), Buffer.alloc(3 * BS), model.subarray(2 * BS)]);
    expect((await readAll(l, ino)).equals(model)).toBe(true);
    expect(await l.seekData!(ino, 2 * BS, 'data')).toBe(5 * BS);
    await l.close();
    await expectCommitted(pool, ino, model);
  }));
});

describe('SEEK_DATA / SEEK_HOLE', () => {
  test('answers from the chain, unwritten blocks are holes, ENXIO at the end', () => withPool(async (pool) => {
    await pool.store.createLayer('img', { kind: 'image', building: true });
    const i = await pool.store.openLayer('img');
    const ino = await newFile(i, 'f');
    await i.write(ino, pattern(10, 13), 4 * BS + 3);
    await i.setattr(ino, { sizeBytes: 20 * BS });
    await i.close();
    await pool.store.sealLayer('img');
    await pool.store.createLayer('c', { kind: 'container', parent: 'img' });
    const l = await pool.store.openLayer('c');
    await l.write(ino, pattern(10, 14), 10 * BS);
    await l.fallocate!(ino, 12 * BS, 2 * BS, KEEP);
    expect(await l.seekData!(ino, 0, 'data')).toBe(4 * BS);
    expect(await l.seekData!(ino, 4 * BS + 9, 'data')).toBe(4 * BS + 9);
    expect(await l.seekData!(ino, 0, 'hole')).toBe(0);
    expect(await l.seekData!(ino, 4 * BS + 1, 'hole')).toBe(5 * BS);
    expect(await l.seekData!(ino, 5 * BS, 'data')).toBe(10 * BS);
    expect(await l.seekData!(ino, 11 * BS, 'hole')).toBe(11 * BS);
    await expect(l.seekData!(ino, 11 * BS, 'data')).rejects.toMatchObject({ code: 'PAST_END_OF_FILE' });
    await expect(l.seekData!(ino, 20 * BS, 'hole')).rejects.toMatchObject({ code: 'PAST_END_OF_FILE' });
    // A tail in the last block is data up to the end.
    await l.write(ino, pattern(3, 15), 20 * BS - 3);
    expect(await l.seekData!(ino, 15 * BS, 'data')).toBe(19 * BS);
    expect(await l.seekData!(ino, 19 * BS, 'hole')).toBe(20 * BS);
    await expect(l.seekData!(l.rootIno, 0, 'data')).rejects.toMatchObject({ code: 'IS_DIR' });
    await l.close();
  }));
});

test('SEEK_DATA over a map that lost an entry is EIO, not a hole', () => withPool(async (pool) => {
  const ino = await imageWith(pool, pattern(4 * BS, 16));
  const bmap = pool.thinPool.table('bmap');
  const lost = [...bmap.keys([0], [Number.MAX_SAFE_INTEGER])].find((k) => (k as number[])[1] === ino && (k as number[])[2] === 2);
  expect(lost).toBeDefined();
  pool.thinPool.txn(() => bmap.del(lost as number[]));
  await pool.store.createLayer('c', { kind: 'container', parent: 'img' });
  const l = await pool.store.openLayer('c');
  await expect(l.seekData!(ino, 2 * BS, 'data')).rejects.toMatchObject({ code: 'METADATA_CORRUPT', errno: 5 });
  await expect(l.seekData!(ino, 0, 'hole')).rejects.toMatchObject({ code: 'METADATA_CORRUPT' });
  await l.close();
}));

describe('random fallocate, write and truncate against a byte model', () => {
  test.each([1, 2, 3])('seed %i: a container over an image, then committed', (seed) => withPool(async (pool) => {
    let model = pattern(5 * BS + 1234, seed);
    const { ino, l } = await containerOver(pool, model);
    let x = seed;
    const rnd = (n: number): number => {
      x = (x * 1103515245 + 12345) % 2147483648;
      return x % n;
    };
    const MAX = 12 * BS;
    for (let op = 0; op < 120; op++) {
      const kind = rnd(8);
      const off = rnd(MAX);
      const len = 1 + rnd(3 * BS);
      const what = `op ${op} kind ${kind} off ${off} len ${len} size ${model.length}`;
      const grow = (to: number) => { if (model.length < to) model = Buffer.concat([model, Buffer.alloc(to - model.length)]); };
      if (kind === 0) {
        const d = pattern(len, op + seed * 1000);
        await l.write(ino, d, off);
        grow(off + len);
        d.copy(model, off);
      } else if (kind === 1) {
        await l.setattr(ino, { sizeBytes: off });
        model = model.length > off ? model.subarray(0, off) : Buffer.concat([model, Buffer.alloc(off - model.length)]);
      } else if (kind === 2) {
        await l.fallocate!(ino, off, len, PUNCH);
        if (off < model.length) model.fill(0, off, Math.min(model.length, off + len));
      } else if (kind === 3) {
        const keepSize = rnd(2) === 0;
        await l.fallocate!(ino, off, len, { mode: 'zero-range', keepSize });
        if (!keepSize) grow(off + len);
        if (off < model.length) model.fill(0, off, Math.min(model.length, off + len));
      } else if (kind === 4) {
        const keepSize = rnd(2) === 0;
        await l.fallocate!(ino, off, len, { mode: 'allocate', keepSize });
        if (!keepSize) grow(off + len);
      } else if (kind === 5 || kind === 6) {
        const s = Math.floor(off / BS);
        const n = 1 + rnd(2);
        const sizeOk = kind === 5 ? (s + n) * BS < model.length : s * BS < model.length;
        const p = l.fallocate!(ino, s * BS, n * BS, kind === 5 ? COLLAPSE : INSERT);
        if (!sizeOk) {
          await expect(p).rejects.toMatchObject({ code: 'INVALID' });
          continue;
        }
        await p;
        model = kind === 5
          ? Buffer.concat([model.subarray(0, s * BS), model.subarray((s + n) * BS)])
          : Buffer.concat([model.subarray(0, s * BS), Buffer.alloc(n * BS), model.subarray(s * BS)]);
      } else if (model.length > 0) {
        const at = rnd(model.length);
        const data = await l.seekData!(ino, at, 'data').catch((e: { code: string }) => e.code);
        const hole = await l.seekData!(ino, at, 'hole');
        // SEEK_HOLE: the end of the file, or a position at or past `at` whose block reads only zeros.
        const holeBlock = model.subarray(Math.floor(hole / BS) * BS, Math.floor(hole / BS) * BS + BS);
        const holeOk = hole >= at && (hole === model.length || (hole < model.length && holeBlock.every((b) => b === 0)));
        expect({ what, hole, holeOk }).toEqual({ what, hole, holeOk: true });
        // SEEK_DATA: no non-zero byte is skipped.
        const skippedTo = typeof data === 'number' ? data : model.length;
        expect({ what, skipped: model.subarray(at, skippedTo).some((b) => b !== 0) }).toEqual({ what, skipped: false });
      }
      const got = await readAll(l, ino);
      expect({ what, size: got.length }).toEqual({ what, size: model.length });
      if (!got.equals(model)) throw new Error(`content differs after ${what}`);
    }
    await l.close();
    await expectCommitted(pool, ino, model);
  }));
});
