import { S_IFREG } from '../../../src/store/layer-store';
import { dumpMetadata, restoreMetadata } from '../../../src/store/dump';
import { tempPool } from '../../support/temp-pool';

test('dump, wreck the metadata, restore: the layers read back and check is clean', async () => {
  const { pool, remove } = await tempPool();
  try {
    await pool.store.createLayer('img', { kind: 'image', building: true });
    const l = await pool.store.openLayer('img');
    const f = await l.mknod(l.rootIno, 'big', { mode: S_IFREG | 0o644, uid: 1, gid: 2 });
    await l.write(f.ino, Buffer.alloc(200000, 4), 0);
    await l.setxattr(f.ino, 'user.k', Buffer.from([0, 1, 2]));
    const s = await l.mknod(l.rootIno, 'small', { mode: S_IFREG | 0o600, uid: 0, gid: 0 });
    await l.write(s.ino, Buffer.from('tiny'), 0);
    await l.close();
    await pool.store.sealLayer('img');
    await pool.store.createLayer('c', { kind: 'container', parent: 'img' });
    const c = await pool.store.openLayer('c');
    await c.unlink(c.rootIno, 'small');
    await c.close();

    const dump = JSON.parse(JSON.stringify(dumpMetadata(pool.thinPool)));
    expect(dump.layers.map((x: { name: string }) => x.name)).toEqual(['base', 'img', 'c']);
    // Wreck: drop every inode record and block mapping.
    pool.thinPool.txn(() => {
      for (const name of ['inodes', 'bmap']) {
        const t = pool.thinPool.table(name);
        for (const k of [...t.allKeys()]) t.del(k);
      }
    });
    expect((await pool.check()).ok).toBe(false);
    await restoreMetadata(pool.thinPool, dump);
    expect((await pool.check({ data: true })).problems).toEqual([]);
    const back = await pool.store.openLayer('c', { readOnly: true });
    const a = await back.resolve('/big');
    const buf = Buffer.alloc(200000);
    await back.read(a.ino, buf, 0);
    expect(buf.every((b) => b === 4)).toBe(true);
    expect(await back.getxattr(a.ino, 'user.k')).toEqual(Buffer.from([0, 1, 2]));
    expect(await back.lookup(back.rootIno, 'small')).toBeNull();
    await back.close();
    await expect(restoreMetadata(pool.thinPool, { ...dump, partial: true })).rejects.toMatchObject({ code: 'INVALID' });
    await expect(restoreMetadata(pool.thinPool, {} as never)).rejects.toMatchObject({ code: 'BAD_IMAGE' });
  } finally {
    await remove();
  }
});
