/**
 * Copies that share blocks, on a real mount driven with cp, dd, cmp and python's
 * os.copy_file_range: copy_file_range(2) inside one mount maps the source's blocks (no
 * data written, no pool growth), a later write into the copy changes one block of the
 * copy only, `dmfs check` verifies the reference counts and `dmfs export` writes full
 * content. FICLONE (`cp --reflink=always`) does not reach FUSE on Linux 6.18 (no
 * remap_file_range in fs/fuse): the test records what the kernel answers.
 */
import { rmSync } from 'node:fs';
import * as path from 'node:path';
import { ensureBuiltDist } from '../support/built-dist';
import { cliAsUser, describeFuse, run, sh, shq, tempDir } from '../support/fuse-harness';

const REPO = path.resolve(__dirname, '..', '..');
const CLI = path.join(REPO, 'bin', 'dmfs.js');
const MIB = 1024 * 1024;
const BLOCK = 65536;
/** Big enough that a data copy would show (~0.3 s at the write speed here), small enough for CI. */
const FILE_MIB = 256;

describeFuse('copy_file_range and reflinks share blocks (kernel transport)', () => {
  let root: string;
  let work: string;
  let mp: string;
  // As root, transport auto: the kernel transport, whose COPY_FILE_RANGE shares blocks.
  const { dmfsOk } = cliAsUser(0, CLI, () => root);
  const dataUsed = async (): Promise<{ used: number; allocated: number }> => {
    const info = JSON.parse(await dmfsOk('info --json')) as { dataSpaceUsedBytes: number; dataFileAllocatedBytes: number };
    return { used: info.dataSpaceUsedBytes, allocated: info.dataFileAllocatedBytes };
  };
  const sha = async (file: string) => (await run(`sha256sum < ${shq(file)}`)).trim();

  beforeAll(async () => {
    ensureBuiltDist();
    root = tempDir('reflink-pool');
    work = tempDir('reflink-work');
    mp = path.join(work, 'mnt');
    await dmfsOk('pool create --size 4G --opt dm.min_free_space=0');
    await dmfsOk('create ctr');
    await dmfsOk(`mount ctr ${mp}`);
    await run(`dd if=/dev/urandom of=${mp}/big bs=1M count=${FILE_MIB} status=none && sync`, { timeoutMs: 120_000 });
  }, 180_000);

  afterAll(async () => {
    await sh(`for m in $(grep -o ' ${work}/[^ ]* fuse.dmfs ' /proc/self/mounts | cut -d' ' -f2); do fusermount3 -uz "$m" || umount -l "$m"; done`);
    rmSync(work, { recursive: true, force: true });
    rmSync(root, { recursive: true, force: true });
  });

  it(`cp of a ${FILE_MIB} MiB file shares its blocks: no pool growth, same bytes`, async () => {
    const before = await dataUsed();
    const t0 = process.hrtime.bigint();
    await run(`cp ${mp}/big ${mp}/copy`);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    // eslint-disable-next-line no-console
    console.log(`cp of ${FILE_MIB} MiB inside the mount (copy_file_range, blocks shared): ${ms.toFixed(1)} ms, cp process included`);
    const after = await dataUsed();
    expect(after.used - before.used).toBeLessThan(MIB);
    expect(after.allocated - before.allocated).toBeLessThan(MIB);
    expect(await sha(`${mp}/copy`)).toBe(await sha(`${mp}/big`));
    // A data copy through the kernel would take seconds here; sharing is metadata only.
    expect(ms).toBeLessThan(5000);
  });

  it('cp --reflink=always: FICLONE either shares blocks or is refused by the kernel before FUSE', async () => {
    const before = await dataUsed();
    const r = await sh(`cp --reflink=always ${mp}/big ${mp}/clone`);
    if (r.code === 0) {
      expect((await dataUsed()).used - before.used).toBeLessThan(MIB);
      expect(await sha(`${mp}/clone`)).toBe(await sha(`${mp}/big`));
    } else {
      // Linux 6.18's fs/fuse has no remap_file_range: the VFS answers EOPNOTSUPP itself.
      expect(r.stderr).toMatch(/failed to clone.*Operation not supported/);
      expect((await dataUsed()).used - before.used).toBeLessThan(MIB);
    }
  });

  it('a 4 KiB write into the copy changes one block of the copy only', async () => {
    const bigSha = await sha(`${mp}/big`);
    const before = await dataUsed();
    const offset = 1000 * 4096; // inside block 62
    await run(`dd if=/dev/urandom of=${mp}/copy bs=4096 count=1 seek=1000 conv=notrunc status=none && sync`);
    const after = await dataUsed();
    expect(after.used - before.used).toBe(BLOCK);
    expect(await sha(`${mp}/big`)).toBe(bigSha);
    // cmp -l lists each differing byte (1-based offset): all inside the 4 KiB written.
    const diff = (await sh(`cmp -l ${mp}/big ${mp}/copy | awk '{print $1}'`)).stdout.trim().split('\n').filter(Boolean).map(Number);
    expect(diff.length).toBeGreaterThan(4000);
    expect(Math.min(...diff) - 1).toBeGreaterThanOrEqual(offset);
    expect(Math.max(...diff) - 1).toBeLessThan(offset + 4096);
  });

  it('copy_file_range at offsets that differ within a block copies the bytes exactly', async () => {
    const script = [
      'import os, sys',
      `src = os.open('${mp}/big', os.O_RDONLY)`,
      `dst = os.open('${mp}/odd', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)`,
      'done = 0',
      'while done < 3000000:',
      '    n = os.copy_file_range(src, dst, 3000000 - done, 12345 + done, 512 + done)',
      '    if n == 0: break',
      '    done += n',
      'print(done)',
    ].join('\n');
    expect((await run(`python3 -c ${shq(script)}`)).trim()).toBe('3000000');
    // head stops reading the file itself (no broken pipe for pipefail), tail keeps the range.
    const want = (await run(`head -c ${12345 + 3000000} ${mp}/big | tail -c 3000000 | sha256sum`)).trim();
    const got = (await run(`head -c ${512 + 3000000} ${mp}/odd | tail -c 3000000 | sha256sum`)).trim();
    expect(got).toBe(want);
    expect((await run(`head -c 512 ${mp}/odd | tr -d '\\0' | wc -c`)).trim()).toBe('0');
  });

  it('a copy into another mount is the kernel\'s (EXDEV fallback) and still exact', async () => {
    await dmfsOk('create other');
    const other = path.join(work, 'other');
    await dmfsOk(`mount other ${other}`);
    await run(`cp ${mp}/big ${other}/big`, { timeoutMs: 120_000 });
    expect(await sha(`${other}/big`)).toBe(await sha(`${mp}/big`));
    await dmfsOk(`umount ${other}`);
  });

  it('after unmount: check verifies the reference counts, export writes full content', async () => {
    await run(`rm ${mp}/big`);
    await dmfsOk(`umount ${mp}`);
    const check = JSON.parse(await dmfsOk('check --json')) as { ok: boolean; problems: unknown[] };
    expect(check).toMatchObject({ ok: true, problems: [] });
    const tar = path.join(work, 'ctr.tar');
    await dmfsOk(`export ctr -o ${tar}`);
    const listed = await run(`tar -tvf ${tar}`);
    expect(listed).toMatch(new RegExp(`${FILE_MIB * MIB}.* copy\\n`));
    const out = path.join(work, 'x');
    await run(`mkdir ${out} && tar -xf ${tar} -C ${out} copy`);
    await dmfsOk(`mount ctr ${mp} --ro`);
    expect(await sha(`${out}/copy`)).toBe(await sha(`${mp}/copy`));
    await dmfsOk(`umount ${mp}`);
  });
});
