/**
 * `dmfs daemon`: one process serves every mount of the pool, the CLI and Pool.connect go
 * through it while it runs and work directly when it does not; default access as root
 * (allow_other for every uid, nosuid,nodev unless --suid/--dev). Real processes, real
 * mounts, ordinary tools.
 */
import { promises as fsp, statSync } from 'node:fs';
import * as path from 'node:path';
import { Pool } from '../../src/api';
import { DMFS_BIN, ensureBuiltDist } from '../support/built-dist';
import { cliFor, describeFuse, run, sh, shq, tempDir, waitProcessGone } from '../support/fuse-harness';

describeFuse('dmfs daemon: one service per pool', () => {
  let root: string;
  let work: string;
  const { dmfs, dmfsOk, json } = cliFor(DMFS_BIN, () => root);
  const mountLine = async (mp: string) => (await sh(`grep ' ${mp} ' /proc/self/mountinfo`)).stdout;
  /** Mount processes of their own (DAEMON_ARG in argv) serving this pool; '[d]' keeps this shell out. */
  const mountProcesses = async (): Promise<number> => Number((await sh(`pgrep -af -- '--dmfs-mount-[d]aemon' | grep -c -F ${shq(`"root":"${root}"`)} || true`)).stdout.trim());

  beforeAll(async () => {
    ensureBuiltDist();
    root = tempDir('daemon-pool');
    work = tempDir('daemon-work');
    await run(`chmod 755 ${work}`);
    await dmfsOk('pool create --size 8G');
    await dmfsOk('create img --image');
  }, 300_000);

  afterAll(async () => {
    await dmfs('daemon stop');
    await sh(`for m in $(grep -o ' ${work}/[^ ]* fuse.dmfs ' /proc/self/mounts | cut -d' ' -f2); do fusermount -uz "$m"; done`);
    await sh(`rm -rf ${shq(work)} ${shq(root)}`);
  });

  it('starts in the background, answers status, and refuses a second daemon', async () => {
    const started = await json('daemon start');
    expect(started).toMatchObject({ started: true, pid: expect.any(Number) });
    expect(statSync(path.join(root, 'run', 'dmfs.sock')).mode & 0o777).toBe(0o600);
    const again = await json('daemon start');
    expect(again).toMatchObject({ started: false, pid: started.pid });
    const second = await dmfs('daemon run --json');
    expect(second.code).toBe(1);
    expect(JSON.parse(second.stdout).error.code).toBe('POOL_LOCKED');
    // Nor is the pool destroyed under it.
    expect(JSON.parse((await dmfs('pool destroy --force --json')).stdout).error.code).toBe('POOL_LOCKED');
    const s = await json('daemon status');
    expect(s).toMatchObject({ running: true, pid: started.pid, root, mounts: [], api: 1 });
    expect(s.rssBytes).toBeGreaterThan(10 << 20);
    expect(await dmfsOk('daemon status')).toMatch(new RegExp(`pid ${started.pid} \\(supervisor pid ${s.supervisorPid}, 0 restarts\\), up .* s, RSS .*no mounts`, 's'));
    expect(await dmfsOk('daemon status')).toMatch(/^service containerd-snapshotter: /m);
  });

  it('serves every mount from its one process; create, ls, mount and umount go through it', async () => {
    const { pid } = await json('daemon status');
    await dmfsOk('create c1 --from img');
    await dmfsOk('create c2 --from img');
    const m1 = await json(`mount c1 ${work}/c1`);
    const m2 = await json(`mount c2 ${work}/c2`);
    const mi = await json(`mount img ${work}/img`);
    for (const m of [m1, m2, mi]) expect(m).toMatchObject({ pid, servedBy: 'daemon', transport: expect.any(String) });
    expect(mi.readOnly).toBe(true);
    expect(await mountProcesses()).toBe(0); // no process per mount
    await run(`head -c 2000000 /dev/urandom > ${work}/payload && cp ${work}/payload ${work}/c1/p && echo two > ${work}/c2/t && sync ${work}/c1/p`);
    expect(await run(`cmp ${work}/payload ${work}/c1/p && cat ${work}/c2/t && ls ${work}/img`)).toBe('two\n');
    const status = await json('daemon status');
    expect(status.mounts.map((m: { mountpoint: string }) => m.mountpoint).sort()).toEqual([`${work}/c1`, `${work}/c2`, `${work}/img`]);
    const ls = await json<{ name: string; mounts: { mountpoint: string; pid: number }[] }[]>('ls');
    expect(ls.find((l) => l.name === 'c1')!.mounts).toEqual([expect.objectContaining({ mountpoint: `${work}/c1`, pid })]);
    // A second read-write mount of c1 is refused as before, by the same rules.
    expect(JSON.parse((await dmfs(`mount c1 ${work}/c1-again --json`)).stdout).error.code).toBe('LAYER_IN_USE');

    expect(await json(`umount ${work}/c1`)).toMatchObject({ flushed: true, pid, layer: 'c1' });
    expect(await mountLine(`${work}/c1`)).toBe('');
    expect((await json('daemon status')).mounts).toHaveLength(2);
    // umount(8) from outside: the daemon notices, syncs and forgets the mount.
    await run(`umount ${work}/c2`);
    for (let i = 0; i < 100 && (await json('daemon status')).mounts.length > 1; i++) await new Promise((r) => setTimeout(r, 50));
    expect((await json('daemon status')).mounts.map((m: { layer: string }) => m.layer)).toEqual(['img']);
    await dmfsOk(`umount ${work}/img`);
    // Remounted, the data is there.
    await dmfsOk(`mount c1 ${work}/c1`);
    expect((await sh(`cmp ${work}/payload ${work}/c1/p`)).code).toBe(0);
    await dmfsOk(`umount ${work}/c1`);
  });

  it('as root every uid gets in by default, but setuid and devices grant nothing unless asked', async () => {
    await dmfsOk('create acc --from img');
    const mp = `${work}/acc`;
    await dmfsOk(`mount acc ${mp}`);
    expect(await mountLine(mp)).toMatch(/ rw,nosuid,nodev,.* - fuse\.dmfs dmfs:acc rw,.*default_permissions,allow_other/);
    await run(`mkdir ${mp}/bin && cp /bin/sh /usr/bin/id ${mp}/bin/ && chmod 4755 ${mp}/bin/id && echo s > ${mp}/secret && chmod 600 ${mp}/secret`);
    // What `stat /bin/sh` by uid 65534 (or apt's _apt) in a container needs.
    expect(await run(`setpriv --reuid=65534 --regid=65534 --clear-groups stat -c %s ${mp}/bin/sh`)).toBe(`${statSync('/bin/sh').size}\n`);
    expect((await sh(`setpriv --reuid=65534 --regid=65534 --clear-groups cat ${mp}/secret`)).stderr).toMatch(/Permission denied/);
    // nosuid: a setuid-root program run by uid 65534 stays uid 65534.
    expect(await run(`setpriv --reuid=65534 --regid=65534 --clear-groups ${mp}/bin/id -u`)).toBe('65534\n');
    await dmfsOk(`umount ${mp}`);
    await dmfsOk(`mount acc ${mp} --suid --dev`);
    expect(await mountLine(mp)).not.toMatch(/nosuid|nodev/);
    expect(await run(`setpriv --reuid=65534 --regid=65534 --clear-groups ${mp}/bin/id -u`)).toBe('0\n');
    await dmfsOk(`umount ${mp}`);
  });

  it('Pool.connect goes through the daemon: create, mounted and listable, unmount', async () => {
    const c = await Pool.connect(root);
    try {
      expect(c.viaDaemon).toBe(true);
      const mp = `${work}/api`;
      const t0 = process.hrtime.bigint();
      await c.createLayer({ name: 'api1', parent: 'img' });
      const m = await c.mount({ layer: 'api1', mountpoint: mp });
      const names = await fsp.readdir(mp);
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      // eslint-disable-next-line no-console
      console.log(`create -> mounted -> listable through the daemon: ${ms.toFixed(1)} ms`);
      expect(names).toEqual([]);
      expect(m).toMatchObject({ servedBy: 'daemon', readOnly: false });
      await fsp.writeFile(`${mp}/f`, 'api\n');
      expect(await c.unmount({ mountpoint: mp })).toMatchObject({ flushed: true });
    } finally {
      await c.close();
    }
  });

  it('stop unmounts, syncs and commits everything; then commands work on the pool directly', async () => {
    const { pid } = await json('daemon status');
    await dmfsOk(`mount api1 ${work}/api`);
    await run(`echo last > ${work}/api/last`);
    expect(await json('daemon stop')).toMatchObject({ stopped: true, pid });
    expect(await waitProcessGone(pid, 5000)).toBe(true);
    expect(await mountLine(`${work}/api`)).toBe('');
    expect(await json('daemon stop')).toMatchObject({ stopped: false, running: false });
    expect((await dmfs('daemon status --json')).code).toBe(1);
    // No daemon: mount spawns a process of its own, as before.
    const m = await json(`mount api1 ${work}/api`);
    expect(m.servedBy).toBe('process');
    expect(m.pid).not.toBe(pid);
    expect(await run(`cat ${work}/api/f ${work}/api/last`)).toBe('api\nlast\n');
    await dmfsOk(`umount ${work}/api`);
    expect(await json('check')).toMatchObject({ ok: true, problems: [] });
  });

  it('Pool.connect without a daemon serves mounts in this process until close', async () => {
    const c = await Pool.connect(root);
    const mp = `${work}/local`;
    try {
      expect(c.viaDaemon).toBe(false);
      await c.createLayer({ name: 'local1', parent: 'img' });
      const m = await c.mount({ layer: 'local1', mountpoint: mp });
      expect(m).toMatchObject({ pid: process.pid, servedBy: 'process' });
      await fsp.writeFile(`${mp}/x`, 'local\n');
      expect(await fsp.readdir(mp)).toEqual(['x']);
    } finally {
      await c.close(); // unmounts and syncs what it serves
    }
    expect(await mountLine(mp)).toBe('');
    await dmfsOk(`mount local1 ${mp}`);
    expect(await run(`cat ${mp}/x`)).toBe('local\n');
    await dmfsOk(`umount ${mp}`);
  });

  it('started with --no-snapshotter, status says that it serves no snapshots API', async () => {
    await dmfsOk('daemon start --no-snapshotter');
    try {
      expect((await json('daemon status')).services).toEqual([]);
      expect(await dmfsOk('daemon status')).toMatch(/^no services \(started with --no-snapshotter/m);
    } finally {
      await dmfsOk('daemon stop');
    }
  });
});
