import { S_IFREG } from '../../../src/store/layer-store';
import { tempPool } from '../../support/temp-pool';

/** Sizes shaped like a Debian rootfs: most files small, a few large (deterministic). */
export function rootfsLikeSizes(count: number, seed = 42): number[] {
  let x = seed;
  const rnd = () => ((x = (x * 1103515245 + 12345) % 2147483648) / 2147483648);
  const sizes: number[] = [];
  for (let i = 0; i < count; i++) {
    const r = rnd();
    if (r < 0.45) sizes.push(Math.floor(rnd() * 2048) + 1);
    else if (r < 0.75) sizes.push(Math.floor(rnd() * 14 * 1024) + 2048);
    else if (r < 0.93) sizes.push(Math.floor(rnd() * 48 * 1024) + 16 * 1024);
    else if (r < 0.99) sizes.push(Math.floor(rnd() * 448 * 1024) + 64 * 1024);
    else sizes.push(Math.floor(rnd() * 3 * 1024 * 1024) + 512 * 1024);
  }
  return sizes;
}

test('5,000 rootfs-like files take at most 1.15x their size (rounded up to 4 KiB) in the pool', async () => {
  const { pool, remove } = await tempPool({ sizeBytes: 4 * 1024 ** 3 });
  try {
    await pool.store.createLayer('img', { kind: 'image', building: true });
    const fs = await pool.store.openLayer('img');
    const sizes = rootfsLikeSizes(5000);
    let dir = fs.rootIno;
    for (let i = 0; i < sizes.length; i++) {
      if (i % 100 === 0) dir = (await fs.mkdir(fs.rootIno, `d${i}`, { mode: 0o755, uid: 0, gid: 0 })).ino;
      const f = await fs.mknod(dir, `file-${i}`, { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
      const data = Buffer.alloc(sizes[i], (i % 250) + 1);
      // Written the way tar extraction through FUSE arrives: 128 KiB chunks.
      for (let off = 0; off < data.length; off += 128 * 1024) await fs.write(f.ino, data.subarray(off, off + 128 * 1024), off);
    }
    await fs.close();
    await pool.store.sealLayer('img');
    const sumRounded = sizes.reduce((s, n) => s + Math.ceil(n / 4096) * 4096, 0);
    const info = await pool.info();
    const layer = await pool.store.getLayer('img');
    const poolBytes = info.dataSpaceUsedBytes + info.metadataSpaceUsedBytes;
    const ratio = poolBytes / sumRounded;
    // eslint-disable-next-line no-console
    console.log(`space: files ${sumRounded} B (rounded), data ${info.dataSpaceUsedBytes} B, metadata ${info.metadataSpaceUsedBytes} B, layer exclusive ${layer.exclusiveBytes} B, ratio ${ratio.toFixed(3)}`);
    expect(ratio).toBeLessThanOrEqual(1.15);
  } finally {
    await remove();
  }
});

test('creating a container on a parent of 100k blocks takes the same time as on an empty one', async () => {
  const { pool, remove } = await tempPool({ sizeBytes: 16 * 1024 ** 3, options: ['dm.min_free_space=0'] });
  try {
    await pool.store.createLayer('empty', { kind: 'image' });
    await pool.store.createLayer('big', { kind: 'image', building: true });
    const fs = await pool.store.openLayer('big');
    const f = await fs.mknod(fs.rootIno, 'blob', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    const chunk = Buffer.alloc(4 * 1024 * 1024, 1);
    for (let i = 0; i < 100_000 / 64; i++) await fs.write(f.ino, chunk, i * chunk.length);
    await fs.close();
    await pool.store.sealLayer('big');
    expect((await pool.store.getLayer("big")).exclusiveBytes).toBeGreaterThanOrEqual(100_000 * 64 * 1024);
    // Interleaved, medians: other load on the machine hits both sides alike.
    let serial = 0;
    const once = async (parent: string) => {
      const t0 = process.hrtime.bigint();
      await pool.store.createLayer(`${parent}-c${serial++}`, { parent, kind: 'container' });
      return Number(process.hrtime.bigint() - t0) / 1e6;
    };
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const empty: number[] = [];
    const big: number[] = [];
    for (let i = 0; i < 25; i++) {
      empty.push(await once('empty'));
      big.push(await once('big'));
    }
    const onEmpty = median(empty);
    const onBig = median(big);
    // eslint-disable-next-line no-console
    console.log(`create container (median of 25): on empty parent ${onEmpty.toFixed(2)} ms, on 100k-block parent ${onBig.toFixed(2)} ms`);
    expect(onBig).toBeLessThan(Math.max(onEmpty * 3, 15));
    expect(onBig).toBeLessThan(50);
  } finally {
    await remove();
  }
});
