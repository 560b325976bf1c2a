/**
 * The native block path on real file systems: an xfs image (reflink) and an ext4 image
 * (no reflink), each loop-mounted by this test. Checks that reflink copies share blocks
 * instead of writing them, that copies across file systems still work, and that punchHole
 * gives blocks back (st_blocks drops). Runs both implementations.
 *
 * Needs root, /dev/loop-control, mkfs.xfs, mkfs.ext4 and mount; skipped with the reason
 * otherwise, except under CI=true as root, where a missing tool is a failure.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fallbackBlockIo, tryLoadNative } from '../../../src/native';
import type { BlockIo } from '../../../src/native/block-io';

const MiB = 1024 * 1024;

function onPath(tool: string): boolean {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/sbin', '/usr/sbin'];
  return dirs.some((d) => d !== '' && fs.existsSync(path.join(d, tool)));
}

function missingPrerequisite(): string | null {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'not root (loop mounts need root)';
  if (!fs.existsSync('/dev/loop-control')) return '/dev/loop-control missing (no loop devices)';
  for (const tool of ['mkfs.xfs', 'mkfs.ext4', 'mount', 'umount', 'losetup']) {
    if (!onPath(tool)) return `${tool} not found (apt-get install xfsprogs e2fsprogs mount)`;
  }
  return null;
}

const missing = missingPrerequisite();
const mustRun = process.env.CI === 'true' && process.getuid?.() === 0;
if (missing && !mustRun) console.log(`loop-mounted file system tests skipped: ${missing}`);
const nativeLoad = tryLoadNative();
if (!nativeLoad.blockIo && !mustRun) console.log(`native cases on loop file systems skipped: ${nativeLoad.reason}`);

(mustRun ? test : test.skip)('under CI=true as root the loop file systems and the addon are available', () => {
  expect(missing).toBeNull();
  expect(nativeLoad.reason).toBeNull();
});

const runLoop = missing === null ? describe : describe.skip;

let workDir = '';
const mounts: string[] = [];
let xfsDir = '';
let ext4Dir = '';

function mkfsAndMount(kind: 'xfs' | 'ext4', sizeBytes: number): string {
  const img = path.join(workDir, `${kind}.img`);
  const dir = path.join(workDir, `${kind}-mnt`);
  fs.mkdirSync(dir);
  fs.closeSync(fs.openSync(img, 'w'));
  fs.truncateSync(img, sizeBytes);
  if (kind === 'xfs') execFileSync('mkfs.xfs', ['-q', '-m', 'reflink=1', img], { stdio: 'pipe' });
  else execFileSync('mkfs.ext4', ['-q', '-F', img], { stdio: 'pipe' });
  execFileSync('mount', ['-o', 'loop', img, dir], { stdio: 'pipe' });
  mounts.push(dir);
  return dir;
}

function unmountAll(): void {
  for (const dir of mounts.splice(0).reverse()) {
    const r = spawnSync('umount', [dir], { stdio: 'pipe' });
    if (r.status !== 0) spawnSync('umount', ['-l', dir], { stdio: 'pipe' });
  }
}

/** Free bytes of the file system holding dir, after flushing it. */
function freeBytes(dir: string): number {
  execFileSync('sync', ['-f', dir]);
  const s = fs.statfsSync(dir);
  return s.bfree * s.bsize;
}

const openFds: number[] = [];
function open(p: string, flags = 'r+'): number {
  const fd = fs.openSync(p, flags);
  openFds.push(fd);
  return fd;
}

function writeFile(p: string, data: Buffer): number {
  fs.writeFileSync(p, data);
  const fd = open(p);
  fs.fsyncSync(fd);
  return fd;
}

runLoop('loop-mounted xfs and ext4', () => {
  beforeAll(() => {
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-loopfs-'));
    process.on('exit', unmountAll);
    xfsDir = mkfsAndMount('xfs', 300 * MiB);
    ext4Dir = mkfsAndMount('ext4', 128 * MiB);
  });

  afterEach(() => {
    for (const fd of openFds.splice(0)) fs.closeSync(fd);
  });

  afterAll(() => {
    for (const fd of openFds.splice(0)) fs.closeSync(fd);
    unmountAll();
    process.removeListener('exit', unmountAll);
    fs.rmSync(workDir, { recursive: true, force: true });
  });

  test('the images are xfs and ext4', () => {
    expect(execFileSync('stat', ['-f', '-c', '%T', xfsDir], { encoding: 'utf8' }).trim()).toBe('xfs');
    expect(execFileSync('stat', ['-f', '-c', '%T', ext4Dir], { encoding: 'utf8' }).trim()).toMatch(/^ext/);
  });

  const IMPLS: Array<[string, BlockIo | null]> = [
    ['native', nativeLoad.blockIo],
    ['fallback', fallbackBlockIo],
  ];

  describe.each(IMPLS)('%s', (kind, maybeIo) => {
    const t = maybeIo ? test : test.skip;
    const io = maybeIo as BlockIo;
    const isNative = kind === 'native';
    let seq = 0;
    const name = (dir: string): string => path.join(dir, `${kind}-${seq++}`);

    t('probeReflink: true on xfs with the addon, false on ext4 and on the fallback', async () => {
      expect(await io.probeReflink(xfsDir)).toBe(isNative);
      expect(await io.probeReflink(ext4Dir)).toBe(false);
    });

    t('copyRange on xfs: the addon shares the blocks (reflink), the fallback writes them', async () => {
      const n = 32 * MiB;
      const data = randomBytes(n);
      const src = writeFile(name(xfsDir), data);
      const dstPath = name(xfsDir);
      const dst = open(dstPath, 'w+');
      const before = freeBytes(xfsDir);
      expect(await io.copyRange(src, 0, dst, 0, n)).toBe(n);
      fs.fsyncSync(dst);
      const usedBytes = before - freeBytes(xfsDir);
      if (isNative) expect(usedBytes).toBeLessThan(2 * MiB);
      else expect(usedBytes).toBeGreaterThan(n - 2 * MiB);
      expect(fs.readFileSync(dstPath).equals(data)).toBe(true);
      if (isNative && onPath('filefrag')) {
        expect(execFileSync('filefrag', ['-v', dstPath], { encoding: 'utf8' })).toMatch(/shared/);
      }
    });

    t('copyRange on xfs: unaligned ranges and an unaligned source EOF copy correctly', async () => {
      const data = randomBytes(MiB + 100);
      const src = writeFile(name(xfsDir), data);
      // Unaligned offsets: no reflink, copy_file_range.
      const aPath = name(xfsDir);
      const a = open(aPath, 'w+');
      expect(await io.copyRange(src, 1, a, 3, 500_000)).toBe(500_000);
      expect(fs.readFileSync(aPath).subarray(3).equals(data.subarray(1, 500_001))).toBe(true);
      // Aligned offsets up to an unaligned EOF: the kernel clones the tail block too.
      const bPath = name(xfsDir);
      const b = open(bPath, 'w+');
      expect(await io.copyRange(src, 0, b, 65536, 2 * MiB)).toBe(MiB + 100);
      const out = fs.readFileSync(bPath);
      expect(out.length).toBe(65536 + MiB + 100);
      expect(out.subarray(65536).equals(data)).toBe(true);
      // The same into the middle of a longer file: cloning the partial EOF block there is
      // refused by the kernel, so it must fall through and still copy exactly.
      const cPath = name(xfsDir);
      const filler = randomBytes(4 * MiB);
      const c = writeFile(cPath, filler);
      expect(await io.copyRange(src, 0, c, MiB, 2 * MiB)).toBe(MiB + 100);
      const want = Buffer.from(filler);
      data.copy(want, MiB);
      expect(fs.readFileSync(cPath).equals(want)).toBe(true);
    });

    t('copyRange across file systems (xfs to ext4 and back) copies exactly', async () => {
      const data = randomBytes(3 * MiB + 17);
      const src = writeFile(name(xfsDir), data);
      const midPath = name(ext4Dir);
      const mid = open(midPath, 'w+');
      expect(await io.copyRange(src, 0, mid, 0, data.length)).toBe(data.length);
      const backPath = name(xfsDir);
      const back = open(backPath, 'w+');
      expect(await io.copyRange(mid, 65536, back, 0, data.length)).toBe(data.length - 65536);
      expect(fs.readFileSync(midPath).equals(data)).toBe(true);
      expect(fs.readFileSync(backPath).equals(data.subarray(65536))).toBe(true);
    });

    describe.each([
      ['xfs', () => xfsDir],
      ['ext4', () => ext4Dir],
    ])('on %s', (_fs, dir) => {
      t('punchHole gives the blocks back (st_blocks drops), keeps the size, reads zeros', async () => {
        const data = randomBytes(16 * MiB);
        const p = name(dir());
        const fd = writeFile(p, data);
        const blocksBefore = fs.fstatSync(fd).blocks;
        expect(blocksBefore * 512).toBeGreaterThanOrEqual(16 * MiB);
        const punched = await io.punchHole(fd, 4 * MiB, 8 * MiB);
        fs.fsyncSync(fd);
        const st = fs.fstatSync(fd);
        const out = fs.readFileSync(p);
        expect(st.size).toBe(16 * MiB);
        if (isNative) {
          expect(punched).toBe(true);
          expect((blocksBefore - st.blocks) * 512).toBeGreaterThanOrEqual(8 * MiB);
          expect(out.subarray(4 * MiB, 12 * MiB).equals(Buffer.alloc(8 * MiB))).toBe(true);
          expect(out.subarray(0, 4 * MiB).equals(data.subarray(0, 4 * MiB))).toBe(true);
          expect(out.subarray(12 * MiB).equals(data.subarray(12 * MiB))).toBe(true);
        } else {
          expect(punched).toBe(false);
          expect(st.blocks).toBe(blocksBefore);
          expect(out.equals(data)).toBe(true);
        }
      });
    });
  });
});
