import { tempPool } from '../../support/temp-pool';
import { S_IFREG } from '../../../src/store/layer-store';

test('image, container, one-block copy-on-write, whiteout, changes and space figures', async () => {
  const { pool, remove } = await tempPool();
  try {
    const s = pool.store;
    await s.createLayer('img', { kind: 'image', building: true });
    let fs = await s.openLayer('img');
    const etc = await fs.mkdir(fs.rootIno, 'etc', { mode: 0o755, uid: 0, gid: 0 });
    const f = await fs.mknod(etc.ino, 'big', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    const big = Buffer.alloc(300 * 1024, 7);
    await fs.write(f.ino, big, 0);
    const small = await fs.mknod(etc.ino, 'small', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    await fs.write(small.ino, Buffer.from('hello'), 0);
    await fs.close();
    await s.sealLayer('img');
    await s.createLayer('c', { parent: 'img', kind: 'container' });
    fs = await s.openLayer('c');
    const a = await fs.resolve('/etc/big');
    expect(a.sizeBytes).toBe(300 * 1024);
    await fs.write(a.ino, Buffer.from('XYZ'), 100000);
    const back = Buffer.alloc(300 * 1024);
    expect(await fs.read(a.ino, back, 0)).toBe(300 * 1024);
    const exp = Buffer.from(big); Buffer.from('XYZ').copy(exp, 100000);
    expect(back.equals(exp)).toBe(true);
    await fs.unlink(etc.ino, 'small');
    expect(await fs.lookup(etc.ino, 'small')).toBeNull();
    expect((await fs.readdir(etc.ino)).map((e) => e.name)).toEqual(['big']);
    const changes = [];
    for await (const c of fs.changes()) changes.push([c.path, c.change]);
    expect(changes).toEqual([['/etc', 'modified'], ['/etc/big', 'modified'], ['/etc/small', 'deleted']]);
    await fs.close();
    const ls = await s.listLayers();
    expect(ls.map((l) => [l.name, l.exclusiveBytes, l.sharedBytes])).toEqual([
      ['base', 0, 0],
      ['img', 5 * 65536 + 5, 0], // 300 KiB: 4 full blocks + a 44 KiB tail block (over the 32 KiB inline limit); 'hello' inline
      ['c', 65536, 5 * 65536 + 5],
    ]);
    const chk = await pool.check();
    expect(chk.problems).toEqual([]);
  } finally {
    await remove();
  }
});
