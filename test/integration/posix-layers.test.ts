/**
 * The same differential testing with the targets in image layers: a tree imported as a
 * directory (`dmfs import DIR`), a second image layer built through a mount (xattrs, a
 * whiteout, a cross-layer hard link, an opaque directory), and a container on top. The ext4
 * oracle is the same tree copied with `cp -a` and changed by the same script. Every case
 * works on lower files: whiteouts, opaque directories, copy-up of attributes and of blocks,
 * hard links across layers, the dpkg replacement pattern, and timestamps. Every transport
 * runs as root and as a non-root user (the image built by root, what root made in it given
 * to that user, the container mounted by that user's `dmfs mount`: posix-harness.ts,
 * posix-user-mount.ts).
 */
import { describeFuse, fuseTransports, run } from '../support/fuse-harness';
import { LAYER_CASES, LAYER_DATA_CASES, LOWER_OVERLAY_SCRIPT, LOWER_TREE_SCRIPT } from '../support/posix-cases';
import {
  defineProbeTests, GiB, mountForAll, mountImageContainer, openTempDir, probeSession,
} from '../support/posix-harness';
import { posixRuns, runLabel } from '../support/posix-user-mount';
import { Pool } from '../../src/api';
import { importImage } from '../../src/image/importer';

/**
 * Case name -> report row. None left on the kernel transport, where node id = inode; libfuse
 * 2 keeps R2 (its path API gives each name of a hard link its own kernel inode) and R6
 * (fuse-native binds no fallocate, so the kernel answers EOPNOTSUPP).
 */
const KNOWN: Record<'kernel' | 'libfuse2', Record<string, string>> = {
  kernel: {},
  libfuse2: {
    'layers: hard links of the image, both names open while one is written': 'R2 hard-link aliases',
    'layers: fsx with fallocate and SEEK_DATA / SEEK_HOLE on a lower file (punched lower blocks read zeros)': 'R6 fallocate',
  },
};

const CASES = [...LAYER_CASES, ...LAYER_DATA_CASES];

/** Case directories a known difference leaves unlike ext4's (libfuse 2: the fallocate fsx stops at its first fallocate). */
const UNLIKE_DIRS: Record<'kernel' | 'libfuse2', string[]> = { kernel: [], libfuse2: ['fal'] };

for (const { transport, privilege } of posixRuns(fuseTransports())) {
  describeFuse(`POSIX on image layers: dmfs container over an imported image vs ext4 (${runLabel({ transport, privilege })})`, () => {
    const s = probeSession(CASES, (oracle) => mountImageContainer(LOWER_TREE_SCRIPT, LOWER_OVERLAY_SCRIPT, oracle.dir, transport, privilege), { sequential: true, privilege });

    it('after the cases both trees list the same (modes, owners, link counts, sizes, xattrs, content)', async () => {
      const prune = UNLIKE_DIRS[transport].map((u) => `-path ./${u} -prune -o `).join('');
      const listing = (d: string) =>
        run(`cd ${d} && { find . -mindepth 1 ${prune}-type d -printf '%p %y %#m %U:%G %n\\n'; find . ${prune}! -type d -printf '%p %y %#m %U:%G %n %s %l\\n'; } | sort`);
      expect(await listing(s.m.mnt)).toBe(await listing(s.oracle.dir));
      const xattrs = (d: string) => run(`cd ${d} && { getfattr -R -h -d -m - -e hex . 2>/dev/null || true; } | sed '/^$/d' | sort`);
      expect(await xattrs(s.m.mnt)).toBe(await xattrs(s.oracle.dir));
      await run(`diff -r --no-dereference ${UNLIKE_DIRS[transport].map((u) => `-x ${u} `).join('')}${s.oracle.dir} ${s.m.mnt}`);
    });

    defineProbeTests(CASES, KNOWN[transport], () => s);

    it('find -newer, du and df see the container changes', async () => {
      for (const d of [s.oracle.dir, s.m.mnt]) await run(`touch -d '2000-01-01' ${d}/ref && sleep 0.02 && echo changed > ${d}/unl/keep`);
      const newer = (d: string) => run(`cd ${d} && find . -newer ref -type f | sort`);
      expect(await newer(s.m.mnt)).toBe(await newer(s.oracle.dir));
      const du = Number((await run(`du -sk ${s.m.mnt}/trc`)).split(/\s/)[0]);
      expect(du).toBeGreaterThan(100);
      expect(await run(`df -P ${s.m.mnt} | tail -1`)).toMatch(/^dmfs:c /);
    });

    it('no unexpected errors were logged by the mount', () => {
      expect(s.m.log.filter((l) => /unexpected/.test(l))).toEqual([]);
    });
  });
}

describeFuse('dmfs import DIR keeps what cp -a keeps', () => {
  test('xattrs of the source tree (user.*, security.capability) reach the image', async () => {
    const src = openTempDir('posix-import');
    await run(`cd ${src} && echo f > f && cp /usr/bin/true ping && setfattr -n user.k -v v f && setfattr -n security.capability -v 0x0100000200200000000000000000000000000000 ping`);
    const pool = await Pool.create({ root: openTempDir('posix-import-pool'), sizeBytes: 4 * GiB });
    await importImage(pool.store, src, { name: 'img' });
    await pool.store.createLayer('c', { parent: 'img', kind: 'container' });
    const m = await mountForAll(pool, await pool.store.openLayer('c'), [src]);
    try {
      const dump = (d: string) => run(`cd ${d} && getfattr -h -d -m - -e hex f ping 2>/dev/null | grep -v '^$'`);
      expect(await dump(m.mnt)).toBe(await dump(src));
    } finally {
      await m.close();
    }
  });
});
