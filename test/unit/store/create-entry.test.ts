/**
 * LayerFs.createEntries (what an import writes, a run of entries at a time): nodes with
 * their content, times and mode in one metadata transaction; read back as mknod + write +
 * setattr would leave them; a failure of any entry leaves no name, no block taken and a
 * clean check.
 */
import { Pool } from '../../../src/api';
import { S_IFCHR, S_IFIFO, S_IFREG, type Attr, type LayerFs, type NewEntry } from '../../../src/store/layer-store';
import { readAll } from '../../support/layer-read';
import { tempPool } from '../../support/temp-pool';

const BS = 65536;
const T = 1_600_000_000_123_456_789n;

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed + (i >> 9)) & 0xff;
  return b;
}

async function withLayer(fn: (pool: Pool, l: LayerFs) => Promise<void>, sizeLimitBytes?: number): Promise<void> {
  const { pool, remove } = await tempPool({ sizeBytes: 64 * 1024 ** 2, options: ['dm.min_free_space=0'] });
  try {
    await pool.store.createLayer('img', { kind: 'image', building: true, ...(sizeLimitBytes ? { sizeLimitBytes } : {}) });
    const l = await pool.store.openLayer('img');
    try {
      await fn(pool, l);
    } finally {
      await l.close();
    }
    expect((await pool.check({ data: true })).problems).toEqual([]);
  } finally {
    await remove();
  }
}

const usedBlocks = (pool: Pool): number => pool.thinPool.space().usedBlocks;

async function createOne(l: LayerFs, name: string, entry: NewEntry): Promise<Attr> {
  const [a] = await l.createEntries!([{ dirIno: l.rootIno, name, entry }]);
  return a;
}

describe('createEntries', () => {
  test.each([
    ['empty', 0],
    ['inline only', 100],
    ['one whole block', BS],
    ['blocks and an inline tail', 3 * BS + 1000],
    ['blocks and a tail too big to inline', 2 * BS + BS / 2 + 1],
  ])('a regular file (%s) reads back as written, born with its mode and times', (_label, size) => withLayer(async (pool, l) => {
    const content = pattern(size, size);
    const before = usedBlocks(pool);
    const a = await createOne(l, 'f', { mode: S_IFREG | 0o4750, uid: 7, gid: 8, mtimeNs: T, atimeNs: T + 5n, content });
    expect(a).toMatchObject({ kind: 'file', sizeBytes: size, mode: S_IFREG | 0o4750, uid: 7, gid: 8, mtimeNs: T, atimeNs: T + 5n, nlink: 1 });
    expect((await l.lookup(l.rootIno, 'f'))?.ino).toBe(a.ino);
    expect((await readAll(l, a.ino)).equals(content)).toBe(true);
    // The same layout write() makes: whole blocks, and the tail in a block unless it is small.
    const tailBytes = size % BS;
    const blocks = Math.floor(size / BS) + (tailBytes > BS / 2 ? 1 : 0);
    expect(usedBlocks(pool) - before).toBe(blocks);
    const viaWrite = await l.mknod(l.rootIno, 'g', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    if (size > 0) await l.write(viaWrite.ino, content, 0);
    expect((await l.getattr(viaWrite.ino)).blocks512).toBe((await l.getattr(a.ino)).blocks512);
  }));

  test('symlinks, devices and fifos, with their times', () => withLayer(async (_pool, l) => {
    const s = await createOne(l, 's', { mode: 0o777, uid: 1, gid: 1, mtimeNs: T, atimeNs: T, target: '../t' });
    expect(s).toMatchObject({ kind: 'symlink', sizeBytes: 4, mtimeNs: T });
    expect(await l.readlink(s.ino)).toBe('../t');
    const c = await createOne(l, 'null', { mode: S_IFCHR | 0o666, uid: 0, gid: 0, rdev: 0x103, mtimeNs: T, atimeNs: T });
    expect(c).toMatchObject({ kind: 'chardev', rdev: 0x103, mtimeNs: T });
    const f = await createOne(l, 'fifo', { mode: S_IFIFO | 0o600, uid: 0, gid: 0, mtimeNs: T, atimeNs: T });
    expect(f.kind).toBe('fifo');
    await expect(createOne(l, 'x', { mode: S_IFIFO | 0o600, uid: 0, gid: 0, mtimeNs: T, atimeNs: T, content: Buffer.from('no') }))
      .rejects.toMatchObject({ code: 'INVALID' });
  }));

  test('a failure leaves no name and no block taken: EXISTS, LAYER_FULL, FILE_TOO_BIG', () => withLayer(async (pool, l) => {
    const opts = { mode: S_IFREG | 0o644, uid: 0, gid: 0, mtimeNs: T, atimeNs: T };
    await createOne(l, 'a', { ...opts, content: pattern(2 * BS, 1) });
    const used = usedBlocks(pool);
    await expect(createOne(l, 'a', { ...opts, content: pattern(3 * BS, 2) })).rejects.toMatchObject({ code: 'EXISTS' });
    expect(usedBlocks(pool)).toBe(used);
    expect((await readAll(l, (await l.lookup(l.rootIno, 'a'))!.ino)).equals(pattern(2 * BS, 1))).toBe(true);
    // 2 blocks used of a 4-block limit: 3 more do not fit.
    await expect(createOne(l, 'b', { ...opts, content: pattern(3 * BS, 3) })).rejects.toMatchObject({ code: 'LAYER_FULL' });
    await expect(createOne(l, 'c', { ...opts, content: pattern(5 * BS, 4) })).rejects.toMatchObject({ code: 'FILE_TOO_BIG' });
    expect(usedBlocks(pool)).toBe(used);
    expect(await l.lookup(l.rootIno, 'b')).toBeNull();
    expect(await l.lookup(l.rootIno, 'c')).toBeNull();
    expect((await l.readdir(l.rootIno)).map((e) => e.name)).toEqual(['a']);
  }, 4 * BS));

  test('a run of entries is all or nothing: a name taken within the run fails it whole', () => withLayer(async (pool, l) => {
    const opts = { mode: S_IFREG | 0o644, uid: 0, gid: 0, mtimeNs: T, atimeNs: T };
    const dir = await l.mkdir(l.rootIno, 'd', { mode: 0o755, uid: 0, gid: 0 });
    const made = await l.createEntries!([
      { dirIno: l.rootIno, name: 'x', entry: { ...opts, content: pattern(BS + 7, 1) } },
      { dirIno: dir.ino, name: 'y', entry: { ...opts, content: pattern(10, 2) } },
      { dirIno: dir.ino, name: 'z', entry: { ...opts, mode: 0o777, target: 'y' } },
    ]);
    expect(made.map((a) => a.kind)).toEqual(['file', 'file', 'symlink']);
    expect((await readAll(l, (await l.resolve('/d/y')).ino)).equals(pattern(10, 2))).toBe(true);
    expect((await l.getattr(dir.ino)).nlink).toBe(2);
    const used = usedBlocks(pool);
    await expect(l.createEntries!([
      { dirIno: l.rootIno, name: 'p', entry: { ...opts, content: pattern(2 * BS, 3) } },
      { dirIno: l.rootIno, name: 'q', entry: { ...opts, content: pattern(BS, 4) } },
      { dirIno: l.rootIno, name: 'p', entry: { ...opts, content: pattern(BS, 5) } },
    ])).rejects.toMatchObject({ code: 'EXISTS' });
    expect(usedBlocks(pool)).toBe(used);
    expect((await l.readdir(l.rootIno)).map((e) => e.name)).toEqual(['d', 'x']);
  }));
});
