// Cost of metadata backups: createLayer through the API, a backup of a small pool and of one with 10k files.
// Usage: node bench/metadata-backup.js [DIST_DIR]   (default: ./dist)
const dist = require('path').resolve(process.argv[2] || require('path').join(__dirname, '..', 'dist'));
const { Pool } = require(dist + '/api');
const { S_IFREG } = require(dist + '/store/layer-store');
const fs = require('fs');
(async () => {
  const root = '/tmp/bb-' + process.pid;
  const pool = await Pool.create({ root, sizeBytes: 4 * 2 ** 30 });
  await pool.store.createLayer('img', { kind: 'image' });
  const N = 300;
  let t = process.hrtime.bigint();
  for (let i = 0; i < N; i++) await pool.store.createLayer('c' + i, { parent: 'img', kind: 'container' });
  const createMs = Number(process.hrtime.bigint() - t) / 1e6 / N;
  const out = { createLayerMs: +createMs.toFixed(3) };
  if (pool.thinPool.backupMetadata) {
    const time = async () => { const t0 = process.hrtime.bigint(); const b = await pool.thinPool.backupMetadata({ force: true, reason: 'bench' }); return { ms: +(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(1), bytes: b.sizeBytes }; };
    out.smallBackup = [await time(), await time(), await time()];
    await pool.store.createLayer('big', { kind: 'image', building: true });
    const l = await pool.store.openLayer('big');
    for (let d = 0; d < 100; d++) {
      const dir = await l.mkdir(l.rootIno, 'd' + d, { mode: 0o40755, uid: 0, gid: 0 });
      for (let i = 0; i < 100; i++) {
        const f = await l.mknod(dir.ino, 'f' + i, { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
        await l.write(f.ino, Buffer.alloc(i % 10 === 0 ? 200000 : 3000, i), 0);
      }
    }
    await l.close();
    await pool.store.sealLayer('big');
    out.largeFiles = 10000;
    out.largeBackup = [await time(), await time(), await time()];
    out.liveMetadataUsedBytes = pool.thinPool.env.usage().usedBytes;
    pool.thinPool.backupsSuspended = true;
  }
  await pool.close();
  fs.rmSync(root, { recursive: true, force: true });
  console.log(JSON.stringify(out));
})();
