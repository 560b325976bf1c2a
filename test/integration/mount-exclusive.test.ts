/**
 * Issue 11 case 8: no mount may go stale. A layer mounted read-write has no second mount
 * and a mounted layer no other writer (LAYER_IN_USE), whoever mounts: the CLI's daemons
 * (separate processes), the Node API (MountService in this process), two CLIs racing.
 * Read-only mounts of images stack; a daemon killed with -9 blocks nothing.
 */
import * as path from 'node:path';
import { Pool } from '../../src/api';
import { describeFuse, mountLayer, run, sh, shq, tempDir } from '../support/fuse-harness';
import { DMFS_BIN, ensureBuiltDist } from '../support/built-dist';

describeFuse('one writer, no stale mounts (CLI, API, races, dead daemons)', () => {
  let root: string;
  let work: string;
  const dmfs = (args: string) => sh(`node ${DMFS_BIN} ${args} --root ${shq(root)}`);
  const dmfsOk = async (args: string): Promise<string> => {
    const r = await dmfs(args);
    if (r.code !== 0) throw new Error(`dmfs ${args} failed (${r.code}):\n${r.stdout}${r.stderr}`);
    return r.stdout;
  };
  /** A refused command: its exit code and the error code of its --json answer. */
  const refused = async (args: string): Promise<{ exit: number; code: string; message: string }> => {
    const r = await dmfs(`${args} --json`);
    const line = r.stdout.trim().split('\n').pop() ?? '';
    const parsed = JSON.parse(line || '{}') as { error?: { code: string; message: string } };
    expect(r.stderr).not.toMatch(/internal error|    at /); // a DmfsError, no stack trace
    return { exit: r.code, code: parsed.error?.code ?? `none (exit ${r.code}: ${r.stdout}${r.stderr})`, message: parsed.error?.message ?? '' };
  };
  const mountJson = async (args: string) => JSON.parse(await dmfsOk(`mount ${args} --json`)) as { pid: number; readOnly: boolean };
  const isMounted = async (mp: string) => (await sh(`grep -q ' ${mp} fuse.dmfs ' /proc/self/mounts`)).code === 0;

  beforeAll(async () => {
    ensureBuiltDist();
    root = tempDir('excl-pool');
    work = tempDir('excl-work');
    await dmfsOk('pool create --size 256M');
    // An image with content: a container's files, committed.
    await dmfsOk('create seed');
    await dmfsOk(`mount seed ${work}/seed`);
    await run(`mkdir ${work}/seed/etc && echo v1 > ${work}/seed/etc/conf && echo keep > ${work}/seed/top`);
    await dmfsOk(`umount ${work}/seed`);
    await dmfsOk('commit seed img');
    await dmfsOk('create c1 --from img');
  }, 300_000);

  afterAll(async () => {
    await sh(`for m in $(grep -o ' ${work}/[^ ]* fuse.dmfs ' /proc/self/mounts | cut -d' ' -f2); do fusermount -uz "$m"; done`);
  });

  it('refuses a second mount (--ro or not) of a read-write mounted container, through the CLI, naming where it is mounted', async () => {
    const a = `${work}/a`;
    const b = `${work}/b`;
    await mountJson(`c1 ${a}`);
    await run(`echo one > ${a}/f && mkdir ${a}/d`);
    for (const extra of ['--ro', '']) {
      const r = await refused(`mount c1 ${b} ${extra}`);
      expect(r.code).toBe('LAYER_IN_USE');
      expect(r.exit).toBe(1);
      expect(r.message).toContain(a); // where it is mounted
      expect(r.message).toMatch(/dmfs umount/); // what to do
      expect(await isMounted(b)).toBe(false);
    }
    // Readers that do not mount still work meanwhile, and see what the mount wrote.
    await dmfsOk(`diff c1`);
    await run(`rm ${a}/f`);
    await dmfsOk(`umount ${a}`);
    // After the unmount the read-only mount works, sees the last state, and now blocks a writer.
    expect((await mountJson(`c1 ${b} --ro`)).readOnly).toBe(true);
    expect(await run(`ls -A ${b}`)).toBe('d\netc\ntop\n');
    const w = await refused(`mount c1 ${a}`);
    expect(w.code).toBe('LAYER_IN_USE');
    expect(w.message).toContain(b);
    // Read-only mounts of a layer nobody writes stack.
    await mountJson(`c1 ${work}/b2 --ro`);
    await dmfsOk(`umount ${b}`);
    await dmfsOk(`umount ${work}/b2`);
    await mountJson(`c1 ${a}`);
    await dmfsOk(`umount ${a}`);
  });

  it('the Node API obeys the same rule: MountService.start of a layer mounted read-write by a daemon is refused', async () => {
    const a = `${work}/api-a`;
    await mountJson(`c1 ${a}`);
    const pool = await Pool.open(root);
    try {
      const layer = await pool.store.openLayer('c1', { readOnly: true }); // a plain reader: allowed
      await expect(mountLayer(layer, `${work}/api-b`)).rejects.toMatchObject({ code: 'LAYER_IN_USE' });
      expect(await isMounted(`${work}/api-b`)).toBe(false);
      await layer.close();
      await dmfsOk(`umount ${a}`);
      // Unmounted: the API mounts it, and the CLI is refused a read-write mount meanwhile.
      const m = await mountLayer(await pool.store.openLayer('c1', { readOnly: true }), `${work}/api-b`);
      try {
        expect((await refused(`mount c1 ${a}`)).code).toBe('LAYER_IN_USE');
      } finally {
        await m.unmount();
        await m.layer.close();
      }
    } finally {
      await pool.close();
    }
  });

  for (const transport of ['kernel', 'libfuse2'] as const) {
    it(`${transport} transport: image layers mount read-only several times, and a container on them mounted read-write does not change what they show`, async () => {
      const env = `DMFS_FUSE_TRANSPORT=${transport}`;
      const i1 = JSON.parse(await run(`${env} node ${DMFS_BIN} mount img ${work}/i1-${transport} --json --root ${shq(root)}`)) as { readOnly: boolean; log: string };
      const i2 = JSON.parse(await run(`${env} node ${DMFS_BIN} mount img ${work}/i2-${transport} --json --root ${shq(root)}`)) as { readOnly: boolean };
      expect(i1.readOnly && i2.readOnly).toBe(true);
      expect(await run(`cat ${shq(i1.log)}`)).toContain(`${transport} transport`);
      const before = await run(`ls -lAR ${work}/i1-${transport} && cat ${work}/i1-${transport}/etc/conf`);
      expect(before).toContain('top');
      // Warm the read-only mounts' caches (an hour for names and attributes), then change the child.
      await dmfsOk(`create kid-${transport} --from img`);
      await run(`${env} node ${DMFS_BIN} mount kid-${transport} ${work}/kid-${transport} --root ${shq(root)}`);
      await run(`echo x > ${work}/kid-${transport}/new && echo v2 > ${work}/kid-${transport}/etc/conf && rm ${work}/kid-${transport}/top && mkdir ${work}/kid-${transport}/d2`);
      expect(await run(`cat ${work}/i1-${transport}/etc/conf ${work}/i2-${transport}/etc/conf`)).toBe('v1\nv1\n');
      for (const mp of [`i1-${transport}`, `i2-${transport}`]) {
        expect(await run(`ls -lAR ${work}/${mp} && cat ${work}/${mp}/etc/conf`)).toBe(before.split(`i1-${transport}`).join(mp));
      }
      for (const mp of [`kid-${transport}`, `i1-${transport}`, `i2-${transport}`]) await dmfsOk(`umount ${work}/${mp}`);
    });
  }

  it('of two CLIs mounting the same container at once, exactly one wins', async () => {
    for (let round = 0; round < 3; round++) {
      const [x, y] = [`${work}/race-x${round}`, `${work}/race-y${round}`];
      const [rx, ry] = await Promise.all([dmfs(`mount c1 ${x} --json`), dmfs(`mount c1 ${y} --json`)]);
      const ok = [rx, ry].filter((r) => r.code === 0);
      const lost = [rx, ry].filter((r) => r.code !== 0);
      expect(ok).toHaveLength(1);
      expect(lost).toHaveLength(1);
      expect(JSON.parse(lost[0].stdout.trim()).error.code).toBe('LAYER_IN_USE');
      expect([await isMounted(x), await isMounted(y)].filter(Boolean)).toHaveLength(1);
      await dmfsOk(`umount ${rx.code === 0 ? x : y}`);
    }
  });

  it('a daemon killed with -9 does not block the next mount, elsewhere or at the same place', async () => {
    const a = `${work}/dead`;
    const m = await mountJson(`c1 ${a}`);
    await run(`echo kept > ${a}/kept && sync ${a}/kept`);
    await run(`kill -9 ${m.pid}`);
    await run(`for i in $(seq 100); do kill -0 ${m.pid} 2>/dev/null || exit 0; sleep 0.05; done; exit 1`);
    // Elsewhere: the dead holder does not count.
    const other = `${work}/after-dead`;
    await mountJson(`c1 ${other}`);
    expect(await run(`cat ${other}/kept`)).toBe('kept\n');
    await dmfsOk(`umount ${other}`);
    // At the dead mountpoint itself: cleaned up and mounted again.
    const again = await dmfs(`mount c1 ${a}`);
    expect(again.code).toBe(0);
    expect(again.stderr).toMatch(/cleaned up a dead mount/);
    expect(await run(`cat ${a}/kept`)).toBe('kept\n');
    await dmfsOk(`umount ${a}`);
    expect(path.isAbsolute(a)).toBe(true);
  });
});
