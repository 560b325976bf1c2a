/**
 * The data path, differentially: fsx-style random I/O (pwrite, ftruncate, MAP_SHARED writes
 * with msync, reads, reopens) checked against a model and against ext4, writers in several
 * processes, O_DIRECT, fallocate, SEEK_HOLE/SEEK_DATA, offsets past 4 GiB, sparse copies
 * and sync, on a fresh dmfs container layer. Every transport runs as root and as a non-root
 * user (`dmfs mount` of that user, the probe's base identity that user: posix-user-mount.ts).
 */
import { describeFuse, fuseTransports, run, sh } from '../support/fuse-harness';
import { DATA_CASES } from '../support/posix-cases';
import {
  defineProbeTests, mountFreshContainer, probeSession, PYTHON,
} from '../support/posix-harness';
import { posixRuns, runLabel } from '../support/posix-user-mount';

/**
 * Case name -> report row. None on the kernel transport (it answers FUSE_FALLOCATE and
 * FUSE_LSEEK). On libfuse 2: R6 no FALLOCATE (fuse-native binds none, so the kernel answers
 * EOPNOTSUPP; glibc's posix_fallocate emulates mode 0); R9 no LSEEK (libfuse 2 has none):
 * the whole file reads as data.
 */
const KNOWN: Record<'kernel' | 'libfuse2', Record<string, string>> = {
  kernel: {},
  libfuse2: {
    'data: fallocate modes and posix_fallocate': 'R6 fallocate',
    'data: SEEK_DATA / SEEK_HOLE on a file with a leading 1 MiB hole': 'R9 SEEK_HOLE',
    'data: SEEK_DATA / SEEK_HOLE after punching, fallocate and a write into the reservation': 'R6 fallocate',
    'data: fsx with fallocate modes and SEEK_DATA / SEEK_HOLE, 600 ops in a 1 MiB file': 'R6 fallocate',
  },
};

for (const { transport, privilege } of posixRuns(fuseTransports())) {
  describeFuse(`POSIX data path: dmfs container layer vs ext4 (${runLabel({ transport, privilege })})`, () => {
    const s = probeSession(DATA_CASES, () => mountFreshContainer(transport, privilege), { privilege });

    it('the fsx and concurrency cases found no mismatch against their own model', () => {
      const own = DATA_CASES.filter((x) => (x.steps[0][0] === 'fsx' || x.steps[0][0].startsWith('parallel')) && !KNOWN[transport][x.name]);
      expect(own.length).toBeGreaterThanOrEqual(5);
      for (const c of own) {
        const r = s.dmfs[c.name]?.[0] ?? '(not run)';
        expect({ c: c.name, r }).toEqual({ c: c.name, r: expect.stringMatching(/^ok:/) });
        expect({ c: c.name, r }).not.toEqual({ c: c.name, r: expect.stringMatching(/mismatch|\[[^\]]*[1-9]/) });
        const m = /lines=(\d+) good=(\d+)/.exec(r);
        if (m) expect(m[2]).toBe(m[1]);
      }
    });

    defineProbeTests(DATA_CASES, KNOWN[transport], () => s);

    it('cp --sparse=always of a sparse file keeps it sparse (du) and identical (cmp); cp out of the mount too', async () => {
      const host = `${s.oracle.dir}/sparse-src`;
      await run(`truncate -s 64M ${host} && dd if=/dev/urandom of=${host} bs=1M count=2 seek=30 conv=notrunc status=none`);
      await run(`cp --sparse=always ${host} ${s.m.mnt}/sparse && cmp ${host} ${s.m.mnt}/sparse`);
      const kib = Number((await run(`du -k ${s.m.mnt}/sparse`)).split(/\s/)[0]);
      expect(kib).toBeGreaterThanOrEqual(2048);
      expect(kib).toBeLessThan(4096);
      await run(`cp ${s.m.mnt}/sparse ${s.oracle.dir}/sparse-back && cmp ${host} ${s.oracle.dir}/sparse-back`);
      expect(Number((await run(`du -k ${s.oracle.dir}/sparse-back`)).split(/\s/)[0])).toBeLessThan(4096);
    });

    it('sync, sync -f, syncfs and fsync of a directory succeed', async () => {
      await run(`echo data > ${s.m.mnt}/synced && sync && sync -f ${s.m.mnt}/synced && sync -d ${s.m.mnt}/synced`);
      await run(`${PYTHON} -c "import os; fd = os.open('${s.m.mnt}', os.O_RDONLY); os.fsync(fd); os.close(fd)"`);
    });

    it('a writer and a reader in two processes: reads during rewrites show only bytes that were written', async () => {
      // dd rewrites 1 MiB chunks with one letter each while another process reads them back:
      // a read may mix two letters (no atomicity across 1 MiB, as on ext4) but never shows
      // anything else.
      const script = `
        f=${s.m.mnt}/shared
        head -c 8388608 /dev/zero > $f
        ( for i in $(seq 1 40); do c=$(echo ABCDEFGHIJKLMNOPQRSTUVWXYZ | cut -c$((1 + i % 26))); head -c 1048576 /dev/zero | tr '\\0' "$c" | dd of=$f bs=1M seek=$((i % 8)) conv=notrunc status=none; done ) &
        bad=0
        for i in $(seq 1 40); do
          n=$(dd if=$f bs=1M skip=$((i % 8)) count=1 status=none | tr -d 'A-Z\\0' | wc -c)
          [ "$n" = 0 ] || bad=$((bad + 1))
        done
        wait
        echo bad=$bad size=$(stat -c %s $f)
      `;
      expect(await run(script)).toBe('bad=0 size=8388608\n');
    });

    it('direct I/O: dd oflag=direct / iflag=direct round-trips (open(O_DIRECT) is accepted)', async () => {
      const r = await sh(`head -c 1048576 /dev/urandom > ${s.oracle.dir}/direct-src && dd if=${s.oracle.dir}/direct-src of=${s.m.mnt}/direct bs=64k oflag=direct status=none && dd if=${s.m.mnt}/direct bs=64k iflag=direct status=none | cmp - ${s.oracle.dir}/direct-src`);
      expect(r).toEqual({ code: 0, stdout: '', stderr: '' });
    });

    it('no unexpected errors were logged by the mount', () => {
      expect(s.m.log.filter((l) => /unexpected/.test(l))).toEqual([]);
    });
  });
}
