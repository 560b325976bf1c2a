import { dmfsError } from '../errors';
import type { ThinPool } from '../pool/thin-pool';
import { FileData } from './file-data';
import { InodeRecords, ROOT_INO, type InodeInChain } from './inode-records';
import { LayerContext, type LayerContextOptions } from './layer-context';
import {
  S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, S_IFSOCK,
  type Attr, type ChangeDir, type DirEntry, type FileKind, type Ino, type LayerChange, type LayerFs,
  fileKindOfMode, type NewNodeOptions, type ReadOptions, type RenameFlags, type SetAttr, type StatFs, type XattrSetFlags,
} from './layer-store';
import { layerStatfs } from './layer-statfs';
import {
  direntKey, direntRange, inodeKey, isWhiteout, nowTime, packDirent, unpackDirent, unpackInode,
  type DirentRecord, type InodeRecord, type StoredTime,
} from './records';
import type { StoreTables } from './store-tables';
import { VerifiedBlockReader } from './verified-block-reader';

const NAME_MAX_BYTES = 255;
const XATTR_NAME_MAX_BYTES = 255;
const XATTR_VALUE_MAX_BYTES = 64 * 1024;
const LINK_MAX = 65000;

export function kindFromMode(mode: number): FileKind {
  try {
    return fileKindOfMode(mode);
  } catch {
    throw dmfsError('INVALID', `unknown file type in mode ${mode.toString(8)}`);
  }
}

const TYPE_BITS: Record<FileKind, number> = {
  file: S_IFREG, dir: S_IFDIR, symlink: S_IFLNK, chardev: S_IFCHR, blockdev: S_IFBLK, fifo: S_IFIFO, socket: S_IFSOCK,
};

export interface ChainLayerFsOptions extends LayerContextOptions {
  /** Called once by close(), after the final sync. */
  onClose: () => Promise<void>;
  /** The store's mount registration (see LayerFs.claimMount / releaseMount). */
  onClaimMount?: (mountpoint: string) => void;
  onReleaseMount?: (mountpoint: string) => void;
}

/**
 * A layer seen through its chain of segments. Namespace changes are single synchronous
 * metadata transactions (atomic, no await inside); data writes put bytes into blocks this
 * layer owns (or freshly reserved ones) before the transaction that maps them.
 *
 * Invariants kept by every method:
 * - bytes of a file past its size, inside its last block, read as zeros in every segment;
 * - no segment maps a file block at or past ceil(size / blockSize) of its own record;
 * - a data block is referenced by at most one block-map entry in the whole pool.
 */
export class ChainLayerFs implements LayerFs {
  readonly layerName: string;
  readonly readOnly: boolean;
  readonly rootIno = ROOT_INO;
  readonly sizeLimitBytes: number;

  private readonly ctx: LayerContext;
  private readonly records: InodeRecords;
  private readonly data: FileData;
  private readonly pool: ThinPool;
  private readonly segs: readonly number[];
  private readonly top: number;
  private readonly t: StoreTables;
  private readonly bs: number;
  /** Inodes of the lower segments (statfs), counted at the first statfs. */
  private lowerInodeCount: number | null = null;
  private syncTimer: NodeJS.Timeout | null = null;
  private readonly onClose: () => Promise<void>;
  private readonly onClaimMount: (mountpoint: string) => void;
  private readonly onReleaseMount: (mountpoint: string) => void;

  constructor(pool: ThinPool, tables: StoreTables, opts: ChainLayerFsOptions) {
    const ctx = new LayerContext(pool, tables, opts);
    this.ctx = ctx;
    this.records = new InodeRecords(ctx);
    this.data = new FileData(ctx, this.records, new VerifiedBlockReader(ctx));
    this.pool = pool;
    this.layerName = ctx.layerName;
    this.readOnly = ctx.readOnly;
    this.sizeLimitBytes = ctx.sizeLimitBytes;
    this.segs = ctx.segments;
    this.top = ctx.top;
    this.t = tables;
    this.bs = ctx.blockSizeBytes;
    this.onClose = opts.onClose;
    this.onClaimMount = opts.onClaimMount ?? (() => undefined);
    this.onReleaseMount = opts.onReleaseMount ?? (() => undefined);
    if (!this.readOnly) {
      // Metadata commits at once; this makes it (and the data under it) durable at least every second.
      this.syncTimer = setInterval(() => void this.periodicSync(), 1000);
      this.syncTimer.unref();
    }
  }

  // ---- guards ----------------------------------------------------------------

  private checkName(name: string): void {
    if (!name || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) {
      throw dmfsError('INVALID', `'${name}' is not a valid file name`);
    }
    if (Buffer.byteLength(name) > NAME_MAX_BYTES) throw dmfsError('NAME_TOO_LONG', `name of ${Buffer.byteLength(name)} bytes is longer than ${NAME_MAX_BYTES}`);
  }

  private dirRecord(dirIno: Ino): InodeInChain {
    const d = this.records.mustInode(dirIno);
    if (d.rec.kind !== 'dir') throw dmfsError('NOT_DIR', `inode ${dirIno} is not a directory`);
    return d;
  }

  // ---- namespace lookups -----------------------------------------------------

  /** The entry for name in dirIno from `fromLevel` down, honouring whiteouts and opaque/born directories. */
  private findEntry(dirIno: Ino, name: string, fromLevel = 0): (DirentRecord & { level: number }) | null {
    for (let level = fromLevel; level < this.segs.length; level++) {
      const seg = this.segs[level];
      const raw = this.t.dirents.get(direntKey(seg, dirIno, name));
      if (raw) {
        const d = unpackDirent(raw);
        return isWhiteout(d) ? null : { ...d, level };
      }
      if (this.dirStopsAt(dirIno, level)) return null;
    }
    return null;
  }

  /** Whether a directory's entries in segments below `level` are hidden (opaque there, or born there). */
  private dirStopsAt(dirIno: Ino, level: number): boolean {
    const rec = this.records.recordAt(dirIno, level);
    return rec ? rec.born || Boolean(rec.opaque) : false;
  }

  private entryKindIno(e: DirentRecord & { level: number }): { ino: Ino; kind: FileKind } {
    if (isWhiteout(e)) throw new Error('unreachable');
    return { ino: e.ino, kind: e.kind };
  }

  async lookup(dirIno: Ino, name: string): Promise<Attr | null> {
    this.ctx.assertOpen();
    this.dirRecord(dirIno);
    if (Buffer.byteLength(name) > NAME_MAX_BYTES) throw dmfsError('NAME_TOO_LONG', 'name longer than 255 bytes');
    const e = this.findEntry(dirIno, name);
    if (!e) return null;
    const { ino } = this.entryKindIno(e);
    const found = this.records.findInode(ino);
    if (!found) throw dmfsError('METADATA_CORRUPT', `entry '${name}' in directory ${dirIno} points at missing inode ${ino}`);
    return this.records.toAttr(ino, found.rec);
  }

  async getattr(ino: Ino): Promise<Attr> {
    return this.records.getattr(ino);
  }

  async resolve(path: string): Promise<Attr> {
    this.ctx.assertOpen();
    let cur = await this.getattr(ROOT_INO);
    for (const part of path.split('/')) {
      if (!part || part === '.') continue;
      if (cur.kind !== 'dir') throw dmfsError('NOT_DIR', `${path}: a component is not a directory`);
      if (part === '..') {
        const rec = this.records.mustInode(cur.ino).rec;
        cur = await this.getattr(cur.ino === ROOT_INO ? ROOT_INO : rec.parent);
        continue;
      }
      const next = await this.lookup(cur.ino, part);
      if (!next) throw dmfsError('NOT_FOUND', `${path}: no such file or directory`);
      cur = next;
    }
    return cur;
  }

  /** Merged entries, name → entry, top segment first. */
  private mergedEntries(dirIno: Ino): Map<string, { ino: Ino; kind: FileKind }> {
    const out = new Map<string, { ino: Ino; kind: FileKind }>();
    const hidden = new Set<string>();
    for (let level = 0; level < this.segs.length; level++) {
      const [start, end] = direntRange(this.segs[level], dirIno);
      for (const { key, value } of this.t.dirents.range(start, end)) {
        const name = (key as [number, number, string])[2];
        if (out.has(name) || hidden.has(name)) continue;
        const d = unpackDirent(value);
        if (isWhiteout(d)) hidden.add(name);
        else out.set(name, { ino: d.ino, kind: d.kind });
      }
      if (this.dirStopsAt(dirIno, level)) break;
    }
    return out;
  }

  async readdir(dirIno: Ino): Promise<DirEntry[]> {
    this.ctx.assertOpen();
    this.dirRecord(dirIno);
    const entries = [...this.mergedEntries(dirIno)].map(([name, e]) => ({ name, ino: e.ino, kind: e.kind }));
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return entries;
  }

  private dirIsEmpty(dirIno: Ino): boolean {
    return this.mergedEntries(dirIno).size === 0;
  }

  // ---- namespace changes (each one synchronous transaction) ---------------------

  /** Inside txn: removes name from dirIno in the own segment, writing a whiteout when a lower segment still has it. */
  private removeEntry(dirIno: Ino, name: string): void {
    const own = this.t.dirents.get(direntKey(this.top, dirIno, name));
    const lowerHas = !this.dirStopsAt(dirIno, 0) && this.findEntry(dirIno, name, 1) !== null;
    if (lowerHas) this.t.dirents.put(direntKey(this.top, dirIno, name), packDirent({ v: 1, whiteout: true }));
    else if (own) this.t.dirents.del(direntKey(this.top, dirIno, name));
  }

  private touchDir(dirIno: Ino, now: StoredTime, nlinkDelta = 0): void {
    const rec = this.records.ownRecord(dirIno);
    rec.mtime = now;
    rec.ctime = now;
    rec.nlink += nlinkDelta;
    this.records.putRecord(dirIno, rec);
  }

  private newInode(dirIno: Ino, name: string, kind: FileKind, opts: NewNodeOptions & { target?: string }): { ino: Ino; rec: InodeRecord } {
    const now = nowTime();
    const ino = this.pool.counter('ino');
    const rec: InodeRecord = {
      v: 1,
      kind,
      mode: TYPE_BITS[kind] | (opts.mode & 0o7777),
      uid: opts.uid,
      gid: opts.gid,
      size: kind === 'symlink' ? Buffer.byteLength(opts.target ?? '') : 0,
      nlink: kind === 'dir' ? 2 : 1,
      rdev: kind === 'chardev' || kind === 'blockdev' ? opts.rdev ?? 0 : 0,
      atime: now,
      mtime: now,
      ctime: now,
      inherit: 0,
      mapped: 0,
      born: true,
      parent: dirIno,
      name,
      ...(opts.target !== undefined ? { target: opts.target } : {}),
    };
    this.records.putRecord(ino, rec);
    this.t.dirents.put(direntKey(this.top, dirIno, name), packDirent({ v: 1, ino, kind }));
    this.touchDir(dirIno, now, kind === 'dir' ? 1 : 0);
    return { ino, rec };
  }

  private create(dirIno: Ino, name: string, kind: FileKind, opts: NewNodeOptions & { target?: string }): Attr {
    this.ctx.assertWritable();
    this.checkName(name);
    const { ino, rec } = this.pool.txn(() => {
      const dir = this.dirRecord(dirIno);
      if (dir.rec.nlink === 0) throw dmfsError('NOT_FOUND', 'directory was removed');
      if (this.findEntry(dirIno, name)) throw dmfsError('EXISTS', `'${name}' already exists`);
      if (kind === 'dir' && dir.rec.nlink >= LINK_MAX) throw dmfsError('TOO_MANY_LINKS', 'too many subdirectories');
      return this.newInode(dirIno, name, kind, opts);
    });
    this.ctx.markDirty();
    return this.records.toAttr(ino, rec);
  }

  async mknod(dirIno: Ino, name: string, opts: NewNodeOptions): Promise<Attr> {
    const kind = kindFromMode(opts.mode);
    if (kind === 'dir' || kind === 'symlink') throw dmfsError('INVALID', 'mknod cannot make directories or symlinks');
    return this.create(dirIno, name, kind, opts);
  }

  async mkdir(dirIno: Ino, name: string, opts: NewNodeOptions): Promise<Attr> {
    return this.create(dirIno, name, 'dir', opts);
  }

  async symlink(dirIno: Ino, name: string, target: string, opts: Omit<NewNodeOptions, 'mode'>): Promise<Attr> {
    if (!target || Buffer.byteLength(target) > 4095) throw dmfsError(target ? 'NAME_TOO_LONG' : 'NOT_FOUND', 'bad symlink target');
    return this.create(dirIno, name, 'symlink', { ...opts, mode: 0o777, target });
  }

  async link(ino: Ino, newDirIno: Ino, newName: string): Promise<Attr> {
    this.ctx.assertWritable();
    this.checkName(newName);
    const rec = this.pool.txn(() => {
      const src = this.records.mustInode(ino);
      if (src.rec.kind === 'dir') throw dmfsError('NOT_PERMITTED', 'hard links to directories are not allowed');
      if (src.rec.nlink >= LINK_MAX) throw dmfsError('TOO_MANY_LINKS', 'too many links');
      this.dirRecord(newDirIno);
      if (this.findEntry(newDirIno, newName)) throw dmfsError('EXISTS', `'${newName}' already exists`);
      const now = nowTime();
      const own = this.records.ownRecord(ino);
      own.nlink += 1;
      own.ctime = now;
      this.records.putRecord(ino, own);
      this.t.orphans.del(inodeKey(this.top, ino));
      this.t.dirents.put(direntKey(this.top, newDirIno, newName), packDirent({ v: 1, ino, kind: own.kind }));
      this.touchDir(newDirIno, now);
      return own;
    });
    this.ctx.markDirty();
    return this.records.toAttr(ino, rec);
  }

  /** Inside txn: one link of ino is gone; frees the inode's own data once nothing refers to it. */
  private dropLink(ino: Ino, now: StoredTime): void {
    const rec = this.records.ownRecord(ino);
    rec.nlink = rec.kind === 'dir' ? 0 : Math.max(0, rec.nlink - 1);
    rec.ctime = now;
    if (rec.nlink > 0) {
      this.records.putRecord(ino, rec);
      return;
    }
    if (this.ctx.openCounts.get(ino)) {
      this.records.putRecord(ino, rec);
      this.t.orphans.put(inodeKey(this.top, ino), Buffer.alloc(0));
      return;
    }
    this.destroyOwn(ino, rec.kind === 'dir');
  }

  /** Inside txn: deletes every record of ino in the own segment (and its directory entries), recycling its blocks. */
  private destroyOwn(ino: Ino, isDir: boolean): void {
    this.t.inodes.del(inodeKey(this.top, ino));
    this.t.orphans.del(inodeKey(this.top, ino));
    this.data.truncateOwnBlocks(ino, 0);
    if (isDir) {
      const [start, end] = direntRange(this.top, ino);
      for (const key of [...this.t.dirents.keys(start, end)]) this.t.dirents.del(key);
    }
  }

  async unlink(dirIno: Ino, name: string): Promise<void> {
    this.ctx.assertWritable();
    this.pool.txn(() => {
      this.dirRecord(dirIno);
      const e = this.findEntry(dirIno, name);
      if (!e) throw dmfsError('NOT_FOUND', `'${name}' does not exist`);
      const { ino, kind } = this.entryKindIno(e);
      if (kind === 'dir') throw dmfsError('IS_DIR', `'${name}' is a directory`);
      const now = nowTime();
      this.removeEntry(dirIno, name);
      this.touchDir(dirIno, now);
      this.dropLink(ino, now);
    });
    this.ctx.markDirty();
  }

  async rmdir(dirIno: Ino, name: string): Promise<void> {
    this.ctx.assertWritable();
    if (name === '.') throw dmfsError('INVALID', "cannot remove '.'");
    if (name === '..') throw dmfsError('NOT_EMPTY', "cannot remove '..'");
    this.pool.txn(() => {
      this.dirRecord(dirIno);
      const e = this.findEntry(dirIno, name);
      if (!e) throw dmfsError('NOT_FOUND', `'${name}' does not exist`);
      const { ino, kind } = this.entryKindIno(e);
      if (kind !== 'dir') throw dmfsError('NOT_DIR', `'${name}' is not a directory`);
      if (!this.dirIsEmpty(ino)) throw dmfsError('NOT_EMPTY', `directory '${name}' is not empty`);
      const now = nowTime();
      this.removeEntry(dirIno, name);
      this.touchDir(dirIno, now, -1);
      this.destroyOwn(ino, true);
    });
    this.ctx.markDirty();
  }

  private isAncestor(maybeAncestor: Ino, ino: Ino): boolean {
    let cur = ino;
    for (let depth = 0; depth < 100000; depth++) {
      if (cur === maybeAncestor) return true;
      if (cur === ROOT_INO) return false;
      cur = this.records.mustInode(cur).rec.parent;
    }
    throw dmfsError('METADATA_CORRUPT', 'directory parent chain does not reach the root');
  }

  async rename(oldDirIno: Ino, oldName: string, newDirIno: Ino, newName: string, flags: RenameFlags = {}): Promise<void> {
    this.ctx.assertWritable();
    this.checkName(newName);
    this.pool.txn(() => {
      this.dirRecord(oldDirIno);
      this.dirRecord(newDirIno);
      const se = this.findEntry(oldDirIno, oldName);
      if (!se) throw dmfsError('NOT_FOUND', `'${oldName}' does not exist`);
      const src = this.entryKindIno(se);
      const de = this.findEntry(newDirIno, newName);
      const dst = de ? this.entryKindIno(de) : null;
      if (dst && flags.noReplace) throw dmfsError('EXISTS', `'${newName}' already exists`);
      if (flags.exchange && !dst) throw dmfsError('NOT_FOUND', `'${newName}' does not exist`);
      if (dst && dst.ino === src.ino) return; // same inode: POSIX says do nothing
      if (src.kind === 'dir' && newDirIno !== oldDirIno && this.isAncestor(src.ino, newDirIno)) {
        throw dmfsError('INVALID', 'cannot move a directory into itself');
      }
      if (flags.exchange && dst && dst.kind === 'dir' && newDirIno !== oldDirIno && this.isAncestor(dst.ino, oldDirIno)) {
        throw dmfsError('INVALID', 'cannot move a directory into itself');
      }
      const now = nowTime();
      if (flags.exchange && dst) {
        this.t.dirents.put(direntKey(this.top, oldDirIno, oldName), packDirent({ v: 1, ino: dst.ino, kind: dst.kind }));
        this.t.dirents.put(direntKey(this.top, newDirIno, newName), packDirent({ v: 1, ino: src.ino, kind: src.kind }));
        this.relink(src.ino, newDirIno, newName, now);
        this.relink(dst.ino, oldDirIno, oldName, now);
        const dirDelta = (src.kind === 'dir' ? 1 : 0) - (dst.kind === 'dir' ? 1 : 0);
        this.touchDir(oldDirIno, now, oldDirIno === newDirIno ? 0 : -dirDelta);
        if (newDirIno !== oldDirIno) this.touchDir(newDirIno, now, dirDelta);
        return;
      }
      if (dst) {
        if (src.kind === 'dir' && dst.kind !== 'dir') throw dmfsError('NOT_DIR', `'${newName}' is not a directory`);
        if (src.kind !== 'dir' && dst.kind === 'dir') throw dmfsError('IS_DIR', `'${newName}' is a directory`);
        if (dst.kind === 'dir' && !this.dirIsEmpty(dst.ino)) throw dmfsError('NOT_EMPTY', `directory '${newName}' is not empty`);
      }
      this.removeEntry(oldDirIno, oldName);
      this.t.dirents.put(direntKey(this.top, newDirIno, newName), packDirent({ v: 1, ino: src.ino, kind: src.kind }));
      const srcIsDir = src.kind === 'dir' ? 1 : 0;
      if (dst) {
        if (dst.kind === 'dir') this.destroyOwn(dst.ino, true);
        else this.dropLink(dst.ino, now);
      }
      const dstWasDir = dst?.kind === 'dir' ? 1 : 0;
      if (oldDirIno === newDirIno) this.touchDir(oldDirIno, now, -dstWasDir);
      else {
        this.touchDir(oldDirIno, now, -srcIsDir);
        this.touchDir(newDirIno, now, srcIsDir - dstWasDir);
      }
      this.relink(src.ino, newDirIno, newName, now);
    });
    this.ctx.markDirty();
  }

  private relink(ino: Ino, dirIno: Ino, name: string, now: StoredTime): void {
    const rec = this.records.ownRecord(ino);
    rec.parent = dirIno;
    rec.name = name;
    rec.ctime = now;
    this.records.putRecord(ino, rec);
  }

  async readlink(ino: Ino): Promise<string> {
    return this.records.readlink(ino);
  }

  async setOpaque(dirIno: Ino): Promise<void> {
    this.ctx.assertWritable();
    this.pool.txn(() => {
      this.dirRecord(dirIno);
      const rec = this.records.ownRecord(dirIno);
      if (rec.born) return;
      rec.opaque = true;
      // Entries of this segment stay; the lower ones vanish, so recount subdirectories.
      this.records.putRecord(dirIno, rec);
      let subdirs = 0;
      for (const e of this.mergedEntries(dirIno).values()) if (e.kind === 'dir') subdirs++;
      rec.nlink = 2 + subdirs;
      this.records.putRecord(dirIno, rec);
      // Whiteouts under an opaque directory hide nothing: drop them.
      const [start, end] = direntRange(this.top, dirIno);
      for (const { key, value } of [...this.t.dirents.range(start, end)]) if (isWhiteout(unpackDirent(value))) this.t.dirents.del(key);
    });
    this.ctx.markDirty();
  }

  async setattr(ino: Ino, changes: SetAttr): Promise<Attr> {
    this.ctx.assertWritable();
    if (changes.sizeBytes !== undefined) await this.data.truncate(ino, changes.sizeBytes);
    return this.records.setAttributes(ino, changes);
  }

  // ---- xattrs ----------------------------------------------------------------

  async getxattr(ino: Ino, name: string): Promise<Buffer | null> {
    this.ctx.assertOpen();
    const v = this.records.mustInode(ino).rec.xattrs?.[name];
    return v ? Buffer.from(v) : null;
  }

  async listxattr(ino: Ino): Promise<string[]> {
    this.ctx.assertOpen();
    return Object.keys(this.records.mustInode(ino).rec.xattrs ?? {}).sort();
  }

  async setxattr(ino: Ino, name: string, value: Buffer, flags: XattrSetFlags = {}): Promise<void> {
    this.ctx.assertWritable();
    if (!name || Buffer.byteLength(name) > XATTR_NAME_MAX_BYTES) throw dmfsError('XATTR_RANGE', 'bad xattr name');
    // POSIX ACLs (system.posix_acl_*) are refused, as on a filesystem mounted without ACL
    // support: storing them uninterpreted would make tools like `cp -a` skip their chmod.
    if (!/^(user|trusted|security)\./.test(name)) throw dmfsError('NOT_SUPPORTED', `xattr namespace of '${name}' is not supported`);
    if (value.length > XATTR_VALUE_MAX_BYTES) throw dmfsError('XATTR_RANGE', 'xattr value too large');
    this.pool.txn(() => {
      const rec = this.records.ownRecord(ino);
      const has = rec.xattrs !== undefined && name in rec.xattrs;
      if (flags.create && has) throw dmfsError('XATTR_EXISTS', `xattr ${name} exists`);
      if (flags.replace && !has) throw dmfsError('NO_XATTR', `no xattr ${name}`);
      rec.xattrs = { ...(rec.xattrs ?? {}), [name]: Buffer.from(value) };
      rec.ctime = nowTime();
      this.records.putRecord(ino, rec);
    });
    this.ctx.markDirty();
  }

  async removexattr(ino: Ino, name: string): Promise<void> {
    this.ctx.assertWritable();
    this.pool.txn(() => {
      const rec = this.records.ownRecord(ino);
      if (!rec.xattrs || !(name in rec.xattrs)) throw dmfsError('NO_XATTR', `no xattr ${name}`);
      const next = { ...rec.xattrs };
      delete next[name];
      rec.xattrs = next;
      rec.ctime = nowTime();
      this.records.putRecord(ino, rec);
    });
    this.ctx.markDirty();
  }

  // ---- data --------------------------------------------------------------------

  read(ino: Ino, target: Buffer, offsetBytes: number, opts?: ReadOptions): Promise<number> {
    return this.data.read(ino, target, offsetBytes, opts);
  }

  write(ino: Ino, data: Buffer, offsetBytes: number): Promise<number> {
    return this.data.write(ino, data, offsetBytes);
  }

  // ---- open handles ------------------------------------------------------------

  retain(ino: Ino): void {
    this.ctx.openCounts.set(ino, (this.ctx.openCounts.get(ino) ?? 0) + 1);
  }

  async release(ino: Ino): Promise<void> {
    const n = (this.ctx.openCounts.get(ino) ?? 0) - 1;
    if (n > 0) {
      this.ctx.openCounts.set(ino, n);
      return;
    }
    this.ctx.openCounts.delete(ino);
    if (this.readOnly || this.ctx.closed) return;
    await this.ctx.inodeMutex.run(ino, async () => {
      this.pool.txn(() => {
        if (!this.t.orphans.has(inodeKey(this.top, ino))) return;
        const raw = this.t.inodes.get(inodeKey(this.top, ino));
        const rec = raw ? unpackInode(raw) : null;
        if (!rec || rec.nlink === 0) this.destroyOwn(ino, false);
        else this.t.orphans.del(inodeKey(this.top, ino));
      });
    });
  }

  // ---- whole layer -------------------------------------------------------------

  async statfs(): Promise<StatFs> {
    this.ctx.assertOpen();
    const inodes = this.t.inodes;
    // Lower segments never change under an open layer: counted once.
    this.lowerInodeCount ??= this.segs.slice(1).reduce((n, s) => n + inodes.count([s], [s + 1]), 0);
    return layerStatfs({
      blockSizeBytes: this.bs,
      sizeLimitBytes: this.sizeLimitBytes,
      chainUsedBytes: this.data.chainUsedBytes(),
      poolAvailableBlocks: this.pool.space().availableBlocks,
      chainInodes: this.lowerInodeCount + inodes.count([this.top], [this.top + 1]),
      readOnly: this.readOnly,
      nameMaxBytes: NAME_MAX_BYTES,
    });
  }

  async claimMount(mountpoint: string): Promise<void> {
    this.ctx.assertOpen();
    this.onClaimMount(mountpoint);
  }

  async releaseMount(mountpoint: string): Promise<void> {
    if (!this.ctx.closed) this.onReleaseMount(mountpoint);
  }

  private async periodicSync(): Promise<void> {
    if (!this.ctx.dirty || this.ctx.closed) return;
    try {
      await this.fsync();
      await this.pool.trim();
    } catch {
      // The next tick or an explicit fsync reports the error.
    }
  }

  async fsync(): Promise<void> {
    this.ctx.dirty = false;
    await this.pool.sync();
  }

  /**
   * Marks `dirIno` and its ancestors (by the parent links of their nearest records) as
   * directories the change walk must enter. Stops at the first one already marked, so
   * marking every changed entry's directory costs time linear in the directories.
   */
  private markChangedDir(dirIno: Ino, marked: Set<Ino>): void {
    let cur = dirIno;
    while (!marked.has(cur)) {
      marked.add(cur);
      if (cur === ROOT_INO) return;
      const found = this.records.findInode(cur);
      if (!found || found.rec.kind !== 'dir') return;
      cur = found.rec.parent;
    }
  }

  /**
   * What this layer's own segment changed, as one walk of the merged tree from the root
   * that enters only directories holding a change (found from the segment's dirents and
   * inode records) and whole subtrees that are new at their path. Tree order: parents
   * before children, siblings by name; a directory's `opaque` just before its own line.
   *
   * Time linear in the changes plus the sizes of the directories holding them; memory is
   * one listing per level of the current path and a set of directory inodes. Paths are
   * never rebuilt from the root per entry (a tree 10,000 levels deep would cost the square
   * of its depth): each level's path is its parent's plus one name. V8 keeps such a
   * concatenation as a rope sharing its prefix, until something reads it as flat text
   * (then that one string gets a flat copy): each frame keeps a path string of its own,
   * never the one handed out, so the listing holds linear memory whatever the consumer
   * does, and a consumer that keeps every change (`dmfs diff`) keeps ropes, not copies.
   */
  async *changes(): AsyncIterable<LayerChange> {
    this.ctx.assertOpen();
    const marked = new Set<Ino>();
    for (const { key } of this.t.dirents.range([this.top], [this.top + 1])) {
      const dirIno = (key as [number, number, string])[1];
      if (!marked.has(dirIno)) this.markChangedDir(dirIno, marked);
    }
    for (const { key, value } of this.t.inodes.range([this.top], [this.top + 1])) {
      const ino = (key as [number, number])[1];
      if (ino === ROOT_INO) continue;
      const rec = unpackInode(value);
      if (!rec.born && rec.nlink > 0) this.markChangedDir(rec.parent, marked);
    }
    const ownRecord = (ino: Ino): InodeRecord | null => {
      const found = this.records.findInode(ino);
      return found !== null && found.level === 0 ? found.rec : null;
    };
    const root = ownRecord(ROOT_INO);
    if (root?.opaque && !root.born) yield { path: '/', change: 'opaque', attr: this.records.toAttr(ROOT_INO, root) };
    if (!marked.has(ROOT_INO)) return;

    /** One directory being listed: its path ('' for the root) and its names still to go, last first. */
    interface Frame {
      dirIno: Ino;
      path: string;
      dir: ChangeDir;
      /** Every entry below is new at its path (a directory moved here from a lower path). */
      allAdded: boolean;
      names: string[];
      own: Map<string, DirentRecord>;
      merged: Map<string, { ino: Ino; kind: FileKind }>;
    }
    const open = (dirIno: Ino, path: string, dir: ChangeDir, allAdded: boolean): Frame => {
      const own = new Map<string, DirentRecord>();
      const [start, end] = direntRange(this.top, dirIno);
      for (const { key, value } of this.t.dirents.range(start, end)) own.set((key as [number, number, string])[2], unpackDirent(value));
      const merged = this.mergedEntries(dirIno);
      const names = [...new Set([...own.keys(), ...merged.keys()])];
      names.sort((a, b) => (a < b ? 1 : a > b ? -1 : 0));
      return { dirIno, path, dir, allAdded, names, own, merged };
    };
    const stack: Frame[] = [open(ROOT_INO, '', { parent: null, name: '' }, false)];
    while (stack.length > 0) {
      const frame = stack[stack.length - 1];
      const name = frame.names.pop();
      if (name === undefined) {
        stack.pop();
        continue;
      }
      const path = `${frame.path}/${name}`;
      const at = { dir: frame.dir, name };
      const own = frame.own.get(name);
      if (own !== undefined && isWhiteout(own)) {
        yield { path, change: 'deleted', at };
        continue;
      }
      const entry = frame.merged.get(name);
      if (entry === undefined) continue;
      const found = this.records.findInode(entry.ino);
      if (found === null) continue;
      const rec = found.level === 0 ? found.rec : null;
      const attr = this.records.toAttr(entry.ino, found.rec);
      if (rec?.opaque && !rec.born && entry.kind === 'dir') yield { path, change: 'opaque', attr, at };
      let descend: 'no' | 'changes' | 'all' = 'no';
      if (frame.allAdded || own !== undefined) {
        yield { path, change: 'added', attr, at };
        // A directory made here has only own entries; one moved here brings its lower ones.
        if (entry.kind === 'dir') descend = frame.allAdded || (rec !== null && !rec.born) ? 'all' : 'changes';
      } else {
        if (rec !== null && !rec.born && rec.nlink > 0 && rec.parent === frame.dirIno && rec.name === name) {
          yield { path, change: 'modified', attr, at };
        }
        if (entry.kind === 'dir' && marked.has(entry.ino)) descend = 'changes';
      }
      // A string of its own for the frame: consumers flatten the one they were given.
      if (descend !== 'no') stack.push(open(entry.ino, frame.path + '/' + name, { parent: frame.dir, name }, descend === 'all'));
    }
  }

  async close(): Promise<void> {
    if (this.ctx.closed) return;
    if (this.syncTimer) clearInterval(this.syncTimer);
    this.syncTimer = null;
    if (!this.readOnly) {
      // Files still open at close: their orphans are freed now (the handles die with the layer).
      this.pool.txn(() => {
        for (const key of [...this.t.orphans.keys([this.top], [this.top + 1])]) {
          const ino = (key as [number, number])[1];
          const raw = this.t.inodes.get(inodeKey(this.top, ino));
          if (!raw || unpackInode(raw).nlink === 0) this.destroyOwn(ino, false);
          else this.t.orphans.del(key);
        }
      });
      await this.pool.sync();
    }
    this.ctx.closed = true;
    await this.onClose();
  }
}
