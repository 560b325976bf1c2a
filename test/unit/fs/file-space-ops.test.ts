/**
 * FUSE_FALLOCATE (43) and FUSE_LSEEK (46) through the kernel transport's codec and the
 * operations table, onto a real store layer (a temp pool) or onto a layer without them
 * (ENOSYS, so the kernel stops asking). Request bodies are built here from linux/fuse.h:
 * fuse_fallocate_in { fh, offset, length: u64; mode, padding: u32 },
 * fuse_lseek_in { fh, offset: u64; whence, padding: u32 }, fuse_lseek_out { offset: u64 }.
 */
import { constants as osConstants } from 'node:os';
import {
  FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE,
  fallocateHowOf, seekWhatOf,
} from '../../../src/fs/file-space-flags';
import { createFuseOperations } from '../../../src/fs/fuse-operations';
import { createKernelTransport, type ReplyChannel } from '../../../src/fs/kernel-transport';
import { S_IFREG, type LayerFs } from '../../../src/store/layer-store';
import { MemoryLayerFs } from '../../support/memory-layer-fs';
import { tempPool } from '../../support/temp-pool';

const E = osConstants.errno;
const BS = 65536;
const OP_FALLOCATE = 43;
const OP_LSEEK = 46;

/** One request (fuse_in_header + body) dispatched; resolves to the reply's errno and body. */
async function roundTrip(layer: LayerFs, opcode: number, nodeid: number, body: Buffer): Promise<{ errno: number; body: Buffer }> {
  const ops = createFuseOperations(layer, {
    blockSizeBytes: BS, entryTimeoutS: 1, attrTimeoutS: 1, negativeTimeoutS: 0, keepCache: true, writebackCache: false, cacheDirs: false,
  });
  const transport = createKernelTransport(ops);
  const req = Buffer.alloc(40 + body.length);
  req.writeUInt32LE(req.length, 0);
  req.writeUInt32LE(opcode, 4);
  req.writeBigUInt64LE(77n, 8);
  req.writeBigUInt64LE(BigInt(nodeid), 16);
  body.copy(req, 40);
  return new Promise((resolve) => {
    const session = {
      inFlight: 1,
      send: (_u: unknown, reply: Buffer, total: number) => resolve({ errno: -reply.readInt32LE(4), body: Buffer.from(reply.subarray(16, total)) }),
      ok: () => resolve({ errno: 0, body: Buffer.alloc(0) }),
      fail: (_u: unknown, errno: number) => resolve({ errno, body: Buffer.alloc(0) }),
      markInitialised: () => undefined,
    };
    void transport.dispatch(req, req.length, session as unknown as ReplyChannel);
  });
}

function fallocateIn(offset: number, length: number, mode: number): Buffer {
  const b = Buffer.alloc(32);
  b.writeBigUInt64LE(5n, 0);
  b.writeBigUInt64LE(BigInt(offset), 8);
  b.writeBigUInt64LE(BigInt(length), 16);
  b.writeUInt32LE(mode, 24);
  return b;
}

function lseekIn(offset: number, whence: number): Buffer {
  const b = Buffer.alloc(24);
  b.writeBigUInt64LE(5n, 0);
  b.writeBigUInt64LE(BigInt(offset), 8);
  b.writeUInt32LE(whence, 16);
  return b;
}

test('fallocate flags decode as Linux takes them', () => {
  expect(fallocateHowOf(0)).toEqual({ mode: 'allocate', keepSize: false });
  expect(fallocateHowOf(FALLOC_FL_KEEP_SIZE)).toEqual({ mode: 'allocate', keepSize: true });
  expect(fallocateHowOf(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)).toEqual({ mode: 'punch-hole', keepSize: true });
  expect(fallocateHowOf(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)).toEqual({ mode: 'zero-range', keepSize: true });
  expect(fallocateHowOf(FALLOC_FL_COLLAPSE_RANGE)).toEqual({ mode: 'collapse-range', keepSize: false });
  expect(fallocateHowOf(FALLOC_FL_INSERT_RANGE)).toEqual({ mode: 'insert-range', keepSize: false });
  expect(() => fallocateHowOf(FALLOC_FL_PUNCH_HOLE)).toThrow(expect.objectContaining({ code: 'NOT_SUPPORTED' }));
  expect(() => fallocateHowOf(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)).toThrow(expect.objectContaining({ code: 'NOT_SUPPORTED' }));
  expect(() => fallocateHowOf(FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_KEEP_SIZE)).toThrow(expect.objectContaining({ code: 'INVALID' }));
  expect(() => fallocateHowOf(FALLOC_FL_INSERT_RANGE | FALLOC_FL_PUNCH_HOLE)).toThrow(expect.objectContaining({ code: 'INVALID' }));
  expect(() => fallocateHowOf(0x40)).toThrow(expect.objectContaining({ code: 'NOT_SUPPORTED' })); // UNSHARE_RANGE
  expect(seekWhatOf(3)).toBe('data');
  expect(seekWhatOf(4)).toBe('hole');
  expect(() => seekWhatOf(0)).toThrow(expect.objectContaining({ code: 'INVALID' }));
});

test('FUSE_FALLOCATE and FUSE_LSEEK reach the store and answer as fuse.h says', async () => {
  const { pool, remove } = await tempPool();
  try {
    await pool.store.createLayer('c', { kind: 'container' });
    const l = await pool.store.openLayer('c');
    const f = await l.mknod(l.rootIno, 'f', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    await l.write(f.ino, Buffer.alloc(3 * BS, 1), 0);

    expect(await roundTrip(l, OP_FALLOCATE, f.ino, fallocateIn(3 * BS, 2 * BS, 0))).toEqual({ errno: 0, body: Buffer.alloc(0) });
    expect((await l.getattr(f.ino)).sizeBytes).toBe(5 * BS);
    expect((await roundTrip(l, OP_FALLOCATE, f.ino, fallocateIn(BS, BS, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE))).errno).toBe(0);
    expect((await roundTrip(l, OP_FALLOCATE, f.ino, fallocateIn(1, BS, FALLOC_FL_COLLAPSE_RANGE))).errno).toBe(E.EINVAL);
    expect((await roundTrip(l, OP_FALLOCATE, f.ino, fallocateIn(0, BS, FALLOC_FL_PUNCH_HOLE))).errno).toBe(E.EOPNOTSUPP);

    const seek = async (offset: number, whence: number) => {
      const r = await roundTrip(l, OP_LSEEK, f.ino, lseekIn(offset, whence));
      return r.errno ? -r.errno : Number(r.body.readBigInt64LE(0));
    };
    expect(await seek(0, 3)).toBe(0);
    expect(await seek(0, 4)).toBe(BS);
    expect(await seek(BS, 3)).toBe(2 * BS);
    expect(await seek(3 * BS, 3)).toBe(-E.ENXIO); // reserved, unwritten: a hole
    expect(await seek(3 * BS, 4)).toBe(3 * BS);
    expect(await seek(5 * BS, 4)).toBe(-E.ENXIO);
    await l.close();
  } finally {
    await remove();
  }
});

test('a layer without fallocate or SEEK_DATA answers ENOSYS (the kernel then stops asking)', async () => {
  const m = new MemoryLayerFs();
  const f = await m.mknod(m.rootIno, 'f', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
  expect((await roundTrip(m, OP_FALLOCATE, f.ino, fallocateIn(0, 10, 0))).errno).toBe(E.ENOSYS);
  expect((await roundTrip(m, OP_LSEEK, f.ino, lseekIn(0, 3))).errno).toBe(E.ENOSYS);
});
