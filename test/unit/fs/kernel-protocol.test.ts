/**
 * The encoders of src/fs/kernel-protocol.ts against the struct layouts of linux/fuse.h.
 * Every expected offset below is read off fuse.h, not off the encoder: a field moved by
 * the encoder must fail here. Buffers are pre-filled with a marker byte so that bytes
 * the encoder must leave alone, and padding it must zero, are both checked.
 */
import fc from 'fast-check';
import {
  ATTR_BYTES, ATTR_OUT_BYTES, ENTRY_OUT_BYTES, FOPEN_CACHE_DIR, FOPEN_KEEP_CACHE, FUSE_KERNEL_MINOR_VERSION, FUSE_SETXATTR_ACL_KILL_SGID, FUSE_WRITE_KILL_SUIDGID, STATX_OUT_BYTES,
  FUSE_KERNEL_VERSION, FUSE_ROOT_ID, INIT_OUT_BYTES, IN_HEADER_BYTES, InitFlag, OPEN_OUT_BYTES, OUT_HEADER_BYTES, Op,
  RENAME_EXCHANGE, RENAME_NOREPLACE, STATFS_OUT_BYTES, SetattrValid, direntBytes, direntType, readHeader, readName,
  readU64, readUnique, writeAttr, writeAttrOut, writeDirent, writeEntry, writeI64, writeInitOut, writeOpenOut,
  writeOutHeader, writeStatfs,
} from '../../../src/fs/kernel-protocol';
import type { Attr, FileKind } from '../../../src/store/layer-store';
import { S_IFREG } from '../../../src/store/layer-store';

const MARK = 0xaa;
const TWO32 = 2 ** 32;

function marked(bytes: number): Buffer {
  return Buffer.alloc(bytes, MARK);
}

/** True when every byte of buf[begin, end) is `value`. */
function allBytes(buf: Buffer, begin: number, end: number, value: number): boolean {
  return buf.subarray(begin, end).every((b) => b === value);
}

const u64 = (buf: Buffer, at: number): bigint => buf.readBigUInt64LE(at);
const i64 = (buf: Buffer, at: number): bigint => buf.readBigInt64LE(at);

/** An Attr whose every field is distinct, with 64-bit values above 2^32. */
function sampleAttr(): Attr {
  return {
    ino: TWO32 * 3 + 17,
    kind: 'file',
    mode: S_IFREG | 0o4755,
    uid: 4_000_000_001, // above 2^31: must stay unsigned
    gid: 50,
    sizeBytes: TWO32 * 5 + 1234,
    nlink: 3,
    rdev: 0x0801, // makedev(8, 1)
    atimeNs: 1_700_000_001_111_111_111n,
    mtimeNs: 1_700_000_002_222_222_222n,
    ctimeNs: 1_700_000_003_333_333_333n,
    blocks512: TWO32 + 99,
  };
}

describe('kernel protocol: constants match linux/fuse.h', () => {
  it('has the struct sizes of fuse.h', () => {
    expect(IN_HEADER_BYTES).toBe(40);
    expect(OUT_HEADER_BYTES).toBe(16);
    expect(ATTR_BYTES).toBe(88);
    expect(ENTRY_OUT_BYTES).toBe(128);
    expect(ATTR_OUT_BYTES).toBe(104);
    expect(OPEN_OUT_BYTES).toBe(16);
    expect(INIT_OUT_BYTES).toBe(64);
    expect(STATFS_OUT_BYTES).toBe(80);
    expect(FUSE_ROOT_ID).toBe(1);
    expect([FUSE_KERNEL_VERSION, FUSE_KERNEL_MINOR_VERSION]).toEqual([7, 31]);
  });

  it('has the opcodes of enum fuse_opcode', () => {
    expect(Op).toEqual({
      LOOKUP: 1, FORGET: 2, GETATTR: 3, SETATTR: 4, READLINK: 5, SYMLINK: 6, MKNOD: 8, MKDIR: 9,
      UNLINK: 10, RMDIR: 11, RENAME: 12, LINK: 13, OPEN: 14, READ: 15, WRITE: 16, STATFS: 17,
      RELEASE: 18, FSYNC: 20, SETXATTR: 21, GETXATTR: 22, LISTXATTR: 23, REMOVEXATTR: 24,
      FLUSH: 25, INIT: 26, OPENDIR: 27, READDIR: 28, RELEASEDIR: 29, FSYNCDIR: 30, ACCESS: 34,
      CREATE: 35, INTERRUPT: 36, DESTROY: 38, BATCH_FORGET: 42, FALLOCATE: 43, READDIRPLUS: 44, RENAME2: 45,
      LSEEK: 46, COPY_FILE_RANGE: 47, SYNCFS: 50, TMPFILE: 51, STATX: 52, COPY_FILE_RANGE_64: 53,
    });
  });

  it('has the INIT, SETATTR, open and rename flag bits of fuse.h', () => {
    expect(InitFlag).toEqual({
      ASYNC_READ: 0x1, BIG_WRITES: 0x20, DONT_MASK: 0x40, DO_READDIRPLUS: 0x2000, READDIRPLUS_AUTO: 0x4000, ASYNC_DIO: 0x8000,
      WRITEBACK_CACHE: 0x10000, PARALLEL_DIROPS: 0x40000, POSIX_ACL: 0x100000, MAX_PAGES: 0x400000, CACHE_SYMLINKS: 0x800000,
      HANDLE_KILLPRIV_V2: 0x10000000, SETXATTR_EXT: 0x20000000,
    });
    expect(FUSE_WRITE_KILL_SUIDGID).toBe(0x4);
    expect(FUSE_SETXATTR_ACL_KILL_SGID).toBe(0x1);
    expect(STATX_OUT_BYTES).toBe(288);
    expect(SetattrValid).toEqual({
      MODE: 0x1, UID: 0x2, GID: 0x4, SIZE: 0x8, ATIME: 0x10, MTIME: 0x20, ATIME_NOW: 0x80, MTIME_NOW: 0x100, CTIME: 0x400,
      KILL_SUIDGID: 0x800,
    });
    expect([FOPEN_KEEP_CACHE, FOPEN_CACHE_DIR]).toEqual([0x2, 0x8]);
    expect([RENAME_NOREPLACE, RENAME_EXCHANGE]).toEqual([0x1, 0x2]);
  });
});

describe('kernel protocol: 64-bit integers', () => {
  it.each([0, 1, 0xffffffff, TWO32, TWO32 + 1, TWO32 * 0x12345 + 0x6789abcd, Number.MAX_SAFE_INTEGER])(
    'writeI64 / readU64 round-trip %p as little-endian uint64',
    (v) => {
      const buf = marked(24);
      writeI64(buf, 8, v);
      expect(u64(buf, 8)).toBe(BigInt(v));
      expect(readU64(buf, 8)).toBe(v);
      expect(allBytes(buf, 0, 8, MARK) && allBytes(buf, 16, 24, MARK)).toBe(true);
    },
  );

  it.each([-1, -2, -TWO32, -TWO32 - 5, Number.MIN_SAFE_INTEGER])('writeI64 writes %p as two\'s complement int64', (v) => {
    const buf = marked(8);
    writeI64(buf, 0, v);
    expect(i64(buf, 0)).toBe(BigInt(v));
  });

  it('writeI64 -1 is all ones, and the halves are little-endian', () => {
    const buf = marked(8);
    writeI64(buf, 0, -1);
    expect(allBytes(buf, 0, 8, 0xff)).toBe(true);
    writeI64(buf, 0, TWO32 * 2 + 3);
    expect([...buf]).toEqual([3, 0, 0, 0, 2, 0, 0, 0]);
  });

  it('round-trips any safe integer (property)', () => {
    fc.assert(fc.property(fc.integer({ min: Number.MIN_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER }), (v) => {
      const buf = Buffer.alloc(8);
      writeI64(buf, 0, v);
      expect(i64(buf, 0)).toBe(BigInt(v));
      if (v >= 0) expect(readU64(buf, 0)).toBe(v);
    }));
  });
});

describe('kernel protocol: names', () => {
  it('stops at the NUL and returns the offset after it', () => {
    const buf = Buffer.from('abc\0defg\0', 'latin1');
    expect(readName(buf, 0, buf.length)).toEqual({ name: 'abc', next: 4 });
    expect(readName(buf, 4, buf.length)).toEqual({ name: 'defg', next: 9 });
  });

  it('reads an empty name', () => {
    expect(readName(Buffer.from([0, 0x41]), 0, 2)).toEqual({ name: '', next: 1 });
  });

  it('stops at the end bound when the NUL lies beyond it or is missing', () => {
    const late = Buffer.from('abcdef\0', 'latin1');
    expect(readName(late, 0, 4)).toEqual({ name: 'abcd', next: 5 });
    const none = Buffer.from('abcdef', 'latin1');
    expect(readName(none, 1, 6)).toEqual({ name: 'bcdef', next: 7 });
  });

  it('decodes UTF-8', () => {
    const buf = Buffer.concat([Buffer.from('héllo'), Buffer.from([0])]);
    expect(readName(buf, 0, buf.length)).toEqual({ name: 'héllo', next: 7 });
  });
});

describe('kernel protocol: headers', () => {
  it('reads struct fuse_in_header', () => {
    const buf = marked(IN_HEADER_BYTES);
    buf.writeUInt32LE(123, 0); // len
    buf.writeUInt32LE(Op.LOOKUP, 4); // opcode
    buf.writeBigUInt64LE(0x0000_0005_0000_0007n, 8); // unique
    buf.writeBigUInt64LE(BigInt(TWO32 * 9 + 4), 16); // nodeid
    buf.writeUInt32LE(4_000_000_000, 24); // uid
    buf.writeUInt32LE(1001, 28); // gid
    buf.writeUInt32LE(4242, 32); // pid
    expect(readHeader(buf)).toEqual({ len: 123, opcode: Op.LOOKUP, nodeid: TWO32 * 9 + 4, uid: 4_000_000_000, gid: 1001, pid: 4242 });
    expect(readUnique(buf)).toEqual({ lo: 7, hi: 5 });
  });

  it('writes struct fuse_out_header with -errno and the unique id', () => {
    const buf = marked(OUT_HEADER_BYTES + 4);
    writeOutHeader(buf, 16, -2, { lo: 0xdeadbeef, hi: 3 });
    expect(buf.readUInt32LE(0)).toBe(16);
    expect(buf.readInt32LE(4)).toBe(-2);
    expect(u64(buf, 8)).toBe(0x3_deadbeefn);
    expect(allBytes(buf, 16, 20, MARK)).toBe(true);
  });
});

describe('kernel protocol: struct fuse_attr', () => {
  it('puts each field at its fuse.h offset and touches nothing else', () => {
    const a = sampleAttr();
    const at = 8;
    const buf = marked(at + ATTR_BYTES + 8);
    writeAttr(buf, at, a, 65536);
    expect(u64(buf, at + 0)).toBe(BigInt(a.ino));
    expect(u64(buf, at + 8)).toBe(BigInt(a.sizeBytes));
    expect(u64(buf, at + 16)).toBe(BigInt(a.blocks512));
    expect(i64(buf, at + 24)).toBe(1_700_000_001n); // atime
    expect(i64(buf, at + 32)).toBe(1_700_000_002n); // mtime
    expect(i64(buf, at + 40)).toBe(1_700_000_003n); // ctime
    expect(buf.readUInt32LE(at + 48)).toBe(111_111_111); // atimensec
    expect(buf.readUInt32LE(at + 52)).toBe(222_222_222); // mtimensec
    expect(buf.readUInt32LE(at + 56)).toBe(333_333_333); // ctimensec
    expect(buf.readUInt32LE(at + 60)).toBe(S_IFREG | 0o4755); // mode
    expect(buf.readUInt32LE(at + 64)).toBe(3); // nlink
    expect(buf.readUInt32LE(at + 68)).toBe(4_000_000_001); // uid
    expect(buf.readUInt32LE(at + 72)).toBe(50); // gid
    expect(buf.readUInt32LE(at + 76)).toBe(0x0801); // rdev
    expect(buf.readUInt32LE(at + 80)).toBe(65536); // blksize
    expect(buf.readUInt32LE(at + 84)).toBe(0); // flags
    expect(allBytes(buf, 0, at, MARK)).toBe(true);
    expect(allBytes(buf, at + ATTR_BYTES, buf.length, MARK)).toBe(true);
  });

  it.each([
    [-1n, -1n, 999_999_999],
    [-1_000_000_000n, -1n, 0],
    [-1_500_000_000n, -2n, 500_000_000],
    [-86_400_000_000_001n, -86_401n, 999_999_999],
    [0n, 0n, 0],
    [999_999_999n, 0n, 999_999_999],
  ])('splits %p ns (before and at 1970) into floored seconds %p and nanoseconds %p', (ns, sec, nsec) => {
    const buf = marked(ATTR_BYTES);
    writeAttr(buf, 0, { ...sampleAttr(), atimeNs: ns, mtimeNs: ns, ctimeNs: ns }, 4096);
    for (const [secAt, nsecAt] of [[24, 48], [32, 52], [40, 56]]) {
      expect(i64(buf, secAt)).toBe(sec);
      expect(buf.readUInt32LE(nsecAt)).toBe(nsec);
    }
  });
});

describe('kernel protocol: replies holding an attr', () => {
  it('writes struct fuse_entry_out: nodeid, generation 0, validity split into sec/nsec, attr at 40', () => {
    const a = sampleAttr();
    const at = OUT_HEADER_BYTES;
    const buf = marked(at + ENTRY_OUT_BYTES + 8);
    writeEntry(buf, at, TWO32 + 77, a, 2.25, 1.5, 4096);
    expect(u64(buf, at + 0)).toBe(BigInt(TWO32 + 77)); // nodeid
    expect(u64(buf, at + 8)).toBe(0n); // generation
    expect(u64(buf, at + 16)).toBe(2n); // entry_valid
    expect(u64(buf, at + 24)).toBe(1n); // attr_valid
    expect(buf.readUInt32LE(at + 32)).toBe(250_000_000); // entry_valid_nsec
    expect(buf.readUInt32LE(at + 36)).toBe(500_000_000); // attr_valid_nsec
    const alone = Buffer.alloc(ATTR_BYTES);
    writeAttr(alone, 0, a, 4096);
    expect(buf.subarray(at + 40, at + 128)).toEqual(alone);
    expect(allBytes(buf, 0, at, MARK)).toBe(true);
    expect(allBytes(buf, at + ENTRY_OUT_BYTES, buf.length, MARK)).toBe(true);
  });

  it('keeps validity nanoseconds below 1e9 for a timeout just under a whole second', () => {
    const buf = Buffer.alloc(ENTRY_OUT_BYTES);
    writeEntry(buf, 0, 5, sampleAttr(), 1 - 1e-10, 2 - 1e-10, 4096);
    expect([u64(buf, 16), buf.readUInt32LE(32)]).toEqual([1n, 0]);
    expect([u64(buf, 24), buf.readUInt32LE(36)]).toEqual([2n, 0]);
  });

  it('writes a negative entry as nodeid 0 with a zeroed attr', () => {
    const buf = marked(ENTRY_OUT_BYTES);
    writeEntry(buf, 0, 0, null, 3, 0, 4096);
    expect(u64(buf, 0)).toBe(0n);
    expect(u64(buf, 16)).toBe(3n);
    expect(u64(buf, 24)).toBe(0n);
    expect(buf.readUInt32LE(32)).toBe(0);
    expect(buf.readUInt32LE(36)).toBe(0);
    expect(allBytes(buf, 40, ENTRY_OUT_BYTES, 0)).toBe(true);
  });

  it('writes struct fuse_attr_out: attr_valid, attr_valid_nsec, dummy 0, attr at 16', () => {
    const a = sampleAttr();
    const buf = marked(ATTR_OUT_BYTES + 4);
    writeAttrOut(buf, 0, a, 0.75, 512);
    expect(u64(buf, 0)).toBe(0n);
    expect(buf.readUInt32LE(8)).toBe(750_000_000);
    expect(buf.readUInt32LE(12)).toBe(0);
    expect(u64(buf, 16)).toBe(BigInt(a.ino));
    expect(buf.readUInt32LE(16 + 80)).toBe(512);
    expect(allBytes(buf, ATTR_OUT_BYTES, buf.length, MARK)).toBe(true);
  });
});

describe('kernel protocol: other replies', () => {
  it('writes struct fuse_open_out: fh, open_flags, zero padding', () => {
    const buf = marked(OPEN_OUT_BYTES + 4);
    writeOpenOut(buf, 0, TWO32 + 5, FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR);
    expect(u64(buf, 0)).toBe(BigInt(TWO32 + 5));
    expect(buf.readUInt32LE(8)).toBe(0xa);
    expect(buf.readUInt32LE(12)).toBe(0);
    expect(allBytes(buf, OPEN_OUT_BYTES, buf.length, MARK)).toBe(true);
  });

  it('writes struct fuse_kstatfs with bsize = frsize and zeroed padding and spare', () => {
    const buf = marked(STATFS_OUT_BYTES + 4);
    writeStatfs(buf, 0, {
      blockSizeBytes: 65536, totalBlocks: TWO32 + 1, freeBlocks: TWO32 + 2, availBlocks: 3,
      totalInodes: TWO32 + 4, freeInodes: 5, nameMaxBytes: 255,
    });
    expect(u64(buf, 0)).toBe(BigInt(TWO32 + 1)); // blocks
    expect(u64(buf, 8)).toBe(BigInt(TWO32 + 2)); // bfree
    expect(u64(buf, 16)).toBe(3n); // bavail
    expect(u64(buf, 24)).toBe(BigInt(TWO32 + 4)); // files
    expect(u64(buf, 32)).toBe(5n); // ffree
    expect(buf.readUInt32LE(40)).toBe(65536); // bsize
    expect(buf.readUInt32LE(44)).toBe(255); // namelen
    expect(buf.readUInt32LE(48)).toBe(65536); // frsize
    expect(allBytes(buf, 52, 80, 0)).toBe(true); // padding, spare[6]
    expect(allBytes(buf, 80, buf.length, MARK)).toBe(true);
  });

  it('writes struct fuse_init_out (7.31) with 16-bit fields where fuse.h has them', () => {
    const buf = marked(INIT_OUT_BYTES + 4);
    writeInitOut(buf, 0, {
      flags: (1 << 31) | InitFlag.ASYNC_READ, maxReadaheadBytes: 131072, maxBackground: 64,
      congestionThreshold: 48, maxWriteBytes: 1 << 20, maxPages: 256,
    });
    expect(buf.readUInt32LE(0)).toBe(7); // major
    expect(buf.readUInt32LE(4)).toBe(31); // minor
    expect(buf.readUInt32LE(8)).toBe(131072); // max_readahead
    expect(buf.readUInt32LE(12)).toBe(0x80000001); // flags, unsigned
    expect(buf.readUInt16LE(16)).toBe(64); // max_background
    expect(buf.readUInt16LE(18)).toBe(48); // congestion_threshold
    expect(buf.readUInt32LE(20)).toBe(1 << 20); // max_write
    expect(buf.readUInt32LE(24)).toBe(1); // time_gran: 1 ns
    expect(buf.readUInt16LE(28)).toBe(256); // max_pages
    expect(buf.readUInt16LE(30)).toBe(0); // map_alignment
    expect(buf.readUInt32LE(32)).toBe(0); // flags2
    expect(allBytes(buf, 36, 64, 0)).toBe(true); // unused[7]
    expect(allBytes(buf, 64, buf.length, MARK)).toBe(true);
  });
});

describe('kernel protocol: directory entries', () => {
  it.each<[FileKind, number]>([
    ['fifo', 1], ['chardev', 2], ['dir', 4], ['blockdev', 6], ['file', 8], ['symlink', 10], ['socket', 12],
  ])('d_type of %s is %p (DT_*)', (kind, dt) => {
    expect(direntType(kind)).toBe(dt);
  });

  it.each([
    [1, 32, 160], [7, 32, 160], [8, 32, 160], [9, 40, 168], [255, 280, 408],
  ])('an entry with a %p-byte name takes %p bytes (plus: %p)', (nameBytes, plain, plus) => {
    expect(direntBytes(nameBytes, false)).toBe(plain);
    expect(direntBytes(nameBytes, true)).toBe(plus);
  });

  it('direntBytes is the 8-aligned size of the record for every name length', () => {
    for (let n = 1; n <= 255; n++) {
      const plain = direntBytes(n, false);
      expect(plain % 8).toBe(0);
      expect(plain - (24 + n)).toBeGreaterThanOrEqual(0);
      expect(plain - (24 + n)).toBeLessThan(8);
      expect(direntBytes(n, true)).toBe(ENTRY_OUT_BYTES + plain);
    }
  });

  it('writes struct fuse_dirent with the name padded to 8 bytes with zeros', () => {
    const at = 16;
    const buf = marked(at + 48);
    const n = writeDirent(buf, at, { name: 'abc', ino: TWO32 + 3, kind: 'symlink' }, 3, 7);
    expect(n).toBe(32);
    expect(u64(buf, at)).toBe(BigInt(TWO32 + 3)); // ino
    expect(u64(buf, at + 8)).toBe(7n); // off
    expect(buf.readUInt32LE(at + 16)).toBe(3); // namelen
    expect(buf.readUInt32LE(at + 20)).toBe(10); // type: DT_LNK
    expect(buf.toString('latin1', at + 24, at + 27)).toBe('abc');
    expect(allBytes(buf, at + 27, at + 32, 0)).toBe(true);
    expect(allBytes(buf, 0, at, MARK)).toBe(true);
    expect(allBytes(buf, at + 32, buf.length, MARK)).toBe(true);
  });

  it('writes a multi-byte UTF-8 name by its byte length, and an 8-byte name without padding', () => {
    const buf = marked(64);
    const name = 'dé€'; // 1 + 2 + 3 bytes
    expect(writeDirent(buf, 0, { name, ino: 9, kind: 'file' }, 6, 1)).toBe(32);
    expect(buf.readUInt32LE(16)).toBe(6);
    expect(buf.toString('utf8', 24, 30)).toBe(name);
    expect(allBytes(buf, 30, 32, 0)).toBe(true);
    expect(writeDirent(buf, 32, { name: 'eightchr', ino: 9, kind: 'file' }, 8, 2)).toBe(32);
    expect(buf.toString('latin1', 56, 64)).toBe('eightchr');
  });
});
