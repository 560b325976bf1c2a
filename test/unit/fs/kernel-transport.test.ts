/**
 * The kernel transport (kernel-transport.ts) and the operations table behind it
 * (fuse-operations.ts), driven with raw FUSE requests (linux/fuse.h layouts, built here
 * independently of kernel-protocol.ts) over a MemoryLayerFs, with a fake session that
 * records each reply. Needs no root and no /dev/fuse.
 *
 * Inode numbers start above 2^32 so every node id, file handle and offset crosses the
 * uint64 halves.
 */
import { constants as fsConstants } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { createFuseOperations, type FuseOperations, type FuseOperationsOptions } from '../../../src/fs/fuse-operations';
import {
  FOPEN_CACHE_DIR, FOPEN_KEEP_CACHE, FUSE_ROOT_ID, InitFlag, Op, RENAME_EXCHANGE, RENAME_NOREPLACE, SetattrValid,
  type Unique,
} from '../../../src/fs/kernel-protocol';
import { createKernelTransport, type KernelTransport } from '../../../src/fs/kernel-transport';
import type { KernelSession } from '../../../src/fs/kernel-session';
import type { Attr, DirEntry, Ino, LayerFs } from '../../../src/store/layer-store';
import { S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG } from '../../../src/store/layer-store';
import { MemoryLayerFs } from '../../support/memory-layer-fs';

const E = osConstants.errno;
const { O_RDONLY, O_WRONLY, O_RDWR, O_CREAT } = fsConstants;
const TWO32 = 2 ** 32;
const FIRST_INO = TWO32 + 10;
const S_ISGID = 0o2000;
const XATTR_CREATE = 1;
const XATTR_REPLACE = 2;
const MIB = 1024 * 1024;
const FROZEN_NS = 1_700_000_000_000_000_000n;
/** DT_* of <dirent.h>. */
const DT_DIR = 4;
const DT_REG = 8;

// ---- requests (struct layouts of linux/fuse.h) ------------------------------------------

function u32(...values: number[]): Buffer {
  const b = Buffer.alloc(4 * values.length);
  values.forEach((v, i) => b.writeUInt32LE(v >>> 0, 4 * i));
  return b;
}

function u64(...values: (number | bigint)[]): Buffer {
  const b = Buffer.alloc(8 * values.length);
  values.forEach((v, i) => b.writeBigInt64LE(BigInt(v), 8 * i));
  return b;
}

function cstr(s: string): Buffer {
  return Buffer.concat([Buffer.from(s), Buffer.alloc(1)]);
}

interface Caller {
  uid: number;
  gid: number;
  pid: number;
}

const ROOT_CALLER: Caller = { uid: 0, gid: 0, pid: 1 };

/**
 * A request as the session hands it over: struct fuse_in_header then the body, in a
 * larger buffer whose tail holds stale bytes (as a pooled buffer does), with `len` the
 * bytes read.
 */
function request(opcode: number, unique: bigint, nodeid: number, caller: Caller, body: Buffer[]): { req: Buffer; len: number } {
  const payload = Buffer.concat(body);
  const len = 40 + payload.length;
  const req = Buffer.alloc(len + 256, 0x5a);
  req.writeUInt32LE(len, 0);
  req.writeUInt32LE(opcode, 4);
  req.writeBigUInt64LE(unique, 8);
  req.writeBigUInt64LE(BigInt(nodeid), 16);
  req.writeUInt32LE(caller.uid, 24);
  req.writeUInt32LE(caller.gid, 28);
  req.writeUInt32LE(caller.pid, 32);
  req.writeUInt16LE(0, 36); // total_extlen
  req.writeUInt16LE(0, 38); // padding
  payload.copy(req, 40);
  return { req, len };
}

/** struct fuse_init_in as a 7.36+ kernel sends it (64 bytes: flags2 and unused[11] follow). */
function initIn(major: number, minor: number, maxReadahead: number, flags: number): Buffer[] {
  return [u32(major, minor, maxReadahead, flags), Buffer.alloc(48)];
}

/** struct fuse_read_in (also READDIR / READDIRPLUS). */
function readIn(fh: number, offset: number, size: number): Buffer[] {
  return [u64(fh, offset), u32(size, 0), u64(0), u32(0, 0)];
}

/** struct fuse_write_in, then the data. */
function writeIn(fh: number, offset: number, data: Buffer): Buffer[] {
  return [u64(fh, offset), u32(data.length, 0), u64(0), u32(0, 0), data];
}

/** struct fuse_create_in, then the name. */
function createIn(flags: number, mode: number, name: string, umask = 0o022): Buffer[] {
  return [u32(flags, mode, umask, 0), cstr(name)];
}

/** struct fuse_mkdir_in, then the name. */
function mkdirIn(mode: number, name: string, umask = 0o022): Buffer[] {
  return [u32(mode, umask), cstr(name)];
}

/** struct fuse_setattr_in (88 bytes). */
function setattrIn(f: { valid: number; sizeBytes?: number; atime?: [number, number]; mtime?: [number, number]; mode?: number; uid?: number; gid?: number }): Buffer[] {
  const b = Buffer.alloc(88);
  b.writeUInt32LE(f.valid, 0);
  b.writeBigUInt64LE(BigInt(f.sizeBytes ?? 0), 16);
  b.writeBigInt64LE(BigInt(f.atime?.[0] ?? 0), 32);
  b.writeBigInt64LE(BigInt(f.mtime?.[0] ?? 0), 40);
  b.writeUInt32LE(f.atime?.[1] ?? 0, 56);
  b.writeUInt32LE(f.mtime?.[1] ?? 0, 60);
  b.writeUInt32LE(f.mode ?? 0, 68);
  b.writeUInt32LE(f.uid ?? 0, 76);
  b.writeUInt32LE(f.gid ?? 0, 80);
  return [b];
}

// ---- replies ------------------------------------------------------------------------------

interface Reply {
  unique: bigint;
  /** Positive errno; 0 for success. */
  errno: number;
  /** The reply after struct fuse_out_header. */
  body: Buffer;
}

/** Records replies as the kernel would read them (bodies copied: the operations reuse buffers). */
class FakeSession {
  readonly replies: Reply[] = [];
  initialisedCount = 0;

  send(unique: Unique, reply: Buffer, totalBytes: number): void {
    expect(totalBytes).toBeGreaterThanOrEqual(16);
    expect(totalBytes).toBeLessThanOrEqual(reply.length);
    this.replies.push({ unique: BigInt(unique.hi) * BigInt(TWO32) + BigInt(unique.lo), errno: 0, body: Buffer.from(reply.subarray(16, totalBytes)) });
  }

  ok(unique: Unique): void {
    this.fail(unique, 0);
  }

  fail(unique: Unique, errno: number): void {
    this.replies.push({ unique: BigInt(unique.hi) * BigInt(TWO32) + BigInt(unique.lo), errno, body: Buffer.alloc(0) });
  }

  markInitialised(): void {
    this.initialisedCount++;
  }
}

interface WireAttr {
  ino: number;
  sizeBytes: number;
  blocks: number;
  atime: [bigint, number];
  mtime: [bigint, number];
  ctime: [bigint, number];
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  blksize: number;
}

/** struct fuse_attr. */
function parseAttr(b: Buffer, at: number): WireAttr {
  return {
    ino: Number(b.readBigUInt64LE(at)),
    sizeBytes: Number(b.readBigUInt64LE(at + 8)),
    blocks: Number(b.readBigUInt64LE(at + 16)),
    atime: [b.readBigInt64LE(at + 24), b.readUInt32LE(at + 48)],
    mtime: [b.readBigInt64LE(at + 32), b.readUInt32LE(at + 52)],
    ctime: [b.readBigInt64LE(at + 40), b.readUInt32LE(at + 56)],
    mode: b.readUInt32LE(at + 60),
    nlink: b.readUInt32LE(at + 64),
    uid: b.readUInt32LE(at + 68),
    gid: b.readUInt32LE(at + 72),
    rdev: b.readUInt32LE(at + 76),
    blksize: b.readUInt32LE(at + 80),
  };
}

interface WireEntry {
  nodeid: number;
  generation: number;
  entryValid: [number, number];
  attrValid: [number, number];
  attr: WireAttr;
  attrBytes: Buffer;
}

/** struct fuse_entry_out. */
function parseEntry(b: Buffer, at = 0): WireEntry {
  return {
    nodeid: Number(b.readBigUInt64LE(at)),
    generation: Number(b.readBigUInt64LE(at + 8)),
    entryValid: [Number(b.readBigUInt64LE(at + 16)), b.readUInt32LE(at + 32)],
    attrValid: [Number(b.readBigUInt64LE(at + 24)), b.readUInt32LE(at + 36)],
    attr: parseAttr(b, at + 40),
    attrBytes: b.subarray(at + 40, at + 128),
  };
}

/** struct fuse_attr_out. */
function parseAttrOut(b: Buffer): { attrValid: [number, number]; attr: WireAttr } {
  expect(b.length).toBe(104);
  return { attrValid: [Number(b.readBigUInt64LE(0)), b.readUInt32LE(8)], attr: parseAttr(b, 16) };
}

/** struct fuse_open_out. */
function parseOpenOut(b: Buffer, at = 0): { fh: number; openFlags: number } {
  return { fh: Number(b.readBigUInt64LE(at)), openFlags: b.readUInt32LE(at + 8) };
}

interface WireDirent {
  ino: number;
  off: number;
  type: number;
  name: string;
  entry?: WireEntry;
}

/** A READDIR (fuse_dirent) or READDIRPLUS (fuse_direntplus) reply, checking the 8-byte alignment. */
function parseDirents(b: Buffer, plus: boolean): WireDirent[] {
  const list: WireDirent[] = [];
  let at = 0;
  while (at < b.length) {
    const entry = plus ? parseEntry(b, at) : undefined;
    if (plus) at += 128;
    const namelen = b.readUInt32LE(at + 16);
    const padded = (24 + namelen + 7) & ~7;
    list.push({
      ino: Number(b.readBigUInt64LE(at)),
      off: Number(b.readBigUInt64LE(at + 8)),
      type: b.readUInt32LE(at + 20),
      name: b.toString('utf8', at + 24, at + 24 + namelen),
      entry,
    });
    expect(b.subarray(at + 24 + namelen, at + padded).every((x) => x === 0)).toBe(true);
    at += padded;
  }
  expect(at).toBe(b.length);
  return list;
}

// ---- harness ----------------------------------------------------------------------------

const DEFAULT_OPTIONS: FuseOperationsOptions = {
  blockSizeBytes: 4096,
  entryTimeoutS: 2,
  attrTimeoutS: 1.5,
  negativeTimeoutS: 3,
  keepCache: true,
  writebackCache: true,
  cacheDirs: false,
  nowNs: () => FROZEN_NS,
};

async function tick(): Promise<void> {
  await new Promise((r) => setImmediate(r));
}

class Harness {
  readonly session = new FakeSession();
  /** The table (open handles, syncs, shutdown). */
  readonly ops: FuseOperations;
  readonly transport: KernelTransport;
  readonly unexpected: unknown[] = [];
  private nextUnique = BigInt(TWO32) * 3n + 1n;

  constructor(readonly layer: LayerFs, options: Partial<FuseOperationsOptions> = {}) {
    const onUnexpected = (err: unknown) => this.unexpected.push(err);
    this.ops = createFuseOperations(layer, { ...DEFAULT_OPTIONS, onUnexpected, ...options });
    this.transport = createKernelTransport(this.ops, { onUnexpected });
  }

  /** Dispatches one request; returns its unique id and what dispatch returned. */
  send(opcode: number, nodeid: number, body: Buffer[], caller: Caller = ROOT_CALLER): { unique: bigint; req: Buffer; kept: Promise<void> | void } {
    const unique = this.nextUnique++;
    const { req, len } = request(opcode, unique, nodeid, caller, body);
    const kept = this.transport.dispatch(req, len, this.session as unknown as KernelSession);
    return { unique, req, kept };
  }

  /** The one reply to `unique`, once it has been sent. */
  async replyTo(unique: bigint): Promise<Reply> {
    for (let i = 0; i < 50; i++) {
      const replies = this.session.replies.filter((r) => r.unique === unique);
      if (replies.length) {
        await tick();
        expect(this.session.replies.filter((r) => r.unique === unique)).toHaveLength(1);
        return replies[0];
      }
      await tick();
    }
    throw new Error(`no reply to request ${unique}`);
  }

  async call(opcode: number, nodeid: number, body: Buffer[], caller: Caller = ROOT_CALLER): Promise<Reply> {
    return this.replyTo(this.send(opcode, nodeid, body, caller).unique);
  }

  /** A successful reply's body (fails the test with the errno otherwise). */
  async ok(opcode: number, nodeid: number, body: Buffer[], caller: Caller = ROOT_CALLER): Promise<Buffer> {
    const r = await this.call(opcode, nodeid, body, caller);
    expect({ opcode, errno: r.errno }).toEqual({ opcode, errno: 0 });
    return r.body;
  }

  async errno(opcode: number, nodeid: number, body: Buffer[], caller: Caller = ROOT_CALLER): Promise<number> {
    return (await this.call(opcode, nodeid, body, caller)).errno;
  }

  async lookup(dirNode: number, name: string): Promise<WireEntry> {
    return parseEntry(await this.ok(Op.LOOKUP, dirNode, [cstr(name)]));
  }

  async mkdir(dirNode: number, name: string, mode = 0o755, caller: Caller = ROOT_CALLER): Promise<WireEntry> {
    return parseEntry(await this.ok(Op.MKDIR, dirNode, mkdirIn(mode, name), caller));
  }

  /** CREATE: the new entry and its open file handle. */
  async create(dirNode: number, name: string, mode = 0o644, caller: Caller = ROOT_CALLER): Promise<{ entry: WireEntry; fh: number; openFlags: number }> {
    const body = await this.ok(Op.CREATE, dirNode, createIn(O_RDWR | O_CREAT, mode, name), caller);
    expect(body.length).toBe(128 + 16);
    return { entry: parseEntry(body), ...parseOpenOut(body, 128) };
  }

  async write(node: number, fh: number, offset: number, data: Buffer): Promise<number> {
    const body = await this.ok(Op.WRITE, node, writeIn(fh, offset, data));
    expect(body.length).toBe(8); // struct fuse_write_out
    expect(body.readUInt32LE(4)).toBe(0);
    return body.readUInt32LE(0);
  }

  async read(node: number, fh: number, offset: number, size: number): Promise<Buffer> {
    return this.ok(Op.READ, node, readIn(fh, offset, size));
  }

  async opendir(node: number): Promise<number> {
    const body = await this.ok(Op.OPENDIR, node, [u32(O_RDONLY, 0)]);
    expect(body.length).toBe(16);
    return parseOpenOut(body).fh;
  }

  async readdir(node: number, fh: number, offset: number, size: number, plus = false): Promise<WireDirent[]> {
    return parseDirents(await this.ok(plus ? Op.READDIRPLUS : Op.READDIR, node, readIn(fh, offset, size)), plus);
  }
}

function memoryLayer(opts: ConstructorParameters<typeof MemoryLayerFs>[0] = {}): MemoryLayerFs {
  return new MemoryLayerFs({ firstIno: FIRST_INO, nowNs: () => FROZEN_NS, ...opts });
}

/**
 * The same layer with its root at inode `rootIno` instead of 1 (ChainLayerFs uses 1, but
 * the contract does not promise it): shows that node id FUSE_ROOT_ID maps to the root.
 */
function withRootAt(inner: MemoryLayerFs, rootIno: Ino): LayerFs {
  const outIno = (ino: Ino): Ino => (ino === inner.rootIno ? rootIno : ino);
  // Inode 1 is not a valid inode of this layer: it must never reach the store as 1.
  const inIno = (ino: Ino): Ino => (ino === rootIno ? inner.rootIno : ino === inner.rootIno ? -1 : ino);
  const outAttr = (a: Attr): Attr => ({ ...a, ino: outIno(a.ino) });
  const outEntry = (e: DirEntry): DirEntry => ({ ...e, ino: outIno(e.ino) });
  return {
    layerName: inner.layerName,
    readOnly: inner.readOnly,
    rootIno,
    sizeLimitBytes: inner.sizeLimitBytes,
    getattr: async (ino) => outAttr(await inner.getattr(inIno(ino))),
    lookup: async (dir, name) => {
      const a = await inner.lookup(inIno(dir), name);
      return a && outAttr(a);
    },
    resolve: async (path) => outAttr(await inner.resolve(path)),
    readdir: async (dir) => (await inner.readdir(inIno(dir))).map(outEntry),
    mknod: async (dir, name, o) => outAttr(await inner.mknod(inIno(dir), name, o)),
    mkdir: async (dir, name, o) => outAttr(await inner.mkdir(inIno(dir), name, o)),
    symlink: async (dir, name, t, o) => outAttr(await inner.symlink(inIno(dir), name, t, o)),
    link: async (ino, dir, name) => outAttr(await inner.link(inIno(ino), inIno(dir), name)),
    unlink: (dir, name) => inner.unlink(inIno(dir), name),
    rmdir: (dir, name) => inner.rmdir(inIno(dir), name),
    rename: (od, on, nd, nn, f) => inner.rename(inIno(od), on, inIno(nd), nn, f),
    readlink: (ino) => inner.readlink(inIno(ino)),
    setattr: async (ino, c) => outAttr(await inner.setattr(inIno(ino), c)),
    setOpaque: (dir) => inner.setOpaque(inIno(dir)),
    read: (ino, t, o) => inner.read(inIno(ino), t, o),
    write: (ino, d, o) => inner.write(inIno(ino), d, o),
    retain: (ino) => inner.retain(inIno(ino)),
    release: (ino) => inner.release(inIno(ino)),
    getxattr: (ino, n) => inner.getxattr(inIno(ino), n),
    listxattr: (ino) => inner.listxattr(inIno(ino)),
    setxattr: (ino, n, v, f) => inner.setxattr(inIno(ino), n, v, f),
    removexattr: (ino, n) => inner.removexattr(inIno(ino), n),
    statfs: () => inner.statfs(),
    fsync: () => inner.fsync(),
    changes: () => inner.changes(),
    close: () => inner.close(),
  };
}

const OFFERED_BY_KERNEL = 0xffffffff;
const DMFS_INIT_FLAGS = InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO |
  InitFlag.ASYNC_DIO | InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES | InitFlag.CACHE_SYMLINKS | InitFlag.HANDLE_KILLPRIV_V2;

// ---- tests --------------------------------------------------------------------------------

describe('kernel transport: INIT', () => {
  function parseInitOut(b: Buffer) {
    expect(b.length).toBe(64);
    return {
      major: b.readUInt32LE(0), minor: b.readUInt32LE(4), maxReadahead: b.readUInt32LE(8), flags: b.readUInt32LE(12),
      maxBackground: b.readUInt16LE(16), congestionThreshold: b.readUInt16LE(18), maxWrite: b.readUInt32LE(20),
      timeGran: b.readUInt32LE(24), maxPages: b.readUInt16LE(28), flags2: b.readUInt32LE(32),
    };
  }

  it('answers 7.31 with 1 MiB writes, 256 pages and its flags, and marks the session initialised', async () => {
    const h = new Harness(memoryLayer());
    const out = parseInitOut(await h.ok(Op.INIT, 0, initIn(7, 38, 128 * 1024, OFFERED_BY_KERNEL)));
    expect(out).toMatchObject({ major: 7, minor: 31, maxReadahead: 128 * 1024, maxWrite: MIB, maxPages: 256, timeGran: 1, flags2: 0 });
    expect(out.flags >>> 0).toBe((DMFS_INIT_FLAGS | InitFlag.WRITEBACK_CACHE) >>> 0);
    expect(h.session.initialisedCount).toBe(1);
  });

  it('accepts only flags the kernel offered', async () => {
    const h = new Harness(memoryLayer());
    const POSIX_LOCKS = 1 << 1;
    const offered = InitFlag.ASYNC_READ | POSIX_LOCKS | InitFlag.WRITEBACK_CACHE | InitFlag.MAX_PAGES;
    const out = parseInitOut(await h.ok(Op.INIT, 0, initIn(7, 31, 4096, offered)));
    expect(out.flags).toBe(InitFlag.ASYNC_READ | InitFlag.WRITEBACK_CACHE | InitFlag.MAX_PAGES);
    expect(out.flags & ~offered).toBe(0);
  });

  it('asks for the writeback cache only when the option is on and the layer is writable', async () => {
    const flagsOf = async (layer: MemoryLayerFs, writebackCache: boolean): Promise<number> =>
      parseInitOut(await new Harness(layer, { writebackCache }).ok(Op.INIT, 0, initIn(7, 31, 4096, OFFERED_BY_KERNEL))).flags;
    expect(await flagsOf(memoryLayer(), true) & InitFlag.WRITEBACK_CACHE).toBe(InitFlag.WRITEBACK_CACHE);
    expect(await flagsOf(memoryLayer(), false) & InitFlag.WRITEBACK_CACHE).toBe(0);
    expect(await flagsOf(memoryLayer({ readOnly: true }), true) & InitFlag.WRITEBACK_CACHE).toBe(0);
    expect(await flagsOf(memoryLayer({ readOnly: true }), true)).toBe(DMFS_INIT_FLAGS);
  });

  it('refuses a kernel older than 7.27 with EPROTO, and still marks the session initialised', async () => {
    const h = new Harness(memoryLayer());
    expect(await h.errno(Op.INIT, 0, initIn(7, 26, 4096, OFFERED_BY_KERNEL))).toBe(E.EPROTO);
    expect(h.session.initialisedCount).toBe(1);
    expect(h.unexpected).toHaveLength(1);
  });
});

describe('kernel transport: LOOKUP and names', () => {
  it('answers a present name with its inode as node id, the timeouts and the attributes', async () => {
    const layer = memoryLayer();
    const dir = await layer.mkdir(layer.rootIno, 'etc', { mode: 0o750, uid: 7, gid: 8 });
    const h = new Harness(layer);
    const e = await h.lookup(FUSE_ROOT_ID, 'etc');
    expect(dir.ino).toBeGreaterThan(TWO32);
    expect(e.nodeid).toBe(dir.ino);
    expect(e.generation).toBe(0);
    expect(e.entryValid).toEqual([2, 0]);
    expect(e.attrValid).toEqual([1, 500_000_000]);
    expect(e.attr).toMatchObject({ ino: dir.ino, mode: S_IFDIR | 0o750, uid: 7, gid: 8, nlink: 2, blksize: 4096 });
    expect(e.attr.mtime).toEqual([FROZEN_NS / 1_000_000_000n, 0]);
    // and below it, by that node id
    const f = await layer.mknod(dir.ino, 'hostname', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    expect((await h.lookup(dir.ino, 'hostname')).nodeid).toBe(f.ino);
  });

  it('answers an absent name with a negative entry (node id 0) for the negative timeout', async () => {
    const h = new Harness(memoryLayer(), { negativeTimeoutS: 3 });
    const r = await h.call(Op.LOOKUP, FUSE_ROOT_ID, [cstr('nope')]);
    expect(r.errno).toBe(0);
    const e = parseEntry(r.body);
    expect(e.nodeid).toBe(0);
    expect(e.entryValid).toEqual([3, 0]);
    expect(e.attrBytes.every((b) => b === 0)).toBe(true);
  });

  it('answers an absent name with ENOENT when the negative timeout is 0', async () => {
    const h = new Harness(memoryLayer(), { negativeTimeoutS: 0 });
    expect(await h.errno(Op.LOOKUP, FUSE_ROOT_ID, [cstr('nope')])).toBe(E.ENOENT);
  });

  it('takes 255-byte names and refuses 256-byte ones with ENAMETOOLONG', async () => {
    const layer = memoryLayer();
    const h = new Harness(layer);
    const ok = 'n'.repeat(255);
    const tooLong = 'n'.repeat(256);
    expect((await h.mkdir(FUSE_ROOT_ID, ok)).attr.mode & S_IFMT).toBe(S_IFDIR);
    expect((await h.lookup(FUSE_ROOT_ID, ok)).nodeid).toBeGreaterThan(TWO32);
    expect(await h.errno(Op.LOOKUP, FUSE_ROOT_ID, [cstr(tooLong)])).toBe(E.ENAMETOOLONG);
    expect(await h.errno(Op.MKDIR, FUSE_ROOT_ID, mkdirIn(0o755, tooLong))).toBe(E.ENAMETOOLONG);
    expect(await h.errno(Op.CREATE, FUSE_ROOT_ID, createIn(O_RDWR | O_CREAT, 0o644, 'é'.repeat(128)))).toBe(E.ENAMETOOLONG);
    expect((await layer.readdir(layer.rootIno)).map((e) => e.name)).toEqual([ok]);
  });

  it('maps node id FUSE_ROOT_ID to the layer root when the root inode is not 1', async () => {
    const inner = memoryLayer();
    const layer = withRootAt(inner, 77);
    const sub = await inner.mkdir(inner.rootIno, 'sub', { mode: 0o755, uid: 0, gid: 0 });
    const h = new Harness(layer);
    expect((await h.lookup(FUSE_ROOT_ID, 'sub')).nodeid).toBe(sub.ino);
    const a = parseAttrOut(await h.ok(Op.GETATTR, FUSE_ROOT_ID, [u32(0, 0), u64(0)])).attr;
    expect(a).toMatchObject({ ino: 77, mode: S_IFDIR | 0o755, nlink: 3 });
    const made = await h.mkdir(FUSE_ROOT_ID, 'made');
    expect((await inner.lookup(inner.rootIno, 'made'))?.ino).toBe(made.nodeid);
    // a rename whose new directory is given as FUSE_ROOT_ID lands in the root too
    expect((await h.call(Op.RENAME, sub.ino, [u64(FUSE_ROOT_ID), cstr('x'), cstr('y')])).errno).toBe(E.ENOENT);
    await inner.mknod(sub.ino, 'x', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    expect(await h.errno(Op.RENAME, sub.ino, [u64(FUSE_ROOT_ID), cstr('x'), cstr('y')])).toBe(0);
    expect(await inner.lookup(inner.rootIno, 'y')).not.toBeNull();
  });
});

describe('kernel transport: files', () => {
  it('MKDIR, CREATE, WRITE, READ and RELEASE round-trip bytes across a page boundary', async () => {
    const layer = memoryLayer();
    const h = new Harness(layer);
    const alice: Caller = { uid: 1000, gid: 1001, pid: 99 };
    const dir = await h.mkdir(FUSE_ROOT_ID, 'data', 0o755, alice);
    expect(dir.attr).toMatchObject({ mode: S_IFDIR | 0o755, uid: 1000, gid: 1001 });
    expect(dir.nodeid).toBe((await layer.lookup(layer.rootIno, 'data'))!.ino);

    const c = await h.create(dir.nodeid, 'f', 0o640, alice);
    expect(c.entry.nodeid).toBe((await layer.lookup(dir.nodeid, 'f'))!.ino);
    expect(c.entry.attr).toMatchObject({ mode: S_IFREG | 0o640, uid: 1000, gid: 1001, sizeBytes: 0 });
    expect(c.fh).toBeGreaterThan(0);
    expect(c.openFlags).toBe(FOPEN_KEEP_CACHE);
    expect(h.ops.openHandles).toBe(1);

    expect(await h.write(c.entry.nodeid, c.fh, 0, Buffer.from('hello'))).toBe(5);
    expect(await h.write(c.entry.nodeid, c.fh, 4094, Buffer.from('world'))).toBe(5);
    expect((await layer.getattr(c.entry.nodeid)).sizeBytes).toBe(4099);

    const all = await h.read(c.entry.nodeid, c.fh, 0, 8192);
    expect(all.length).toBe(4099);
    expect(all.subarray(0, 5).toString()).toBe('hello');
    expect(all.subarray(5, 4094).every((b) => b === 0)).toBe(true);
    expect(all.subarray(4094).toString()).toBe('world');
    expect((await h.read(c.entry.nodeid, c.fh, 4092, 4)).toString('latin1')).toBe('\0\0wo');
    expect((await h.read(c.entry.nodeid, c.fh, 4099, 100)).length).toBe(0);
    expect((await h.read(c.entry.nodeid, c.fh, TWO32 + 1, 100)).length).toBe(0);

    expect(await h.errno(Op.RELEASE, c.entry.nodeid, [u64(c.fh), u32(O_RDWR, 0), u64(0)])).toBe(0);
    expect(h.ops.openHandles).toBe(0);
  });

  it('answers concurrent READs each with its own bytes', async () => {
    const layer = memoryLayer();
    const f = await layer.mknod(layer.rootIno, 'f', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    const content = Buffer.alloc(3 * MIB);
    for (let i = 0; i < content.length; i += 4) content.writeUInt32LE(i, i);
    await layer.write(f.ino, content, 0);
    const h = new Harness(layer);
    const fh = parseOpenOut(await h.ok(Op.OPEN, f.ino, [u32(O_RDONLY, 0)])).fh;
    const offsets = [0, MIB, 2 * MIB, 12, MIB + 4096];
    const sent = offsets.map((o) => h.send(Op.READ, f.ino, readIn(fh, o, MIB)).unique);
    for (const [i, unique] of sent.entries()) {
      const r = await h.replyTo(unique);
      expect(r.errno).toBe(0);
      const want = content.subarray(offsets[i], offsets[i] + MIB);
      expect(r.body.length).toBe(want.length);
      expect(r.body.equals(want)).toBe(true);
    }
  });

  it('WRITE takes the data after the 40-byte fuse_write_in and keeps the request until the store has it', async () => {
    const layer = memoryLayer();
    const f = await layer.mknod(layer.rootIno, 'f', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    const h = new Harness(layer);
    const fh = parseOpenOut(await h.ok(Op.OPEN, f.ino, [u32(O_WRONLY, 0)])).fh;
    const { unique, req, kept } = h.send(Op.WRITE, f.ino, writeIn(fh, 10, Buffer.from('payload')));
    expect(kept).toBeInstanceOf(Promise);
    await kept;
    req.fill(0x21); // the session reuses the buffer once dispatch's promise settles
    const r = await h.replyTo(unique);
    expect(r.errno).toBe(0);
    expect(r.body.readUInt32LE(0)).toBe(7);
    const back = Buffer.alloc(17);
    expect(await layer.read(f.ino, back, 0)).toBe(17);
    expect(back.subarray(10).toString()).toBe('payload');
    expect(back.subarray(0, 10).every((b) => b === 0)).toBe(true);
  });

  it('OPEN on a read-only layer refuses write access with EROFS and allows reading', async () => {
    const writable = memoryLayer();
    const f = await writable.mknod(writable.rootIno, 'f', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    await writable.write(f.ino, Buffer.from('ro'), 0);
    const h = new Harness(writable.withReadOnly(true));
    expect(await h.errno(Op.OPEN, f.ino, [u32(O_WRONLY, 0)])).toBe(E.EROFS);
    expect(await h.errno(Op.OPEN, f.ino, [u32(O_RDWR, 0)])).toBe(E.EROFS);
    expect(await h.errno(Op.CREATE, FUSE_ROOT_ID, createIn(O_WRONLY | O_CREAT, 0o644, 'g'))).toBe(E.EROFS);
    expect(h.ops.openHandles).toBe(0);
    const fh = parseOpenOut(await h.ok(Op.OPEN, f.ino, [u32(O_RDONLY, 0)])).fh;
    expect((await h.read(f.ino, fh, 0, 10)).toString()).toBe('ro');
    expect(h.ops.openHandles).toBe(1);
  });

  it('SETATTR with FATTR_SIZE truncates and answers fuse_attr_out with the new size', async () => {
    const layer = memoryLayer();
    const f = await layer.mknod(layer.rootIno, 'f', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    await layer.write(f.ino, Buffer.alloc(10_000, 0x61), 0);
    const h = new Harness(layer);
    const out = parseAttrOut(await h.ok(Op.SETATTR, f.ino, setattrIn({ valid: SetattrValid.SIZE, sizeBytes: 3 })));
    expect(out.attrValid).toEqual([1, 500_000_000]);
    expect(out.attr).toMatchObject({ ino: f.ino, sizeBytes: 3, mode: S_IFREG | 0o644 });
    expect((await layer.getattr(f.ino)).sizeBytes).toBe(3);
    const back = Buffer.alloc(100);
    expect(await layer.read(f.ino, back, 0)).toBe(3);
    // extending past the layer's size limit is the store's FILE_TOO_BIG
    expect(await h.errno(Op.SETATTR, f.ino, setattrIn({ valid: SetattrValid.SIZE, sizeBytes: TWO32 + 1 }))).toBe(E.EFBIG);
  });

  it('SETATTR changes mode, owner and times (explicit and now)', async () => {
    const layer = memoryLayer();
    const f = await layer.mknod(layer.rootIno, 'f', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    const h = new Harness(layer, { nowNs: () => 5_000_000_007n });
    const valid = SetattrValid.MODE | SetattrValid.UID | SetattrValid.GID | SetattrValid.MTIME | SetattrValid.ATIME | SetattrValid.ATIME_NOW;
    const a = parseAttrOut(await h.ok(Op.SETATTR, f.ino, setattrIn({ valid, mode: S_IFREG | 0o4711, uid: 5, gid: 6, mtime: [-2, 250] }))).attr;
    expect(a).toMatchObject({ mode: S_IFREG | 0o4711, uid: 5, gid: 6, mtime: [-2n, 250], atime: [5n, 7] });
    expect((await layer.getattr(f.ino)).mtimeNs).toBe(-2n * 1_000_000_000n + 250n);
  });

  it('STATFS answers struct fuse_kstatfs from the store', async () => {
    const layer = memoryLayer();
    const s = await layer.statfs();
    const b = await new Harness(layer).ok(Op.STATFS, FUSE_ROOT_ID, []);
    expect(b.length).toBe(80);
    expect(Number(b.readBigUInt64LE(0))).toBe(s.totalBlocks);
    expect(Number(b.readBigUInt64LE(32))).toBe(s.freeInodes);
    expect([b.readUInt32LE(40), b.readUInt32LE(44), b.readUInt32LE(48)]).toEqual([s.blockSizeBytes, 255, s.blockSizeBytes]);
  });
});

describe('kernel transport: COPY_FILE_RANGE', () => {
  /** struct fuse_copy_file_range_in: fh_in, off_in, nodeid_out, fh_out, off_out, len, flags. */
  const copyIn = (fhIn: number, offIn: number, nodeOut: number, fhOut: number, offOut: number, len: number | bigint, flags = 0) =>
    [u64(fhIn, offIn, nodeOut, fhOut, offOut, len, flags)];

  /** A memory layer whose copyFileRange records its arguments and copies through read and write. */
  function copyingLayer(): { layer: MemoryLayerFs & Required<Pick<LayerFs, 'copyFileRange'>>; calls: number[][] } {
    const calls: number[][] = [];
    const layer = Object.assign(memoryLayer(), {
      async copyFileRange(this: MemoryLayerFs, inoIn: Ino, offIn: number, inoOut: Ino, offOut: number, len: number): Promise<number> {
        calls.push([inoIn, offIn, inoOut, offOut, len]);
        const buf = Buffer.alloc(Math.min(len, 1 << 20));
        const n = await this.read(inoIn, buf, offIn);
        if (n) await this.write(inoOut, buf.subarray(0, n), offOut);
        return n;
      },
    });
    return { layer, calls };
  }

  it('decodes fuse_copy_file_range_in (source from the header) and answers fuse_write_out; the _64 opcode a u64', async () => {
    const { layer, calls } = copyingLayer();
    const h = new Harness(layer);
    const src = await h.create(FUSE_ROOT_ID, 'src');
    const dst = await h.create(FUSE_ROOT_ID, 'dst');
    expect(await h.write(src.entry.nodeid, src.fh, 0, Buffer.from('0123456789'))).toBe(10);
    const out = await h.ok(Op.COPY_FILE_RANGE, src.entry.nodeid, copyIn(src.fh, 2, dst.entry.nodeid, dst.fh, 1003, 5));
    expect(out.length).toBe(8);
    expect(out.readUInt32LE(0)).toBe(5);
    expect(calls).toEqual([[src.entry.nodeid, 2, dst.entry.nodeid, 1003, 5]]);
    expect((await h.read(dst.entry.nodeid, dst.fh, 1003, 10)).toString()).toBe('23456');
    // The u32 reply cannot say more than 4 GiB: the transport asks for at most 2 GiB.
    await h.ok(Op.COPY_FILE_RANGE, src.entry.nodeid, copyIn(src.fh, 0, dst.entry.nodeid, dst.fh, 0, 2n ** 62n));
    expect(calls[1][4]).toBe(2 ** 31);
    const wide = await h.ok(Op.COPY_FILE_RANGE_64, src.entry.nodeid, copyIn(src.fh, 0, dst.entry.nodeid, dst.fh, 0, 6 * TWO32));
    expect(Number(wide.readBigUInt64LE(0))).toBe(10);
    expect(calls[2][4]).toBe(6 * TWO32);
  });

  it('refuses flags with EINVAL, and answers EOPNOTSUPP for a layer that cannot copy (the kernel then copies)', async () => {
    const { layer } = copyingLayer();
    const h = new Harness(layer);
    const f = await h.create(FUSE_ROOT_ID, 'f');
    expect(await h.errno(Op.COPY_FILE_RANGE, f.entry.nodeid, copyIn(f.fh, 0, f.entry.nodeid, f.fh, 100, 10, 1))).toBe(E.EINVAL);
    const plain = new Harness(memoryLayer());
    const g = await plain.create(FUSE_ROOT_ID, 'g');
    expect(await plain.errno(Op.COPY_FILE_RANGE, g.entry.nodeid, copyIn(g.fh, 0, g.entry.nodeid, g.fh, 100, 10))).toBe(E.EOPNOTSUPP);
  });
});

describe('kernel transport: setgid directories', () => {
  it('gives new nodes the directory\'s group, and new directories its setgid bit', async () => {
    const layer = memoryLayer();
    const h = new Harness(layer);
    const shared = await h.mkdir(FUSE_ROOT_ID, 'shared', 0o2775, { uid: 0, gid: 50, pid: 1 });
    expect(shared.attr).toMatchObject({ mode: S_IFDIR | 0o2775, gid: 50 });
    const bob: Caller = { uid: 1000, gid: 1000, pid: 2 };

    const file = await h.create(shared.nodeid, 'f', 0o664, bob);
    expect(file.entry.attr).toMatchObject({ uid: 1000, gid: 50, mode: S_IFREG | 0o664 });
    const sub = await h.mkdir(shared.nodeid, 'sub', 0o755, bob);
    expect(sub.attr).toMatchObject({ uid: 1000, gid: 50, mode: S_IFDIR | S_ISGID | 0o755 });
    const fifo = parseEntry(await h.ok(Op.MKNOD, shared.nodeid, [u32(S_IFIFO | 0o600, 0, 0, 0), cstr('p')], bob));
    expect(fifo.attr).toMatchObject({ gid: 50, mode: S_IFIFO | 0o600 });
    const link = parseEntry(await h.ok(Op.SYMLINK, shared.nodeid, [cstr('l'), cstr('target')], bob));
    expect(link.attr).toMatchObject({ uid: 1000, gid: 50, mode: S_IFLNK | 0o777 });
    expect((await layer.getattr(file.entry.nodeid)).gid).toBe(50);

    // without the setgid bit, the caller's group
    const plain = await h.mkdir(FUSE_ROOT_ID, 'plain', 0o775, { uid: 0, gid: 50, pid: 1 });
    expect((await h.create(plain.nodeid, 'f', 0o664, bob)).entry.attr.gid).toBe(1000);
  });
});

describe('kernel transport: links and special files', () => {
  it('SYMLINK takes the name then the target; READLINK answers the target', async () => {
    const h = new Harness(memoryLayer());
    const l = parseEntry(await h.ok(Op.SYMLINK, FUSE_ROOT_ID, [cstr('link'), cstr('../some/where')]));
    expect(l.attr).toMatchObject({ mode: S_IFLNK | 0o777, sizeBytes: 13 });
    expect((await h.ok(Op.READLINK, l.nodeid, [])).toString()).toBe('../some/where');
  });

  it('LINK gives the inode a second name in the directory of the header node id', async () => {
    const layer = memoryLayer();
    const h = new Harness(layer);
    const f = await h.create(FUSE_ROOT_ID, 'f');
    const d = await h.mkdir(FUSE_ROOT_ID, 'd');
    const e = parseEntry(await h.ok(Op.LINK, d.nodeid, [u64(f.entry.nodeid), cstr('again')]));
    expect(e.nodeid).toBe(f.entry.nodeid);
    expect(e.attr.nlink).toBe(2);
    expect((await layer.lookup(d.nodeid, 'again'))?.ino).toBe(f.entry.nodeid);
    expect(await h.errno(Op.LINK, FUSE_ROOT_ID, [u64(d.nodeid), cstr('dirlink')])).toBe(E.EPERM);
  });

  it('MKNOD takes fuse_mknod_in (16 bytes) and keeps the device number', async () => {
    const layer = memoryLayer();
    const h = new Harness(layer);
    const S_IFCHR = 0o020000;
    const rdev = (4 << 8) | 64; // makedev(4, 64) in the kernel's new_encode_dev form
    const e = parseEntry(await h.ok(Op.MKNOD, FUSE_ROOT_ID, [u32(S_IFCHR | 0o620, rdev, 0o022, 0), cstr('tty0')]));
    expect(e.attr).toMatchObject({ mode: S_IFCHR | 0o620, rdev });
    expect(await layer.getattr(e.nodeid)).toMatchObject({ kind: 'chardev', rdev });
    const plain = parseEntry(await h.ok(Op.MKNOD, FUSE_ROOT_ID, [u32(0o600, 0, 0, 0), cstr('file')]));
    expect(plain.attr.mode).toBe(S_IFREG | 0o600);
  });

  it('ACCESS: existence, X_OK needs an execute bit except on directories, W_OK on a read-only layer is EROFS', async () => {
    const layer = memoryLayer();
    const f = await layer.mknod(layer.rootIno, 'f', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    const x = await layer.mknod(layer.rootIno, 'x', { mode: S_IFREG | 0o700, uid: 0, gid: 0 });
    const h = new Harness(layer);
    const access = (node: number, mask: number): Promise<number> => h.errno(Op.ACCESS, node, [u32(mask, 0)]);
    expect(await access(f.ino, fsConstants.F_OK)).toBe(0);
    expect(await access(f.ino, fsConstants.R_OK | fsConstants.W_OK)).toBe(0);
    expect(await access(f.ino, fsConstants.X_OK)).toBe(E.EACCES);
    expect(await access(x.ino, fsConstants.X_OK)).toBe(0);
    expect(await access(FUSE_ROOT_ID, fsConstants.X_OK)).toBe(0);
    expect(await access(TWO32 * 100, fsConstants.F_OK)).toBe(E.ENOENT);
    const ro = new Harness(layer.withReadOnly(true));
    expect(await ro.errno(Op.ACCESS, f.ino, [u32(fsConstants.W_OK, 0)])).toBe(E.EROFS);
    expect(await ro.errno(Op.ACCESS, f.ino, [u32(fsConstants.R_OK, 0)])).toBe(0);
  });
});

describe('kernel transport: extended attributes', () => {
  async function withXattrs(): Promise<{ h: Harness; layer: MemoryLayerFs; ino: number }> {
    const layer = memoryLayer();
    const f = await layer.mknod(layer.rootIno, 'f', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    const h = new Harness(layer);
    const set = (name: string, value: string, flags = 0): Buffer[] => [u32(Buffer.byteLength(value), flags), cstr(name), Buffer.from(value)];
    expect(await h.errno(Op.SETXATTR, f.ino, set('user.a', 'value!'))).toBe(0);
    expect(await h.errno(Op.SETXATTR, f.ino, set('user.bb', ''))).toBe(0);
    return { h, layer, ino: f.ino };
  }

  const getxattrIn = (size: number, name: string): Buffer[] => [u32(size, 0), cstr(name)];

  it('GETXATTR: size 0 asks the length, too small is ERANGE, enough gives the value, missing is ENODATA', async () => {
    const { h, layer, ino } = await withXattrs();
    expect((await layer.getxattr(ino, 'user.a'))?.toString()).toBe('value!');
    const len = await h.ok(Op.GETXATTR, ino, getxattrIn(0, 'user.a'));
    expect(len.length).toBe(8); // struct fuse_getxattr_out
    expect([len.readUInt32LE(0), len.readUInt32LE(4)]).toEqual([6, 0]);
    expect(await h.errno(Op.GETXATTR, ino, getxattrIn(5, 'user.a'))).toBe(E.ERANGE);
    expect((await h.ok(Op.GETXATTR, ino, getxattrIn(6, 'user.a'))).toString()).toBe('value!');
    expect((await h.ok(Op.GETXATTR, ino, getxattrIn(4096, 'user.a'))).toString()).toBe('value!');
    expect((await h.ok(Op.GETXATTR, ino, getxattrIn(0, 'user.bb'))).readUInt32LE(0)).toBe(0);
    expect((await h.ok(Op.GETXATTR, ino, getxattrIn(10, 'user.bb'))).length).toBe(0);
    expect(await h.errno(Op.GETXATTR, ino, getxattrIn(0, 'user.none'))).toBe(E.ENODATA);
    expect(await h.errno(Op.GETXATTR, ino, getxattrIn(100, 'user.none'))).toBe(E.ENODATA);
  });

  it('LISTXATTR: NUL-terminated names, size 0 asks the length, too small is ERANGE', async () => {
    const { h, ino } = await withXattrs();
    const names = 'user.a\0user.bb\0';
    const len = await h.ok(Op.LISTXATTR, ino, [u32(0, 0)]);
    expect(len.length).toBe(8);
    expect(len.readUInt32LE(0)).toBe(names.length);
    expect(await h.errno(Op.LISTXATTR, ino, [u32(names.length - 1, 0)])).toBe(E.ERANGE);
    expect((await h.ok(Op.LISTXATTR, ino, [u32(names.length, 0)])).toString()).toBe(names);
    const bare = await h.create(FUSE_ROOT_ID, 'bare');
    expect((await h.ok(Op.LISTXATTR, bare.entry.nodeid, [u32(0, 0)])).readUInt32LE(0)).toBe(0);
  });

  it('SETXATTR honours XATTR_CREATE / XATTR_REPLACE, REMOVEXATTR removes', async () => {
    const { h, layer, ino } = await withXattrs();
    expect(await h.errno(Op.SETXATTR, ino, [u32(1, XATTR_CREATE), cstr('user.a'), Buffer.from('x')])).toBe(E.EEXIST);
    expect(await h.errno(Op.SETXATTR, ino, [u32(1, XATTR_REPLACE), cstr('user.new'), Buffer.from('x')])).toBe(E.ENODATA);
    expect(await h.errno(Op.SETXATTR, ino, [u32(3, XATTR_REPLACE), cstr('user.a'), Buffer.from('new')])).toBe(0);
    expect((await layer.getxattr(ino, 'user.a'))?.toString()).toBe('new');
    expect(await h.errno(Op.REMOVEXATTR, ino, [cstr('user.a')])).toBe(0);
    expect(await layer.getxattr(ino, 'user.a')).toBeNull();
    expect(await h.errno(Op.REMOVEXATTR, ino, [cstr('user.a')])).toBe(E.ENODATA);
  });

  it('refuses POSIX ACLs with EOPNOTSUPP and stores nothing', async () => {
    const { h, layer, ino } = await withXattrs();
    const acl = Buffer.from([2, 0, 0, 0, 1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff]);
    for (const name of ['system.posix_acl_access', 'system.posix_acl_default']) {
      expect(await h.errno(Op.SETXATTR, ino, [u32(acl.length, 0), cstr(name), acl])).toBe(E.EOPNOTSUPP);
      expect(await layer.getxattr(ino, name)).toBeNull();
      expect(await h.errno(Op.GETXATTR, ino, getxattrIn(0, name))).toBe(E.ENODATA);
      expect(await h.errno(Op.REMOVEXATTR, ino, [cstr(name)])).toBe(0);
    }
    expect(await layer.listxattr(ino)).toEqual(['user.a', 'user.bb']);
  });
});

describe('kernel transport: directories', () => {
  async function withDir(names: string[]): Promise<{ h: Harness; layer: MemoryLayerFs; dir: WireEntry; fh: number; inos: Map<string, number> }> {
    const layer = memoryLayer();
    const d = await layer.mkdir(layer.rootIno, 'd', { mode: 0o755, uid: 0, gid: 0 });
    const inos = new Map<string, number>();
    for (const name of names) {
      const a = name.endsWith('/')
        ? await layer.mkdir(d.ino, name.slice(0, -1), { mode: 0o700, uid: 0, gid: 0 })
        : await layer.mknod(d.ino, name, { mode: S_IFREG | 0o644, uid: 3, gid: 4 });
      if (a.kind === 'file') await layer.write(a.ino, Buffer.alloc(a.ino % 1000), 0);
      inos.set(a.kind === 'dir' ? `${name.slice(0, -1)}` : name, a.ino);
    }
    const h = new Harness(layer);
    const dir = await h.lookup(FUSE_ROOT_ID, 'd'); // as the kernel does before opening it
    const fh = await h.opendir(dir.nodeid);
    return { h, layer, dir, fh, inos };
  }

  it('READDIR lists ".", ".." and the entries with offsets index + 1 and their d_type', async () => {
    const { h, dir, fh, inos } = await withDir(['a', 'b', 'c/', 'd']);
    const list = await h.readdir(dir.nodeid, fh, 0, 4096);
    expect(list.map((e) => [e.name, e.off, e.type])).toEqual([
      ['.', 1, DT_DIR], ['..', 2, DT_DIR], ['a', 3, DT_REG], ['b', 4, DT_REG], ['c', 5, DT_DIR], ['d', 6, DT_REG],
    ]);
    expect(list.map((e) => e.ino)).toEqual([dir.nodeid, FUSE_ROOT_ID, inos.get('a'), inos.get('b'), inos.get('c'), inos.get('d')]);
  });

  it('READDIR from a middle offset continues where the previous reply stopped', async () => {
    const { h, dir, fh } = await withDir(['a', 'b', 'c', 'd']);
    const first = await h.readdir(dir.nodeid, fh, 0, 4096);
    const rest = await h.readdir(dir.nodeid, fh, first[2].off, 4096);
    expect(rest.map((e) => [e.name, e.off])).toEqual([['b', 4], ['c', 5], ['d', 6]]);
    expect(await h.readdir(dir.nodeid, fh, 6, 4096)).toEqual([]);
    expect(await h.readdir(dir.nodeid, fh, 100, 4096)).toEqual([]);
  });

  it('READDIR puts only whole entries that fit in size, and paging through yields each entry once', async () => {
    const names = ['a', 'bbbbbbbbb', 'c', 'dddddddddddddddddddd', 'e'];
    const { h, dir, fh } = await withDir(names);
    expect(await h.readdir(dir.nodeid, fh, 0, 31)).toEqual([]); // one entry takes 32 bytes
    expect((await h.readdir(dir.nodeid, fh, 0, 32 + 31)).map((e) => e.name)).toEqual(['.']);
    const seen: string[] = [];
    let offset = 0;
    for (let i = 0; i < 20; i++) {
      const page = await h.readdir(dir.nodeid, fh, offset, 64);
      if (page.length === 0) break;
      expect(page.length).toBeLessThanOrEqual(2);
      seen.push(...page.map((e) => e.name));
      offset = page[page.length - 1].off;
    }
    expect(seen).toEqual(['.', '..', ...names]);
  });

  it('READDIR from offset 0 again (rewinddir) lists the directory afresh', async () => {
    const { h, layer, dir, fh } = await withDir(['a', 'c']);
    expect((await h.readdir(dir.nodeid, fh, 0, 4096)).map((e) => e.name)).toEqual(['.', '..', 'a', 'c']);
    await layer.mknod(dir.nodeid, 'b', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    expect((await h.readdir(dir.nodeid, fh, 0, 4096)).map((e) => e.name)).toEqual(['.', '..', 'a', 'b', 'c']);
  });

  it('READDIR from a nonzero offset on a fresh handle (seekdir) lists from there', async () => {
    const { h, dir } = await withDir(['a', 'b', 'c']);
    const fh = await h.opendir(dir.nodeid);
    expect((await h.readdir(dir.nodeid, fh, 3, 4096)).map((e) => e.name)).toEqual(['b', 'c']);
  });

  it('READDIRPLUS entries carry node ids and attributes; "." and ".." carry none', async () => {
    const { h, layer, dir, fh, inos } = await withDir(['a', 'sub/', 'z']);
    const list = await h.readdir(dir.nodeid, fh, 0, 4096, true);
    expect(list.map((e) => [e.name, e.off])).toEqual([['.', 1], ['..', 2], ['a', 3], ['sub', 4], ['z', 5]]);
    for (const e of list.slice(0, 2)) {
      expect(e.entry!.nodeid).toBe(0);
      expect(e.entry!.attrBytes.every((b) => b === 0)).toBe(true);
    }
    for (const e of list.slice(2)) {
      const want = await layer.getattr(inos.get(e.name)!);
      expect(e.ino).toBe(want.ino);
      expect(e.entry!.nodeid).toBe(want.ino);
      expect(e.entry!.entryValid).toEqual([2, 0]);
      expect(e.entry!.attrValid).toEqual([1, 500_000_000]);
      expect(e.entry!.attr).toMatchObject({ ino: want.ino, mode: want.mode, sizeBytes: want.sizeBytes, uid: want.uid, gid: want.gid, nlink: want.nlink });
    }
    expect(list[2].entry!.attr.sizeBytes).toBe(inos.get('a')! % 1000);
  });

  it('READDIRPLUS counts 128 more bytes per entry against size', async () => {
    const { h, dir, fh } = await withDir(['a', 'b']);
    expect((await h.readdir(dir.nodeid, fh, 0, 2 * 160, true)).map((e) => e.name)).toEqual(['.', '..']);
    expect((await h.readdir(dir.nodeid, fh, 2, 2 * 160 - 1, true)).map((e) => e.name)).toEqual(['a']);
  });

  it('".." of a directory is the parent it was looked up in', async () => {
    const layer = memoryLayer();
    const h = new Harness(layer);
    const a = await h.mkdir(FUSE_ROOT_ID, 'a');
    const x = await h.mkdir(a.nodeid, 'x');
    const list = await h.readdir(x.nodeid, await h.opendir(x.nodeid), 0, 4096);
    expect(list.slice(0, 2).map((e) => [e.name, e.ino])).toEqual([['.', x.nodeid], ['..', a.nodeid]]);
  });

  it('".." of a directory follows it when it is renamed into another directory', async () => {
    const layer = memoryLayer();
    const h = new Harness(layer);
    const a = await h.mkdir(FUSE_ROOT_ID, 'a');
    const b = await h.mkdir(FUSE_ROOT_ID, 'b');
    const x = await h.mkdir(a.nodeid, 'x');
    expect(await h.errno(Op.RENAME, a.nodeid, [u64(b.nodeid), cstr('x'), cstr('x')])).toBe(0);
    const list = await h.readdir(x.nodeid, await h.opendir(x.nodeid), 0, 4096);
    expect(list[1]).toMatchObject({ name: '..', ino: b.nodeid });
  });

  it('OPENDIR asks the kernel to cache listings only with cacheDirs; RELEASEDIR drops the handle, and an unknown handle (a predecessor\'s) lists afresh', async () => {
    const layer = memoryLayer();
    const cached = new Harness(layer, { cacheDirs: true });
    expect(parseOpenOut(await cached.ok(Op.OPENDIR, FUSE_ROOT_ID, [u32(0, 0)])).openFlags).toBe(FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE);
    const h = new Harness(layer);
    const fh = await h.opendir(FUSE_ROOT_ID);
    expect(parseOpenOut(await h.ok(Op.OPENDIR, FUSE_ROOT_ID, [u32(0, 0)])).fh).not.toBe(fh);
    expect(await h.errno(Op.RELEASEDIR, FUSE_ROOT_ID, [u64(fh), u32(0, 0), u64(0)])).toBe(0);
    expect(await h.errno(Op.READDIR, FUSE_ROOT_ID, readIn(fh, 0, 4096))).toBe(0);
    expect((await h.readdir(FUSE_ROOT_ID, 12345, 0, 4096)).map((e: { name: string }) => e.name)).toEqual(expect.arrayContaining(['.', '..']));
  });
});

describe('kernel transport: RENAME2', () => {
  const rename2In = (newDir: number, flags: number, from: string, to: string): Buffer[] => [u64(newDir), u32(flags, 0), cstr(from), cstr(to)];

  async function twoFiles(): Promise<{ h: Harness; layer: MemoryLayerFs; a: Attr; b: Attr; sub: Attr }> {
    const layer = memoryLayer();
    const a = await layer.mknod(layer.rootIno, 'a', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    const b = await layer.mknod(layer.rootIno, 'b', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    const sub = await layer.mkdir(layer.rootIno, 'sub', { mode: 0o755, uid: 0, gid: 0 });
    return { h: new Harness(layer), layer, a, b, sub };
  }

  it('RENAME_NOREPLACE onto an existing name fails with EEXIST and changes nothing', async () => {
    const { h, layer, a, b } = await twoFiles();
    expect(await h.errno(Op.RENAME2, FUSE_ROOT_ID, rename2In(FUSE_ROOT_ID, RENAME_NOREPLACE, 'a', 'b'))).toBe(E.EEXIST);
    expect((await layer.lookup(layer.rootIno, 'a'))?.ino).toBe(a.ino);
    expect((await layer.lookup(layer.rootIno, 'b'))?.ino).toBe(b.ino);
    expect(await h.errno(Op.RENAME2, FUSE_ROOT_ID, rename2In(FUSE_ROOT_ID, RENAME_NOREPLACE, 'a', 'c'))).toBe(0);
    expect((await layer.lookup(layer.rootIno, 'c'))?.ino).toBe(a.ino);
  });

  it.each([1 << 2, 1 << 5, 0x80000001])('an unknown flag bit (0x%s) fails with EINVAL and changes nothing', async (flags) => {
    const { h, layer, a } = await twoFiles();
    expect(await h.errno(Op.RENAME2, FUSE_ROOT_ID, rename2In(FUSE_ROOT_ID, flags, 'a', 'c'))).toBe(E.EINVAL);
    expect((await layer.lookup(layer.rootIno, 'a'))?.ino).toBe(a.ino);
    expect(await layer.lookup(layer.rootIno, 'c')).toBeNull();
  });

  it('moves into another directory given by node id, replacing without flags', async () => {
    const { h, layer, a, b, sub } = await twoFiles();
    expect(await h.errno(Op.RENAME2, FUSE_ROOT_ID, rename2In(sub.ino, 0, 'a', 'moved'))).toBe(0);
    expect((await layer.lookup(sub.ino, 'moved'))?.ino).toBe(a.ino);
    expect(await layer.lookup(layer.rootIno, 'a')).toBeNull();
    expect(await h.errno(Op.RENAME2, sub.ino, rename2In(FUSE_ROOT_ID, 0, 'moved', 'b'))).toBe(0);
    expect((await layer.lookup(layer.rootIno, 'b'))?.ino).toBe(a.ino);
    expect(() => layer.retain(b.ino)).toThrow(); // the replaced file is gone
  });

  it('passes RENAME_EXCHANGE to the store (MemoryLayerFs does not support it: EOPNOTSUPP)', async () => {
    const { h } = await twoFiles();
    expect(await h.errno(Op.RENAME2, FUSE_ROOT_ID, rename2In(FUSE_ROOT_ID, RENAME_EXCHANGE, 'a', 'b'))).toBe(E.EOPNOTSUPP);
  });
});

describe('kernel transport: replies in general', () => {
  it.each([7, 39, 40, 4096])('answers unknown opcode %p with ENOSYS', async (opcode) => {
    const h = new Harness(memoryLayer());
    expect(await h.errno(opcode, FUSE_ROOT_ID, [Buffer.alloc(64)])).toBe(E.ENOSYS);
  });

  it('answers FORGET, BATCH_FORGET and INTERRUPT with nothing, FLUSH with ENOSYS (never sent again) and DESTROY with success', async () => {
    const h = new Harness(memoryLayer());
    const silent = [
      h.send(Op.FORGET, FIRST_INO, [u64(1)]),
      h.send(Op.BATCH_FORGET, 0, [u32(1, 0), u64(FIRST_INO, 1)]),
      h.send(Op.INTERRUPT, 0, [u64(12345)]),
    ];
    for (let i = 0; i < 5; i++) await tick();
    for (const { unique } of silent) expect(h.session.replies.filter((r) => r.unique === unique)).toEqual([]);
    expect(await h.errno(Op.FLUSH, FUSE_ROOT_ID, [u64(1), u32(0, 0), u64(0)])).toBe(E.ENOSYS);
    expect(await h.errno(Op.DESTROY, 0, [])).toBe(0);
  });

  it('echoes the 64-bit unique id of each request', async () => {
    const h = new Harness(memoryLayer());
    const { unique } = h.send(Op.GETATTR, FUSE_ROOT_ID, [u32(0, 0), u64(0)]);
    expect(unique).toBeGreaterThan(BigInt(TWO32));
    expect((await h.replyTo(unique)).errno).toBe(0);
  });

  it('FSYNC, FSYNCDIR and SYNCFS sync the store; a read-only layer is not synced', async () => {
    const layer = memoryLayer();
    const h = new Harness(layer);
    expect(await h.errno(Op.FSYNC, FUSE_ROOT_ID, [u64(1), u32(0, 0)])).toBe(0);
    expect(await h.errno(Op.FSYNCDIR, FUSE_ROOT_ID, [u64(1), u32(0, 0)])).toBe(0);
    expect(await h.errno(Op.SYNCFS, FUSE_ROOT_ID, [u64(0)])).toBe(0);
    expect(layer.fsyncCount).toBe(3);
    expect(h.ops.syncCount).toBe(3);
    const ro = memoryLayer({ readOnly: true });
    expect(await new Harness(ro).errno(Op.FSYNC, FUSE_ROOT_ID, [u64(1), u32(0, 0)])).toBe(0);
    expect(ro.fsyncCount).toBe(0);
  });

  it('maps store errors to errno: ENOENT, ENOTEMPTY, EISDIR', async () => {
    const layer = memoryLayer();
    const d = await layer.mkdir(layer.rootIno, 'd', { mode: 0o755, uid: 0, gid: 0 });
    await layer.mknod(d.ino, 'f', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    const h = new Harness(layer);
    expect(await h.errno(Op.UNLINK, FUSE_ROOT_ID, [cstr('missing')])).toBe(E.ENOENT);
    expect(await h.errno(Op.RMDIR, FUSE_ROOT_ID, [cstr('d')])).toBe(E.ENOTEMPTY);
    expect(await h.errno(Op.UNLINK, FUSE_ROOT_ID, [cstr('d')])).toBe(E.EISDIR);
    expect(await h.errno(Op.GETATTR, TWO32 * 100, [u32(0, 0), u64(0)])).toBe(E.ENOENT);
    expect(h.unexpected).toEqual([]);
  });

  it('shutdown releases open handles and syncs', async () => {
    const layer = memoryLayer();
    const h = new Harness(layer);
    await h.create(FUSE_ROOT_ID, 'f');
    expect(h.ops.openHandles).toBe(1);
    expect(await h.errno(Op.UNLINK, FUSE_ROOT_ID, [cstr('f')])).toBe(0);
    expect(layer.inodeCount).toBe(2); // unlinked but open: kept
    await h.ops.shutdown();
    expect(h.ops.openHandles).toBe(0);
    expect(layer.inodeCount).toBe(1);
    expect(layer.fsyncCount).toBe(1);
  });
});

describe('kernel transport: STATX, TMPFILE and POSIX ACLs', () => {
  const STATX_BASIC_STATS = 0x7ff;
  const STATX_BTIME = 0x800;
  const ACL_FLAGS = (1 << 20) | (1 << 6) | (1 << 29); // FUSE_POSIX_ACL, FUSE_DONT_MASK, FUSE_SETXATTR_EXT
  const BTIME_NS = 1_600_000_000_123_456_789n;
  /** fuse_statx_in: getattr_flags, reserved, fh, sx_flags, sx_mask. */
  const statxIn = (): Buffer[] => [u32(0, 0), u64(0), u32(0, STATX_BASIC_STATS | STATX_BTIME)];

  /** The layer with a birth time on every inode (MemoryLayerFs keeps none). */
  function withBtime(inner: MemoryLayerFs): LayerFs {
    return new Proxy(inner, {
      get(target, prop) {
        if (prop === 'getattr') return async (ino: Ino) => ({ ...(await target.getattr(ino)), btimeNs: BTIME_NS });
        const v = Reflect.get(target, prop) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  }

  it('STATX answers fuse_statx_out (288 bytes) with the basic stats, and BTIME only when the inode has one', async () => {
    const layer = memoryLayer();
    const f = await layer.mknod(layer.rootIno, 'f', { mode: S_IFREG | 0o640, uid: 7, gid: 8 });
    await layer.write(f.ino, Buffer.from('hello'), 0);
    const without = await new Harness(layer).ok(Op.STATX, f.ino, statxIn());
    expect(without.length).toBe(288);
    expect(without.readUInt32LE(32)).toBe(STATX_BASIC_STATS);
    expect(without.readBigInt64LE(32 + 80)).toBe(0n);
    const sx = await new Harness(withBtime(layer)).ok(Op.STATX, f.ino, statxIn());
    const at = 32; // struct fuse_statx after attr_valid, attr_valid_nsec, flags, spare[2]
    expect(Number(sx.readBigUInt64LE(0)) + sx.readUInt32LE(8) / 1e9).toBe(1.5);
    expect(sx.readUInt32LE(at)).toBe(STATX_BASIC_STATS | STATX_BTIME);
    expect(sx.readUInt32LE(at + 4)).toBe(4096);
    expect([sx.readUInt32LE(at + 16), sx.readUInt32LE(at + 20), sx.readUInt32LE(at + 24), sx.readUInt16LE(at + 28)]).toEqual([1, 7, 8, S_IFREG | 0o640]);
    expect([Number(sx.readBigUInt64LE(at + 32)), Number(sx.readBigUInt64LE(at + 40))]).toEqual([f.ino, 5]);
    expect([sx.readBigInt64LE(at + 80), sx.readUInt32LE(at + 88)]).toEqual([BTIME_NS / 1_000_000_000n, 123456789]);
    expect(sx.readBigInt64LE(at + 112) * 1_000_000_000n + BigInt(sx.readUInt32LE(at + 120))).toBe(FROZEN_NS);
  });

  it('STATX gives a device node\'s major and minor apart', async () => {
    const layer = memoryLayer();
    const rdev = (8 << 8) | 17 | (0x123 << 20); // makedev(8, 0x12311) in the 32-bit encoding
    const d = await layer.mknod(layer.rootIno, 'dev', { mode: 0o020644, uid: 0, gid: 0, rdev });
    const sx = await new Harness(layer).ok(Op.STATX, d.ino, statxIn());
    expect([sx.readUInt32LE(32 + 128), sx.readUInt32LE(32 + 132)]).toEqual([8, 0x12311]);
  });

  it('TMPFILE on a layer that cannot make unnamed files is EOPNOTSUPP (the kernel then stops asking)', async () => {
    const h = new Harness(memoryLayer());
    expect(await h.errno(Op.TMPFILE, FUSE_ROOT_ID, createIn(O_RDWR, S_IFREG | 0o600, '/'))).toBe(E.EOPNOTSUPP);
  });

  it('asks for POSIX ACLs (with DONT_MASK and SETXATTR_EXT) only when the option says so', async () => {
    const flags = async (posixAcl: boolean): Promise<number> =>
      (await new Harness(memoryLayer(), { posixAcl }).ok(Op.INIT, 0, initIn(7, 45, 4096, OFFERED_BY_KERNEL))).readUInt32LE(12);
    expect((await flags(true)) & ACL_FLAGS).toBe(ACL_FLAGS);
    expect((await flags(false)) & ACL_FLAGS).toBe(0);
  });

  it('with ACLs agreed, SETXATTR carries 16 bytes: an access ACL sets the mode, and the kill flag clears setgid', async () => {
    const layer = memoryLayer();
    const h = new Harness(layer, { posixAcl: true });
    await h.ok(Op.INIT, 0, initIn(7, 45, 4096, OFFERED_BY_KERNEL));
    const f = await h.create(FUSE_ROOT_ID, 'f', 0o644);
    const node = f.entry.nodeid;
    await layer.setattr(node, { mode: 0o2644 });
    // user::rw-, user:1000:rwx, group::r--, mask::r-x, other::---
    const acl = Buffer.from('02000000' + '01000600ffffffff' + '02000700e8030000' + '04000400ffffffff' + '10000500ffffffff' + '20000000ffffffff', 'hex');
    const set = (value: Buffer, setxattrFlags: number): Buffer[] => [u32(value.length, 0, setxattrFlags, 0), cstr('system.posix_acl_access'), value];
    expect(await h.errno(Op.SETXATTR, node, set(acl, 0))).toBe(0);
    expect((await layer.getattr(node)).mode & 0o7777).toBe(0o2650);
    expect(await layer.getxattr(node, 'system.posix_acl_access')).toEqual(acl);
    expect(await h.errno(Op.SETXATTR, node, set(acl, 1 /* FUSE_SETXATTR_ACL_KILL_SGID */))).toBe(0);
    expect((await layer.getattr(node)).mode & 0o7777).toBe(0o650);
    // An ACL of the base entries only is the mode: stored as the mode, and the ACL goes.
    const base = Buffer.from('02000000' + '01000700ffffffff' + '04000500ffffffff' + '20000100ffffffff', 'hex');
    expect(await h.errno(Op.SETXATTR, node, set(base, 0))).toBe(0);
    expect((await layer.getattr(node)).mode & 0o7777).toBe(0o751);
    expect(await layer.getxattr(node, 'system.posix_acl_access')).toBeNull();
    expect(await h.errno(Op.SETXATTR, node, set(Buffer.from('03000000', 'hex'), 0))).toBe(E.EINVAL);
  });

  it('with ACLs agreed the umask is the table\'s: applied without a default ACL, ignored under one', async () => {
    const layer = memoryLayer();
    const h = new Harness(layer, { posixAcl: true });
    await h.ok(Op.INIT, 0, initIn(7, 45, 4096, OFFERED_BY_KERNEL));
    const plain = await h.ok(Op.CREATE, FUSE_ROOT_ID, createIn(O_RDWR | O_CREAT, S_IFREG | 0o666, 'plain', 0o027));
    expect(parseEntry(plain).attr.mode & 0o7777).toBe(0o640);
    const d = await h.mkdir(FUSE_ROOT_ID, 'd', 0o777);
    expect(d.attr.mode & 0o7777).toBe(0o755);
  });
});

describe('kernel transport: cache invalidations of another mount\'s changes', () => {
  /** A notification as the kernel reads it: fuse_out_header (unique 0, the code in error), then the body. */
  interface Notification {
    code: number;
    body: Buffer;
  }

  class FakeNotifySession {
    readonly sent: Notification[] = [];

    notify(message: Buffer): void {
      expect(message.readUInt32LE(0)).toBe(message.length);
      expect(message.readBigUInt64LE(8)).toBe(0n); // unique 0: a notification, not a reply
      this.sent.push({ code: message.readInt32LE(4), body: Buffer.from(message.subarray(16)) });
    }
  }

  /** struct fuse_notify_inval_inode_out (code 2). */
  const invalInode = (n: Notification) => {
    expect(n.code).toBe(2);
    expect(n.body.length).toBe(24);
    return { ino: Number(n.body.readBigUInt64LE(0)), off: Number(n.body.readBigInt64LE(8)), len: Number(n.body.readBigInt64LE(16)) };
  };
  /** struct fuse_notify_inval_entry_out (code 3), then the name and a NUL. */
  const invalEntry = (n: Notification) => {
    expect(n.code).toBe(3);
    const namelen = n.body.readUInt32LE(8);
    expect(n.body.length).toBe(16 + namelen + 1);
    expect(n.body[16 + namelen]).toBe(0);
    return { parent: Number(n.body.readBigUInt64LE(0)), flags: n.body.readUInt32LE(12), name: n.body.toString('utf8', 16, 16 + namelen) };
  };
  /** struct fuse_notify_delete_out (code 6), then the name and a NUL. */
  const notifyDelete = (n: Notification) => {
    expect(n.code).toBe(6);
    const namelen = n.body.readUInt32LE(16);
    expect(n.body.length).toBe(24 + namelen + 1);
    expect(n.body[24 + namelen]).toBe(0);
    return { parent: Number(n.body.readBigUInt64LE(0)), child: Number(n.body.readBigUInt64LE(8)), name: n.body.toString('utf8', 24, 24 + namelen) };
  };

  async function setUp() {
    const layer = memoryLayer();
    const dir = await layer.mkdir(layer.rootIno, 'dir', { mode: 0o755, uid: 0, gid: 0 });
    const file = await layer.mknod(dir.ino, 'file', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    const h = new Harness(layer);
    const notes = new FakeNotifySession();
    h.transport.notifyTo(notes);
    return { layer, dir, file, h, notes };
  }

  it('knows a node from the entry replies that handed it out until FORGET returns every lookup; the root always', async () => {
    const { dir, file, h } = await setUp();
    expect(h.transport.knowsNode(FUSE_ROOT_ID)).toBe(true);
    expect(h.transport.knowsNode(dir.ino)).toBe(false);
    await h.lookup(FUSE_ROOT_ID, 'dir');
    await h.lookup(FUSE_ROOT_ID, 'dir');
    await h.lookup(dir.ino, 'file');
    expect(h.transport.knowsNode(dir.ino) && h.transport.knowsNode(file.ino)).toBe(true);
    h.send(Op.FORGET, dir.ino, [u64(1)]);
    expect(h.transport.knowsNode(dir.ino)).toBe(true); // one lookup left
    h.send(Op.BATCH_FORGET, 0, [u32(2, 0), u64(dir.ino, 1), u64(file.ino, 1)]);
    expect(h.transport.knowsNode(dir.ino) || h.transport.knowsNode(file.ino)).toBe(false);
    // A negative entry hands out no node; CREATE's and READDIRPLUS's entries do.
    await h.call(Op.LOOKUP, FUSE_ROOT_ID, [cstr('absent')]);
    const created = await h.create(FUSE_ROOT_ID, 'new');
    expect(h.transport.knowsNode(created.entry.nodeid)).toBe(true);
    await h.readdir(dir.ino, await h.opendir(dir.ino), 0, 4096, true);
    expect(h.transport.knowsNode(file.ino)).toBe(true);
  });

  it('turns edits into INVAL_INODE / INVAL_ENTRY / DELETE for known nodes only, after the current turn of the event loop', async () => {
    const { dir, file, h, notes } = await setUp();
    await h.lookup(FUSE_ROOT_ID, 'dir');
    await h.lookup(dir.ino, 'file');
    h.transport.invalidate([
      { kind: 'data', ino: file.ino, offsetBytes: 4096, lengthBytes: 100 },
      { kind: 'data', ino: file.ino, offsetBytes: 8000, lengthBytes: 1000 },
      { kind: 'attr', ino: dir.ino },
      { kind: 'data', ino: FIRST_INO + 999, offsetBytes: 0, lengthBytes: 0 }, // never looked up: not notified
    ]);
    expect(notes.sent).toEqual([]); // never from inside the caller (a request handler)
    await tick();
    expect(notes.sent.map(invalInode)).toEqual([
      { ino: file.ino, off: 4096, len: 9000 - 4096 }, // one per node, covering both ranges
      { ino: dir.ino, off: -1, len: 0 }, // attributes only
    ]);

    notes.sent.length = 0;
    h.transport.invalidate([
      { kind: 'name', dirIno: dir.ino, name: 'né' },
      { kind: 'deleted', dirIno: dir.ino, name: 'file', ino: file.ino },
      { kind: 'name', dirIno: FIRST_INO + 999, name: 'x' }, // a directory the kernel does not hold
    ]);
    await tick();
    expect(notes.sent.map((n) => n.code)).toEqual([3, 6, 2]);
    expect(invalEntry(notes.sent[0])).toEqual({ parent: dir.ino, flags: 0, name: 'né' });
    expect(notifyDelete(notes.sent[1])).toEqual({ parent: dir.ino, child: file.ino, name: 'file' });
    // The directory's listing and attributes go too (INVAL_ENTRY drops them only where a dentry was cached).
    expect(invalInode(notes.sent[2])).toEqual({ ino: dir.ino, off: 0, len: 0 });
  });

  it('names the root FUSE_ROOT_ID, and notifies every node of a connection taken over from another process', async () => {
    const { layer, file, h, notes } = await setUp();
    h.transport.adoptInit(DMFS_INIT_FLAGS);
    h.transport.invalidate([{ kind: 'name', dirIno: layer.rootIno, name: 'dir' }, { kind: 'attr', ino: file.ino }]);
    await tick();
    expect(invalEntry(notes.sent[0])).toMatchObject({ parent: FUSE_ROOT_ID, name: 'dir' });
    expect(notes.sent.slice(1).map(invalInode)).toEqual([{ ino: FUSE_ROOT_ID, off: 0, len: 0 }, { ino: file.ino, off: -1, len: 0 }]);
  });
});
