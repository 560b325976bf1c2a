/**
 * The BlockIo conformance suite: one table of cases, run through the Rust addon and through
 * the TypeScript fallback. Where the two may differ by contract (reflink, hole punching),
 * the case says what each must do.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { fallbackBlockIo, tryLoadNative, crc32cTable } from '../../../src/native';
import type { BlockIo } from '../../../src/native/block-io';

const nativeLoad = tryLoadNative();
const nativeMustLoad = process.env.CI === 'true' || process.env.DMFS_NATIVE === 'required';

if (!nativeLoad.blockIo && !nativeMustLoad) console.log(`native BlockIo cases skipped: ${nativeLoad.reason}`);

(nativeLoad.blockIo || nativeMustLoad ? test : test.skip)('the native addon loads (required under CI=true)', () => {
  expect(nativeLoad.reason).toBeNull();
  expect(nativeLoad.blockIo?.kind).toBe('native');
  expect(nativeLoad.blockIo?.unavailableReason).toBeNull();
});

const IMPLS: Array<[string, BlockIo | null]> = [
  ['native', nativeLoad.blockIo],
  ['fallback', fallbackBlockIo],
];

// ---------------------------------------------------------------------------------------
// Helpers

let tmpRoot: string;
beforeAll(() => {
  tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-blockio-'));
});
afterAll(() => {
  fs.rmSync(tmpRoot, { recursive: true, force: true });
});

let fileSeq = 0;
/** Opens a fresh file in the temp dir holding `content`; closed after the test. */
const openFds: number[] = [];
function file(content: Buffer = Buffer.alloc(0), flags = 'r+'): { fd: number; path: string } {
  const p = path.join(tmpRoot, `f${fileSeq++}`);
  fs.writeFileSync(p, content);
  const fd = fs.openSync(p, flags);
  openFds.push(fd);
  return { fd, path: p };
}
afterEach(() => {
  for (const fd of openFds.splice(0)) fs.closeSync(fd);
});

/** An fd number that is certainly closed. */
function closedFd(): number {
  const fd = fs.openSync(path.join(tmpRoot, `closed${fileSeq++}`), 'w+');
  fs.closeSync(fd);
  return fd;
}

function readAll(p: string): Buffer {
  return fs.readFileSync(p);
}

async function expectCode(p: Promise<unknown>, code: string, causeCode?: string): Promise<void> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).not.toBeNull();
  expect((err as { code?: string }).code).toBe(code);
  if (causeCode) expect(((err as { cause?: { code?: string } }).cause ?? {}).code).toBe(causeCode);
}

function expectSyncCode(f: () => unknown, code: string): void {
  let err: unknown = null;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err).not.toBeNull();
  expect((err as { code?: string }).code).toBe(code);
}

/** Calls a method with arbitrary (possibly ill-typed) arguments. */
function call(io: BlockIo, method: keyof BlockIo, args: unknown[]): unknown {
  return (io[method] as unknown as (...a: unknown[]) => unknown).apply(io, args);
}

// ---------------------------------------------------------------------------------------
// The shared table

interface Case {
  name: string;
  run(io: BlockIo): Promise<void>;
}

const MAX_SAFE = Number.MAX_SAFE_INTEGER;

const CASES: Case[] = [
  {
    name: 'copyRange copies bytes between files and extends the destination',
    async run(io) {
      const data = randomBytes(300_000);
      const src = file(data);
      const dst = file();
      expect(await io.copyRange(src.fd, 4096, dst.fd, 8192, 200_000)).toBe(200_000);
      const out = readAll(dst.path);
      expect(out.length).toBe(8192 + 200_000);
      expect(out.subarray(0, 8192).equals(Buffer.alloc(8192))).toBe(true);
      expect(out.subarray(8192).equals(data.subarray(4096, 4096 + 200_000))).toBe(true);
    },
  },
  {
    name: 'copyRange is short only at EOF of the source and writes nothing past it',
    async run(io) {
      const data = randomBytes(10_000);
      const src = file(data);
      const dst = file();
      expect(await io.copyRange(src.fd, 5000, dst.fd, 100, 20_000)).toBe(5000);
      const out = readAll(dst.path);
      expect(out.length).toBe(5100);
      expect(out.subarray(100).equals(data.subarray(5000))).toBe(true);
      expect(await io.copyRange(src.fd, 10_000, dst.fd, 0, 4096)).toBe(0);
      expect(await io.copyRange(src.fd, 50_000, dst.fd, 0, 4096)).toBe(0);
      expect(readAll(dst.path).length).toBe(5100);
    },
  },
  {
    name: 'copyRange of length 0 copies nothing',
    async run(io) {
      const src = file(randomBytes(4096));
      const dst = file();
      expect(await io.copyRange(src.fd, 0, dst.fd, 0, 0)).toBe(0);
      expect(readAll(dst.path).length).toBe(0);
    },
  },
  {
    name: 'copyRange takes unaligned offsets and lengths',
    async run(io) {
      const data = randomBytes(100_003);
      const src = file(data);
      const dst = file(Buffer.alloc(10, 0x11));
      expect(await io.copyRange(src.fd, 3, dst.fd, 7, 99_991)).toBe(99_991);
      const out = readAll(dst.path);
      expect(out.subarray(0, 7).equals(Buffer.alloc(7, 0x11))).toBe(true);
      expect(out.subarray(7).equals(data.subarray(3, 3 + 99_991))).toBe(true);
    },
  },
  {
    name: 'copyRange copies more than one chunk (3 MiB + 123 bytes), aligned',
    async run(io) {
      const n = 3 * 1024 * 1024 + 123;
      const data = randomBytes(n);
      const src = file(data);
      const dst = file();
      expect(await io.copyRange(src.fd, 0, dst.fd, 65536, n)).toBe(n);
      expect(readAll(dst.path).subarray(65536).equals(data)).toBe(true);
    },
  },
  {
    name: 'copyRange within one file: disjoint ranges copy, overlapping ranges are INVALID',
    async run(io) {
      const data = randomBytes(200_000);
      const f = file(data);
      expect(await io.copyRange(f.fd, 0, f.fd, 100_000, 100_000)).toBe(100_000);
      expect(readAll(f.path).subarray(100_000).equals(data.subarray(0, 100_000))).toBe(true);
      await expectCode(io.copyRange(f.fd, 0, f.fd, 50_000, 100_000), 'INVALID');
      await expectCode(io.copyRange(f.fd, 50_000, f.fd, 0, 100_000), 'INVALID');
      // Overlap through a second fd on the same file is still the same file.
      const fd2 = fs.openSync(f.path, 'r+');
      openFds.push(fd2);
      await expectCode(io.copyRange(f.fd, 0, fd2, 4096, 8192), 'INVALID');
    },
  },
  {
    name: 'copyRange: closed fds and a read-only destination reject IO_ERROR (EBADF)',
    async run(io) {
      const src = file(randomBytes(8192));
      const dst = file();
      await expectCode(io.copyRange(closedFd(), 0, dst.fd, 0, 4096), 'IO_ERROR', 'EBADF');
      await expectCode(io.copyRange(src.fd, 0, closedFd(), 0, 4096), 'IO_ERROR', 'EBADF');
      const ro = file(Buffer.alloc(0), 'r');
      await expectCode(io.copyRange(src.fd, 0, ro.fd, 0, 4096), 'IO_ERROR', 'EBADF');
    },
  },
  {
    name: 'readBlocks fills contiguous and scattered buffers, short at EOF, past EOF untouched',
    async run(io) {
      const data = randomBytes(3 * 4096 + 1000);
      const f = file(data);
      const bufs = [0, 1, 2, 3, 4].map(() => Buffer.alloc(4096, 0xee));
      // [0,1,2] contiguous (one preadv run), 3 before them, 4 past EOF.
      const offs = [0, 4096, 8192, 2048, 50_000];
      const n = await io.readBlocks(f.fd, bufs, offs);
      expect(n).toBe(4096 + 4096 + 4096 + 4096 + 0);
      expect(bufs[0].equals(data.subarray(0, 4096))).toBe(true);
      expect(bufs[1].equals(data.subarray(4096, 8192))).toBe(true);
      expect(bufs[2].equals(data.subarray(8192, 12288))).toBe(true);
      expect(bufs[3].equals(data.subarray(2048, 6144))).toBe(true);
      expect(bufs[4].equals(Buffer.alloc(4096, 0xee))).toBe(true);
      // Short read at EOF leaves the rest of that buffer untouched.
      const tail = [Buffer.alloc(4096, 0xee), Buffer.alloc(4096, 0xee)];
      expect(await io.readBlocks(f.fd, tail, [8192, 12288])).toBe(4096 + 1000);
      expect(tail[1].subarray(0, 1000).equals(data.subarray(12288))).toBe(true);
      expect(tail[1].subarray(1000).equals(Buffer.alloc(3096, 0xee))).toBe(true);
    },
  },
  {
    name: 'readBlocks: empty input, empty buffers, repeated offsets, subarray buffers',
    async run(io) {
      const data = randomBytes(65536);
      const f = file(data);
      expect(await io.readBlocks(f.fd, [], [])).toBe(0);
      const backing = Buffer.alloc(10_000, 0xee);
      const a = backing.subarray(100, 1100);
      const b = backing.subarray(5000, 5500);
      const n = await io.readBlocks(f.fd, [Buffer.alloc(0), a, Buffer.alloc(0), b, Buffer.alloc(0)], [7, 1000, 3, 1000, MAX_SAFE]);
      expect(n).toBe(1500);
      expect(a.equals(data.subarray(1000, 2000))).toBe(true);
      expect(b.equals(data.subarray(1000, 1500))).toBe(true);
      expect(backing.subarray(0, 100).equals(Buffer.alloc(100, 0xee))).toBe(true);
      expect(backing.subarray(1100, 5000).equals(Buffer.alloc(3900, 0xee))).toBe(true);
      expect(backing.subarray(5500).equals(Buffer.alloc(4500, 0xee))).toBe(true);
    },
  },
  {
    name: 'readBlocks and writeBlocks with more buffers than one preadv takes (3000 x 512 B)',
    async run(io) {
      const count = 3000;
      const data = randomBytes(count * 512);
      const f = file();
      const wbufs = Array.from({ length: count }, (_, i) => data.subarray(i * 512, (i + 1) * 512));
      const offs = wbufs.map((_, i) => i * 512);
      expect(await io.writeBlocks(f.fd, wbufs, offs)).toBe(data.length);
      expect(readAll(f.path).equals(data)).toBe(true);
      const rbufs = Array.from({ length: count }, () => Buffer.alloc(512));
      expect(await io.readBlocks(f.fd, rbufs, offs)).toBe(data.length);
      expect(Buffer.concat(rbufs).equals(data)).toBe(true);
    },
  },
  {
    name: 'writeBlocks writes contiguous and scattered buffers and leaves holes between',
    async run(io) {
      const f = file();
      const a = randomBytes(4096);
      const b = randomBytes(4096);
      const c = randomBytes(100);
      expect(await io.writeBlocks(f.fd, [a, b, c], [8192, 12288, 100_000])).toBe(8292);
      const out = readAll(f.path);
      expect(out.length).toBe(100_100);
      expect(out.subarray(0, 8192).equals(Buffer.alloc(8192))).toBe(true);
      expect(out.subarray(8192, 12288).equals(a)).toBe(true);
      expect(out.subarray(12288, 16384).equals(b)).toBe(true);
      expect(out.subarray(16384, 100_000).equals(Buffer.alloc(100_000 - 16384))).toBe(true);
      expect(out.subarray(100_000).equals(c)).toBe(true);
      expect(await io.writeBlocks(f.fd, [], [])).toBe(0);
    },
  },
  {
    name: 'readBlocks/writeBlocks: closed fd and wrong open mode reject IO_ERROR (EBADF)',
    async run(io) {
      await expectCode(io.readBlocks(closedFd(), [Buffer.alloc(10)], [0]), 'IO_ERROR', 'EBADF');
      await expectCode(io.writeBlocks(closedFd(), [Buffer.alloc(10)], [0]), 'IO_ERROR', 'EBADF');
      const ro = file(Buffer.alloc(100), 'r');
      await expectCode(io.writeBlocks(ro.fd, [Buffer.alloc(10)], [0]), 'IO_ERROR', 'EBADF');
      const wo = file(Buffer.alloc(100), 'w');
      await expectCode(io.readBlocks(wo.fd, [Buffer.alloc(10)], [0]), 'IO_ERROR', 'EBADF');
    },
  },
  {
    name: 'many operations in flight at once all complete correctly',
    async run(io) {
      const data = randomBytes(64 * 4096);
      const src = file(data);
      const dst = file();
      const copies = Array.from({ length: 64 }, (_, i) => io.copyRange(src.fd, i * 4096, dst.fd, i * 4096, 4096));
      const reads = Array.from({ length: 64 }, (_, i) => {
        const b = Buffer.alloc(4096);
        return io.readBlocks(src.fd, [b], [i * 4096]).then((n) => (n === 4096 && b.equals(data.subarray(i * 4096, (i + 1) * 4096)) ? 1 : 0));
      });
      expect(await Promise.all(copies)).toEqual(Array(64).fill(4096));
      expect((await Promise.all(reads)).reduce((s: number, x) => s + x, 0)).toBe(64);
      expect(readAll(dst.path).equals(data)).toBe(true);
    },
  },
  {
    name: 'punchHole: the addon punches (zeros, size kept), the fallback resolves false and changes nothing',
    async run(io) {
      const data = randomBytes(256 * 1024);
      const f = file(data);
      const punched = await io.punchHole(f.fd, 65536, 65536);
      const out = readAll(f.path);
      expect(out.length).toBe(data.length);
      if (io.kind === 'fallback') {
        expect(punched).toBe(false);
        expect(out.equals(data)).toBe(true);
        return;
      }
      // Every file system a pool lives on (ext4, xfs, btrfs, tmpfs) punches.
      expect(punched).toBe(true);
      expect(out.subarray(65536, 131072).equals(Buffer.alloc(65536))).toBe(true);
      expect(out.subarray(0, 65536).equals(data.subarray(0, 65536))).toBe(true);
      expect(out.subarray(131072).equals(data.subarray(131072))).toBe(true);
    },
  },
  {
    name: 'punchHole: zero length punches nothing; closed fd rejects IO_ERROR (EBADF)',
    async run(io) {
      const data = randomBytes(8192);
      const f = file(data);
      expect(await io.punchHole(f.fd, 0, 0)).toBe(io.kind === 'native');
      expect(readAll(f.path).equals(data)).toBe(true);
      await expectCode(io.punchHole(closedFd(), 0, 4096), 'IO_ERROR', 'EBADF');
      await expectCode(io.punchHole(closedFd(), 0, 0), 'IO_ERROR', 'EBADF');
    },
  },
  {
    name: 'crc32c: known vectors (RFC 3720 B.4 and "123456789")',
    async run(io) {
      expect(io.crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
      expect(io.crc32c(Buffer.alloc(0))).toBe(0);
      expect(io.crc32c(Buffer.alloc(32, 0x00))).toBe(0x8a9136aa);
      expect(io.crc32c(Buffer.alloc(32, 0xff))).toBe(0x62a8ab43);
      expect(io.crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => i)))).toBe(0x46dd794e);
      expect(io.crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i)))).toBe(0x113fdb5c);
    },
  },
  {
    name: 'crc32c: seed continues a previous result; matches the table at every length and alignment',
    async run(io) {
      const data = randomBytes(5000);
      for (const cut of [0, 1, 7, 8, 9, 63, 64, 65, 4999, 5000]) {
        const whole = io.crc32c(data);
        expect(io.crc32c(data.subarray(cut), io.crc32c(data.subarray(0, cut)))).toBe(whole);
      }
      for (let len = 0; len <= 70; len++) {
        for (const start of [0, 1, 3, 5]) {
          const view = data.subarray(start, start + len);
          expect(io.crc32c(view)).toBe(crc32cTable(view));
          expect(io.crc32c(view, 0xdeadbeef)).toBe(crc32cTable(view, 0xdeadbeef));
        }
      }
      const big = randomBytes(1024 * 1024 + 5);
      expect(io.crc32c(big, 0xffffffff)).toBe(crc32cTable(big, 0xffffffff));
      expect(io.crc32c(new Uint8Array(big.buffer, big.byteOffset + 3, 1000) as Buffer)).toBe(crc32cTable(big.subarray(3, 1003)));
    },
  },
  {
    name: 'probeReflink: false where the addon is missing; rejects IO_ERROR for a missing or non-directory path',
    async run(io) {
      const r = await io.probeReflink(tmpRoot);
      expect(typeof r).toBe('boolean');
      if (io.kind === 'fallback') expect(r).toBe(false);
      // The probe leaves nothing behind.
      expect(fs.readdirSync(tmpRoot).filter((n) => n.startsWith('.dmfs-reflink-probe'))).toEqual([]);
      await expectCode(io.probeReflink(path.join(tmpRoot, 'missing', 'dir')), 'IO_ERROR', 'ENOENT');
      const f = file(Buffer.from('x'));
      await expectCode(io.probeReflink(f.path), 'IO_ERROR', 'ENOTDIR');
    },
  },
];

// ---------------------------------------------------------------------------------------
// Bad arguments: every one is INVALID on both implementations, rejected (never thrown
// synchronously) by the promise methods, thrown by crc32c.

const BAD_FDS: unknown[] = [-1, 1.5, NaN, Infinity, 2 ** 31, '3', undefined, null, 3n, {}];
const BAD_OFFSETS: unknown[] = [-1, 0.5, NaN, Infinity, -Infinity, 2 ** 53, '0', undefined, null, 1n];

interface BadCall {
  method: Exclude<keyof BlockIo, 'kind' | 'unavailableReason'>;
  label: string;
  /** Arguments; the placeholder 'FD' is replaced by an open fd. */
  args: unknown[];
}

const FD = Symbol('fd');
const BUF = Buffer.alloc(16);

const BAD_CALLS: BadCall[] = [
  ...BAD_FDS.map((v): BadCall => ({ method: 'copyRange', label: `fdIn=${String(v)}`, args: [v, 0, FD, 0, 16] })),
  ...BAD_FDS.map((v): BadCall => ({ method: 'copyRange', label: `fdOut=${String(v)}`, args: [FD, 0, v, 0, 16] })),
  ...BAD_OFFSETS.map((v): BadCall => ({ method: 'copyRange', label: `inOffset=${String(v)}`, args: [FD, v, FD, 0, 16] })),
  ...BAD_OFFSETS.map((v): BadCall => ({ method: 'copyRange', label: `outOffset=${String(v)}`, args: [FD, 0, FD, v, 16] })),
  ...BAD_OFFSETS.map((v): BadCall => ({ method: 'copyRange', label: `length=${String(v)}`, args: [FD, 0, FD, 100, v] })),
  { method: 'copyRange', label: 'inOffset + length > 2^53 - 1', args: [FD, MAX_SAFE - 10, FD, 0, 20] },
  { method: 'copyRange', label: 'outOffset + length > 2^53 - 1', args: [FD, 0, FD, MAX_SAFE - 10, 20] },
  { method: 'copyRange', label: 'no arguments', args: [] },
  ...(['readBlocks', 'writeBlocks'] as const).flatMap((method): BadCall[] => [
    ...BAD_FDS.map((v): BadCall => ({ method, label: `fd=${String(v)}`, args: [v, [BUF], [0]] })),
    ...BAD_OFFSETS.map((v): BadCall => ({ method, label: `offsets[1]=${String(v)}`, args: [FD, [BUF, BUF], [0, v]] })),
    { method, label: 'buffers not an array', args: [FD, BUF, [0]] },
    { method, label: 'buffers null', args: [FD, null, [0]] },
    { method, label: 'buffers array-like object', args: [FD, { length: 1, 0: BUF }, [0]] },
    { method, label: 'offsets not an array', args: [FD, [BUF], 0] },
    { method, label: 'offsets missing', args: [FD, [BUF]] },
    { method, label: 'arrays of different lengths', args: [FD, [BUF, BUF], [0]] },
    { method, label: 'arrays of different lengths (more offsets)', args: [FD, [BUF], [0, 16]] },
    { method, label: 'buffer is a string', args: [FD, ['abc'], [0]] },
    { method, label: 'buffer is a number', args: [FD, [16], [0]] },
    { method, label: 'buffer is null', args: [FD, [null], [0]] },
    { method, label: 'buffer is a plain array', args: [FD, [[1, 2, 3]], [0]] },
    { method, label: 'buffer is a DataView', args: [FD, [new DataView(new ArrayBuffer(16))], [0]] },
    { method, label: 'buffer is a Uint16Array', args: [FD, [new Uint16Array(8)], [0]] },
    { method, label: 'buffer is a Float64Array', args: [FD, [new Float64Array(2)], [0]] },
    { method, label: 'buffer is an ArrayBuffer', args: [FD, [new ArrayBuffer(16)], [0]] },
    { method, label: 'offset + length > 2^53 - 1', args: [FD, [BUF], [MAX_SAFE - 8]] },
  ]),
  ...BAD_FDS.map((v): BadCall => ({ method: 'punchHole', label: `fd=${String(v)}`, args: [v, 0, 4096] })),
  ...BAD_OFFSETS.map((v): BadCall => ({ method: 'punchHole', label: `offset=${String(v)}`, args: [FD, v, 4096] })),
  ...BAD_OFFSETS.map((v): BadCall => ({ method: 'punchHole', label: `length=${String(v)}`, args: [FD, 0, v] })),
  { method: 'punchHole', label: 'offset + length > 2^53 - 1', args: [FD, MAX_SAFE, 1] },
  { method: 'crc32c', label: 'data is a string', args: ['123456789'] },
  { method: 'crc32c', label: 'data missing', args: [] },
  { method: 'crc32c', label: 'data is a DataView', args: [new DataView(new ArrayBuffer(4))] },
  { method: 'crc32c', label: 'data is an Int32Array', args: [new Int32Array(4)] },
  ...[-1, 2 ** 32, 1.5, NaN, '1', null, 1n].map((v): BadCall => ({ method: 'crc32c', label: `seed=${String(v)}`, args: [BUF, v] })),
  ...['', 42, undefined, null, Buffer.from('/tmp')].map((v): BadCall => ({ method: 'probeReflink', label: `dirPath=${String(v)}`, args: [v] })),
];

describe.each(IMPLS)('BlockIo conformance: %s', (kind, maybeIo) => {
  const t = maybeIo ? test : test.skip;
  const io = maybeIo as BlockIo;

  t('identifies itself', () => {
    expect(io.kind).toBe(kind);
    if (kind === 'fallback') expect(typeof io.unavailableReason).toBe('string');
  });

  t.each(CASES.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    await c.run(io);
  });

  t.each(BAD_CALLS.map((c) => [`${c.method}(${c.label})`, c] as const))('INVALID: %s', async (_label, c) => {
    const f = file(Buffer.alloc(4096));
    const args = c.args.map((a) => (a === FD ? f.fd : a));
    if (c.method === 'crc32c') {
      expectSyncCode(() => call(io, c.method, args), 'INVALID');
      return;
    }
    let result: unknown;
    expect(() => {
      result = call(io, c.method, args);
    }).not.toThrow();
    expect(typeof (result as Promise<unknown>)?.then).toBe('function');
    await expectCode(result as Promise<unknown>, 'INVALID');
    // Nothing was written by a rejected call.
    expect(readAll(f.path).equals(Buffer.alloc(4096))).toBe(true);
  });
});
