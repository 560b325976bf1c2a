/**
 * A hole is not a lost block-map entry: a file whose segment's inode record counts more
 * entries than its map holds reads EIO (METADATA_CORRUPT) where an entry is missing,
 * never zeros; check reports the inode and does not call the orphaned block "leaked"
 * (and check --repair does not free it).
 */
import { Pool } from '../../../src/api';
import { S_IFREG } from '../../../src/store/layer-store';
import { bmapKey, isDataRef, unpackBlockRef } from '../../../src/store/records';
import { tempPool } from '../../support/temp-pool';

const BS = 65536;

async function imageWithFile(pool: Pool, content: Buffer): Promise<number> {
  await pool.store.createLayer('img', { kind: 'image', building: true });
  const l = await pool.store.openLayer('img');
  const f = await l.mknod(l.rootIno, 'data', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
  await l.write(f.ino, content, 0);
  await l.close();
  await pool.store.sealLayer('img');
  return f.ino;
}

/** Deletes the block-map entry of file block `fileBlock` behind the store's back (a damaged key does this). */
function loseEntry(pool: Pool, ino: number, fileBlock: number): number {
  const bmap = pool.thinPool.table('bmap');
  for (const { key, value } of bmap.range([0], [Number.MAX_SAFE_INTEGER])) {
    const [seg, i, b] = key as number[];
    if (i === ino && b === fileBlock) {
      const ref = unpackBlockRef(value);
      pool.thinPool.txn(() => bmap.del(bmapKey(seg, i, b)));
      return isDataRef(ref) ? ref.block : -1;
    }
  }
  throw new Error('entry not found');
}

test('a file whose map lost an entry reads EIO there, not zeros; its other blocks and a real hole still read', async () => {
  const { pool, remove } = await tempPool();
  try {
    const content = Buffer.alloc(4 * BS, 7);
    const ino = await imageWithFile(pool, content);
    // A sparse file in the same layer: holes that are holes.
    await pool.store.createLayer('ctr', { parent: 'img', kind: 'container' });
    let l = await pool.store.openLayer('ctr');
    const sparse = await l.mknod(l.rootIno, 'sparse', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    await l.write(sparse.ino, Buffer.alloc(100, 1), 3 * BS);
    await l.close();

    const lostBlock = loseEntry(pool, ino, 2);
    expect(lostBlock).toBeGreaterThanOrEqual(0);

    for (const name of ['img', 'ctr']) {
      l = await pool.store.openLayer(name, { readOnly: true });
      const buf = Buffer.alloc(BS);
      expect(await l.read(ino, buf, 0)).toBe(BS);
      expect(buf.equals(content.subarray(0, BS))).toBe(true);
      await expect(l.read(ino, buf, 2 * BS)).rejects.toMatchObject({ code: 'METADATA_CORRUPT', errno: 5 });
      expect(buf.every((b) => b === 0 || b === 7)).toBe(true);
      if (name === 'ctr') {
        // Holes of an intact map still read as zeros.
        const hole = Buffer.alloc(BS, 9);
        expect(await l.read(sparse.ino, hole, 0)).toBe(BS);
        expect(hole.every((b) => b === 0)).toBe(true);
      }
      await l.close();
    }

    // A writable layer must not copy the lost block up as zeros either.
    l = await pool.store.openLayer('ctr');
    await expect(l.write(ino, Buffer.alloc(10, 1), 2 * BS + 5)).rejects.toMatchObject({ code: 'METADATA_CORRUPT' });
    await l.close();

    const report = await pool.check();
    expect(report.ok).toBe(false);
    const kinds = report.problems.map((p) => p.kind);
    expect(kinds).toContain('MAP_ENTRIES_LOST');
    expect(kinds).toContain('UNREFERENCED_DATA');
    expect(kinds).not.toContain('LEAKED_BLOCK');
    // The block the lost entry mapped is named, and kept.
    expect(report.problems.find((p) => p.kind === 'UNREFERENCED_DATA')?.message).toMatch(new RegExp(`\\(([0-9]+, )*${lostBlock}[,)].*may belong to damaged records.*: kept`));
    // Repair fixes what it can but never frees a block damaged metadata may reference.
    await pool.check({ repair: true });
    expect(pool.thinPool.isBlockUsed(lostBlock as never)).toBe(true);
  } finally {
    await remove();
  }
});

test('an intact map counts once: holes in a file written in this layer read as zeros across writes', async () => {
  const { pool, remove } = await tempPool();
  try {
    await pool.store.createLayer('c', { kind: 'container' });
    const l = await pool.store.openLayer('c');
    const f = await l.mknod(l.rootIno, 'f', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    await l.write(f.ino, Buffer.alloc(BS, 1), 7 * BS); // size 8 blocks, blocks 0-6 holes
    for (let i = 0; i < 6; i += 2) {
      await l.write(f.ino, Buffer.alloc(BS, i + 1), i * BS);
      const hole = Buffer.alloc(BS, 0xee);
      expect(await l.read(f.ino, hole, (i + 1) * BS)).toBe(BS);
      expect(hole.every((b) => b === 0)).toBe(true);
    }
    await l.setattr(f.ino, { sizeBytes: 3 * BS + 10 });
    const tail = Buffer.alloc(BS, 0xee);
    expect(await l.read(f.ino, tail, 3 * BS)).toBe(10);
    expect(tail.subarray(0, 10).every((b) => b === 0)).toBe(true);
    await l.close();
    expect((await pool.check()).ok).toBe(true);
  } finally {
    await remove();
  }
});
