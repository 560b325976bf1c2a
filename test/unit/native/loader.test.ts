/**
 * The loader (src/native/index.ts) and the raw addon at its FFI edge: DMFS_NATIVE modes,
 * package-root resolution, garbage in without crashes, both CRC-32C paths, and Buffers
 * kept alive across async work while the GC runs.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as native from '../../../src/native';
import type { RawAddon } from '../../../src/native';

const REPO = path.resolve(__dirname, '..', '..', '..');
const nativeLoad = native.tryLoadNative();
const nativeMustLoad = process.env.CI === 'true' || process.env.DMFS_NATIVE === 'required';
const withAddon = nativeLoad.blockIo ? test : test.skip;
if (!nativeLoad.blockIo && !nativeMustLoad) console.log(`raw addon tests skipped: ${nativeLoad.reason}`);

/** Imports src/native afresh with the given environment. */
function importWith(env: Record<string, string | undefined>): typeof native {
  const saved: Record<string, string | undefined> = {};
  for (const k of Object.keys(env)) {
    saved[k] = process.env[k];
    if (env[k] === undefined) delete process.env[k];
    else process.env[k] = env[k];
  }
  try {
    let mod: typeof native | undefined;
    jest.isolateModules(() => {
      mod = require('../../../src/native') as typeof native;
    });
    return mod as typeof native;
  } finally {
    for (const k of Object.keys(saved)) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  }
}

function thrownBy(f: () => unknown): { code?: string } | null {
  try {
    f();
    return null;
  } catch (e) {
    return e as { code?: string };
  }
}

describe('loader', () => {
  test('packageRoot() is the repository root and the addon path sits under native/', () => {
    expect(native.packageRoot()).toBe(REPO);
    const saved = process.env.DMFS_NATIVE_PATH;
    delete process.env.DMFS_NATIVE_PATH;
    try {
      expect(native.nativeAddonPath()).toBe(path.join(REPO, 'native', 'dmfs_native.node'));
    } finally {
      if (saved !== undefined) process.env.DMFS_NATIVE_PATH = saved;
    }
  });

  test('DMFS_NATIVE=off forces the fallback', () => {
    const m = importWith({ DMFS_NATIVE: 'off', DMFS_NATIVE_PATH: undefined });
    expect(m.blockIo.kind).toBe('fallback');
    expect(m.blockIo.unavailableReason).toBe('DMFS_NATIVE=off');
    expect(m.blockIo.crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
  });

  test('a missing addon: auto falls back with the reason, required throws NATIVE_UNAVAILABLE', () => {
    const missing = path.join(os.tmpdir(), `dmfs-no-such-addon-${process.pid}.node`);
    const m = importWith({ DMFS_NATIVE: undefined, DMFS_NATIVE_PATH: missing });
    expect(m.blockIo.kind).toBe('fallback');
    expect(m.blockIo.unavailableReason).toMatch(/not built/);
    expect(m.tryLoadNative(missing)).toEqual({ blockIo: null, reason: m.blockIo.unavailableReason });
    const err = thrownBy(() => importWith({ DMFS_NATIVE: 'required', DMFS_NATIVE_PATH: missing }));
    expect(err?.code).toBe('NATIVE_UNAVAILABLE');
  });

  test('a file that is not an addon is reported, not loaded', () => {
    const bogus = path.join(os.tmpdir(), `dmfs-bogus-${process.pid}.node`);
    fs.writeFileSync(bogus, 'this is not an ELF file');
    try {
      const m = importWith({ DMFS_NATIVE: undefined, DMFS_NATIVE_PATH: bogus });
      expect(m.blockIo.kind).toBe('fallback');
      expect(m.blockIo.unavailableReason).toMatch(/failed to load/);
    } finally {
      fs.rmSync(bogus, { force: true });
    }
  });

  test('an unknown DMFS_NATIVE value is BAD_CONFIG', () => {
    expect(thrownBy(() => native.selectBlockIo('yes please'))?.code).toBe('BAD_CONFIG');
    expect(native.selectBlockIo('off').kind).toBe('fallback');
  });

  withAddon('DMFS_NATIVE=required and auto load the addon when it is built', () => {
    expect(importWith({ DMFS_NATIVE: 'required', DMFS_NATIVE_PATH: undefined }).blockIo.kind).toBe('native');
    expect(importWith({ DMFS_NATIVE: 'auto', DMFS_NATIVE_PATH: undefined }).blockIo.kind).toBe('native');
  });
});

describe('raw addon at the FFI edge', () => {
  const raw = (): RawAddon => (nativeLoad.blockIo as native.NativeBlockIo).addon;

  withAddon('exports the ABI the loader expects and names its CRC path', () => {
    expect(raw().abiVersion).toBe(native.NATIVE_ABI_VERSION);
    expect(['sse4.2', 'table']).toContain(raw().crc32cImpl);
  });

  withAddon('garbage arguments throw INVALID synchronously and never crash the process', () => {
    const fns = ['copyRange', 'cloneRange', 'readBlocks', 'writeBlocks', 'readBlocksNowait', 'writeBlocksNowait', 'punchHole', 'crc32c', 'crc32cTable', 'fuseRead', 'fuseWrite', 'fdSocketPair'] as const;
    const junk: unknown[][] = [
      [],
      [undefined, undefined, undefined, undefined, undefined, undefined, undefined, undefined, undefined, undefined],
      [Symbol('x'), () => 1, new Map(), Promise.resolve(1), new Proxy({}, {})],
      [-1, [Buffer.alloc(1)], [0], 'extra', 'args', 'are', 'ignored', 'after', 'the', 'declared', 'ones', -1],
      [0, -0.000001, 0, 0, 0],
      [0, { valueOf: () => 1 }, 0, 0, 0],
    ];
    for (const f of fns) {
      for (const args of junk) {
        const err = thrownBy(() => (raw()[f] as (...a: unknown[]) => unknown)(...args));
        expect([f, err?.code]).toEqual([f, 'INVALID']);
      }
    }
  });

  withAddon('readBlocksNowait / writeBlocksNowait move bytes on this thread or answer -1, never throw for a system error', () => {
    const p = path.join(os.tmpdir(), `dmfs-nowait-${process.pid}`);
    const fd = fs.openSync(p, 'w+');
    try {
      const data = Buffer.from('0123456789abcdef'.repeat(512)); // 8 KiB
      const wrote = raw().writeBlocksNowait(fd, [data.subarray(0, 4096), data.subarray(4096)], [0, 4096]);
      // -1 where the file system refuses non-blocking writes and the write is large; 8 KiB is written here.
      expect(wrote === 8192 || wrote === -1).toBe(true);
      if (wrote === -1) fs.writeSync(fd, data, 0, data.length, 0);
      for (const mayBlock of [false, true]) {
        const a = Buffer.alloc(4096);
        const b = Buffer.alloc(100);
        const n = raw().readBlocksNowait(fd, [a, b], [4096, 10], mayBlock);
        // In the page cache right after the write: both modes read at once.
        expect(n).toBe(4196);
        expect(a.equals(data.subarray(4096))).toBe(true);
        expect(b.equals(data.subarray(10, 110))).toBe(true);
      }
      expect(thrownBy(() => raw().readBlocksNowait(fd, [Buffer.alloc(1)], [0], 'yes' as unknown as boolean))?.code).toBe('INVALID');
    } finally {
      fs.closeSync(fd);
      fs.rmSync(p, { force: true });
    }
    const closed = fs.openSync(p, 'w+');
    fs.closeSync(closed);
    fs.rmSync(p, { force: true });
    // A failed system call leaves the reporting to the asynchronous call.
    expect(raw().readBlocksNowait(closed, [Buffer.alloc(8)], [0], true)).toBe(-1);
    expect(raw().writeBlocksNowait(closed, [Buffer.alloc(8)], [0])).toBe(-1);
    // fuseRead / fuseWrite answer -errno instead of throwing.
    expect(raw().fuseRead(closed, Buffer.alloc(8))).toBe(-os.constants.errno.EBADF);
    expect(raw().fuseWrite(closed, Buffer.alloc(8))).toBe(-os.constants.errno.EBADF);
  });

  withAddon('an exception thrown while the addon reads an array propagates as is', () => {
    const buffers: unknown[] = [Buffer.alloc(4)];
    Object.defineProperty(buffers, 0, {
      get() {
        throw new Error('getter exploded');
      },
    });
    expect(() => raw().readBlocks(0, buffers as Buffer[], [0])).toThrow('getter exploded');
  });

  withAddon('system call errors carry errno and syscall', async () => {
    const fd = fs.openSync(path.join(os.tmpdir(), `dmfs-raw-${process.pid}`), 'w+');
    fs.closeSync(fd);
    fs.rmSync(path.join(os.tmpdir(), `dmfs-raw-${process.pid}`));
    const err = await raw()
      .punchHole(fd, 0, 4096)
      .then(
        () => null,
        (e: { code?: string; errno?: number; syscall?: string }) => e,
      );
    expect(err).toMatchObject({ code: 'ERRNO', errno: os.constants.errno.EBADF, syscall: 'fallocate' });
  });

  withAddon('SSE4.2 and table CRC-32C give the same bits as the TypeScript table', () => {
    for (const len of [0, 1, 2, 7, 8, 9, 15, 16, 17, 255, 256, 4095, 4096, 4097, 12287, 12288, 12289, 24576 + 7, 36864, 65536, 65537, 1 << 20]) {
      const data = randomBytes(len + 3).subarray(3);
      for (const seed of [0, 1, 0x12345678, 0xffffffff]) {
        const want = native.crc32cTable(data, seed);
        expect(raw().crc32c(data, seed)).toBe(want);
        expect(raw().crc32cTable(data, seed)).toBe(want);
      }
    }
  });

  withAddon('Buffers passed to readBlocks/writeBlocks stay alive through GC during the async work', () => {
    // A child with --expose-gc drops every reference to its Buffers right after the call
    // and collects repeatedly while the work runs; the file must hold exactly what was written.
    const script = `
      const { NativeBlockIo } = require(process.argv[1]);
      const io = new NativeBlockIo(require(process.argv[2]), process.argv[2]);
      const fs = require('fs');
      const file = process.argv[3];
      const fd = fs.openSync(file, 'w+');
      // Big buffers: each write outlasts the collections below, and a Buffer freed too
      // early is unmapped (above malloc's mmap threshold), so the write fails with EFAULT.
      const N = 3, SIZE = 64 << 20;
      (async () => {
        for (let round = 0; round < 2; round++) {
          const pending = [];
          for (let i = 0; i < N; i++) pending.push(io.writeBlocks(fd, [Buffer.alloc(SIZE, (i + round + 1) & 0xff)], [i * SIZE]));
          for (let i = 0; i < N; i++) pending.push(io.readBlocks(fd, [Buffer.alloc(SIZE)], [i * SIZE]));
          for (let k = 0; k < 8; k++) { global.gc(); await new Promise((r) => setImmediate(r)); }
          const done = await Promise.all(pending);
          if (done.slice(0, N).some((n) => n !== SIZE)) throw new Error('short write');
          const back = fs.readFileSync(file);
          for (let i = 0; i < N; i++) {
            const want = (i + round + 1) & 0xff;
            const blk = back.subarray(i * SIZE, (i + 1) * SIZE);
            if (!blk.every((b) => b === want)) throw new Error('block ' + i + ' corrupt in round ' + round);
          }
        }
        fs.closeSync(fd);
        console.log('ok');
      })().catch((e) => { console.error(e); process.exit(1); });
    `;
    const tmpFile = path.join(os.tmpdir(), `dmfs-gc-${process.pid}`);
    // The child needs compiled JS: a tiny CommonJS wrapper around the addon is enough.
    const wrapper = path.join(os.tmpdir(), `dmfs-gc-wrapper-${process.pid}.js`);
    fs.writeFileSync(
      wrapper,
      `exports.NativeBlockIo = class { constructor(a) { this.a = a; }
        writeBlocks(fd, b, o) { return this.a.writeBlocks(fd, b, o); }
        readBlocks(fd, b, o) { return this.a.readBlocks(fd, b, o); } };`,
    );
    try {
      const r = spawnSync(process.execPath, ['--expose-gc', '-e', script, wrapper, native.nativeAddonPath(), tmpFile], { encoding: 'utf8', timeout: 60_000 });
      expect(r.stderr).toBe('');
      expect(r.stdout.trim()).toBe('ok');
      expect(r.status).toBe(0);
    } finally {
      fs.rmSync(tmpFile, { force: true });
      fs.rmSync(wrapper, { force: true });
    }
  });
});
