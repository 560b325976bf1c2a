/**
 * Issue 11 case 6 (mount failures): a non-root `dmfs mount` against a /dev/fuse of mode
 * 0600 used to end in "fuse failed". It must name the cause (/dev/fuse: permission
 * denied) and what to do (root, or chmod 0666 /dev/fuse with fusermount), exit 1 with
 * FUSE_UNAVAILABLE, leave nothing mounted and the pool as it was; and the advice must
 * work. Runs the real CLI as uid 65534 (setpriv) on a pool that user owns; /dev/fuse's
 * mode is set here and restored in a finally (root, as every other test runs, ignores it).
 */
import { chmodSync, chownSync, statSync } from 'node:fs';
import { describeFuse, run, sh, shq, tempDir } from '../support/fuse-harness';
import { DMFS_BIN, ensureBuiltDist } from '../support/built-dist';

const NOBODY = 65534;

describeFuse('clear FUSE mount errors for a non-root user', () => {
  let root: string;
  let work: string;
  const asNobody = (args: string, env: NodeJS.ProcessEnv = {}) =>
    sh(`setpriv --reuid ${NOBODY} --regid ${NOBODY} --clear-groups node ${DMFS_BIN} ${args} --root ${shq(root)}`, { env: { HOME: '/tmp', ...env } });
  const okAsNobody = async (args: string) => {
    const r = await asNobody(args);
    if (r.code !== 0) throw new Error(`dmfs ${args} failed (${r.code}):\n${r.stdout}${r.stderr}`);
    return r.stdout;
  };
  const isMounted = async (mp: string) => (await sh(`grep -q ' ${mp} fuse.dmfs ' /proc/self/mounts`)).code === 0;
  const errorOf = (stdout: string) => (JSON.parse(stdout.trim().split('\n').pop() || '{}') as { error?: { code: string; message: string } }).error;

  /** Runs fn with /dev/fuse at `mode`, restoring the mode it had. */
  async function withDevFuseMode<T>(mode: number, fn: () => Promise<T>): Promise<T> {
    const before = statSync('/dev/fuse').mode & 0o7777;
    chmodSync('/dev/fuse', mode);
    try {
      return await fn();
    } finally {
      chmodSync('/dev/fuse', before);
    }
  }

  beforeAll(async () => {
    ensureBuiltDist();
    if ((await sh('command -v setpriv')).code !== 0) throw new Error('setpriv (util-linux) is needed to run the CLI as another user');
    root = tempDir('mnterr-pool');
    work = tempDir('mnterr-work');
    chownSync(root, NOBODY, NOBODY);
    chownSync(work, NOBODY, NOBODY);
    await okAsNobody('pool create --size 256M');
    await okAsNobody('create c1');
  }, 300_000);

  afterAll(async () => {
    await sh(`for m in $(grep -o ' ${work}/[^ ]* fuse.dmfs ' /proc/self/mounts | cut -d' ' -f2); do fusermount -uz "$m"; done`);
  });

  it('/dev/fuse 0600: background and foreground mounts say "/dev/fuse: permission denied" and what to do; nothing changes', async () => {
    const mp = `${work}/a`;
    await withDevFuseMode(0o600, async () => {
      for (const fg of ['', '--foreground']) {
        const r = await asNobody(`mount c1 ${mp} ${fg} --json`);
        expect(r.code).toBe(1);
        const err = errorOf(r.stdout);
        expect(err?.code).toBe('FUSE_UNAVAILABLE');
        expect(err?.message).toMatch(/\/dev\/fuse: permission denied/);
        expect(err?.message).toMatch(/as root/);
        expect(err?.message).toMatch(/chmod 0666 \/dev\/fuse/);
        expect(err?.message).not.toMatch(/fuse failed/);
        expect(r.stderr).not.toMatch(/internal error|\n\s+at /); // no stack trace
        expect(await isMounted(mp)).toBe(false);
      }
    });
    // The pool is as it was: no holder left behind, nothing for check to report.
    expect(await okAsNobody('ls --json')).not.toContain(mp);
    await okAsNobody('check');
  });

  it('the advice works: with /dev/fuse 0666 the same user mounts through fusermount, writes and unmounts', async () => {
    const mp = `${work}/b`;
    await withDevFuseMode(0o666, async () => {
      await okAsNobody(`mount c1 ${mp}`);
      try {
        expect(await isMounted(mp)).toBe(true);
        await run(`setpriv --reuid ${NOBODY} --regid ${NOBODY} --clear-groups sh -c 'echo hi > ${mp}/f && cat ${mp}/f'`);
      } finally {
        await okAsNobody(`umount ${mp}`);
      }
    });
    expect(await isMounted(mp)).toBe(false);
  });

  it('the kernel transport asked for by a non-root user: FUSE_UNAVAILABLE saying it needs root', async () => {
    const r = await asNobody(`mount c1 ${work}/k --json`, { DMFS_FUSE_TRANSPORT: 'kernel' });
    expect(r.code).toBe(1);
    expect(errorOf(r.stdout)).toMatchObject({ code: 'FUSE_UNAVAILABLE', message: expect.stringMatching(/needs root/) });
  });

  it('--allow-other by a non-root user without user_allow_other in /etc/fuse.conf says so', async () => {
    const conf = await sh('cat /etc/fuse.conf');
    if (/^\s*user_allow_other\s*$/m.test(conf.stdout)) {
      // eslint-disable-next-line no-console
      console.log('skipping: /etc/fuse.conf allows user_allow_other on this host');
      return;
    }
    await withDevFuseMode(0o666, async () => {
      const r = await asNobody(`mount c1 ${work}/o --allow-other --json`);
      expect(r.code).toBe(1);
      expect(errorOf(r.stdout)).toMatchObject({ code: 'FUSE_UNAVAILABLE', message: expect.stringMatching(/user_allow_other/) });
      expect(await isMounted(`${work}/o`)).toBe(false);
    });
  });
});
