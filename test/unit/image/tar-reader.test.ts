/**
 * The tar reader against archives GNU tar writes (ustar, gnu, pax, sparse formats
 * 0.0/0.1/1.0 and old GNU), the writer against GNU tar and itself, and hostile input.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { readTar } from '../../../src/image/tar-reader';
import { devMajorOf, devMinorOf, makedev } from '../../../src/image/tar-writer';
import {
  chunked, END, fixChecksum, pad512, paxBlock, rawHeader, readAll, sh, tmpdir, writeTar, codeOf,
} from './helpers/tar-helpers';

const LONG_DIR = 'd'.repeat(120);
const LONG_FILE = `${LONG_DIR}/${'f'.repeat(200)}`;

let tree: string;

beforeAll(() => {
  tree = tmpdir('tartree');
  const r = (p: string): string => path.join(tree, p);
  fs.mkdirSync(r('etc'), { mode: 0o755 });
  fs.writeFileSync(r('etc/hostname'), 'box\n');
  fs.chmodSync(r('etc/hostname'), 0o640);
  fs.mkdirSync(r(LONG_DIR));
  fs.writeFileSync(r(LONG_FILE), 'long name content');
  fs.symlinkSync('../' + 't'.repeat(150), r('etc/longlink'));
  fs.symlinkSync('hostname', r('etc/short'));
  fs.linkSync(r('etc/hostname'), r('etc/hard'));
  sh('mkfifo', [r('etc/fifo')]);
  fs.writeFileSync(r('setuid'), 'x');
  fs.chmodSync(r('setuid'), 0o4755);
  fs.writeFileSync(r('caf\u00e9 \u2603'), 'unicode');
  sh('setfattr', ['-n', 'user.test', '-v', 'hello', r('etc/hostname')]);
  sh('touch', ['-h', '-d', '2021-02-03 04:05:06.123456789', r('etc/hostname')]);
  const big = Buffer.alloc(300_000);
  for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff;
  fs.writeFileSync(r('big.bin'), big);
});

afterAll(() => fs.rmSync(tree, { recursive: true, force: true }));

function gnuTar(format: string, extra: string[] = [], files = ['.']): Buffer {
  return sh('tar', ['-C', tree, '--sort=name', `--format=${format}`, ...extra, '-cf', '-', ...files]);
}

describe('reads what GNU tar writes', () => {
  for (const format of ['gnu', 'pax', 'oldgnu']) {
    test(`format ${format}`, async () => {
      const entries = await readAll(gnuTar(format, format === 'pax' ? ['--xattrs', '--xattrs-include=user.*'] : []));
      const by = new Map(entries.map((e) => [e.entry.path.replace(/^\.\//, ''), e]));
      expect(by.get('')?.entry.type).toBe('dir'); // GNU tar's './'
      expect(by.get('etc/')?.entry.type).toBe('dir');
      // --sort=name: etc/hard comes first and holds the data; etc/hostname links to it.
      const hard = by.get('etc/hard')!;
      expect(hard.entry.type).toBe('file');
      expect(hard.entry.mode).toBe(0o640);
      expect(hard.data.toString()).toBe('box\n');
      const hostname = by.get('etc/hostname')!;
      expect(hostname.entry.type).toBe('hardlink');
      expect(hostname.entry.linkPath.replace(/^\.\//, '')).toBe('etc/hard');
      expect(by.get(LONG_FILE)?.data.toString()).toBe('long name content');
      expect(by.get('etc/longlink')?.entry.type).toBe('symlink');
      expect(by.get('etc/longlink')?.entry.linkPath).toBe('../' + 't'.repeat(150));
      expect(by.get('etc/fifo')?.entry.type).toBe('fifo');
      expect(by.get('setuid')?.entry.mode).toBe(0o4755);
      expect(by.get('caf\u00e9 \u2603')?.data.toString()).toBe('unicode');
      const big = by.get('big.bin')!;
      expect(big.data.equals(fs.readFileSync(path.join(tree, 'big.bin')))).toBe(true);
      if (format === 'pax') {
        expect(hard.entry.xattrs.get('user.test')?.toString()).toBe('hello');
        expect(hard.entry.mtimeNs).toBe(
          BigInt(Date.UTC(2021, 1, 3, 4, 5, 6)) * 1_000_000n + BigInt(new Date(2021, 1, 3, 4, 5, 6).getTimezoneOffset()) * 60_000_000_000n + 123_456_789n,
        );
      } else {
        expect(hard.entry.mtimeNs % 1_000_000_000n).toBe(0n);
      }
    });
  }

  test('ustar with a prefix field (names up to 255 bytes)', async () => {
    const name = `${'p'.repeat(120)}/${'n'.repeat(90)}`;
    const dir = tmpdir('ustar');
    fs.mkdirSync(path.join(dir, 'p'.repeat(120)));
    fs.writeFileSync(path.join(dir, name), 'prefixed');
    const tar = sh('tar', ['-C', dir, '--format=ustar', '-cf', '-', name]);
    const entries = await readAll(tar);
    expect(entries.map((e) => e.entry.path)).toEqual([name]);
    expect(entries[0].data.toString()).toBe('prefixed');
    fs.rmSync(dir, { recursive: true });
  });

  const sparseCases: [string, string[]][] = [
    ['old GNU', ['--format=gnu']],
    ['pax 0.0', ['--format=pax', '--sparse-version=0.0']],
    ['pax 0.1', ['--format=pax', '--sparse-version=0.1']],
    ['pax 1.0', ['--format=pax', '--sparse-version=1.0']],
  ];
  for (const [label, args] of sparseCases) {
    test(`sparse files, ${label}`, async () => {
      const dir = tmpdir('sparse');
      const file = path.join(dir, 'sparse.img');
      const fd = fs.openSync(file, 'w');
      // Many segments, so old GNU needs extension headers (4 in the header, 21 per extension).
      for (let i = 0; i < 40; i++) fs.writeSync(fd, Buffer.from(`segment ${i} `.repeat(50)), 0, undefined, i * 1024 * 1024);
      fs.ftruncateSync(fd, 48 * 1024 * 1024 + 123);
      fs.closeSync(fd);
      const tar = sh('tar', ['-C', dir, '--sparse', ...args, '-cf', '-', 'sparse.img']);
      expect(tar.length).toBeLessThan(1024 * 1024);
      const entries = await readAll(tar);
      expect(entries).toHaveLength(1);
      const e = entries[0];
      expect(e.entry.path).toBe('sparse.img');
      expect(e.entry.sparse).not.toBeNull();
      expect(e.entry.sizeBytes).toBe(48 * 1024 * 1024 + 123);
      const want = fs.readFileSync(file);
      expect(createHash('sha256').update(e.data).digest('hex')).toBe(createHash('sha256').update(want).digest('hex'));
      fs.rmSync(dir, { recursive: true });
    });
  }
});

describe('writer', () => {
  test('round trip through itself and through GNU tar', async () => {
    const entries = [
      { e: { type: 'dir' as const, path: 'a', mode: 0o755, uid: 0, gid: 0, mtimeNs: 1_600_000_000_123_456_789n } },
      { e: { type: 'file' as const, path: 'a/f.txt', mode: 0o644, uid: 1000, gid: 1000, mtimeNs: 1_600_000_000_000_000_000n, xattrs: { 'user.k': Buffer.from([0, 1, 2, 255]) } }, body: Buffer.from('hello') },
      { e: { type: 'file' as const, path: `a/${'x'.repeat(240)}/${'y'.repeat(250)}`, mode: 0o600, uid: 3_000_000, gid: 5, mtimeNs: -5_500_000_000n }, body: Buffer.alloc(1000, 7) },
      { e: { type: 'symlink' as const, path: 'a/l', linkPath: `../${'z'.repeat(200)}`, mode: 0o777, uid: 0, gid: 0, mtimeNs: 0n } },
      { e: { type: 'hardlink' as const, path: 'a/h', linkPath: 'a/f.txt', mode: 0o644, uid: 0, gid: 0, mtimeNs: 0n } },
      { e: { type: 'chardev' as const, path: 'a/null', mode: 0o666, uid: 0, gid: 0, mtimeNs: 0n, devMajor: 1, devMinor: 3 } },
      { e: { type: 'fifo' as const, path: 'a/p', mode: 0o600, uid: 0, gid: 0, mtimeNs: 0n } },
      { e: { type: 'file' as const, path: 'caf\u00e9', mode: 0o644, uid: 0, gid: 0, mtimeNs: 0n }, body: Buffer.from('x') },
    ];
    const tar = await writeTar(entries);
    expect(tar.length % 512).toBe(0);
    expect((await writeTar(entries)).equals(tar)).toBe(true); // deterministic
    const back = await readAll(tar);
    expect(back.map((b) => b.entry.path)).toEqual(['a/', 'a/f.txt', entries[2].e.path, 'a/l', 'a/h', 'a/null', 'a/p', 'caf\u00e9']);
    expect(back[0].entry.mtimeNs).toBe(1_600_000_000_123_456_789n);
    expect(back[1].entry.xattrs.get('user.k')).toEqual(Buffer.from([0, 1, 2, 255]));
    expect(back[1].entry.uid).toBe(1000);
    expect(back[2].entry.uid).toBe(3_000_000);
    expect(back[2].entry.mtimeNs).toBe(-5_500_000_000n);
    expect(back[2].data).toEqual(Buffer.alloc(1000, 7));
    expect(back[3].entry.linkPath).toBe(`../${'z'.repeat(200)}`);
    expect(back[4].entry).toMatchObject({ type: 'hardlink', linkPath: 'a/f.txt' });
    expect(back[5].entry).toMatchObject({ type: 'chardev', devMajor: 1, devMinor: 3 });
    // GNU tar agrees on names and content.
    const listing = sh('tar', ['-tvf', '-'], { input: tar }).toString();
    expect(listing).toContain(`a/${'x'.repeat(240)}/${'y'.repeat(250)}`);
    expect(listing).toContain('a/h link to a/f.txt');
    const out = tmpdir('untar');
    sh('tar', ['-C', out, '--xattrs', '--xattrs-include=*', '-xf', '-'], { input: tar });
    expect(fs.readFileSync(path.join(out, 'a/f.txt'), 'utf8')).toBe('hello');
    expect(fs.statSync(path.join(out, 'a/h')).ino).toBe(fs.statSync(path.join(out, 'a/f.txt')).ino);
    expect(fs.readlinkSync(path.join(out, 'a/l'))).toBe(`../${'z'.repeat(200)}`);
    expect(sh('getfattr', ['--only-values', '-n', 'user.k', path.join(out, 'a/f.txt')])).toEqual(Buffer.from([0, 1, 2, 255]));
    fs.rmSync(out, { recursive: true });
  });

  test('makedev matches glibc', () => {
    expect(makedev(8, 1)).toBe(0x801);
    expect(makedev(259, 70000)).toBe(Number((BigInt(259 & 0xfff) << 8n) | (70000n & 0xffn) | ((70000n & ~0xffn) << 12n)));
    expect(devMajorOf(makedev(4095, 1 << 19))).toBe(4095);
    expect(devMinorOf(makedev(4095, 1 << 19))).toBe(1 << 19);
  });
});

describe('end of archive', () => {
  const file = Buffer.concat([rawHeader({ name: 'f', size: 3 }), pad512(Buffer.from('abc'))]);

  test('missing end-of-archive blocks are accepted, as GNU tar does', async () => {
    expect((await readAll(file)).map((e) => e.data.toString())).toEqual(['abc']);
  });

  test('a lone zero block is accepted', async () => {
    expect(await readAll(Buffer.concat([file, Buffer.alloc(512)]))).toHaveLength(1);
  });

  test('data after the end marker is ignored', async () => {
    expect(await readAll(Buffer.concat([file, END, Buffer.from('trailing garbage')]))).toHaveLength(1);
  });
});

describe('hostile or corrupt archives', () => {
  const good = Buffer.concat([rawHeader({ name: 'f', size: 3 }), pad512(Buffer.from('abc')), END]);

  test('bad header checksum', async () => {
    const bad = Buffer.from(good);
    bad[10] ^= 0x01;
    expect(await codeOf(readAll(bad))).toBe('BAD_IMAGE');
  });

  test('truncated inside a header', async () => {
    expect(await codeOf(readAll(good.subarray(0, 300)))).toBe('BAD_IMAGE');
  });

  test('truncated inside a body', async () => {
    const big = Buffer.concat([rawHeader({ name: 'f', size: 5000 }), Buffer.alloc(1000)]);
    expect(await codeOf(readAll(big))).toBe('BAD_IMAGE');
  });

  test('truncated while skipping an unread body', async () => {
    const big = Buffer.concat([rawHeader({ name: 'f', size: 5000 }), Buffer.alloc(1000)]);
    const run = async (): Promise<void> => {
      for await (const item of readTar(chunked(big))) void item;
    };
    expect(await codeOf(run())).toBe('BAD_IMAGE');
  });

  test('absurd base-256 size', async () => {
    const size = Buffer.alloc(12, 0xff);
    size[0] = 0x80 | 0x7f;
    expect(await codeOf(readAll(Buffer.concat([rawHeader({ name: 'f', size }), END])))).toBe('BAD_IMAGE');
  });

  test('negative base-256 size', async () => {
    const size = Buffer.alloc(12, 0xff);
    expect(await codeOf(readAll(Buffer.concat([rawHeader({ name: 'f', size }), END])))).toBe('BAD_IMAGE');
  });

  test('non-octal size field', async () => {
    const size = Buffer.from('00000000x12\0', 'latin1');
    expect(await codeOf(readAll(Buffer.concat([rawHeader({ name: 'f', size }), END])))).toBe('BAD_IMAGE');
  });

  test('huge pax header is refused before it is read', async () => {
    const h = rawHeader({ name: 'pax', typeflag: 'x', size: 64 * 1024 * 1024 });
    expect(await codeOf(readAll(Buffer.concat([h, Buffer.alloc(4096)])))).toBe('BAD_IMAGE');
  });

  test('huge GNU long name is refused', async () => {
    const h = rawHeader({ name: '././@LongLink', typeflag: 'L', size: 16 * 1024 * 1024, magic: 'gnu' });
    expect(await codeOf(readAll(Buffer.concat([h, Buffer.alloc(4096)])))).toBe('BAD_IMAGE');
  });

  test('malformed pax records', async () => {
    for (const body of ['99 path=x\n', 'abc path=x\n', '5 =x\n', '12 pathx\n', '11 path=xy']) {
      const b = Buffer.from(body);
      const tar = Buffer.concat([rawHeader({ name: 'pax', typeflag: 'x', size: b.length }), pad512(b), rawHeader({ name: 'f' }), END]);
      expect(await codeOf(readAll(tar))).toBe('BAD_IMAGE');
    }
  });

  test('pax path with a NUL byte', async () => {
    const tar = Buffer.concat([paxBlock('pax', { path: Buffer.from('a\0b') }), rawHeader({ name: 'f' }), END]);
    expect(await codeOf(readAll(tar))).toBe('BAD_IMAGE');
  });

  test('invalid UTF-8 name', async () => {
    const tar = Buffer.concat([rawHeader({ name: '', nameBytes: Buffer.from([0x61, 0xff, 0xfe, 0x62]) }), END]);
    expect(await codeOf(readAll(tar))).toBe('BAD_IMAGE');
  });

  test('a zero block followed by more entries', async () => {
    const tar = Buffer.concat([Buffer.alloc(512), rawHeader({ name: 'f' }), END]);
    expect(await codeOf(readAll(tar))).toBe('BAD_IMAGE');
  });

  test('pax header at the end without an entry', async () => {
    const tar = Buffer.concat([paxBlock('pax', { path: 'x' }), END]);
    expect(await codeOf(readAll(tar))).toBe('BAD_IMAGE');
  });

  test('sparse map that does not match the stored size', async () => {
    const tar = Buffer.concat([
      paxBlock('pax', { 'GNU.sparse.size': '100000', 'GNU.sparse.map': '0,10,5000,10' }),
      rawHeader({ name: 'GNUSparseFile.0/s', size: 30 }), pad512(Buffer.alloc(30)), END,
    ]);
    expect(await codeOf(readAll(tar))).toBe('BAD_IMAGE');
  });

  test('overlapping sparse map', async () => {
    const tar = Buffer.concat([
      paxBlock('pax', { 'GNU.sparse.size': '100000', 'GNU.sparse.map': '0,10,5,10' }),
      rawHeader({ name: 's', size: 20 }), pad512(Buffer.alloc(20)), END,
    ]);
    expect(await codeOf(readAll(tar))).toBe('BAD_IMAGE');
  });

  test('multi-volume archives are NOT_SUPPORTED', async () => {
    const tar = Buffer.concat([rawHeader({ name: 'f', typeflag: 'M', magic: 'gnu' }), END]);
    expect(await codeOf(readAll(tar))).toBe('NOT_SUPPORTED');
  });

  test('hundreds of thousands of tiny entries stream in bounded memory', async () => {
    const COUNT = 300_000;
    const template = rawHeader({ name: 'f', size: 1 });
    async function* lots(): AsyncGenerator<Buffer> {
      const batch: Buffer[] = [];
      for (let i = 0; i < COUNT; i++) {
        const h = Buffer.from(template);
        h.fill(0, 0, 100);
        h.write(`d${i % 100}/f${i}`, 0, 'latin1');
        fixChecksum(h);
        batch.push(h, pad512(Buffer.from('x')));
        if (batch.length >= 512) yield Buffer.concat(batch.splice(0));
      }
      yield Buffer.concat([...batch, END]);
    }
    global.gc?.();
    const before = process.memoryUsage().heapUsed;
    let n = 0;
    let peak = before;
    for await (const { entry } of readTar(lots())) {
      if (entry.type === 'file') n++;
      if (n % 10_000 === 0) peak = Math.max(peak, process.memoryUsage().heapUsed);
    }
    expect(n).toBe(COUNT);
    expect(peak - before).toBeLessThan(64 * 1024 * 1024);
  }, 60_000);

  test('historic signed checksums are accepted', async () => {
    const h = rawHeader({ name: 'caf\u00e9' });
    h.fill(0x20, 148, 156);
    let signed = 0;
    for (let i = 0; i < 512; i++) signed += h[i] >= 0x80 ? h[i] - 256 : h[i];
    h.write(signed.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
    expect((await readAll(Buffer.concat([h, END])))[0].entry.path).toBe('caf\u00e9');
    fixChecksum(h);
  });

  test('v7 header: a name ending in / with typeflag NUL is a directory', async () => {
    const tar = Buffer.concat([rawHeader({ name: 'dir/', typeflag: '\0', magic: 'v7' }), END]);
    expect((await readAll(tar))[0].entry.type).toBe('dir');
  });
});
