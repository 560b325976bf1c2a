/**
 * Issue 11 case 6 (mount failures): a non-root `dmfs mount` against a /dev/fuse of mode
 * 0600 used to end in "fuse failed". It must name the cause (/dev/fuse: permission
 * denied) and what to do (root, or chmod 0666 /dev/fuse with fusermount), exit 1 with
 * FUSE_UNAVAILABLE, leave nothing mounted and the pool as it was; and the advice must
 * work. Runs the real CLI as uid 65534 (setpriv) on a pool that user owns; /dev/fuse's
 * mode is set here and restored in a finally (root, as every other test runs, ignores it).
 * Since issue 12 that user's mounts are served by the kernel transport through fusermount3
 * (test/integration/fuse-nonroot.test.ts); what remains to fail is what both transports
 * need: /dev/fuse openable, a setuid fusermount3, user_allow_other for --allow-other.
 */
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { asUser, cliAsUser, describeFuse, run, sh, shq, tempDirsOwnedBy } from '../support/fuse-harness';
import { DMFS_BIN, ensureBuiltDist } from '../support/built-dist';

const NOBODY = 65534;

describeFuse('clear FUSE mount errors for a non-root user', () => {
  let root: string;
  let work: string;
  const { dmfs: asNobody, dmfsOk: okAsNobody } = cliAsUser(NOBODY, DMFS_BIN, () => root);
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

  /**
   * Runs fn with user_allow_other taken out of /etc/fuse.conf (the set-up puts it in, and
   * the non-root POSIX suites need it), restored in a finally: keep fn short.
   */
  async function withoutUserAllowOther<T>(fn: () => Promise<T>): Promise<T> {
    const conf = '/etc/fuse.conf';
    const before = readFileSync(conf, 'utf8');
    writeFileSync(conf, before.replace(/^(\s*user_allow_other\s*)$/gm, '#$1'));
    try {
      return await fn();
    } finally {
      writeFileSync(conf, before);
    }
  }

  beforeAll(async () => {
    ensureBuiltDist();
    ({ root, work } = await tempDirsOwnedBy(NOBODY, 'mnterr'));
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

  it('the advice works: with /dev/fuse 0666 the same user mounts (kernel transport, through fusermount3; also when asked for by name), writes and unmounts', async () => {
    for (const env of [{}, { DMFS_FUSE_TRANSPORT: 'kernel' }]) {
      const mp = `${work}/b`;
      await withDevFuseMode(0o666, async () => {
        const m = JSON.parse(await okAsNobody(`mount c1 ${mp} --json`, env)) as { transport: string };
        try {
          expect(m.transport).toBe('kernel');
          expect(await isMounted(mp)).toBe(true);
          await run(`${asUser(NOBODY)} sh -c 'echo hi > ${mp}/f && cat ${mp}/f'`);
        } finally {
          await okAsNobody(`umount ${mp}`);
        }
      });
      expect(await isMounted(mp)).toBe(false);
    }
  });

  it('the kernel transport asked for where it cannot mount: FUSE_UNAVAILABLE with the reason (/dev/fuse 0600, no addon)', async () => {
    const mp = `${work}/k2`;
    await withDevFuseMode(0o600, async () => {
      const r = await asNobody(`mount c1 ${mp} --json`, { DMFS_FUSE_TRANSPORT: 'kernel' });
      expect(r.code).toBe(1);
      expect(errorOf(r.stdout)).toMatchObject({ code: 'FUSE_UNAVAILABLE', message: expect.stringMatching(/\/dev\/fuse: permission denied.*chmod 0666 \/dev\/fuse/) });
    });
    await withDevFuseMode(0o666, async () => {
      const r = await asNobody(`mount c1 ${mp} --json`, { DMFS_FUSE_TRANSPORT: 'kernel', DMFS_NATIVE: 'off' });
      expect(r.code).toBe(1);
      expect(errorOf(r.stdout)).toMatchObject({ code: 'FUSE_UNAVAILABLE', message: expect.stringMatching(/native addon is unavailable: DMFS_NATIVE=off/) });
    });
    expect(await isMounted(mp)).toBe(false);
    await okAsNobody('check');
  });

  it('no setuid fusermount3 (a plain copy bound over it in a private mount namespace): the kernel transport says so, auto fails as libfuse 2 would', async () => {
    if ((await sh('command -v unshare')).code !== 0) throw new Error('unshare (util-linux) is needed to hide the setuid fusermount3');
    const fm3 = (await run('readlink -f "$(command -v fusermount3)"')).trim();
    const copy = `${work}/fusermount3-copy`;
    await run(`cp ${fm3} ${copy} && chmod 0755 ${copy}`);
    const inNamespace = (env: string, args = `mount c1 ${work}/n --json`) =>
      sh(`unshare -m --propagation private sh -c ${shq(`mount --bind ${copy} ${fm3} && DMFS_FUSE_TRANSPORT=auto ${env} ${asUser(NOBODY)} env HOME=/tmp node ${DMFS_BIN} ${args} --root ${shq(root)}`)}`);
    await withDevFuseMode(0o666, async () => {
      // doctor sees it: libfuse 2 would be chosen, and it needs the setuid bit as well.
      const doctor = await inNamespace('', 'doctor --json');
      expect(doctor.code).toBe(1);
      const report = JSON.parse(doctor.stdout) as { ok: boolean; fuse: { transport: string; reason: string }; checks: { id: string; status: string }[] };
      expect(report.fuse).toEqual({ transport: 'libfuse2', reason: expect.stringMatching(/fusermount3 is not setuid root/) });
      expect(report.checks.find((c) => c.id === 'fuse.fusermount')?.status).toBe('missing');
      const kernel = await inNamespace('DMFS_FUSE_TRANSPORT=kernel');
      expect(kernel.code).toBe(1);
      expect(errorOf(kernel.stdout)).toMatchObject({ code: 'FUSE_UNAVAILABLE', message: expect.stringMatching(/fusermount3 is not setuid root/) });
      const auto = await inNamespace('');
      expect(auto.code).toBe(1);
      expect(errorOf(auto.stdout)).toMatchObject({ code: 'FUSE_UNAVAILABLE', message: expect.stringMatching(/not setuid root/) });
    });
    expect(await isMounted(`${work}/n`)).toBe(false);
    expect(await okAsNobody('ls --json')).not.toContain(`${work}/n`);
  });

  it('--allow-other by a non-root user without user_allow_other in /etc/fuse.conf says so', async () => {
    await withDevFuseMode(0o666, async () => {
      const r = await withoutUserAllowOther(() => asNobody(`mount c1 ${work}/o --allow-other --json`));
      expect(r.code).toBe(1);
      expect(errorOf(r.stdout)).toMatchObject({ code: 'FUSE_UNAVAILABLE', message: expect.stringMatching(/user_allow_other/) });
      expect(await isMounted(`${work}/o`)).toBe(false);
    });
  });
});
