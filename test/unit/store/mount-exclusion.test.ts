/**
 * The store's mount registration (ThinLayerStore.assertNoConflict): a mount caches what
 * it serves, so a layer mounted read-write has no second mount and a mounted layer no
 * other writer. Here within one process (opens and claimMount); across processes through
 * the CLI in test/integration/mount-exclusive.test.ts.
 */
import { Pool } from '../../../src/api';
import { S_IFREG } from '../../../src/store/layer-store';
import { tempPool } from '../../support/temp-pool';

describe('mount registration in the holders table', () => {
  let pool: Pool;
  let remove: () => Promise<void>;
  beforeEach(async () => {
    ({ pool, remove } = await tempPool({ sizeBytes: 256 * 1024 ** 2 }));
    await pool.store.createLayer('img', { kind: 'image' });
    await pool.store.createLayer('c1', { kind: 'container', parent: 'img' });
  });
  afterEach(async () => remove());

  test('a container mounted read-write refuses a second mount, read-only or not, until it is unmounted', async () => {
    const rw = await pool.store.openLayer('c1', { mountpoint: '/mnt/a' });
    expect(rw.readOnly).toBe(false);
    await expect(pool.store.openLayer('c1', { readOnly: true, mountpoint: '/mnt/b' })).rejects.toMatchObject({ code: 'LAYER_IN_USE' });
    await expect(pool.store.openLayer('c1', { mountpoint: '/mnt/b' })).rejects.toMatchObject({ code: 'LAYER_IN_USE' });
    // A read-only open that does not mount (export, diff) reads committed metadata: allowed.
    const reader = await pool.store.openLayer('c1', { readOnly: true });
    // ... but it cannot become a mount while the writer is mounted (the Node API's path: MountService claims).
    await expect(reader.claimMount!('/mnt/b')).rejects.toMatchObject({ code: 'LAYER_IN_USE' });
    expect((await pool.store.getLayer('c1')).mounts).toEqual([{ pid: process.pid, mountpoint: '/mnt/a', readOnly: false }]);
    await reader.close();
    await rw.close();
    const ro = await pool.store.openLayer('c1', { readOnly: true, mountpoint: '/mnt/b' });
    await ro.close();
  });

  test('a mounted container refuses a writer: a read-only mount would go stale', async () => {
    const ro = await pool.store.openLayer('c1', { readOnly: true, mountpoint: '/mnt/b' });
    await expect(pool.store.openLayer('c1')).rejects.toMatchObject({ code: 'LAYER_IN_USE' });
    await expect(pool.store.openLayer('c1', { mountpoint: '/mnt/a' })).rejects.toMatchObject({ code: 'LAYER_IN_USE' });
    // Read-only mounts of a layer nobody writes stack.
    const ro2 = await pool.store.openLayer('c1', { readOnly: true, mountpoint: '/mnt/c' });
    await ro.close();
    await expect(pool.store.openLayer('c1')).rejects.toMatchObject({ code: 'LAYER_IN_USE' });
    await ro2.close();
    const w = await pool.store.openLayer('c1');
    await w.close();
  });

  test('a writer that is not mounted blocks mounts; its mount claim is checked against others', async () => {
    const w = await pool.store.openLayer('c1');
    await expect(pool.store.openLayer('c1', { readOnly: true, mountpoint: '/mnt/b' })).rejects.toMatchObject({ code: 'LAYER_IN_USE' });
    await w.claimMount!('/mnt/a');
    await w.claimMount!('/mnt/a'); // the same mount again: a no-op
    expect((await pool.store.getLayer('c1')).mounts.map((m) => m.mountpoint)).toEqual(['/mnt/a']);
    // One writable layer served at two mountpoints: each mount would cache on its own.
    await expect(w.claimMount!('/mnt/other')).rejects.toMatchObject({ code: 'LAYER_IN_USE' });
    await w.releaseMount!('/mnt/a');
    expect((await pool.store.getLayer('c1')).mounts).toEqual([]);
    await w.close();
  });

  test('image layers mount read-only any number of times, also while a child container is mounted read-write', async () => {
    const c = await pool.store.openLayer('c1', { mountpoint: '/mnt/c1' });
    const a = await pool.store.openLayer('img', { mountpoint: '/mnt/i1' });
    const b = await pool.store.openLayer('img', { readOnly: true, mountpoint: '/mnt/i2' });
    expect(a.readOnly && b.readOnly).toBe(true);
    const ino = (await c.mknod(c.rootIno, 'f', { mode: S_IFREG | 0o644, uid: 0, gid: 0 })).ino;
    await c.write(ino, Buffer.from('x'), 0);
    // The child's write does not reach the image.
    expect(await a.lookup(a.rootIno, 'f')).toBeNull();
    expect((await pool.store.getLayer('img')).mounts.length).toBe(1); // one holder record per process
    await a.close();
    expect((await pool.store.getLayer('img')).mounts).toEqual([{ pid: process.pid, mountpoint: '/mnt/i2', readOnly: true }]);
    await b.close();
    expect((await pool.store.getLayer('img')).mounts).toEqual([]);
    await c.close();
  });

  test('commit of a mounted container is refused; of a read-only mounted one it keeps the mount coherent', async () => {
    const w = await pool.store.openLayer('c1', { mountpoint: '/mnt/a' });
    const ino = (await w.mknod(w.rootIno, 'f', { mode: S_IFREG | 0o644, uid: 0, gid: 0 })).ino;
    await w.write(ino, Buffer.from('data'), 0);
    await expect(pool.store.commit('c1', 'snap')).rejects.toMatchObject({ code: 'LAYER_IN_USE' });
    await w.close();
    const ro = await pool.store.openLayer('c1', { readOnly: true, mountpoint: '/mnt/b' });
    await pool.store.commit('c1', 'snap');
    // The mount reads the segment the image took over: the same files.
    const f = await ro.resolve('/f');
    const buf = Buffer.alloc(4);
    await ro.read(f.ino, buf, 0);
    expect(buf.toString()).toBe('data');
    await ro.close();
  });
});
