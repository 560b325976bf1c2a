import { constants } from 'node:os';
import { dmfsError } from '../../../src/errors';
import {
  attrToStat,
  direntToStat,
  fuseOptionList,
  getInt64,
  negErrno,
  nsToTimespec,
  setInt64,
  STAT_SLOTS,
  statfsToArray,
  timespecToTimeSpec,
  toNativeHandlers,
  UTIME_NOW,
  UTIME_OMIT,
  type CallerContext,
  type FuseMountOptions,
  type PathOperations,
} from '../../../src/fs/fuse-adapter';
import { mountOptionsFor } from '../../../src/fs/mount-service';
import type { Attr } from '../../../src/store/layer-store';
import { MemoryLayerFs } from '../../support/memory-layer-fs';

const E = constants.errno;

describe('64-bit values cross as two uint32', () => {
  it.each([0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 7, 2 ** 53 - 1, -1, -(2 ** 40) - 3])('round-trips %p', (v) => {
    const ints = new Uint32Array(2);
    setInt64(ints, 0, v);
    expect(getInt64(ints, 0)).toBe(v);
  });

  it('splits as the C side reads it (low word first, two\'s complement high word)', () => {
    const ints = new Uint32Array(2);
    setInt64(ints, 0, 2 ** 32 * 5 + 9);
    expect([ints[0], ints[1]]).toEqual([9, 5]);
    setInt64(ints, 0, -1);
    expect([ints[0], ints[1]]).toEqual([0xffffffff, 0xffffffff]);
  });

  it('refuses values that are not safe integers', () => {
    expect(() => setInt64(new Uint32Array(2), 0, 2 ** 53)).toThrow(expect.objectContaining({ code: 'INVALID' }));
    expect(() => setInt64(new Uint32Array(2), 0, 1.5)).toThrow(expect.objectContaining({ code: 'INVALID' }));
  });
});

describe('timestamps keep nanoseconds', () => {
  it('splits ns into floored seconds and ns in [0, 1e9)', () => {
    expect(nsToTimespec(981173106123456789n)).toEqual({ sec: 981173106, nsec: 123456789 });
    expect(nsToTimespec(0n)).toEqual({ sec: 0, nsec: 0 });
    // 1960-01-01T00:00:00.5Z: before the epoch, nsec stays positive.
    expect(nsToTimespec(-315619199500000000n)).toEqual({ sec: -315619200, nsec: 500000000 });
    expect(nsToTimespec(-1n)).toEqual({ sec: -1, nsec: 999999999 });
  });

  it('reads utimens times exactly, and UTIME_NOW / UTIME_OMIT as such', () => {
    expect(timespecToTimeSpec(981173106, 123456789)).toBe(981173106123456789n);
    expect(timespecToTimeSpec(-315619200, 500000000)).toBe(-315619199500000000n);
    expect(timespecToTimeSpec(0, UTIME_NOW)).toBe('now');
    expect(timespecToTimeSpec(12345, UTIME_OMIT)).toBe('omit');
    expect(() => timespecToTimeSpec(1, 1_000_000_000)).toThrow(expect.objectContaining({ code: 'INVALID' }));
  });
});

const sampleAttr: Attr = {
  ino: 2 ** 40 + 17,
  kind: 'file',
  mode: 0o104755,
  uid: 1000,
  gid: 2000,
  sizeBytes: 5 * 2 ** 32 + 3,
  nlink: 3,
  rdev: 0,
  atimeNs: 1_700_000_000_123_456_789n,
  mtimeNs: 981173106123456789n,
  ctimeNs: -315619199500000000n,
  blocks512: 2 ** 33,
};

describe('attrToStat (patched stat layout)', () => {
  it('puts every field where fuse-native.c reads it', () => {
    const s = attrToStat(sampleAttr, 65536);
    expect(s.length).toBe(STAT_SLOTS);
    expect(s[0]).toBe(0o104755); // mode with setuid kept
    expect([s[1], s[2]]).toEqual([1000, 2000]);
    expect(getInt64(s, 3)).toBe(sampleAttr.sizeBytes);
    expect(s[6]).toBe(3);
    expect(getInt64(s, 7)).toBe(2 ** 40 + 17); // st_ino is 64-bit, not truncated
    expect(getInt64(s, 9)).toBe(0);
    expect(s[11]).toBe(65536);
    expect(getInt64(s, 12)).toBe(2 ** 33);
    expect([getInt64(s, 14), s[16]]).toEqual([1_700_000_000, 123_456_789]);
    expect([getInt64(s, 17), s[19]]).toEqual([981173106, 123456789]);
    expect([getInt64(s, 20), s[22]]).toEqual([-315619200, 500000000]);
  });

  it('encodes device numbers above 32 bits', () => {
    const s = attrToStat({ ...sampleAttr, kind: 'chardev', mode: 0o020600, rdev: 2 ** 35 + 0x0501 }, 4096);
    expect(getInt64(s, 9)).toBe(2 ** 35 + 0x0501);
  });

  it('gives readdir the inode and the type bits', () => {
    const s = direntToStat({ name: 'x', ino: 2 ** 33 + 1, kind: 'symlink' });
    expect(s[0]).toBe(0o120000);
    expect(getInt64(s, 7)).toBe(2 ** 33 + 1);
  });
});

describe('statfsToArray (patched statfs layout)', () => {
  it('carries 64-bit block and inode counts', () => {
    const a = statfsToArray({ blockSizeBytes: 65536, totalBlocks: 2 ** 34, freeBlocks: 2 ** 33, availBlocks: 2 ** 32 + 1, totalInodes: 2 ** 36, freeInodes: 2 ** 35, nameMaxBytes: 255 });
    expect([a[0], a[1]]).toEqual([65536, 65536]);
    expect([getInt64(a, 2), getInt64(a, 4), getInt64(a, 6)]).toEqual([2 ** 34, 2 ** 33, 2 ** 32 + 1]);
    expect([getInt64(a, 8), getInt64(a, 10), getInt64(a, 12)]).toEqual([2 ** 36, 2 ** 35, 2 ** 35]);
    expect(a[16]).toBe(255);
  });
});

describe('errno mapping', () => {
  it.each([
    ['NOT_FOUND', E.ENOENT],
    ['READ_ONLY_LAYER', E.EROFS],
    ['LAYER_FULL', E.ENOSPC],
    ['POOL_FULL', E.ENOSPC],
    ['NAME_TOO_LONG', E.ENAMETOOLONG],
    ['NOT_EMPTY', E.ENOTEMPTY],
    ['NO_XATTR', E.ENODATA],
    ['FILE_TOO_BIG', E.EFBIG],
  ] as const)('%s -> -%p', (code, errno) => {
    expect(negErrno(dmfsError(code, 'x'))).toBe(-errno);
  });

  it('maps Node system errors by their code and anything else to -EIO', () => {
    expect(negErrno(Object.assign(new Error('x'), { code: 'EACCES' }))).toBe(-E.EACCES);
    expect(negErrno(new TypeError('bug'))).toBe(-E.EIO);
    expect(negErrno(undefined)).toBe(-E.EIO);
  });
});

describe('mount options', () => {
  const base: FuseMountOptions = {
    fsName: 'dmfs:web,1', readOnly: false, entryTimeoutS: 1, attrTimeoutS: 1, negativeTimeoutS: 1,
    kernelCache: false, autoCache: true, maxWriteBytes: 131072, blockSizeBytes: 65536,
  };

  it('always asks for kernel permission checks, our inode numbers and big writes', () => {
    const list = fuseOptionList(base);
    expect(list).toEqual(expect.arrayContaining(['use_ino', 'big_writes', 'max_write=131072', 'subtype=dmfs']));
    expect(list).not.toContain('allow_other');
    expect(list).not.toContain('ro');
  });

  it('keeps the fsname from injecting options', () => {
    expect(fuseOptionList(base)[0]).toBe('fsname=dmfs:web_1');
  });

  it('read-only layers: ro, kernel_cache and long timeouts; writable: auto_cache, short timeouts', async () => {
    const ro = new MemoryLayerFs({ layerName: 'img', readOnly: true });
    const rw = new MemoryLayerFs({ layerName: 'ctr' });
    const roList = fuseOptionList(mountOptionsFor(ro, 65536));
    const rwList = fuseOptionList(mountOptionsFor(rw, 65536, { allowOther: true }));
    expect(roList).toEqual(expect.arrayContaining(['ro', 'kernel_cache', 'entry_timeout=3600', 'attr_timeout=3600']));
    expect(roList).not.toContain('auto_cache');
    expect(rwList).toEqual(expect.arrayContaining(['auto_cache', 'ac_attr_timeout=0', 'attr_timeout=0', 'allow_other', 'default_permissions']));
    expect(rwList).not.toContain('kernel_cache');
  });
});

describe('toNativeHandlers: promises to fuse-native callbacks', () => {
  const ctx: CallerContext = { uid: 1000, gid: 1001, pid: 42, umask: 0o022 };

  function handlers(ops: Partial<PathOperations>): Record<string, (...a: unknown[]) => void> {
    return toNativeHandlers(ops as PathOperations, 4096, () => ctx) as Record<string, (...a: unknown[]) => void>;
  }

  function call(h: Record<string, (...a: unknown[]) => void>, name: string, ...args: unknown[]): Promise<unknown[]> {
    return new Promise((resolve) => h[name](...args, (...res: unknown[]) => resolve(res)));
  }

  it('answers getattr with 0 and the stat array, errors with -errno', async () => {
    const h = handlers({
      getattr: async (p) => {
        if (p === '/missing') throw dmfsError('NOT_FOUND', 'x');
        return sampleAttr;
      },
    });
    const [code, stat] = await call(h, 'getattr', '/f');
    expect(code).toBe(0);
    expect(getInt64(stat as Uint32Array, 7)).toBe(sampleAttr.ino);
    expect(await call(h, 'getattr', '/missing')).toEqual([-E.ENOENT]);
  });

  it('answers read/write with the byte count as first argument (fuse-native convention)', async () => {
    const h = handlers({
      read: async (_p, _fh, target) => target.write('abc'),
      write: async () => {
        throw dmfsError('LAYER_FULL', 'full');
      },
    });
    const buf = Buffer.alloc(8);
    expect(await call(h, 'read', '/f', 1, buf, 8, 0)).toEqual([3]);
    expect(buf.subarray(0, 3).toString()).toBe('abc');
    expect(await call(h, 'write', '/f', 1, buf, 8, 0)).toEqual([-E.ENOSPC]);
  });

  it('limits read to the requested length when the buffer is larger', async () => {
    let seen = -1;
    const h = handlers({ read: async (_p, _fh, target) => (seen = target.length) });
    await call(h, 'read', '/f', 1, Buffer.alloc(16), 4, 0);
    expect(seen).toBe(4);
  });

  it('turns raw utimens arguments into TimeSpecs', async () => {
    const seen: unknown[] = [];
    const h = handlers({ utimens: async (p, a, m) => void seen.push(p, a, m) });
    expect(await call(h, 'utimens', '/f', 0, UTIME_OMIT, 981173106, 123456789)).toEqual([0]);
    expect(seen).toEqual(['/f', 'omit', 981173106123456789n]);
    expect(await call(h, 'utimens', '/f', 0, 2_000_000_000, 0, 0)).toEqual([-E.EINVAL]);
  });

  it('passes chown -1 as "unchanged"', async () => {
    const seen: unknown[] = [];
    const h = handlers({ chown: async (_p, uid, gid) => void seen.push(uid, gid) });
    await call(h, 'chown', '/f', 0xffffffff, 7);
    expect(seen).toEqual([null, 7]);
  });

  it('hands the caller context to node-creating operations', async () => {
    const seen: CallerContext[] = [];
    const h = handlers({
      create: async (_p, _m, c) => (seen.push(c), 5),
      mkdir: async (_p, _m, c) => void seen.push(c),
      mknod: async (_p, _m, _d, c) => void seen.push(c),
      symlink: async (_t, _p, c) => void seen.push(c),
    });
    expect(await call(h, 'create', '/f', 0o644)).toEqual([0, 5]);
    await call(h, 'mkdir', '/d', 0o755);
    await call(h, 'mknod', '/n', 0o010644, 0);
    await call(h, 'symlink', 'target', '/l');
    expect(seen).toEqual([ctx, ctx, ctx, ctx]);
  });

  it('answers getxattr with the value (null -> ENODATA is fuse-native\'s) and readdir with names and stats', async () => {
    const h = handlers({
      getxattr: async (_p, name) => (name === 'user.a' ? Buffer.from('v') : null),
      readdir: async () => [{ name: '.', ino: 1, kind: 'dir' }, { name: 'f', ino: 9, kind: 'file' }],
    });
    expect(await call(h, 'getxattr', '/f', 'user.a', 0)).toEqual([0, Buffer.from('v')]);
    expect(await call(h, 'getxattr', '/f', 'user.b', 0)).toEqual([0, null]);
    const [code, names, stats] = await call(h, 'readdir', '/');
    expect(code).toBe(0);
    expect(names).toEqual(['.', 'f']);
    expect(getInt64((stats as Uint32Array[])[1], 7)).toBe(9);
  });
});
