/**
 * Issue 12: a non-root `dmfs mount` is served by the kernel transport, mounted through the
 * setuid fusermount3 (which passes the /dev/fuse fd back over a unix socket), not by
 * libfuse 2. Runs the real CLI as uid 65534 (setpriv) on a pool that user owns, with
 * /dev/fuse at its usual mode 0666 (set here, restored after).
 *
 * Which transport served a mount: /proc/mounts cannot tell (both mount fuse.dmfs with the
 * same source and options), so the witnesses are `dmfs mount --json` and `dmfs doctor
 * --json`, the daemon's log, and what only the kernel transport negotiates with the kernel:
 * 1 MiB WRITE requests (libfuse 2 gets 128 KiB), counted in the log at unmount.
 */
import { chmodSync, statSync } from 'node:fs';
import { promises as fsp } from 'node:fs';
import { cliAsUser, describeFuse, run, sh, tempDirsOwnedBy, waitProcessGone } from '../support/fuse-harness';
import { DMFS_BIN, ensureBuiltDist } from '../support/built-dist';

const NOBODY = 65534;

interface MountJson {
  layer: string;
  mountpoint: string;
  pid: number;
  log: string;
  transport: string;
}

describeFuse('non-root mounts served by the kernel transport (through fusermount3)', () => {
  let root: string;
  let work: string;
  let devFuseModeBefore: number;
  const { dmfsOk, shell: asNobody } = cliAsUser(NOBODY, DMFS_BIN, () => root);
  const mountLine = async (mp: string) => (await sh(`grep ' ${mp} ' /proc/self/mountinfo`)).stdout;
  const waitGone = waitProcessGone;
  /** The "FUSE requests: {...}" line the kernel transport logs at unmount (libfuse 2 has none). */
  const requestCounts = async (log: string): Promise<Record<string, number> | null> => {
    const lines = (await fsp.readFile(log, 'utf8')).split('\n').filter((l) => l.includes('FUSE requests: '));
    return lines.length ? (JSON.parse(lines[lines.length - 1].split('FUSE requests: ')[1]) as Record<string, number>) : null;
  };

  beforeAll(async () => {
    ensureBuiltDist();
    devFuseModeBefore = statSync('/dev/fuse').mode & 0o7777;
    chmodSync('/dev/fuse', 0o666);
    ({ root, work } = await tempDirsOwnedBy(NOBODY, 'nonroot'));
    await dmfsOk('pool create --size 1G');
    await dmfsOk('create c1');
  }, 300_000);

  afterAll(async () => {
    await sh(`for m in $(grep -o ' ${work}/[^ ]* fuse.dmfs ' /proc/self/mounts | cut -d' ' -f2); do fusermount -uz "$m"; done`);
    chmodSync('/dev/fuse', devFuseModeBefore);
  });

  it('dmfs doctor as nobody names the kernel transport and the fusermount it mounts through', async () => {
    const report = JSON.parse(await dmfsOk('doctor --json')) as { ok: boolean; fuse: { transport: string; reason: string }; checks: { id: string; status: string; essential: boolean }[] };
    expect(report.fuse).toEqual({ transport: 'kernel', reason: expect.stringMatching(/^not root: \/.*fusermount3? \(setuid root\) mounts and passes the \/dev\/fuse descriptor back$/) });
    expect(report.checks.find((c) => c.id === 'fuse.transport')).toMatchObject({ status: 'ok' });
    // libfuse.so.2 is not needed for mounting here any more.
    expect(report.checks.find((c) => c.id === 'fuse.library')).toMatchObject({ essential: false });
    expect(report.ok).toBe(true);
    expect(await dmfsOk('doctor')).toMatch(/^ok +FUSE transport +kernel: .*not root: .*fusermount/m);
  });

  it('mounts as nobody with the kernel transport, serves POSIX file operations, and unmounts cleanly', async () => {
    const mp = `${work}/c1`;
    const m = JSON.parse(await dmfsOk(`mount c1 ${mp} --json`)) as MountJson;
    expect(m).toMatchObject({ layer: 'c1', mountpoint: mp, transport: 'kernel' });
    // Mounted by fusermount for this user: fuse.dmfs, owner 65534, nosuid,nodev forced.
    expect(await mountLine(mp)).toMatch(/ rw,nosuid,nodev,.* - fuse\.dmfs dmfs:c1 rw,user_id=65534,group_id=65534/);
    expect(await fsp.readFile(m.log, 'utf8')).toMatch(/mounted layer c1 at .* \(read-write, kernel transport\)/);

    const out = await asNobody(`cd ${mp}
      echo hello > a && cat a
      mv a b && ln b c && stat -c '%h %i' b c | sort -u
      ln -s b s && readlink s && cat s
      chmod 640 b && stat -c '%a' c
      rm b && cat c && test ! -e b && test ! -e s && echo dangling
      mkdir d && mv c d/c && ls d
      dd if=/dev/urandom of=d/big bs=1M count=4 status=none && sha256sum d/big > sum && sha256sum -c --quiet sum && echo sum-ok
      rm s && ls`);
    expect(out).toMatch(/^hello\n2 \d+\nb\nhello\n640\nhello\ndangling\nc\nsum-ok\nd\nsum\n$/);
    // Without allow_other only the mounting user gets in (root too is refused), so nobody reads.
    const sum = await asNobody(`cat ${mp}/sum`);

    const u = JSON.parse(await dmfsOk(`umount ${mp} --json`)) as { flushed: boolean; pid: number };
    expect(u).toMatchObject({ flushed: true, pid: m.pid });
    expect(await mountLine(mp)).toBe('');
    expect(await waitGone(m.pid)).toBe(true);
    // Only the kernel transport negotiates 1 MiB writes: 4 MiB written with bs=1M took a
    // handful of WRITEs (libfuse 2: at least 32 of 128 KiB).
    const counts = await requestCounts(m.log);
    expect(counts).toMatchObject({ INIT: 1, LINK: 1, SYMLINK: 1, RENAME2: 2 });
    expect(counts!.WRITE).toBeLessThan(16);

    // A fresh daemon of the same user reads what the first one committed.
    const again = JSON.parse(await dmfsOk(`mount c1 ${mp} --json`)) as MountJson;
    expect(again.transport).toBe('kernel');
    expect(await asNobody(`cd ${mp} && cat d/c && sha256sum d/big`)).toBe(`hello\n${sum}`);
    await dmfsOk(`umount ${mp}`);
  });

  it('an unmount from outside (fusermount3 -u by the same user) ends the daemon, which syncs and exits', async () => {
    const mp = `${work}/outside`;
    const m = JSON.parse(await dmfsOk(`mount c1 ${mp} --json`)) as MountJson;
    expect(m.transport).toBe('kernel');
    await asNobody(`echo kept > ${mp}/kept`);
    await asNobody(`fusermount3 -u ${mp}`);
    expect(await waitGone(m.pid)).toBe(true);
    expect(await fsp.readFile(m.log, 'utf8')).toMatch(/unmounted .*outside \(unmounted\)/);
    await dmfsOk(`mount c1 ${mp}`);
    expect(await asNobody(`cat ${mp}/kept`)).toBe('kept\n');
    await dmfsOk(`umount ${mp}`);
  });

  it('without the addon the same user falls back to libfuse 2, and doctor says why', async () => {
    const env = { DMFS_NATIVE: 'off' };
    const report = JSON.parse(await dmfsOk('doctor --json', env)) as { fuse: { transport: string; reason: string } };
    expect(report.fuse).toEqual({ transport: 'libfuse2', reason: 'the native addon is unavailable: DMFS_NATIVE=off' });
    const mp = `${work}/fallback`;
    const m = JSON.parse(await dmfsOk(`mount c1 ${mp} --json`, env)) as MountJson;
    expect(m.transport).toBe('libfuse2');
    expect(await asNobody(`cat ${mp}/d/c`)).toBe('hello\n');
    await dmfsOk(`umount ${mp}`, env);
    expect(await requestCounts(m.log)).toBeNull();
  });
});
