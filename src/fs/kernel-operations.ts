/**
 * The FUSE operations of one mounted layer for the kernel transport (kernel-session.ts):
 * each request is parsed from its fuse.h layout, answered from the layer store, and the
 * reply encoded (kernel-protocol.ts). Inode-based, like libfuse's low-level API: the
 * kernel's node id is the store's inode number (the root is FUSE_ROOT_ID), so all names of
 * a hard-linked file share one kernel inode and its cached attributes stay right.
 *
 * Lookup counts (FORGET) are not tracked: store inodes live on their own (an open file
 * keeps an unlinked inode through LayerFs.retain), and inode numbers are never reused.
 *
 * Requests run concurrently; the store serialises what must be. The kernel serialises
 * conflicting namespace changes in one directory (the directory's lock).
 */
import { constants as fsConstants } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { DmfsError, dmfsError, errnoOf } from '../errors';
import type { Attr, DirEntry, Ino, LayerFs, SetAttr } from '../store/layer-store';
import { S_IFDIR, S_IFMT, S_IFREG } from '../store/layer-store';
import { GroupSync } from './group-sync';
import { HandleTable } from './handle-table';
import { KernelSession, MAX_WRITE_BYTES, type KernelDispatcher } from './kernel-session';
import {
  ATTR_OUT_BYTES, ENTRY_OUT_BYTES, FOPEN_CACHE_DIR, FOPEN_KEEP_CACHE, FUSE_KERNEL_VERSION, FUSE_MIN_KERNEL_MINOR,
  FUSE_ROOT_ID, INIT_OUT_BYTES, IN_HEADER_BYTES, InitFlag, OPEN_OUT_BYTES, OUT_HEADER_BYTES, Op, RENAME_EXCHANGE,
  RENAME_NOREPLACE, STATFS_OUT_BYTES, FUSE_WRITE_KILL_SUIDGID, SetattrValid, direntBytes, readName, readU64, readUnique,
  writeAttrOut, writeDirent, writeEntry, writeInitOut, writeOpenOut, writeStatfs, type Unique,
} from './kernel-protocol';
import { checkAccess, NAME_MAX_BYTES, newNodeOwner, POSIX_ACL_XATTRS, S_ISGID, S_ISUID, wallClockNs } from './posix-rules';

const ACCMODE = 3;
const SECURITY_CAPABILITY = 'security.capability';
const XATTR_CREATE = 1;
const XATTR_REPLACE = 2;
const E = osConstants.errno;
/** Read reply buffers kept for reuse (each up to 1 MiB + header). */
const POOLED_READ_BUFFERS = 8;
const PAGE_BYTES = 4096;
/** READs up to this size get a reply buffer of their own (see takeReadBuffer). */
const SMALL_READ_BYTES = 128 * 1024;

export interface KernelOperationsOptions {
  /** st_blksize of every file. */
  blockSizeBytes: number;
  /** Kernel cache lifetimes (seconds) of names, attributes and known-absent names. */
  entryTimeoutS: number;
  attrTimeoutS: number;
  negativeTimeoutS: number;
  /** Let the kernel gather writes in its page cache (writable layers). */
  writebackCache: boolean;
  /** Let the kernel cache directory listings across opens (it invalidates them on changes it makes). */
  cacheDirs: boolean;
  /** Wall clock in nanoseconds (tests inject one). */
  nowNs?: () => bigint;
  /** A failure that is not a DmfsError (a bug or an I/O error), answered as EIO or its errno. */
  onUnexpected?: (err: unknown) => void;
}

export interface KernelOperations extends KernelDispatcher {
  /** Releases every handle still open and syncs the layer. Called once, after unmount. */
  shutdown(): Promise<void>;
  /** Requests received so far, by opcode name (for profiles and tests). */
  requestCounts(): Record<string, number>;
  readonly openHandles: number;
  readonly syncCount: number;
}

interface DirHandle {
  ino: Ino;
  /** The listing this handle reads from ('.', '..', then the entries); taken at offset 0. */
  entries: DirEntry[] | null;
}

class NameTooLong extends Error {}

export function createKernelOperations(layer: LayerFs, options: KernelOperationsOptions): KernelOperations {
  const handles = new HandleTable();
  const dirHandles = new Map<number, DirHandle>();
  let nextDirHandle = 1;
  // A directory's parent, learnt from lookups, for '..' in listings.
  const parents = new Map<Ino, Ino>();
  const group = new GroupSync(() => (layer.readOnly ? Promise.resolve() : layer.fsync()));
  const nowNs = options.nowNs ?? wallClockNs;
  const onUnexpected = options.onUnexpected ?? (() => undefined);
  const root = layer.rootIno;
  const bs = options.blockSizeBytes;
  const readBuffers: Buffer[] = [];

  const inoOf = (nodeid: number): Ino => (nodeid === FUSE_ROOT_ID ? root : nodeid);
  const nodeOf = (ino: Ino): number => (ino === root ? FUSE_ROOT_ID : ino);

  function errnoFor(err: unknown): number {
    if (err instanceof NameTooLong) return E.ENAMETOOLONG;
    if (!(err instanceof DmfsError)) onUnexpected(err);
    const n = errnoOf(err);
    return n > 0 ? n : E.EIO;
  }

  /** Runs an async handler; its failure becomes the error reply. */
  function answer(session: KernelSession, unique: Unique, p: Promise<void>): Promise<void> {
    return p.catch((err) => session.fail(unique, errnoFor(err)));
  }

  function nameAt(req: Buffer, at: number, len: number): { name: string; next: number } {
    const r = readName(req, at, len);
    if (r.next - 1 - at > NAME_MAX_BYTES) throw new NameTooLong();
    return r;
  }

  function sendEntry(session: KernelSession, unique: Unique, dirIno: Ino, attr: Attr): void {
    if (attr.kind === 'dir') parents.set(attr.ino, dirIno);
    const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + ENTRY_OUT_BYTES);
    writeEntry(out, OUT_HEADER_BYTES, nodeOf(attr.ino), attr, options.entryTimeoutS, options.attrTimeoutS, bs);
    session.send(unique, out, out.length);
  }

  function sendAttr(session: KernelSession, unique: Unique, attr: Attr): void {
    const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + ATTR_OUT_BYTES);
    writeAttrOut(out, OUT_HEADER_BYTES, attr, options.attrTimeoutS, bs);
    session.send(unique, out, out.length);
  }

  function sendOpen(session: KernelSession, unique: Unique, fh: number, flags: number): void {
    const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + OPEN_OUT_BYTES);
    writeOpenOut(out, OUT_HEADER_BYTES, fh, flags);
    session.send(unique, out, out.length);
  }

  function sendBytes(session: KernelSession, unique: Unique, data: Buffer): void {
    const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + data.length);
    data.copy(out, OUT_HEADER_BYTES);
    session.send(unique, out, out.length);
  }

  /** getxattr/listxattr convention: size 0 asks for the length; a too small buffer is ERANGE. */
  function sendSized(session: KernelSession, unique: Unique, data: Buffer, size: number): void {
    if (size === 0) {
      const out = Buffer.alloc(OUT_HEADER_BYTES + 8);
      out.writeUInt32LE(data.length, OUT_HEADER_BYTES);
      session.send(unique, out, out.length);
    } else if (data.length > size) {
      session.fail(unique, E.ERANGE);
    } else {
      sendBytes(session, unique, data);
    }
  }

  function newNode(dirIno: Ino, mode: number, uid: number, gid: number): Promise<{ mode: number; uid: number; gid: number }> {
    return newNodeOwner(layer, dirIno, mode, uid, gid);
  }

  function fileOpenFlags(): number {
    // This mount is the layer's only writer and all names of a file share one kernel
    // inode, so cached pages stay valid across opens.
    return FOPEN_KEEP_CACHE;
  }

  async function listing(h: DirHandle): Promise<DirEntry[]> {
    const entries = await layer.readdir(h.ino);
    const parent = h.ino === root ? root : (parents.get(h.ino) ?? h.ino);
    for (const e of entries) if (e.kind === 'dir') parents.set(e.ino, h.ino);
    return [{ name: '.', ino: h.ino, kind: 'dir' }, { name: '..', ino: parent, kind: 'dir' }, ...entries];
  }

  async function readdir(session: KernelSession, unique: Unique, fh: number, offset: number, size: number, plus: boolean): Promise<void> {
    const h = dirHandles.get(fh);
    if (!h) throw dmfsError('INVALID', `unknown directory handle ${fh}`);
    if (offset === 0 || !h.entries) h.entries = await listing(h);
    const all = h.entries;
    // Which entries fit, from the name lengths alone; then their attributes (plus only).
    const chosen: { entry: DirEntry; nameBytes: number; index: number }[] = [];
    let used = 0;
    for (let i = offset; i < all.length; i++) {
      const nameBytes = Buffer.byteLength(all[i].name);
      const need = direntBytes(nameBytes, plus);
      if (used + need > size) break;
      used += need;
      chosen.push({ entry: all[i], nameBytes, index: i });
    }
    const attrs = plus
      ? await Promise.all(chosen.map((c) => (c.entry.name === '.' || c.entry.name === '..' ? null : layer.getattr(c.entry.ino).catch(() => null))))
      : null;
    const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + used);
    let at = OUT_HEADER_BYTES;
    for (let k = 0; k < chosen.length; k++) {
      const { entry, nameBytes, index } = chosen[k];
      if (plus) {
        const a = attrs![k];
        // '.', '..' and entries gone meanwhile carry no entry (node id 0: no lookup counted).
        if (a) writeEntry(out, at, nodeOf(a.ino), a, options.entryTimeoutS, options.attrTimeoutS, bs);
        else out.fill(0, at, at + ENTRY_OUT_BYTES);
        at += ENTRY_OUT_BYTES;
        at += writeDirent(out, at, entry, nameBytes, index + 1);
        // writeDirent aligned (24 + name) alone; the whole record is aligned the same way
        // because ENTRY_OUT_BYTES is a multiple of 8.
      } else {
        at += writeDirent(out, at, entry, nameBytes, index + 1);
      }
    }
    session.send(unique, out, at);
  }

  /**
   * A reply buffer for a READ of `size` bytes. Large reads share a few pooled 1 MiB
   * buffers; small ones (random 4 KiB reads, many in flight) get their own, so that they
   * never allocate 1 MiB each (short-lived external memory drives V8 into mark-compacts).
   */
  function takeReadBuffer(size: number): Buffer {
    if (size <= SMALL_READ_BYTES || size > MAX_WRITE_BYTES) return Buffer.allocUnsafe(OUT_HEADER_BYTES + size);
    return readBuffers.pop() ?? Buffer.allocUnsafeSlow(OUT_HEADER_BYTES + MAX_WRITE_BYTES);
  }

  function giveReadBuffer(buf: Buffer): void {
    if (buf.length === OUT_HEADER_BYTES + MAX_WRITE_BYTES && readBuffers.length < POOLED_READ_BUFFERS) readBuffers.push(buf);
  }

  function init(session: KernelSession, unique: Unique, req: Buffer): void {
    const major = req.readUInt32LE(IN_HEADER_BYTES);
    const minor = req.readUInt32LE(IN_HEADER_BYTES + 4);
    const maxReadahead = req.readUInt32LE(IN_HEADER_BYTES + 8);
    const offered = req.readUInt32LE(IN_HEADER_BYTES + 12);
    if (major !== FUSE_KERNEL_VERSION || minor < FUSE_MIN_KERNEL_MINOR) {
      onUnexpected(new Error(`kernel FUSE protocol ${major}.${minor} is older than 7.${FUSE_MIN_KERNEL_MINOR}`));
      session.fail(unique, E.EPROTO);
      session.markInitialised();
      return;
    }
    // HANDLE_KILLPRIV_V2: this side clears setuid/setgid and security.capability on write,
    // truncate and chown (killPrivileges), which spares the kernel a GETXATTR round trip
    // before every write(2) and a GETATTR before every chown.
    let wanted = InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO |
      InitFlag.ASYNC_DIO | InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES | InitFlag.CACHE_SYMLINKS |
      InitFlag.HANDLE_KILLPRIV_V2;
    if (options.writebackCache && !layer.readOnly) wanted |= InitFlag.WRITEBACK_CACHE;
    const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + INIT_OUT_BYTES);
    writeInitOut(out, OUT_HEADER_BYTES, {
      flags: (offered & wanted) >>> 0,
      maxReadaheadBytes: maxReadahead,
      maxBackground: 64,
      congestionThreshold: 48,
      maxWriteBytes: MAX_WRITE_BYTES,
      maxPages: MAX_WRITE_BYTES / PAGE_BYTES,
    });
    session.send(unique, out, out.length);
    session.markInitialised();
  }

  // What Linux does under HANDLE_KILLPRIV_V2's contract (file_remove_privs, and chown /
  // truncate by a caller without CAP_FSETID, which the kernel flags): a write always drops
  // security.capability; the flag clears setuid, and setgid when group-executable.

  async function dropCapability(ino: Ino): Promise<void> {
    if ((await layer.getxattr(ino, SECURITY_CAPABILITY)) !== null) await layer.removexattr(ino, SECURITY_CAPABILITY);
  }

  /** `attr` with setuid (and setgid when group-executable) cleared; stored only if that changes it. */
  async function clearSetIds(ino: Ino, attr: Attr): Promise<Attr> {
    const mode = attr.mode & 0o7777;
    const cleared = mode & ~(S_ISUID | (mode & 0o010 ? S_ISGID : 0));
    return cleared === mode ? attr : layer.setattr(ino, { mode: cleared });
  }

  function setattrChanges(req: Buffer): SetAttr {
    const at = IN_HEADER_BYTES;
    const valid = req.readUInt32LE(at);
    const changes: SetAttr = {};
    const time = (secAt: number, nsecAt: number): bigint => BigInt(req.readBigInt64LE(secAt)) * 1_000_000_000n + BigInt(req.readUInt32LE(nsecAt));
    if (valid & SetattrValid.MODE) changes.mode = req.readUInt32LE(at + 68) & 0o7777;
    if (valid & SetattrValid.UID) changes.uid = req.readUInt32LE(at + 76);
    if (valid & SetattrValid.GID) changes.gid = req.readUInt32LE(at + 80);
    if (valid & SetattrValid.SIZE) changes.sizeBytes = readU64(req, at + 16);
    const now = valid & (SetattrValid.ATIME_NOW | SetattrValid.MTIME_NOW) ? nowNs() : 0n;
    if (valid & SetattrValid.ATIME) changes.atimeNs = valid & SetattrValid.ATIME_NOW ? now : time(at + 32, at + 56);
    if (valid & SetattrValid.MTIME) changes.mtimeNs = valid & SetattrValid.MTIME_NOW ? now : time(at + 40, at + 60);
    if (valid & SetattrValid.CTIME) changes.ctimeNs = time(at + 48, at + 64);
    return changes;
  }

  const counts = new Uint32Array(64);

  function dispatch(req: Buffer, len: number, session: KernelSession): Promise<void> | void {
    const opcode = req.readUInt32LE(4);
    counts[opcode & 63]++;
    const unique = readUnique(req);
    const ino = inoOf(readU64(req, 16));
    const uid = req.readUInt32LE(24);
    const gid = req.readUInt32LE(28);
    const at = IN_HEADER_BYTES;
    try {
      switch (opcode) {
        case Op.INIT:
          return init(session, unique, req);
        case Op.FORGET:
        case Op.BATCH_FORGET:
        case Op.INTERRUPT:
          return; // no reply
        case Op.DESTROY:
          return session.ok(unique);
        case Op.LOOKUP: {
          const { name } = nameAt(req, at, len);
          void answer(session, unique, (async () => {
            const attr = await layer.lookup(ino, name);
            if (attr) return sendEntry(session, unique, ino, attr);
            if (options.negativeTimeoutS <= 0) return session.fail(unique, E.ENOENT);
            const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + ENTRY_OUT_BYTES);
            writeEntry(out, OUT_HEADER_BYTES, 0, null, options.negativeTimeoutS, 0, bs);
            session.send(unique, out, out.length);
          })());
          return;
        }
        case Op.GETATTR:
          void answer(session, unique, layer.getattr(ino).then((a) => sendAttr(session, unique, a)));
          return;
        case Op.SETATTR: {
          const changes = setattrChanges(req);
          const valid = req.readUInt32LE(at);
          // Under HANDLE_KILLPRIV_V2 the kernel strips the mode change a chown implies and
          // flags it instead; chown(f, -1, -1) then arrives with no field at all, and still
          // clears setuid/setgid of a file on Linux. Nothing else sends an empty SETATTR.
          const kill = (valid & SetattrValid.KILL_SUIDGID) !== 0 || valid === 0;
          void answer(session, unique, (async () => {
            let attr = Object.keys(changes).length ? await layer.setattr(ino, changes) : await layer.getattr(ino);
            // After the change: a chown or truncate that also sets the mode keeps the kill.
            if (kill && (valid !== 0 || attr.kind === 'file')) attr = await clearSetIds(ino, attr);
            sendAttr(session, unique, attr);
          })());
          return;
        }
        case Op.READLINK:
          void answer(session, unique, layer.readlink(ino).then((t) => sendBytes(session, unique, Buffer.from(t))));
          return;
        case Op.SYMLINK: {
          const { name, next } = nameAt(req, at, len);
          const target = readName(req, next, len).name;
          void answer(session, unique, (async () => {
            const owner = await newNode(ino, 0, uid, gid);
            sendEntry(session, unique, ino, await layer.symlink(ino, name, target, { uid: owner.uid, gid: owner.gid }));
          })());
          return;
        }
        case Op.MKNOD: {
          const mode = req.readUInt32LE(at);
          const rdev = req.readUInt32LE(at + 4);
          const { name } = nameAt(req, at + 16, len);
          const typed = (mode & S_IFMT) === 0 ? mode | S_IFREG : mode;
          void answer(session, unique, (async () => {
            const node = await newNode(ino, typed, uid, gid);
            sendEntry(session, unique, ino, await layer.mknod(ino, name, { ...node, rdev }));
          })());
          return;
        }
        case Op.MKDIR: {
          const mode = req.readUInt32LE(at);
          const { name } = nameAt(req, at + 8, len);
          void answer(session, unique, (async () => {
            const node = await newNode(ino, S_IFDIR | (mode & 0o7777), uid, gid);
            sendEntry(session, unique, ino, await layer.mkdir(ino, name, node));
          })());
          return;
        }
        case Op.UNLINK:
        case Op.RMDIR: {
          const { name } = nameAt(req, at, len);
          const p = opcode === Op.UNLINK ? layer.unlink(ino, name) : layer.rmdir(ino, name);
          void answer(session, unique, p.then(() => session.ok(unique)));
          return;
        }
        case Op.RENAME:
        case Op.RENAME2: {
          const newDir = inoOf(readU64(req, at));
          const flags = opcode === Op.RENAME2 ? req.readUInt32LE(at + 8) : 0;
          const from = nameAt(req, at + (opcode === Op.RENAME2 ? 16 : 8), len);
          const to = nameAt(req, from.next, len);
          if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) return session.fail(unique, E.EINVAL);
          const renameFlags = { noReplace: (flags & RENAME_NOREPLACE) !== 0, exchange: (flags & RENAME_EXCHANGE) !== 0 };
          void answer(session, unique, layer.rename(ino, from.name, newDir, to.name, renameFlags).then(async () => {
            // A moved directory's '..' is its new parent (the kernel sends no LOOKUP for it).
            const moved = await layer.lookup(newDir, to.name);
            if (moved?.kind === 'dir') parents.set(moved.ino, newDir);
            if (renameFlags.exchange) {
              const other = await layer.lookup(ino, from.name);
              if (other?.kind === 'dir') parents.set(other.ino, ino);
            }
            session.ok(unique);
          }));
          return;
        }
        case Op.LINK: {
          const target = inoOf(readU64(req, at));
          const { name } = nameAt(req, at + 8, len);
          void answer(session, unique, layer.link(target, ino, name).then((a) => sendEntry(session, unique, ino, a)));
          return;
        }
        case Op.OPEN: {
          const writable = (req.readUInt32LE(at) & ACCMODE) !== fsConstants.O_RDONLY;
          if (writable && layer.readOnly) return session.fail(unique, E.EROFS);
          void answer(session, unique, layer.getattr(ino).then(() => {
            layer.retain(ino);
            sendOpen(session, unique, handles.open(ino, writable), fileOpenFlags());
          }));
          return;
        }
        case Op.CREATE: {
          const mode = req.readUInt32LE(at + 4);
          const { name } = nameAt(req, at + 16, len);
          void answer(session, unique, (async () => {
            const attr = await layer.mknod(ino, name, await newNode(ino, S_IFREG | (mode & 0o7777), uid, gid));
            layer.retain(attr.ino);
            const fh = handles.open(attr.ino, true);
            const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + ENTRY_OUT_BYTES + OPEN_OUT_BYTES);
            writeEntry(out, OUT_HEADER_BYTES, nodeOf(attr.ino), attr, options.entryTimeoutS, options.attrTimeoutS, bs);
            writeOpenOut(out, OUT_HEADER_BYTES + ENTRY_OUT_BYTES, fh, fileOpenFlags());
            session.send(unique, out, out.length);
          })());
          return;
        }
        case Op.READ: {
          const offset = readU64(req, at + 8);
          const size = req.readUInt32LE(at + 16);
          const out = takeReadBuffer(size);
          // Alone in flight, a cold read may wait for the disk on this thread: nothing else
          // is waiting for it, and the pool thread hand-off costs ~50 µs on a small VM.
          const mayBlock = session.inFlight === 1;
          void answer(session, unique, layer.read(ino, out.subarray(OUT_HEADER_BYTES, OUT_HEADER_BYTES + size), offset, { mayBlock }).then((n) => {
            session.send(unique, out, OUT_HEADER_BYTES + n);
          })).finally(() => giveReadBuffer(out));
          return;
        }
        case Op.WRITE: {
          const offset = readU64(req, at + 8);
          const size = req.readUInt32LE(at + 16);
          const killSuidgid = (req.readUInt32LE(at + 20) & FUSE_WRITE_KILL_SUIDGID) !== 0;
          const data = req.subarray(at + 40, at + 40 + size);
          // The data stays in `req` until the store has it: return the promise (see KernelDispatcher).
          return answer(session, unique, (async () => {
            await dropCapability(ino);
            if (killSuidgid) await clearSetIds(ino, await layer.getattr(ino));
            const n = await layer.write(ino, data, offset);
            const out = Buffer.alloc(OUT_HEADER_BYTES + 8);
            out.writeUInt32LE(n, OUT_HEADER_BYTES);
            session.send(unique, out, out.length);
          })());
        }
        case Op.STATFS:
          void answer(session, unique, layer.statfs().then((s) => {
            const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + STATFS_OUT_BYTES);
            writeStatfs(out, OUT_HEADER_BYTES, s);
            session.send(unique, out, out.length);
          }));
          return;
        case Op.RELEASE: {
          const h = handles.close(readU64(req, at));
          void answer(session, unique, (h ? layer.release(h.ino) : Promise.resolve()).then(() => session.ok(unique)));
          return;
        }
        case Op.FLUSH:
          // close(2) is not a durability point (as on ext4); fsync and umount are. ENOSYS
          // tells the kernel not to send FLUSH again (one round trip less per close).
          return session.fail(unique, E.ENOSYS);
        case Op.FSYNC:
        case Op.FSYNCDIR:
        case Op.SYNCFS:
          void answer(session, unique, group.sync().then(() => session.ok(unique)));
          return;
        case Op.SETXATTR: {
          const size = req.readUInt32LE(at);
          const flags = req.readUInt32LE(at + 4);
          const { name, next } = readName(req, at + 8, len);
          if (POSIX_ACL_XATTRS.has(name)) return session.fail(unique, E.EOPNOTSUPP);
          const value = Buffer.from(req.subarray(next, next + size));
          const xflags = { create: (flags & XATTR_CREATE) !== 0, replace: (flags & XATTR_REPLACE) !== 0 };
          void answer(session, unique, layer.setxattr(ino, name, value, xflags).then(() => session.ok(unique)));
          return;
        }
        case Op.GETXATTR: {
          const size = req.readUInt32LE(at);
          const { name } = readName(req, at + 8, len);
          void answer(session, unique, layer.getxattr(ino, name).then((v) => {
            if (v === null) session.fail(unique, E.ENODATA);
            else sendSized(session, unique, v, size);
          }));
          return;
        }
        case Op.LISTXATTR: {
          const size = req.readUInt32LE(at);
          void answer(session, unique, layer.listxattr(ino).then((names) => {
            sendSized(session, unique, Buffer.from(names.map((n) => `${n}\0`).join('')), size);
          }));
          return;
        }
        case Op.REMOVEXATTR: {
          const { name } = readName(req, at, len);
          if (POSIX_ACL_XATTRS.has(name)) return session.fail(unique, layer.readOnly ? E.EROFS : 0);
          void answer(session, unique, layer.removexattr(ino, name).then(() => session.ok(unique)));
          return;
        }
        case Op.OPENDIR: {
          const fh = nextDirHandle;
          nextDirHandle = nextDirHandle >= 0x7ffffffe ? 1 : nextDirHandle + 1;
          dirHandles.set(fh, { ino, entries: null });
          return sendOpen(session, unique, fh, options.cacheDirs ? FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE : 0);
        }
        case Op.READDIR:
        case Op.READDIRPLUS: {
          const fh = readU64(req, at);
          const offset = readU64(req, at + 8);
          const size = req.readUInt32LE(at + 16);
          void answer(session, unique, readdir(session, unique, fh, offset, size, opcode === Op.READDIRPLUS));
          return;
        }
        case Op.RELEASEDIR:
          dirHandles.delete(readU64(req, at));
          return session.ok(unique);
        case Op.ACCESS: {
          const mask = req.readUInt32LE(at);
          void answer(session, unique, layer.getattr(ino).then((a) => {
            checkAccess(layer, a, mask, `inode ${ino}`);
            session.ok(unique);
          }));
          return;
        }
        default:
          return session.fail(unique, E.ENOSYS);
      }
    } catch (err) {
      session.fail(unique, errnoFor(err));
    }
  }

  return {
    dispatch,
    get openHandles() {
      return handles.size;
    },
    get syncCount() {
      return group.syncCount;
    },
    requestCounts() {
      const out: Record<string, number> = {};
      for (const [name, op] of Object.entries(Op)) if (counts[op]) out[name] = counts[op];
      return out;
    },
    async shutdown() {
      for (const [fh] of [...handles.entries()]) {
        const h = handles.close(fh);
        if (h) await layer.release(h.ino).catch(() => undefined);
      }
      dirHandles.clear();
      if (!layer.readOnly) await group.sync();
    },
  };
}
