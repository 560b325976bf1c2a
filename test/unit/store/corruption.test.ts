import * as fs from 'node:fs';
import { Pool } from '../../../src/api';
import { S_IFREG } from '../../../src/store/layer-store';
import { unpackBlockRef, isDataRef } from '../../../src/store/records';
import { tempPool } from '../../support/temp-pool';

async function imageWithFile(pool: Pool, content: Buffer): Promise<number> {
  await pool.store.createLayer('img', { kind: 'image', building: true });
  const l = await pool.store.openLayer('img');
  const f = await l.mknod(l.rootIno, 'data', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
  await l.write(f.ino, content, 0);
  await l.close();
  await pool.store.sealLayer('img');
  return f.ino;
}

test('a damaged data block reads as EIO (DATA_CORRUPT) and check --data names it', async () => {
  const { pool, root, remove } = await tempPool();
  try {
    const content = Buffer.alloc(256 * 1024, 5);
    const ino = await imageWithFile(pool, content);
    // Find the data block behind file block 2 and flip one byte of it on disk.
    let target = -1;
    for (const { key, value } of pool.thinPool.table('bmap').range([0], [Number.MAX_SAFE_INTEGER])) {
      const ref = unpackBlockRef(value);
      if ((key as number[])[1] === ino && (key as number[])[2] === 2 && isDataRef(ref)) target = ref.block;
    }
    expect(target).toBeGreaterThanOrEqual(0);
    await pool.close();
    const fd = fs.openSync(`${root}/data/data-file`, 'r+');
    fs.writeSync(fd, Buffer.from([0xff]), 0, 1, target * 65536 + 1000);
    fs.closeSync(fd);

    const again = await Pool.open(root);
    try {
      const l = await again.store.openLayer('img');
      const buf = Buffer.alloc(4096);
      expect(await l.read(ino, buf, 0)).toBe(4096); // an intact block still reads
      // Byte 1000 lies in the block's first 4 KiB sector: reads covering it fail, the block's other sectors still read.
      await expect(l.read(ino, buf, 2 * 65536)).rejects.toMatchObject({ code: 'DATA_CORRUPT', errno: 5 });
      expect(await l.read(ino, buf, 2 * 65536 + 4096)).toBe(4096);
      await l.close();
      const report = await again.check({ data: true });
      expect(report.ok).toBe(false);
      expect(report.problems).toEqual([
        expect.objectContaining({ kind: 'DATA_CORRUPT', message: expect.stringContaining(`data block ${target} (layer img, inode ${ino}, file block 2)`) }),
      ]);
      expect((await again.check()).ok).toBe(true); // without --data the metadata is fine
    } finally {
      await again.close();
    }
  } finally {
    await remove();
  }
});

test('a damaged metadata record is METADATA_CORRUPT on use and reported by check', async () => {
  const { pool, remove } = await tempPool();
  try {
    const ino = await imageWithFile(pool, Buffer.from('hello'));
    const inodes = pool.thinPool.table('inodes');
    let key: unknown = null;
    for (const e of inodes.range([0], [Number.MAX_SAFE_INTEGER])) if ((e.key as number[])[1] === ino) key = e.key;
    pool.thinPool.txn(() => {
      const raw = Buffer.from(inodes.get(key as number[])!);
      raw[3] ^= 0x40;
      inodes.put(key as number[], raw);
    });
    const l = await pool.store.openLayer('img');
    await expect(l.getattr(ino)).rejects.toMatchObject({ code: 'METADATA_CORRUPT', errno: 5 });
    await l.close();
    const report = await pool.check();
    expect(report.ok).toBe(false);
    expect(report.problems.map((p) => p.kind)).toContain('CORRUPT_RECORD');
    expect(report.problems.find((p) => p.kind === 'CORRUPT_RECORD')!.message).toMatch(new RegExp(`inode \\d+:${ino}`));
  } finally {
    await remove();
  }
});
