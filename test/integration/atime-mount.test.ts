/**
 * `dmfs mount --noatime / --strictatime` (and relatime, the default) as a user sees them:
 * a mount served by the background daemon, `stat %X` after reads. O_DIRECT reads reach
 * dmfs every time (page-cache hits never do, whatever the option). mount.dmfs turns
 * `-o noatime` / `-o strictatime` into the flags (checked with -fv, which only prints).
 */
import * as path from 'node:path';
import { cliAt, describeFuse, run, sh, shq, tempDir } from '../support/fuse-harness';

const REPO = path.resolve(__dirname, '..', '..');
const CLI = path.join(REPO, 'bin', 'dmfs.js');

describeFuse('dmfs mount: atime options', () => {
  let root: string;
  let work: string;
  const { dmfs, dmfsOk } = cliAt(CLI, () => root);
  const atime = async (f: string): Promise<string> => (await run(`stat -c %x ${f}`)).trim();
  const directRead = (f: string) => run(`dd if=${f} of=/dev/null bs=4096 count=1 iflag=direct status=none`);

  beforeAll(async () => {
    root = tempDir('atime-pool');
    work = tempDir('atime-work');
    await dmfsOk('pool create --size 2G');
    await dmfsOk('create ctr');
  }, 120_000);

  afterAll(async () => {
    await sh(`for m in $(grep -o ' ${work}/[^ ]* fuse.dmfs ' /proc/self/mounts | cut -d' ' -f2); do fusermount -uz "$m"; done; rm -rf ${shq(root)} ${shq(work)}`);
  });

  /** Mounts with `flags`, makes `name` with atime 2000-01-01 (older than its mtime), runs `body`, unmounts. */
  async function withMount(flags: string, name: string, body: (f: string) => Promise<void>): Promise<void> {
    const mp = `${work}/m`;
    await dmfsOk(`mount ctr ${mp} ${flags}`);
    try {
      const f = `${mp}/${name}`;
      await run(`echo content > ${f} && touch -a -d '2000-01-01 00:00:00' ${f}`);
      await body(f);
    } finally {
      await dmfsOk(`umount ${mp}`);
    }
  }

  /** Two O_DIRECT reads 20 ms apart: the atime after each. */
  async function twoReads(f: string): Promise<[string, string]> {
    await directRead(f);
    const first = await atime(f);
    await new Promise((r) => setTimeout(r, 20));
    await directRead(f);
    return [first, await atime(f)];
  }

  it('relatime (the default): the first read moves an atime older than mtime, a re-read within a day does not', async () => {
    await withMount('', 'relatime', async (f) => {
      const [first, second] = await twoReads(f);
      expect(first).not.toMatch(/^2000-/);
      expect(second).toBe(first);
    });
  });

  it('--strictatime moves atime on every read dmfs serves', async () => {
    await withMount('--strictatime', 'strict', async (f) => {
      const [first, second] = await twoReads(f);
      expect(first).not.toMatch(/^2000-/);
      expect(second > first).toBe(true);
    });
  });

  it('--noatime never moves atime on reads', async () => {
    await withMount('--noatime', 'never', async (f) => {
      await run(`cat ${f} > /dev/null`);
      await directRead(f);
      expect(await atime(f)).toMatch(/^2000-01-01 00:00:00/);
    });
  });

  it('--noatime with --strictatime is a usage error (exit 2)', async () => {
    const r = await dmfs(`mount ctr ${work}/never-mounted --noatime --strictatime`);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--noatime and --strictatime/);
  });

  it('mount.dmfs passes -o noatime / strictatime on as the flags, and takes relatime / atime as the default', async () => {
    const helper = (opts: string) => sh(`DMFS_BIN=/bin/true sh ${REPO}/mount-helpers/mount.dmfs ${root}:ctr ${work}/x -o ${opts} -fv`);
    expect((await helper('ro,noatime')).stderr).toMatch(/mount ctr \S+ --root \S+ --ro --noatime$/m);
    expect((await helper('strictatime')).stderr).toMatch(/ --strictatime$/m);
    const rel = await helper('relatime,atime');
    expect(rel.stderr).not.toMatch(/--noatime|--strictatime|ignoring/);
  });
});
