/**
 * Issue 11, case 3: the host file system under a loop pool fills up. A real 100 MiB tmpfs
 * holds a `--size 1G` pool; a real `dmfs mount` daemon serves a container layer; dd fills
 * it through the mount. Writes must fail with ENOSPC (not EIO), promptly; the daemon stays
 * up and keeps serving reads; fsynced data reads back byte-identical; after rm, writes
 * work again; info and doctor say the host is full; the pool checks clean afterwards.
 */
import * as path from 'node:path';
import { describeFuse, run, sh, shq, tempDir } from '../support/fuse-harness';

const REPO = path.resolve(__dirname, '..', '..');
const CLI = path.join(REPO, 'bin', 'dmfs.js');

describeFuse('host file system full under a loop pool (real tmpfs, real dmfs mount)', () => {
  let host: string;
  let root: string;
  let work: string;
  let mnt: string;
  let pid = 0;
  const dmfs = (args: string) => sh(`node ${CLI} ${args} --root ${shq(root)}`);
  const dmfsOk = async (args: string): Promise<string> => {
    const r = await dmfs(args);
    if (r.code !== 0) throw new Error(`dmfs ${args} failed (${r.code}):\n${r.stdout}${r.stderr}`);
    return r.stdout;
  };
  const alive = async () => (await sh(`s=$(ps -o stat= -p ${pid}) && [ "\${s#Z}" = "$s" ]`)).code === 0;
  const mounted = async () => (await sh(`grep -q ' ${mnt} fuse.dmfs ' /proc/self/mounts`)).code === 0;

  beforeAll(async () => {
    await run(`node ${path.join(REPO, 'scripts', 'setup.js')} --quiet`, { timeoutMs: 600_000 });
    host = tempDir('hostfull');
    work = tempDir('hostfull-work');
    await run(`mount -t tmpfs -o size=100m dmfs-hostfull ${shq(host)}`);
    root = path.join(host, 'pool');
    mnt = path.join(work, 'm');
    await dmfsOk('pool create --size 1G');
    // An image layer below the container: overwriting part of its file copies a block up
    // (copy_file_range in the data file), the third way a write can meet a full host.
    await run(`mkdir -p ${work}/img && head -c 2097152 /dev/urandom > ${work}/img/lower`);
    await dmfsOk(`import ${shq(work + '/img')} --name img`);
    await dmfsOk('create ctr --from img');
    const m = JSON.parse(await dmfsOk(`mount ctr ${shq(mnt)} --json`)) as { pid: number };
    pid = m.pid;
  }, 600_000);

  afterAll(async () => {
    if (await mounted()) await sh(`fusermount -uz ${shq(mnt)}`);
    if (pid) await sh(`kill ${pid} 2>/dev/null; true`);
    await sh(`umount -l ${shq(host)}`);
  });

  it('writes fail promptly with ENOSPC, the daemon keeps serving, rm makes room again, info/doctor say full, check is clean', async () => {
    // Acknowledged (fsynced) data before the host fills.
    await run(`head -c 8388608 /dev/urandom > ${work}/keep && dd if=${work}/keep of=${mnt}/keep bs=1M conv=fsync status=none`);
    const keepSum = (await run(`sha256sum < ${work}/keep`)).trim();

    // Fill through the mount until the host says no.
    const t0 = Date.now();
    const fill = await sh(`dd if=/dev/zero of=${mnt}/fill bs=1M status=none`, { timeoutMs: 60_000 });
    const firstEnospcMs = Date.now() - t0;
    // eslint-disable-next-line no-console
    console.log(`time to first ENOSPC filling a 100 MiB tmpfs through the mount: ${firstEnospcMs} ms`);
    expect(fill.code).not.toBe(0);
    expect(fill.stderr).toMatch(/No space left on device/);
    expect(fill.stderr).not.toMatch(/Input\/output error/);
    expect(firstEnospcMs).toBeLessThan(30_000);

    // Further writes fail the same way, at once, and on a new file too.
    const t1 = Date.now();
    const more = await sh(`dd if=/dev/zero of=${mnt}/more bs=1M count=4 conv=fsync status=none`);
    const secondMs = Date.now() - t1;
    expect(more.code).not.toBe(0);
    expect(more.stderr).toMatch(/No space left on device/);
    expect(secondMs).toBeLessThan(5_000);

    // The daemon is alive, the mount answers, acknowledged data reads back byte-identical.
    expect(await alive()).toBe(true);
    expect(await mounted()).toBe(true);
    expect((await run(`sha256sum < ${mnt}/keep`)).trim()).toBe(keepSum);
    const fillBytes = Number((await run(`stat -c %s ${mnt}/fill`)).trim());
    expect(fillBytes).toBeGreaterThan(0);
    expect(Number((await run(`cat ${mnt}/fill | wc -c`)).trim())).toBe(fillBytes);
    expect((await run(`ls ${mnt} | sort`)).split('\n').filter(Boolean)).toEqual(expect.arrayContaining(['fill', 'keep']));

    // info and doctor say the host file system is full, and what to do.
    const info = JSON.parse(await dmfsOk('info --json')) as { hostFilesystem: { state: string; freeBytes: number; advice: string } };
    expect(info.hostFilesystem.state).toBe('full');
    expect(info.hostFilesystem.advice).toMatch(/free space/i);
    expect((await dmfsOk('info')).split('\n').find((l) => l.includes('Host Space Available'))).toMatch(/FULL: .*free space/i);
    const doctor = JSON.parse((await dmfs('doctor --json')).stdout) as { checks: { id: string; status: string; detail: string; hint: string | null }[] };
    const space = doctor.checks.find((c) => c.id === 'root.space');
    expect(space?.status).toBe('warn');
    expect(space?.detail).toMatch(/full/);
    expect(space?.hint).toMatch(/free space/i);
    // The daemon's log says why writes fail.
    expect(await run(`cat ${shq(root)}/run/*.log`)).toMatch(/host file system under the pool is full|failed with ENOSPC/);

    // rm gives room back: writes work again and read back.
    await run(`rm ${mnt}/fill && sync`);
    await run(`head -c 6291456 /dev/urandom > ${work}/after && dd if=${work}/after of=${mnt}/after bs=1M conv=fsync status=none`);
    expect((await run(`sha256sum < ${mnt}/after`)).trim()).toBe((await run(`sha256sum < ${work}/after`)).trim());
    expect((await run(`sha256sum < ${mnt}/keep`)).trim()).toBe(keepSum);
    expect(await alive()).toBe(true);
    const infoAfter = JSON.parse(await dmfsOk('info --json')) as { hostFilesystem: { state: string } };
    expect(infoAfter.hostFilesystem.state).not.toBe('full');

    // Something else fills the host to the last byte (dmfs's own allocation stops short of
    // that). A fresh daemon holds a reservation of blocks the host has not backed yet, so
    // data-file writes now meet ENOSPC from pwrite itself, and metadata commits (inline
    // files) use up the fallocated headroom and then fail in LMDB with ENOSPC. Still ENOSPC,
    // never EIO, no SIGBUS, the daemon serves on; nothing committed is lost.
    await dmfsOk(`umount ${shq(mnt)}`);
    pid = (JSON.parse(await dmfsOk(`mount ctr ${shq(mnt)} --json`)) as { pid: number }).pid;
    await sh(`dd if=/dev/zero of=${shq(host)}/hog bs=1M status=none; dd if=/dev/zero of=${shq(host)}/hog2 bs=4k status=none; true`);
    expect(Number((await run(`stat -f -c %a ${shq(host)}`)).trim())).toBe(0);
    const copyUp = await sh(`dd if=/dev/urandom of=${mnt}/lower bs=4k count=1 seek=3 conv=notrunc,fsync status=none`);
    expect(copyUp.code).not.toBe(0);
    expect(copyUp.stderr).toMatch(/No space left on device/);
    expect((await run(`sha256sum < ${mnt}/lower`)).trim()).toBe((await run(`sha256sum < ${work}/img/lower`)).trim());
    const data = await sh(`dd if=/dev/urandom of=${mnt}/hostfull-a bs=64k count=16 conv=fsync status=none`);
    expect(data.code).not.toBe(0);
    expect(data.stderr).toMatch(/No space left on device/);
    expect(await alive()).toBe(true);
    // ENOSPC came from the host's own write into the data file, and the log says so.
    expect(await run(`cat ${shq(root)}/run/*.log`)).toMatch(/writing the data file \S+ failed with ENOSPC/);
    // 32 KiB files live inline in the metadata: each commit takes metadata pages.
    const meta = await sh(`head -c 32768 /dev/urandom > ${work}/small; for i in $(seq 1 5000); do cp ${work}/small ${mnt}/small-$i 2>${work}/err || { echo $i; cat ${work}/err; exit 1; }; done; echo none`);
    // eslint-disable-next-line no-console
    console.log(`host at 0 bytes free: the inline-file loop stopped with: ${meta.stdout.trim().replace(/\n/g, ' ')}`);
    if (/Input\/output error/.test(meta.stdout)) console.log(await run(`tail -5 ${shq(root)}/run/*.log`)); // eslint-disable-line no-console
    expect(meta.stdout).toMatch(/No space left on device/);
    expect(meta.stdout).not.toMatch(/Input\/output error|Transport endpoint/);
    expect(await alive()).toBe(true);
    const written = Number(meta.stdout.trim().split('\n')[0]) - 1;
    expect(written).toBeGreaterThan(0);
    // The files before the failure are all there, whole; the failed one is absent or empty.
    expect((await run(`cat ${mnt}/small-1 ${mnt}/small-${written} | sha256sum`)).trim()).toBe((await run(`cat ${work}/small ${work}/small | sha256sum`)).trim());
    expect((await run(`sha256sum < ${mnt}/keep`)).trim()).toBe(keepSum);
    expect((await run(`sha256sum < ${mnt}/after`)).trim()).toBe((await run(`sha256sum < ${work}/after`)).trim());
    const infoFull = JSON.parse(await dmfsOk('info --json')) as { hostFilesystem: { state: string } };
    expect(infoFull.hostFilesystem.state).toBe('full');
    await run(`rm -f ${shq(host)}/hog ${shq(host)}/hog2`);
    await run(`dd if=/dev/urandom of=${mnt}/hostfull-b bs=64k count=8 conv=fsync status=none && cp ${work}/small ${mnt}/small-after`);
    expect(await alive()).toBe(true);

    await dmfsOk(`umount ${shq(mnt)}`);
    const check = JSON.parse((await dmfs('check --data --json')).stdout) as { ok: boolean; problems: unknown[] };
    expect(check.problems).toEqual([]);
    expect(check.ok).toBe(true);

    // A fresh process reads the same bytes.
    const m2 = JSON.parse(await dmfsOk(`mount ctr ${shq(mnt)} --json`)) as { pid: number };
    pid = m2.pid;
    expect((await run(`sha256sum < ${mnt}/keep`)).trim()).toBe(keepSum);
    await dmfsOk(`umount ${shq(mnt)}`);
  }, 300_000);
});
