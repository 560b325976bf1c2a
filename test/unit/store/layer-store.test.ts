import * as fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { Pool } from '../../../src/api';
import { S_IFREG, type LayerFs } from '../../../src/store/layer-store';
import { tempPool } from '../../support/temp-pool';

async function writeFile(fs: LayerFs, name: string, data: Buffer): Promise<number> {
  const a = await fs.mknod(fs.rootIno, name, { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
  await fs.write(a.ino, data, 0);
  return a.ino;
}

async function readAll(fs: LayerFs, path: string): Promise<Buffer> {
  const a = await fs.resolve(path);
  const buf = Buffer.alloc(a.sizeBytes);
  await fs.read(a.ino, buf, 0);
  return buf;
}

describe('layer lifecycle', () => {
  let pool: Pool;
  let remove: () => Promise<void>;
  let root: string;
  beforeEach(async () => {
    ({ pool, remove, root } = await tempPool({ sizeBytes: 256 * 1024 ** 2, options: ['dm.min_free_space=5%'] }));
  });
  afterEach(async () => remove());

  test('image layers are read-only once sealed; containers are writable', async () => {
    await pool.store.createLayer('img', { kind: 'image', building: true });
    let f = await pool.store.openLayer('img');
    await writeFile(f, 'a', Buffer.from('A'));
    await f.close();
    await pool.store.sealLayer('img');
    f = await pool.store.openLayer('img');
    expect(f.readOnly).toBe(true);
    await expect(writeFile(f, 'b', Buffer.from('B'))).rejects.toMatchObject({ code: 'READ_ONLY_LAYER' });
    const a = await f.resolve('/a');
    await expect(f.setxattr(a.ino, 'user.x', Buffer.from('1'))).rejects.toMatchObject({ code: 'READ_ONLY_LAYER' });
    await expect(f.setattr(a.ino, { mtimeNs: 1n })).rejects.toMatchObject({ code: 'READ_ONLY_LAYER' });
    await f.close();
    await pool.store.createLayer('c', { parent: 'img', kind: 'container' });
    f = await pool.store.openLayer('c', { readOnly: true });
    expect(f.readOnly).toBe(true);
    await f.close();
  });

  test('commit: the image holds the container changes; the container continues on it', async () => {
    await pool.store.createLayer('c', { kind: 'container' });
    let f = await pool.store.openLayer('c');
    await writeFile(f, 'x', Buffer.from('committed'));
    await f.close();
    const img = await pool.store.commit('c', 'snap');
    expect(img.kind).toBe('image');
    expect(img.parent).toBe('base');
    expect((await pool.store.getLayer('c')).parent).toBe('snap');
    f = await pool.store.openLayer('snap');
    expect((await readAll(f, '/x')).toString()).toBe('committed');
    await f.close();
    f = await pool.store.openLayer('c');
    const changes = [];
    for await (const ch of f.changes()) changes.push(ch);
    expect(changes).toEqual([]);
    expect((await readAll(f, '/x')).toString()).toBe('committed');
    await f.close();
    await expect(pool.store.commit('snap', 'x')).rejects.toMatchObject({ code: 'WRONG_LAYER_KIND' });
  });

  test('remove: refused with children, deferred while open, frees space and punches holes', async () => {
    await pool.store.createLayer('img', { kind: 'image', building: true });
    let f = await pool.store.openLayer('img');
    await writeFile(f, 'big', Buffer.alloc(8 * 1024 * 1024, 1));
    await f.close();
    await pool.store.sealLayer('img');
    await pool.store.createLayer('c', { parent: 'img', kind: 'container' });
    await expect(pool.store.removeLayer('img')).rejects.toMatchObject({ code: 'LAYER_HAS_CHILDREN' });
    await expect(pool.store.removeLayer('base')).rejects.toMatchObject({ code: 'NOT_PERMITTED' });
    f = await pool.store.openLayer('c');
    expect(await pool.store.removeLayer('c')).toEqual({ deferred: true });
    expect((await pool.store.getLayer('c')).deferredRemoval).toBe(true);
    await f.close();
    await expect(pool.store.getLayer('c')).rejects.toMatchObject({ code: 'LAYER_NOT_FOUND' });
    const before = fs.statSync(`${root}/data/data-file`).blocks * 512;
    expect(await pool.store.removeLayer('img')).toEqual({ deferred: false });
    const after = fs.statSync(`${root}/data/data-file`).blocks * 512;
    expect(before - after).toBeGreaterThanOrEqual(8 * 1024 * 1024);
    expect((await pool.info()).dataSpaceUsedBytes).toBe(0);
    expect((await pool.check()).problems).toEqual([]);
  });

  test('one writer per layer; names are unique; parents must exist and be images', async () => {
    await pool.store.createLayer('c', { kind: 'container' });
    const f = await pool.store.openLayer('c');
    await expect(pool.store.openLayer('c')).rejects.toMatchObject({ code: 'LAYER_IN_USE' });
    await f.close();
    await expect(pool.store.createLayer('c', { kind: 'container' })).rejects.toMatchObject({ code: 'LAYER_EXISTS' });
    await expect(pool.store.createLayer('d', { kind: 'container', parent: 'nope' })).rejects.toMatchObject({ code: 'LAYER_NOT_FOUND' });
    await expect(pool.store.createLayer('d', { kind: 'container', parent: 'c' })).rejects.toMatchObject({ code: 'WRONG_LAYER_KIND' });
    await expect(pool.store.createLayer('bad name', { kind: 'container' })).rejects.toMatchObject({ code: 'INVALID' });
  });

  test('layer size limit: EFBIG past it, ENOSPC when the layer is full', async () => {
    await pool.store.createLayer('small', { kind: 'container', sizeLimitBytes: 1024 * 1024 });
    const f = await pool.store.openLayer('small');
    const ino = await writeFile(f, 'a', Buffer.alloc(512 * 1024, 1));
    await expect(f.write(ino, Buffer.alloc(10), 2 * 1024 * 1024)).rejects.toMatchObject({ code: 'FILE_TOO_BIG' });
    const b = await f.mknod(f.rootIno, 'b', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    await expect(f.write(b.ino, Buffer.alloc(768 * 1024, 1), 0)).rejects.toMatchObject({ code: 'LAYER_FULL' });
    await f.close();
    expect((await pool.check()).problems).toEqual([]);
  });

  test('dm.min_free_space: allocating writes and new layers fail with POOL_FULL, and recover after deletes', async () => {
    await pool.store.createLayer('c', { kind: 'container' });
    const f = await pool.store.openLayer('c');
    const a = await f.mknod(f.rootIno, 'fill', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    const chunk = Buffer.alloc(4 * 1024 * 1024, 1);
    let written = 0;
    await expect((async () => {
      for (;;) {
        await f.write(a.ino, chunk, written);
        written += chunk.length;
      }
    })()).rejects.toMatchObject({ code: 'POOL_FULL' });
    expect(written).toBeGreaterThan(200 * 1024 * 1024);
    await expect(pool.store.createLayer('d', { kind: 'container' })).rejects.toMatchObject({ code: 'POOL_FULL' });
    await f.unlink(f.rootIno, 'fill');
    await f.fsync();
    await (pool.thinPool as unknown as { trim: (k: number) => Promise<void> }).trim(0);
    await pool.store.createLayer('d', { kind: 'container' });
    await f.close();
    expect((await pool.check()).problems).toEqual([]);
  });

  test('a building image whose importer died is removed at the next open', async () => {
    await pool.store.createLayer('half', { kind: 'image', building: true });
    const f = await pool.store.openLayer('half');
    await writeFile(f, 'a', Buffer.alloc(300000, 1));
    await f.fsync();
    // Simulate the importer dying: forge the builder as a dead owner and reopen.
    pool.thinPool.txn(() => {
      const layers = pool.thinPool.table('layers');
      for (const { key, value } of layers.range(0, Number.MAX_SAFE_INTEGER)) {
        const { unpackLayer, packLayer } = require('../../../src/store/records');
        const rec = unpackLayer(value);
        if (rec.name === 'half') layers.put(key, packLayer({ ...rec, builderOwnerId: 999999 }));
      }
    });
    await f.close();
    await pool.close();
    const again = await Pool.open(root);
    try {
      await expect(again.store.getLayer('half')).rejects.toMatchObject({ code: 'LAYER_NOT_FOUND' });
      expect((await again.info()).dataSpaceUsedBytes).toBe(0);
      expect((await again.check()).problems).toEqual([]);
    } finally {
      await again.close();
    }
  });
});

describe('pool space', () => {
  test('auto-extend grows the loop data file when usage crosses the threshold', async () => {
    const { pool, root, remove } = await tempPool({
      sizeBytes: 64 * 1024 * 1024,
      options: ['dm.min_free_space=0', 'dm.thinp_autoextend_threshold=50', 'dm.thinp_autoextend_percent=50'],
    });
    try {
      await pool.store.createLayer('c', { kind: 'container' });
      const f = await pool.store.openLayer('c');
      await writeFile(f, 'a', Buffer.alloc(60 * 1024 * 1024, 1));
      await f.close();
      expect((await pool.info()).dataSpaceTotalBytes).toBeGreaterThan(64 * 1024 * 1024);
      expect(fs.statSync(`${root}/data/data-file`).size).toBeGreaterThan(64 * 1024 * 1024);
    } finally {
      await remove();
    }
  });

  test('resize grows a pool while a layer is open; shrinking is refused', async () => {
    const { pool, remove } = await tempPool({ sizeBytes: 64 * 1024 * 1024 });
    try {
      await pool.store.createLayer('c', { kind: 'container' });
      const f = await pool.store.openLayer('c');
      expect(await pool.resize(128 * 1024 * 1024)).toEqual({ oldBytes: 64 * 1024 * 1024, newBytes: 128 * 1024 * 1024 });
      await writeFile(f, 'a', Buffer.alloc(90 * 1024 * 1024, 1));
      await f.close();
      await expect(pool.resize(32 * 1024 * 1024)).rejects.toMatchObject({ code: 'NOT_SUPPORTED' });
    } finally {
      await remove();
    }
  });
});

const canLosetup = process.getuid?.() === 0 && spawnSync('losetup', ['--version']).status === 0;

(canLosetup ? describe : describe.skip)('direct mode on a loop device', () => {
  test('uses a blank block device, refuses one holding a filesystem unless forced', async () => {
    const img = fs.mkdtempSync('/tmp/dmfs-direct-') + '/dev.img';
    fs.writeFileSync(img, '');
    fs.truncateSync(img, 128 * 1024 * 1024);
    const dev = spawnSync('losetup', ['--find', '--show', img], { encoding: 'utf8' }).stdout.trim();
    try {
      const { remove } = await tempPool({ dataDevice: dev }).then(async (t) => {
        await t.pool.store.createLayer('c', { kind: 'container' });
        const f = await t.pool.store.openLayer('c');
        await writeFile(f, 'a', Buffer.alloc(1024 * 1024, 7));
        expect((await readAll(f, '/a')).every((b) => b === 7)).toBe(true);
        await f.close();
        expect((await t.pool.info()).dataMode).toBe('direct');
        return t;
      });
      await remove();
      expect(spawnSync('mkfs.ext4', ['-q', '-F', dev]).status).toBe(0);
      await expect(tempPool({ dataDevice: dev })).rejects.toMatchObject({ code: 'DEVICE_HAS_FILESYSTEM' });
      const forced = await tempPool({ dataDevice: dev, force: true });
      await forced.remove();
    } finally {
      spawnSync('losetup', ['-d', dev]);
      fs.rmSync(img, { force: true });
    }
  });
});
if (!canLosetup) test.skip('direct mode needs root and losetup (not available here)', () => undefined);
