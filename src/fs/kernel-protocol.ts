/**
 * The FUSE kernel protocol (linux/fuse.h, protocol 7.31 as negotiated in INIT): opcodes,
 * flags and the little-endian layouts dmfs reads and writes on /dev/fuse. Pure functions
 * over Buffers; no I/O (that is kernel-session.ts).
 *
 * Layout sizes used here: fuse_in_header 40, fuse_out_header 16, fuse_attr 88,
 * fuse_entry_out 128, fuse_attr_out 104, fuse_open_out 16, fuse_init_out 64,
 * fuse_kstatfs 80, fuse_dirent 24 + name (8-aligned), fuse_direntplus 152 + name,
 * fuse_fallocate_in 32 (fh, offset, length: u64; mode, padding: u32), fuse_lseek_in 24
 * (fh, offset: u64; whence, padding: u32), fuse_lseek_out 8 (offset: u64).
 * fuse_statx_out 288 (FUSE_STATX, 7.39; the kernel sends it whatever minor the INIT
 * reply names, and FUSE_TMPFILE (7.37) too, so dmfs answers both without a newer minor).
 */
import type { Attr, DirEntry, FileKind, StatFs } from '../store/layer-store';
import { typeBitsOf } from './fuse-adapter';

export const FUSE_KERNEL_VERSION = 7;
/** The minor version dmfs speaks; request layouts below are those of 7.31. */
export const FUSE_KERNEL_MINOR_VERSION = 31;
/** Oldest kernel minor whose request layouts match the ones parsed here. */
export const FUSE_MIN_KERNEL_MINOR = 27;
export const FUSE_ROOT_ID = 1;

export const IN_HEADER_BYTES = 40;
export const OUT_HEADER_BYTES = 16;
export const ATTR_BYTES = 88;
export const ENTRY_OUT_BYTES = 40 + ATTR_BYTES;
export const ATTR_OUT_BYTES = 16 + ATTR_BYTES;
export const OPEN_OUT_BYTES = 16;
export const INIT_OUT_BYTES = 64;
export const STATFS_OUT_BYTES = 80;
/** fuse_statx_out (7.39): attr_valid, attr_valid_nsec, flags, spare[2], then fuse_statx (256). */
export const STATX_OUT_BYTES = 32 + 256;
const DIRENT_HEADER_BYTES = 24;

export const Op = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, SETATTR: 4, READLINK: 5, SYMLINK: 6, MKNOD: 8, MKDIR: 9,
  UNLINK: 10, RMDIR: 11, RENAME: 12, LINK: 13, OPEN: 14, READ: 15, WRITE: 16, STATFS: 17,
  RELEASE: 18, FSYNC: 20, SETXATTR: 21, GETXATTR: 22, LISTXATTR: 23, REMOVEXATTR: 24,
  FLUSH: 25, INIT: 26, OPENDIR: 27, READDIR: 28, RELEASEDIR: 29, FSYNCDIR: 30, ACCESS: 34,
  CREATE: 35, INTERRUPT: 36, DESTROY: 38, BATCH_FORGET: 42, FALLOCATE: 43, READDIRPLUS: 44, RENAME2: 45,
  LSEEK: 46, COPY_FILE_RANGE: 47, SYNCFS: 50, TMPFILE: 51, STATX: 52, COPY_FILE_RANGE_64: 53,
} as const;

/** INIT flags (fuse_init_in/out.flags). */
export const InitFlag = {
  ASYNC_READ: 1 << 0,
  BIG_WRITES: 1 << 5,
  DONT_MASK: 1 << 6,
  DO_READDIRPLUS: 1 << 13,
  READDIRPLUS_AUTO: 1 << 14,
  ASYNC_DIO: 1 << 15,
  WRITEBACK_CACHE: 1 << 16,
  PARALLEL_DIROPS: 1 << 18,
  POSIX_ACL: 1 << 20,
  MAX_PAGES: 1 << 22,
  CACHE_SYMLINKS: 1 << 23,
  HANDLE_KILLPRIV_V2: 1 << 28,
  SETXATTR_EXT: 1 << 29,
} as const;

/** fuse_setxattr_in.setxattr_flags (with SETXATTR_EXT): clear setgid on an access ACL change. */
export const FUSE_SETXATTR_ACL_KILL_SGID = 1 << 0;

/** fuse_write_in.write_flags: clear setuid (and setgid when group-executable). */
export const FUSE_WRITE_KILL_SUIDGID = 1 << 2;

/** fuse_setattr_in.valid bits. */
export const SetattrValid = {
  MODE: 1 << 0, UID: 1 << 1, GID: 1 << 2, SIZE: 1 << 3, ATIME: 1 << 4, MTIME: 1 << 5,
  ATIME_NOW: 1 << 7, MTIME_NOW: 1 << 8, CTIME: 1 << 10, KILL_SUIDGID: 1 << 11,
} as const;

/** fuse_open_out.open_flags. */
export const FOPEN_KEEP_CACHE = 1 << 1;
export const FOPEN_CACHE_DIR = 1 << 3;

/** renameat2 flags, which FUSE_RENAME2 carries as they are (the table reads them). */
export { RENAME_EXCHANGE, RENAME_NOREPLACE } from './fuse-operations';

const TWO32 = 4294967296;

/** A uint64 field as a JS number (node ids and offsets stay below 2^53). */
export function readU64(buf: Buffer, at: number): number {
  return buf.readUInt32LE(at) + buf.readUInt32LE(at + 4) * TWO32;
}

/** A safe integer (possibly negative) as a little-endian int64. */
export function writeI64(buf: Buffer, at: number, value: number): void {
  const high = Math.floor(value / TWO32);
  buf.writeUInt32LE(value - high * TWO32, at);
  buf.writeUInt32LE(high >>> 0, at + 4);
}

/** The NUL-terminated name at `at`; returns it and the offset after the NUL. */
export function readName(buf: Buffer, at: number, end: number): { name: string; next: number } {
  let nul = buf.indexOf(0, at);
  if (nul < 0 || nul > end) nul = end;
  return { name: buf.toString('utf8', at, nul), next: nul + 1 };
}

export interface RequestHeader {
  len: number;
  opcode: number;
  nodeid: number;
  uid: number;
  gid: number;
  pid: number;
}

export function readHeader(buf: Buffer): RequestHeader {
  return {
    len: buf.readUInt32LE(0),
    opcode: buf.readUInt32LE(4),
    nodeid: readU64(buf, 16),
    uid: buf.readUInt32LE(24),
    gid: buf.readUInt32LE(28),
    pid: buf.readUInt32LE(32),
  };
}

/** The request's unique id as two uint32 halves (no BigInt on the hot path). */
export interface Unique {
  lo: number;
  hi: number;
}

export function readUnique(buf: Buffer): Unique {
  return { lo: buf.readUInt32LE(8), hi: buf.readUInt32LE(12) };
}

/** Fills the reply header: total length, -errno (0 for success), and the request's unique id. */
export function writeOutHeader(reply: Buffer, totalBytes: number, error: number, unique: Unique): void {
  reply.writeUInt32LE(totalBytes, 0);
  reply.writeInt32LE(error, 4);
  reply.writeUInt32LE(unique.lo, 8);
  reply.writeUInt32LE(unique.hi, 12);
}

const NS_PER_S = 1_000_000_000n;

function writeTime(buf: Buffer, secAt: number, nsecAt: number, ns: bigint): void {
  let sec = ns / NS_PER_S;
  let nsec = ns % NS_PER_S;
  if (nsec < 0n) {
    nsec += NS_PER_S;
    sec -= 1n;
  }
  writeI64(buf, secAt, Number(sec));
  buf.writeUInt32LE(Number(nsec), nsecAt);
}

/** struct fuse_attr at `at`. rdev is the kernel's 32-bit new_encode_dev form. */
export function writeAttr(buf: Buffer, at: number, a: Attr, blockSizeBytes: number): void {
  writeI64(buf, at, a.ino);
  writeI64(buf, at + 8, a.sizeBytes);
  writeI64(buf, at + 16, a.blocks512);
  writeTime(buf, at + 24, at + 48, a.atimeNs);
  writeTime(buf, at + 32, at + 52, a.mtimeNs);
  writeTime(buf, at + 40, at + 56, a.ctimeNs);
  buf.writeUInt32LE(a.mode >>> 0, at + 60);
  buf.writeUInt32LE(a.nlink >>> 0, at + 64);
  buf.writeUInt32LE(a.uid >>> 0, at + 68);
  buf.writeUInt32LE(a.gid >>> 0, at + 72);
  buf.writeUInt32LE(a.rdev % TWO32, at + 76);
  buf.writeUInt32LE(blockSizeBytes, at + 80);
  buf.writeUInt32LE(0, at + 84);
}

/** Cache lifetime split into the (seconds, nanoseconds) pair FUSE wants. */
function validity(seconds: number): { sec: number; nsec: number } {
  const totalNs = Math.round(seconds * 1e9);
  const sec = Math.floor(totalNs / 1e9);
  return { sec, nsec: totalNs - sec * 1e9 };
}

/**
 * struct fuse_entry_out at `at`. nodeid 0 with no attr is a negative entry (the name is
 * known absent for entryTimeoutS).
 */
export function writeEntry(buf: Buffer, at: number, nodeid: number, a: Attr | null, entryTimeoutS: number, attrTimeoutS: number, blockSizeBytes: number): void {
  const e = validity(entryTimeoutS);
  const t = validity(attrTimeoutS);
  writeI64(buf, at, nodeid);
  writeI64(buf, at + 8, 0); // generation: inode numbers are never reused in a pool
  writeI64(buf, at + 16, e.sec);
  writeI64(buf, at + 24, t.sec);
  buf.writeUInt32LE(e.nsec, at + 32);
  buf.writeUInt32LE(t.nsec, at + 36);
  if (a) writeAttr(buf, at + 40, a, blockSizeBytes);
  else buf.fill(0, at + 40, at + 40 + ATTR_BYTES);
}

/** struct fuse_attr_out at `at`. */
export function writeAttrOut(buf: Buffer, at: number, a: Attr, attrTimeoutS: number, blockSizeBytes: number): void {
  const t = validity(attrTimeoutS);
  writeI64(buf, at, t.sec);
  buf.writeUInt32LE(t.nsec, at + 8);
  buf.writeUInt32LE(0, at + 12);
  writeAttr(buf, at + 16, a, blockSizeBytes);
}

export function writeOpenOut(buf: Buffer, at: number, fh: number, openFlags: number): void {
  writeI64(buf, at, fh);
  buf.writeUInt32LE(openFlags, at + 8);
  buf.writeUInt32LE(0, at + 12);
}

/** struct fuse_kstatfs at `at`: f_bsize = f_frsize = the pool block size. */
export function writeStatfs(buf: Buffer, at: number, s: StatFs): void {
  buf.fill(0, at, at + STATFS_OUT_BYTES);
  writeI64(buf, at, s.totalBlocks);
  writeI64(buf, at + 8, s.freeBlocks);
  writeI64(buf, at + 16, s.availBlocks);
  writeI64(buf, at + 24, s.totalInodes);
  writeI64(buf, at + 32, s.freeInodes);
  buf.writeUInt32LE(s.blockSizeBytes, at + 40);
  buf.writeUInt32LE(s.nameMaxBytes, at + 44);
  buf.writeUInt32LE(s.blockSizeBytes, at + 48);
}

export interface InitReply {
  flags: number;
  maxReadaheadBytes: number;
  maxBackground: number;
  congestionThreshold: number;
  maxWriteBytes: number;
  maxPages: number;
}

export function writeInitOut(buf: Buffer, at: number, r: InitReply): void {
  buf.fill(0, at, at + INIT_OUT_BYTES);
  buf.writeUInt32LE(FUSE_KERNEL_VERSION, at);
  buf.writeUInt32LE(FUSE_KERNEL_MINOR_VERSION, at + 4);
  buf.writeUInt32LE(r.maxReadaheadBytes, at + 8);
  buf.writeUInt32LE(r.flags >>> 0, at + 12);
  buf.writeUInt16LE(r.maxBackground, at + 16);
  buf.writeUInt16LE(r.congestionThreshold, at + 18);
  buf.writeUInt32LE(r.maxWriteBytes, at + 20);
  buf.writeUInt32LE(1, at + 24); // time_gran: nanoseconds
  buf.writeUInt16LE(r.maxPages, at + 28);
}

/** d_type of a directory entry (DT_* = the st_mode type bits >> 12). */
export function direntType(kind: FileKind): number {
  return typeBitsOf(kind) >>> 12;
}

function align8(n: number): number {
  return (n + 7) & ~7;
}

/** Bytes one entry takes in a READDIR (plus = false) or READDIRPLUS reply. */
export function direntBytes(nameBytes: number, plus: boolean): number {
  return align8((plus ? ENTRY_OUT_BYTES : 0) + DIRENT_HEADER_BYTES + nameBytes);
}

/**
 * struct fuse_dirent at `at` (its 8-byte padding zeroed); `nextOffset` is the directory
 * offset the next READDIR starts from. Returns the bytes written.
 */
export function writeDirent(buf: Buffer, at: number, entry: DirEntry, nameBytes: number, nextOffset: number): number {
  const total = direntBytes(nameBytes, false);
  writeI64(buf, at, entry.ino);
  writeI64(buf, at + 8, nextOffset);
  buf.writeUInt32LE(nameBytes, at + 16);
  buf.writeUInt32LE(direntType(entry.kind), at + 20);
  buf.write(entry.name, at + DIRENT_HEADER_BYTES, nameBytes, 'utf8');
  buf.fill(0, at + DIRENT_HEADER_BYTES + nameBytes, at + total);
  return total;
}

/** statx(2) mask bits (linux/stat.h) that FUSE_STATX replies carry. */
export const StatxMask = {
  /** STATX_TYPE through STATX_BLOCKS: everything struct stat has. */
  BASIC_STATS: 0x7ff,
  BTIME: 0x800,
} as const;

/** The major and minor of a Linux makedev-encoded device number (glibc's encoding, 64-bit). */
export function devMajorMinor(rdev: number): { major: number; minor: number } {
  const high = Math.floor(rdev / TWO32);
  const low = rdev % TWO32;
  return {
    major: (((low >>> 8) & 0xfff) | (high & ~0xfff)) >>> 0,
    minor: ((low & 0xff) | ((low >>> 12) & ~0xff)) >>> 0,
  };
}

/** struct fuse_sx_time at `at`: tv_sec (s64), tv_nsec (u32), reserved (s32). */
function writeSxTime(buf: Buffer, at: number, ns: bigint): void {
  writeTime(buf, at, at + 8, ns);
  buf.writeInt32LE(0, at + 12);
}

/**
 * struct fuse_statx_out at `at`. The mask says BASIC_STATS, plus BTIME when the inode has a
 * birth time (an inode made before btimes were recorded has none, as statx allows).
 */
export function writeStatxOut(buf: Buffer, at: number, a: Attr, attrTimeoutS: number, blockSizeBytes: number): void {
  buf.fill(0, at, at + STATX_OUT_BYTES);
  const t = validity(attrTimeoutS);
  writeI64(buf, at, t.sec);
  buf.writeUInt32LE(t.nsec, at + 8);
  const sx = at + 32;
  buf.writeUInt32LE(StatxMask.BASIC_STATS | (a.btimeNs !== undefined ? StatxMask.BTIME : 0), sx);
  buf.writeUInt32LE(blockSizeBytes, sx + 4);
  // attributes (u64) at +8 stay 0
  buf.writeUInt32LE(a.nlink >>> 0, sx + 16);
  buf.writeUInt32LE(a.uid >>> 0, sx + 20);
  buf.writeUInt32LE(a.gid >>> 0, sx + 24);
  buf.writeUInt16LE(a.mode & 0xffff, sx + 28);
  writeI64(buf, sx + 32, a.ino);
  writeI64(buf, sx + 40, a.sizeBytes);
  writeI64(buf, sx + 48, a.blocks512);
  // attributes_mask (u64) at +56 stays 0
  writeSxTime(buf, sx + 64, a.atimeNs);
  if (a.btimeNs !== undefined) writeSxTime(buf, sx + 80, a.btimeNs);
  writeSxTime(buf, sx + 96, a.ctimeNs);
  writeSxTime(buf, sx + 112, a.mtimeNs);
  const { major, minor } = devMajorMinor(a.rdev);
  buf.writeUInt32LE(major, sx + 128);
  buf.writeUInt32LE(minor, sx + 132);
  // dev_major / dev_minor: the kernel fills in the super block's device
}

/**
 * fuse_notify_code values of the notifications dmfs sends (a reply header with unique 0
 * and the code in its error field, then the body).
 */
export const NotifyCode = { INVAL_INODE: 2, INVAL_ENTRY: 3, DELETE: 6, RESEND: 7 } as const;

/** fuse_notify_inval_inode_out: ino, off, len (u64, i64, i64). */
export const NOTIFY_INVAL_INODE_BYTES = 24;
/** fuse_notify_inval_entry_out: parent (u64), namelen, flags (u32); then the name and a NUL. */
export const NOTIFY_INVAL_ENTRY_BYTES = 16;
/** fuse_notify_delete_out: parent, child (u64), namelen, padding (u32); then the name and a NUL. */
export const NOTIFY_DELETE_BYTES = 24;

const NO_UNIQUE: Unique = { lo: 0, hi: 0 };

/**
 * FUSE_NOTIFY_INVAL_INODE: the kernel drops its attributes (and cached POSIX ACLs) of
 * `nodeid` and, unless offsetBytes is negative, its cached pages of [offsetBytes,
 * offsetBytes + lengthBytes), lengthBytes 0 meaning to the end of the file.
 */
export function encodeNotifyInvalInode(nodeid: number, offsetBytes: number, lengthBytes: number): Buffer {
  const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + NOTIFY_INVAL_INODE_BYTES);
  writeOutHeader(out, out.length, NotifyCode.INVAL_INODE, NO_UNIQUE);
  writeI64(out, OUT_HEADER_BYTES, nodeid);
  writeI64(out, OUT_HEADER_BYTES + 8, offsetBytes);
  writeI64(out, OUT_HEADER_BYTES + 16, lengthBytes);
  return out;
}

/**
 * FUSE_NOTIFY_INVAL_ENTRY: the kernel drops its dentry (positive or negative) of `name`
 * in directory `parent`, and with it the directory's attributes and cached listing.
 * Flags 0 (not FUSE_EXPIRE_ONLY: the dentry goes at once).
 */
export function encodeNotifyInvalEntry(parent: number, name: string): Buffer {
  const nameBytes = Buffer.byteLength(name);
  const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + NOTIFY_INVAL_ENTRY_BYTES + nameBytes + 1);
  writeOutHeader(out, out.length, NotifyCode.INVAL_ENTRY, NO_UNIQUE);
  writeI64(out, OUT_HEADER_BYTES, parent);
  out.writeUInt32LE(nameBytes, OUT_HEADER_BYTES + 8);
  out.writeUInt32LE(0, OUT_HEADER_BYTES + 12);
  out.write(name, OUT_HEADER_BYTES + NOTIFY_INVAL_ENTRY_BYTES, nameBytes, 'utf8');
  out[out.length - 1] = 0;
  return out;
}

/**
 * FUSE_NOTIFY_DELETE: `name` in `parent` is gone and so is inode `child` (its last link,
 * or a directory): the kernel drops the dentry and, if it named `child`, sets the
 * inode's link count to 0, as if it had unlinked it itself.
 */
export function encodeNotifyDelete(parent: number, child: number, name: string): Buffer {
  const nameBytes = Buffer.byteLength(name);
  const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + NOTIFY_DELETE_BYTES + nameBytes + 1);
  writeOutHeader(out, out.length, NotifyCode.DELETE, NO_UNIQUE);
  writeI64(out, OUT_HEADER_BYTES, parent);
  writeI64(out, OUT_HEADER_BYTES + 8, child);
  out.writeUInt32LE(nameBytes, OUT_HEADER_BYTES + 16);
  out.writeUInt32LE(0, OUT_HEADER_BYTES + 20);
  out.write(name, OUT_HEADER_BYTES + NOTIFY_DELETE_BYTES, nameBytes, 'utf8');
  out[out.length - 1] = 0;
  return out;
}
