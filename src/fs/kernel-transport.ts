/**
 * The kernel transport's codec: each request read from /dev/fuse (kernel-session.ts) is
 * parsed from its fuse.h layout, handed to the operations table (fuse-operations.ts), and
 * its reply encoded (kernel-protocol.ts). No FUSE semantics live here, only layouts,
 * INIT's flag negotiation and the reply buffers; FUSE over io_uring carries the same
 * layouts and can share this codec.
 *
 * Hot paths (READ, WRITE, GETATTR, LOOKUP) cost one table call and one reply buffer: the
 * request's reply address and caller are one object, READ replies of 128 KiB and more use
 * pooled buffers, and WRITE data stays in the request buffer until the store has it.
 *
 * Cache invalidation (`invalidate`): the edits another mount of the layer made (the
 * daemon's coherent mounts, store/shared-layer.ts) become FUSE notifications, written
 * here once for every operation: INVAL_INODE for data and attributes, INVAL_ENTRY for a
 * name, DELETE for a name whose inode is gone. Only nodes this connection's kernel knows
 * are notified: the codec counts the lookups its entry replies hand out and the FORGETs
 * that return them (the table keeps no counts). A connection taken over from another
 * process (adoptInit) has unknown counts, so every node is notified (the kernel answers
 * ENOENT for one it does not know, which costs a write and nothing else).
 */
import { constants as osConstants } from 'node:os';
import type { Attr, DirEntry } from '../store/layer-store';
import type { LayerEdit } from '../store/shared-layer';
import type { CallerContext, Entry, FuseFeatures, FuseOperations, OpenReply } from './fuse-operations';
import { MAX_WRITE_BYTES, type KernelDispatcher, type KernelSession } from './kernel-session';
import {
  ATTR_OUT_BYTES, ENTRY_OUT_BYTES, FOPEN_CACHE_DIR, FOPEN_KEEP_CACHE, FUSE_KERNEL_VERSION, FUSE_ROOT_ID, FUSE_MIN_KERNEL_MINOR,
  FUSE_SETXATTR_ACL_KILL_SGID, FUSE_WRITE_KILL_SUIDGID, INIT_OUT_BYTES, IN_HEADER_BYTES, InitFlag, OPEN_OUT_BYTES, OUT_HEADER_BYTES, Op,
  STATFS_OUT_BYTES, STATX_OUT_BYTES, SetattrValid, direntBytes, encodeNotifyDelete, encodeNotifyInvalEntry, encodeNotifyInvalInode,
  readName, readU64, writeAttrOut, writeDirent, writeEntry, writeI64, writeInitOut, writeOpenOut, writeStatfs, writeStatxOut, type Unique,
} from './kernel-protocol';

const E = osConstants.errno;
/** Read reply buffers kept for reuse (each up to 1 MiB + header). */
const POOLED_READ_BUFFERS = 8;
const PAGE_BYTES = 4096;
/** READs up to this size get a reply buffer of their own (see takeReadBuffer). */
const SMALL_READ_BYTES = 128 * 1024;
/** fuse_fsync_in.fsync_flags: fdatasync. */
const FSYNC_FDATASYNC = 1;

/** INIT flags dmfs always asks for; the table's features add theirs (featureFlags). */
const TRANSPORT_FLAGS = InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO |
  InitFlag.ASYNC_DIO | InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES;

/** POSIX ACLs come with the umask left to the table and setxattr's kill-setgid flag. */
const POSIX_ACL_FLAGS = InitFlag.POSIX_ACL | InitFlag.DONT_MASK | InitFlag.SETXATTR_EXT;

function featuresOf(flags: number): FuseFeatures {
  return {
    writebackCache: (flags & InitFlag.WRITEBACK_CACHE) !== 0,
    killPrivileges: (flags & InitFlag.HANDLE_KILLPRIV_V2) !== 0,
    cacheSymlinks: (flags & InitFlag.CACHE_SYMLINKS) !== 0,
    posixAcl: (flags & POSIX_ACL_FLAGS) === POSIX_ACL_FLAGS,
  };
}

function featureFlags(f: FuseFeatures): number {
  return (f.writebackCache ? InitFlag.WRITEBACK_CACHE : 0) | (f.killPrivileges ? InitFlag.HANDLE_KILLPRIV_V2 : 0) |
    (f.cacheSymlinks ? InitFlag.CACHE_SYMLINKS : 0) | (f.posixAcl ? POSIX_ACL_FLAGS : 0);
}

/**
 * Where replies go: what the codec uses of a KernelSession (a FUSE-over-io_uring queue
 * can offer the same, and tests a fake).
 */
export type ReplyChannel = Pick<KernelSession, 'send' | 'ok' | 'fail' | 'inFlight' | 'markInitialised'>;

/** Where notifications go (KernelSession.notify: written off the JS thread, never blocking it). */
export type NotifyChannel = Pick<KernelSession, 'notify'>;

/** One request's reply address (the session's Unique) and its caller, in one object. */
interface Request extends Unique, CallerContext {}

function readRequest(req: Buffer): Request {
  return { lo: req.readUInt32LE(8), hi: req.readUInt32LE(12), uid: req.readUInt32LE(24), gid: req.readUInt32LE(28), pid: req.readUInt32LE(32), umask: 0 };
}

export interface KernelTransportOptions {
  /** Trouble that is no request's fault (a kernel too old), before it is answered. */
  onUnexpected?: (err: unknown) => void;
}

export interface KernelTransport extends KernelDispatcher {
  dispatch(req: Buffer, len: number, session: ReplyChannel): Promise<void> | void;
  /** Requests received so far, by opcode name (for profiles and tests). */
  requestCounts(): Record<string, number>;
  /** The INIT flags agreed with the kernel (null before INIT): what a later process needs to adopt the connection. */
  negotiatedFlags(): number | null;
  /**
   * Takes over a connection whose INIT another process answered with `flags` (a restarted
   * daemon worker): the table gets the features agreed then, and no INIT is expected.
   */
  adoptInit(flags: number): void;
  /**
   * Invalidates what this connection's kernel caches of `edits`, changes another mount of
   * the layer made. Queued, and handed to the channel (notifyTo) on a later turn of the
   * event loop: after the reply of the changing request, never from inside a handler.
   * Before notifyTo (the connection is not serving yet) there is nothing to invalidate.
   */
  invalidate(edits: readonly LayerEdit[]): void;
  /** The session notifications are written to (once it exists). */
  notifyTo(channel: NotifyChannel): void;
  /** Whether this connection's kernel may hold node `nodeId` (see the lookup counts above). */
  knowsNode(nodeId: number): boolean;
}

/** One kernel cache invalidation, before encoding: see invalidationsOf. */
export type Invalidation =
  | { kind: 'inode'; nodeId: number; offsetBytes: number; lengthBytes: number }
  | { kind: 'entry'; parent: number; name: string }
  | { kind: 'delete'; parent: number; child: number; name: string };

/**
 * The notifications that invalidate what a kernel caches of `edits`, merged (one INVAL_INODE
 * per node, covering every range asked; offsetBytes -1: attributes only; lengthBytes 0: to
 * the end), for the nodes `known` says the kernel may hold. A name's directory also loses
 * its attributes and listing through INVAL_INODE: INVAL_ENTRY drops them only where the
 * kernel had a dentry of that name, and a listing can hold a name it never looked up.
 */
export function invalidationsOf(edits: readonly LayerEdit[], nodeIdOf: (ino: number) => number, known: (nodeId: number) => boolean): Invalidation[] {
  const ranges = new Map<number, { offsetBytes: number; endBytes: number }>();
  const names: Invalidation[] = [];
  const seenNames = new Set<string>();
  const inode = (nodeId: number, offsetBytes: number, lengthBytes: number): void => {
    if (!known(nodeId)) return;
    const end = offsetBytes < 0 ? -1 : lengthBytes > 0 ? offsetBytes + lengthBytes : Infinity;
    const had = ranges.get(nodeId);
    if (!had || had.offsetBytes < 0) ranges.set(nodeId, { offsetBytes, endBytes: end });
    else if (offsetBytes >= 0) ranges.set(nodeId, { offsetBytes: Math.min(had.offsetBytes, offsetBytes), endBytes: Math.max(had.endBytes, end) });
  };
  const name = (parent: number, n: string, child: number | null): void => {
    inode(parent, 0, 0);
    const key = `${parent}/${n}`;
    if (!known(parent) || seenNames.has(key)) return;
    seenNames.add(key);
    names.push(child === null ? { kind: 'entry', parent, name: n } : { kind: 'delete', parent, child, name: n });
  };
  for (const e of edits) {
    switch (e.kind) {
      case 'data': inode(nodeIdOf(e.ino), e.offsetBytes, e.lengthBytes); break;
      case 'attr': inode(nodeIdOf(e.ino), -1, 0); break;
      case 'name': name(nodeIdOf(e.dirIno), e.name, null); break;
      case 'deleted': name(nodeIdOf(e.dirIno), e.name, nodeIdOf(e.ino)); break;
    }
  }
  const out = names;
  for (const [nodeId, r] of ranges) {
    out.push({ kind: 'inode', nodeId, offsetBytes: r.offsetBytes, lengthBytes: r.offsetBytes < 0 || r.endBytes === Infinity ? 0 : r.endBytes - r.offsetBytes });
  }
  return out;
}

/** The notification message of one invalidation (kernel-protocol.ts has the layouts). */
export function encodeInvalidation(i: Invalidation): Buffer {
  switch (i.kind) {
    case 'inode': return encodeNotifyInvalInode(i.nodeId, i.offsetBytes, i.lengthBytes);
    case 'entry': return encodeNotifyInvalEntry(i.parent, i.name);
    case 'delete': return encodeNotifyDelete(i.parent, i.child, i.name);
  }
}

export function createKernelTransport(ops: FuseOperations, options: KernelTransportOptions = {}): KernelTransport {
  const onUnexpected = options.onUnexpected ?? (() => undefined);
  const bs = ops.blockSizeBytes;
  const readBuffers: Buffer[] = [];
  const counts = new Uint32Array(64);
  let agreed: number | null = null;
  /** Lookups of each node the kernel holds (entry replies minus FORGETs); the root is always held. */
  const lookups = new Map<number, number>();
  /** False for a connection taken over: its kernel may hold nodes this process never counted. */
  let lookupsComplete = true;
  let notifyChannel: NotifyChannel | null = null;
  let pendingEdits: LayerEdit[] = [];
  let flushScheduled = false;

  function counted(e: Entry): void {
    if (e.nodeId !== 0) lookups.set(e.nodeId, (lookups.get(e.nodeId) ?? 0) + 1);
  }

  function forget(nodeId: number, nlookup: number): void {
    const left = (lookups.get(nodeId) ?? 0) - nlookup;
    if (left > 0) lookups.set(nodeId, left);
    else lookups.delete(nodeId);
    ops.forget(nodeId, nlookup);
  }

  function knowsNode(nodeId: number): boolean {
    return nodeId === FUSE_ROOT_ID || !lookupsComplete || lookups.has(nodeId);
  }

  function flushEdits(): void {
    flushScheduled = false;
    if (!notifyChannel || !pendingEdits.length) return;
    const edits = pendingEdits;
    pendingEdits = [];
    for (const i of invalidationsOf(edits, ops.nodeIdOf, knowsNode)) notifyChannel.notify(encodeInvalidation(i));
  }

  function sendEntry(session: ReplyChannel, r: Request, e: Entry): void {
    counted(e);
    const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + ENTRY_OUT_BYTES);
    writeEntry(out, OUT_HEADER_BYTES, e.nodeId, e.attr, e.entryTimeoutS, e.attrTimeoutS, bs);
    session.send(r, out, out.length);
  }

  function sendAttr(session: ReplyChannel, r: Request, attr: Attr): void {
    const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + ATTR_OUT_BYTES);
    writeAttrOut(out, OUT_HEADER_BYTES, attr, ops.cache.attrTimeoutS, bs);
    session.send(r, out, out.length);
  }

  function openFlags(o: OpenReply): number {
    return (o.keepCache ? FOPEN_KEEP_CACHE : 0) | (o.cacheDir ? FOPEN_CACHE_DIR : 0);
  }

  function sendStatx(session: ReplyChannel, r: Request, attr: Attr): void {
    const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + STATX_OUT_BYTES);
    writeStatxOut(out, OUT_HEADER_BYTES, attr, ops.cache.attrTimeoutS, bs);
    session.send(r, out, out.length);
  }

  function sendCreated(session: ReplyChannel, r: Request, c: { entry: Entry; open: OpenReply }): void {
    counted(c.entry);
    const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + ENTRY_OUT_BYTES + OPEN_OUT_BYTES);
    writeEntry(out, OUT_HEADER_BYTES, c.entry.nodeId, c.entry.attr, c.entry.entryTimeoutS, c.entry.attrTimeoutS, bs);
    writeOpenOut(out, OUT_HEADER_BYTES + ENTRY_OUT_BYTES, c.open.fh, openFlags(c.open));
    session.send(r, out, out.length);
  }

  function sendOpen(session: ReplyChannel, r: Request, o: OpenReply): void {
    const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + OPEN_OUT_BYTES);
    writeOpenOut(out, OUT_HEADER_BYTES, o.fh, openFlags(o));
    session.send(r, out, out.length);
  }

  function sendBytes(session: ReplyChannel, r: Request, data: Buffer): void {
    const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + data.length);
    data.copy(out, OUT_HEADER_BYTES);
    session.send(r, out, out.length);
  }

  /** getxattr/listxattr's reply: size 0 asks for the length; a too small buffer is ERANGE. */
  function sendSized(session: ReplyChannel, r: Request, data: Buffer, size: number): void {
    if (size === 0) {
      const out = Buffer.alloc(OUT_HEADER_BYTES + 8);
      out.writeUInt32LE(data.length, OUT_HEADER_BYTES);
      session.send(r, out, out.length);
    } else if (data.length > size) {
      session.fail(r, E.ERANGE);
    } else {
      sendBytes(session, r, data);
    }
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

  function init(session: ReplyChannel, r: Request, req: Buffer): void {
    const major = req.readUInt32LE(IN_HEADER_BYTES);
    const minor = req.readUInt32LE(IN_HEADER_BYTES + 4);
    const maxReadahead = req.readUInt32LE(IN_HEADER_BYTES + 8);
    const offered = req.readUInt32LE(IN_HEADER_BYTES + 12);
    if (major !== FUSE_KERNEL_VERSION || minor < FUSE_MIN_KERNEL_MINOR) {
      onUnexpected(new Error(`kernel FUSE protocol ${major}.${minor} is older than 7.${FUSE_MIN_KERNEL_MINOR}`));
      session.fail(r, E.EPROTO);
      session.markInitialised();
      return;
    }
    const wanted = TRANSPORT_FLAGS | featureFlags(ops.init(featuresOf(offered)));
    agreed = (offered & wanted) >>> 0;
    const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + INIT_OUT_BYTES);
    writeInitOut(out, OUT_HEADER_BYTES, {
      flags: agreed,
      maxReadaheadBytes: maxReadahead,
      maxBackground: 64,
      congestionThreshold: 48,
      maxWriteBytes: MAX_WRITE_BYTES,
      maxPages: MAX_WRITE_BYTES / PAGE_BYTES,
    });
    session.send(r, out, out.length);
    session.markInitialised();
  }

  function readdir(session: ReplyChannel, r: Request, node: number, req: Buffer, plus: boolean): void {
    const at = IN_HEADER_BYTES;
    const fh = readU64(req, at);
    const offset = readU64(req, at + 8);
    const size = req.readUInt32LE(at + 16);
    // Which entries fit, from the name lengths alone (the table then fetches plus's attributes).
    const nameBytes: number[] = [];
    let used = 0;
    const fits = (e: DirEntry): boolean => {
      const n = Buffer.byteLength(e.name);
      const need = direntBytes(n, plus);
      if (used + need > size) return false;
      used += need;
      nameBytes.push(n);
      return true;
    };
    ops.readdir(r, node, fh, offset, plus, fits).then((page) => {
      const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + used);
      let p = OUT_HEADER_BYTES;
      for (let k = 0; k < page.entries.length; k++) {
        if (page.plus) {
          // '.', '..' and entries gone meanwhile carry no entry (node id 0: no lookup counted).
          const e = page.plus[k];
          if (e) {
            counted(e);
            writeEntry(out, p, e.nodeId, e.attr, e.entryTimeoutS, e.attrTimeoutS, bs);
          } else out.fill(0, p, p + ENTRY_OUT_BYTES);
          // writeDirent aligns (24 + name) alone; the whole record is aligned the same way
          // because ENTRY_OUT_BYTES is a multiple of 8.
          p += ENTRY_OUT_BYTES;
        }
        p += writeDirent(out, p, page.entries[k], nameBytes[k], offset + k + 1);
      }
      session.send(r, out, p);
    }, failTo(session, r));
  }

  // Reply callbacks, made only where a request is answered later (one closure each).
  const failTo = (session: ReplyChannel, r: Request) => (err: unknown): void => session.fail(r, ops.errno(err));
  const okTo = (session: ReplyChannel, r: Request) => (): void => session.ok(r);
  const entryTo = (session: ReplyChannel, r: Request) => (e: Entry): void => sendEntry(session, r, e);

  function dispatch(req: Buffer, len: number, session: ReplyChannel): Promise<void> | void {
    const opcode = req.readUInt32LE(4);
    counts[opcode & 63]++;
    const r = readRequest(req);
    const node = readU64(req, 16);
    const at = IN_HEADER_BYTES;
    try {
      switch (opcode) {
        case Op.INIT:
          return init(session, r, req);
        case Op.FORGET:
          return forget(node, readU64(req, at));
        case Op.BATCH_FORGET: {
          const n = req.readUInt32LE(at);
          for (let i = 0, p = at + 8; i < n && p + 16 <= len; i++, p += 16) forget(readU64(req, p), readU64(req, p + 8));
          return;
        }
        case Op.INTERRUPT:
          return; // no reply
        case Op.DESTROY:
          return session.ok(r);
        case Op.LOOKUP:
          void ops.lookup(r, node, readName(req, at, len).name).then((e) => sendEntry(session, r, e), failTo(session, r));
          return;
        case Op.GETATTR:
          void ops.getattr(r, node).then((a) => sendAttr(session, r, a), failTo(session, r));
          return;
        case Op.SETATTR: {
          const valid = req.readUInt32LE(at);
          const time = (secAt: number, nsecAt: number): bigint => req.readBigInt64LE(secAt) * 1_000_000_000n + BigInt(req.readUInt32LE(nsecAt));
          const changes = {
            mode: valid & SetattrValid.MODE ? req.readUInt32LE(at + 68) : undefined,
            uid: valid & SetattrValid.UID ? req.readUInt32LE(at + 76) : undefined,
            gid: valid & SetattrValid.GID ? req.readUInt32LE(at + 80) : undefined,
            sizeBytes: valid & SetattrValid.SIZE ? readU64(req, at + 16) : undefined,
            atime: valid & SetattrValid.ATIME ? (valid & SetattrValid.ATIME_NOW ? 'now' as const : time(at + 32, at + 56)) : undefined,
            mtime: valid & SetattrValid.MTIME ? (valid & SetattrValid.MTIME_NOW ? 'now' as const : time(at + 40, at + 60)) : undefined,
            ctimeNs: valid & SetattrValid.CTIME ? time(at + 48, at + 64) : undefined,
          };
          // Under HANDLE_KILLPRIV_V2 the kernel strips the mode change a chown implies and
          // flags it instead; chown(f, -1, -1) then arrives with no field at all (nothing
          // else sends an empty SETATTR).
          const kill = (valid & SetattrValid.KILL_SUIDGID) !== 0 || valid === 0;
          void ops.setattr(r, node, changes, kill).then((a) => sendAttr(session, r, a), failTo(session, r));
          return;
        }
        case Op.READLINK:
          void ops.readlink(r, node).then((t) => sendBytes(session, r, Buffer.from(t)), failTo(session, r));
          return;
        case Op.SYMLINK: {
          const { name, next } = readName(req, at, len);
          void ops.symlink(r, node, name, readName(req, next, len).name).then(entryTo(session, r), failTo(session, r));
          return;
        }
        case Op.MKNOD: {
          r.umask = req.readUInt32LE(at + 8);
          const name = readName(req, at + 16, len).name;
          void ops.mknod(r, node, name, req.readUInt32LE(at), req.readUInt32LE(at + 4)).then(entryTo(session, r), failTo(session, r));
          return;
        }
        case Op.MKDIR:
          r.umask = req.readUInt32LE(at + 4);
          void ops.mkdir(r, node, readName(req, at + 8, len).name, req.readUInt32LE(at)).then(entryTo(session, r), failTo(session, r));
          return;
        case Op.UNLINK:
          void ops.unlink(r, node, readName(req, at, len).name).then(okTo(session, r), failTo(session, r));
          return;
        case Op.RMDIR:
          void ops.rmdir(r, node, readName(req, at, len).name).then(okTo(session, r), failTo(session, r));
          return;
        case Op.RENAME:
        case Op.RENAME2: {
          const rename2 = opcode === Op.RENAME2;
          const from = readName(req, at + (rename2 ? 16 : 8), len);
          const to = readName(req, from.next, len).name;
          void ops.rename(r, node, from.name, readU64(req, at), to, rename2 ? req.readUInt32LE(at + 8) : 0).then(okTo(session, r), failTo(session, r));
          return;
        }
        case Op.LINK:
          void ops.link(r, readU64(req, at), node, readName(req, at + 8, len).name).then(entryTo(session, r), failTo(session, r));
          return;
        case Op.OPEN:
          void ops.open(r, node, req.readUInt32LE(at)).then((o) => sendOpen(session, r, o), failTo(session, r));
          return;
        case Op.CREATE: {
          const flags = req.readUInt32LE(at);
          const mode = req.readUInt32LE(at + 4);
          r.umask = req.readUInt32LE(at + 8);
          void ops.create(r, node, readName(req, at + 16, len).name, mode, flags).then((c) => sendCreated(session, r, c), failTo(session, r));
          return;
        }
        case Op.TMPFILE: {
          // fuse_create_in, then a name the kernel makes up (the new file has none).
          const flags = req.readUInt32LE(at);
          const mode = req.readUInt32LE(at + 4);
          r.umask = req.readUInt32LE(at + 8);
          void ops.tmpfile(r, node, mode, flags).then((c) => sendCreated(session, r, c), failTo(session, r));
          return;
        }
        case Op.STATX:
          // fuse_statx_in (flags, fh, sx_flags, sx_mask) asks for nothing dmfs would answer differently.
          void ops.getattr(r, node).then((a) => sendStatx(session, r, a), failTo(session, r));
          return;
        case Op.READ: {
          const size = req.readUInt32LE(at + 16);
          const out = takeReadBuffer(size);
          // Alone in flight, a cold read may wait for the disk on this thread: nothing else
          // is waiting for it, and the pool thread hand-off costs ~50 µs on a small VM.
          const mayBlock = session.inFlight === 1;
          void ops.read(r, node, readU64(req, at), out.subarray(OUT_HEADER_BYTES, OUT_HEADER_BYTES + size), readU64(req, at + 8), { mayBlock })
            .then((n) => session.send(r, out, OUT_HEADER_BYTES + n), failTo(session, r))
            .finally(() => giveReadBuffer(out));
          return;
        }
        case Op.WRITE: {
          const size = req.readUInt32LE(at + 16);
          const kill = (req.readUInt32LE(at + 20) & FUSE_WRITE_KILL_SUIDGID) !== 0;
          const data = req.subarray(at + 40, at + 40 + size);
          // The data stays in `req` until the store has it: return the promise (see KernelDispatcher).
          return ops.write(r, node, readU64(req, at), data, readU64(req, at + 8), kill).then((n) => {
            const out = Buffer.alloc(OUT_HEADER_BYTES + 8);
            out.writeUInt32LE(n, OUT_HEADER_BYTES);
            session.send(r, out, out.length);
          }, failTo(session, r));
        }
        case Op.FALLOCATE:
          void ops.fallocate(r, node, readU64(req, at), readU64(req, at + 8), readU64(req, at + 16), req.readUInt32LE(at + 24)).then(okTo(session, r), failTo(session, r));
          return;
        case Op.LSEEK:
          void ops.lseek(r, node, readU64(req, at), readU64(req, at + 8), req.readUInt32LE(at + 16)).then((offset) => {
            const out = Buffer.alloc(OUT_HEADER_BYTES + 8);
            writeI64(out, OUT_HEADER_BYTES, offset);
            session.send(r, out, out.length);
          }, failTo(session, r));
          return;
        case Op.COPY_FILE_RANGE:
        case Op.COPY_FILE_RANGE_64: {
          // fuse_copy_file_range_in: fh_in, off_in, nodeid_out, fh_out, off_out, len, flags (u64 each);
          // the reply is fuse_write_out (u32 size, u32 padding) or, for the _64 opcode, a u64
          // bytes_copied: one little-endian u64 serves both. The u32 form copies at most 2 GiB a
          // call (block-aligned, so the next call still shares blocks).
          const wide = opcode === Op.COPY_FILE_RANGE_64;
          const length = wide ? readU64(req, at + 40) : Math.min(readU64(req, at + 40), 2 ** 31);
          void ops.copyFileRange(r, node, readU64(req, at), readU64(req, at + 8), readU64(req, at + 16), readU64(req, at + 24), readU64(req, at + 32), length, readU64(req, at + 48))
            .then((n) => {
              const out = Buffer.alloc(OUT_HEADER_BYTES + 8);
              writeI64(out, OUT_HEADER_BYTES, n);
              session.send(r, out, out.length);
            }, failTo(session, r));
          return;
        }
        case Op.STATFS:
          void ops.statfs(r, node).then((s) => {
            const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + STATFS_OUT_BYTES);
            writeStatfs(out, OUT_HEADER_BYTES, s);
            session.send(r, out, out.length);
          }, failTo(session, r));
          return;
        case Op.RELEASE:
          void ops.release(r, node, readU64(req, at)).then(okTo(session, r), failTo(session, r));
          return;
        case Op.FLUSH:
          return ops.flush(r, node, readU64(req, at));
        case Op.FSYNC:
          void ops.fsync(r, node, readU64(req, at), (req.readUInt32LE(at + 8) & FSYNC_FDATASYNC) !== 0).then(okTo(session, r), failTo(session, r));
          return;
        case Op.FSYNCDIR:
          void ops.fsyncdir(r, node, readU64(req, at), (req.readUInt32LE(at + 8) & FSYNC_FDATASYNC) !== 0).then(okTo(session, r), failTo(session, r));
          return;
        case Op.SYNCFS:
          void ops.syncfs(r).then(okTo(session, r), failTo(session, r));
          return;
        case Op.SETXATTR: {
          const size = req.readUInt32LE(at);
          const flags = req.readUInt32LE(at + 4);
          // fuse_setxattr_in is 16 bytes (with setxattr_flags) once SETXATTR_EXT is agreed, else 8.
          const ext = agreed !== null && (agreed & InitFlag.SETXATTR_EXT) !== 0;
          const setxattrInBytes = ext ? 16 : 8;
          const killSgid = ext && (req.readUInt32LE(at + 8) & FUSE_SETXATTR_ACL_KILL_SGID) !== 0;
          const { name, next } = readName(req, at + setxattrInBytes, len);
          void ops.setxattr(r, node, name, req.subarray(next, next + size), flags, killSgid).then(okTo(session, r), failTo(session, r));
          return;
        }
        case Op.GETXATTR: {
          const size = req.readUInt32LE(at);
          void ops.getxattr(r, node, readName(req, at + 8, len).name).then((v) => {
            if (v === null) session.fail(r, E.ENODATA);
            else sendSized(session, r, v, size);
          }, failTo(session, r));
          return;
        }
        case Op.LISTXATTR: {
          const size = req.readUInt32LE(at);
          void ops.listxattr(r, node).then((names) => sendSized(session, r, Buffer.from(names.map((n) => `${n}\0`).join('')), size), failTo(session, r));
          return;
        }
        case Op.REMOVEXATTR:
          void ops.removexattr(r, node, readName(req, at, len).name).then(okTo(session, r), failTo(session, r));
          return;
        case Op.OPENDIR:
          return sendOpen(session, r, ops.opendir(r, node, req.readUInt32LE(at)));
        case Op.READDIR:
        case Op.READDIRPLUS:
          return readdir(session, r, node, req, opcode === Op.READDIRPLUS);
        case Op.RELEASEDIR:
          ops.releasedir(r, node, readU64(req, at));
          return session.ok(r);
        case Op.ACCESS:
          void ops.access(r, node, req.readUInt32LE(at)).then(okTo(session, r), failTo(session, r));
          return;
        default:
          return session.fail(r, E.ENOSYS);
      }
    } catch (err) {
      session.fail(r, ops.errno(err));
    }
  }

  return {
    dispatch,
    negotiatedFlags: () => agreed,
    adoptInit(flags) {
      ops.init(featuresOf(flags));
      agreed = flags >>> 0;
      lookupsComplete = false;
    },
    invalidate(edits) {
      // No channel yet: the kernel has answered no request of this connection, so holds nothing to drop.
      if (!notifyChannel) return;
      for (const e of edits) pendingEdits.push(e);
      if (flushScheduled) return;
      flushScheduled = true;
      // The next turn of the loop: the changing request's reply is out by then (it is sent
      // from the promise chain the change settled in), and no handler is on the stack.
      setImmediate(flushEdits);
    },
    notifyTo(channel) {
      notifyChannel = channel;
    },
    knowsNode,
    requestCounts() {
      const out: Record<string, number> = {};
      for (const [name, op] of Object.entries(Op)) if (counts[op]) out[name] = counts[op];
      return out;
    },
  };
}
