/**
 * Issue 11 case 6: `df` on a mount tells the truth about a small thin pool (256 MiB) whose
 * layers have a 10 GiB virtual limit: Size is what the layer could really hold, Avail what
 * can still be written (dm.min_free_space honoured), Used = Size - Avail. Real mounts
 * through the CLI, read with `df -B1` and `stat -f`, on both FUSE transports.
 */
import { describeFuse, run, sh, shq, tempDir } from '../support/fuse-harness';
import { DMFS_BIN, ensureBuiltDist } from '../support/built-dist';

const MiB = 1024 ** 2;
const BLOCK = 64 * 1024;

interface Df {
  sizeBytes: number;
  usedBytes: number;
  availBytes: number;
}

describeFuse('statfs of a mount on a 256 MiB pool (df, stat -f)', () => {
  let root: string;
  let work: string;
  const dmfs = (args: string, env: NodeJS.ProcessEnv = {}) => sh(`node ${DMFS_BIN} ${args} --root ${shq(root)}`, { env });
  const dmfsOk = async (args: string, env: NodeJS.ProcessEnv = {}): Promise<string> => {
    const r = await dmfs(args, env);
    if (r.code !== 0) throw new Error(`dmfs ${args} failed (${r.code}):\n${r.stdout}${r.stderr}`);
    return r.stdout;
  };
  const poolInfo = async () =>
    JSON.parse(await dmfsOk('info --json')) as { dataSpaceTotalBytes: number; dataSpaceUsedBytes: number; dataSpaceAvailableBytes: number; minFreeSpaceBytes: number };
  const df = async (mp: string): Promise<Df> => {
    const out = (await run(`df -B1 --output=size,used,avail ${shq(mp)} | tail -1`)).trim().split(/\s+/).map(Number);
    // stat -f reads the same statfs: block size, blocks, free, avail.
    const [bs, blocks, free, avail] = (await run(`stat -f -c '%S %b %f %a' ${shq(mp)}`)).trim().split(' ').map(Number);
    expect(bs).toBe(BLOCK);
    expect(free).toBe(avail); // what can be written is what is free: no root-only reserve
    expect([blocks * bs, avail * bs]).toEqual([out[0], out[2]]);
    // df's Used is Size - Free; consistent figures also make it Size - Avail.
    expect(out[1]).toBe(out[0] - out[2]);
    return { sizeBytes: out[0], usedBytes: out[1], availBytes: out[2] };
  };

  beforeAll(async () => {
    ensureBuiltDist();
    root = tempDir('statfs-pool');
    work = tempDir('statfs-work');
    await dmfsOk('pool create --size 256M');
  }, 300_000);

  afterAll(async () => {
    await sh(`for m in $(grep -o ' ${work}/[^ ]* fuse.dmfs ' /proc/self/mounts | cut -d' ' -f2); do fusermount -uz "$m"; done`);
  });

  for (const transport of ['kernel', 'libfuse2'] as const) {
    it(`${transport} transport: Size is capped by the pool, Used is the chain, Avail what can still be written; a full layer reads 100%`, async () => {
      const env = { DMFS_FUSE_TRANSPORT: transport };
      const c = `c-${transport}`;
      const mp = `${work}/${c}`;
      await dmfsOk(`create ${c}`);
      const { log } = JSON.parse(await dmfsOk(`mount ${c} ${mp} --json`, env)) as { log: string };
      expect(await run(`cat ${shq(log)}`)).toContain(`${transport} transport`);
      const poolBefore = await poolInfo();
      const empty = await df(mp);
      // Not the 10 GiB limit: what the pool can give above dm.min_free_space.
      expect(empty.sizeBytes).toBeLessThanOrEqual(256 * MiB - poolBefore.minFreeSpaceBytes);
      expect(empty.availBytes).toBe(poolBefore.dataSpaceAvailableBytes);
      expect(empty.usedBytes).toBe(0);

      await run(`head -c ${64 * MiB} /dev/urandom > ${mp}/f && sync ${mp}/f`);
      const written = await df(mp);
      expect(written.usedBytes).toBe(64 * MiB);
      expect(written.availBytes).toBe((await poolInfo()).dataSpaceAvailableBytes);
      expect(written.availBytes).toBe(empty.availBytes - 64 * MiB);
      expect(written.sizeBytes).toBe(empty.sizeBytes);

      // Fill up: ENOSPC arrives where df said, and the pool keeps its minimum free space.
      const fill = await sh(`head -c ${512 * MiB} /dev/urandom > ${mp}/fill`);
      expect(fill.stderr).toMatch(/No space left on device/);
      await sh(`sync ${mp}/fill`);
      const full = await df(mp);
      expect(full.availBytes).toBe(0);
      expect(full.usedBytes).toBe(full.sizeBytes);
      const { size: fillBytes } = JSON.parse(await run(`stat -c '{"size":%s}' ${mp}/fill`)) as { size: number };
      expect(full.usedBytes).toBeGreaterThanOrEqual(64 * MiB + Math.floor(fillBytes / BLOCK) * BLOCK);
      const poolFull = await poolInfo();
      expect(poolFull.dataSpaceTotalBytes - poolFull.dataSpaceUsedBytes).toBeGreaterThanOrEqual(poolFull.minFreeSpaceBytes);

      await run(`rm ${mp}/fill ${mp}/f && sync -f ${mp}`);
      const freed = await df(mp);
      expect(freed.usedBytes).toBe(0);
      expect(freed.availBytes).toBe(empty.availBytes);
      await dmfsOk(`umount ${mp}`);
      await dmfsOk(`rm ${c}`);
    });
  }

  it('a layer size limit below the pool caps Size; a read-only image reports its data as Size and nothing Avail', async () => {
    await dmfsOk('create small --size 32M');
    const mp = `${work}/small`;
    await dmfsOk(`mount small ${mp}`);
    const s = await df(mp);
    expect(s).toEqual({ sizeBytes: 32 * MiB, usedBytes: 0, availBytes: 32 * MiB });
    await run(`head -c ${8 * MiB} /dev/urandom > ${mp}/f && sync ${mp}/f`);
    expect(await df(mp)).toEqual({ sizeBytes: 32 * MiB, usedBytes: 8 * MiB, availBytes: 24 * MiB });
    await dmfsOk(`umount ${mp}`);
    await dmfsOk('commit small snap');
    const ro = `${work}/snap`;
    await dmfsOk(`mount snap ${ro}`);
    expect(await df(ro)).toEqual({ sizeBytes: 8 * MiB, usedBytes: 8 * MiB, availBytes: 0 });
    const inodes = (await run(`stat -f -c '%c %d' ${ro}`)).trim().split(' ').map(Number);
    expect(inodes[1]).toBe(0); // no free inodes on a read-only layer
    expect(inodes[0]).toBeGreaterThanOrEqual(2); // root and f
    await dmfsOk(`umount ${ro}`);
  });
});
