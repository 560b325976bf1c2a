import { S_IFREG } from '../../../src/store/layer-store';
import { tempPool } from '../../support/temp-pool';
import { layerFsConformance } from './layer-fs-conformance';

layerFsConformance('ChainLayerFs, container on base', async () => {
  const { pool, remove } = await tempPool();
  await pool.store.createLayer('c', { kind: 'container' });
  const fs = await pool.store.openLayer('c');
  return { fs, dispose: async () => { await fs.close(); await remove(); } };
});

layerFsConformance('ChainLayerFs, container on a two-image chain', async () => {
  const { pool, remove } = await tempPool();
  await pool.store.createLayer('l1', { kind: 'image', building: true });
  const l1 = await pool.store.openLayer('l1');
  const f = await l1.mknod(l1.rootIno, 'lower-file', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
  await l1.write(f.ino, Buffer.alloc(100000, 3), 0);
  await l1.mkdir(l1.rootIno, 'lower-dir', { mode: 0o755, uid: 0, gid: 0 });
  await l1.close();
  await pool.store.sealLayer('l1');
  await pool.store.createLayer('l2', { kind: 'image', parent: 'l1' });
  await pool.store.createLayer('c', { kind: 'container', parent: 'l2' });
  const fs = await pool.store.openLayer('c');
  return { fs, dispose: async () => { await fs.close(); await remove(); } };
});
