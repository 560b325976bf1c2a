import { dmfsError } from '../errors';
import type { Table } from '../pool/metadata-env';
import type { FileData } from './file-data';
import { ROOT_INO, type InodeInChain, type InodeRecords } from './inode-records';
import { decodeAcl, POSIX_ACL_XATTRS } from './posix-acl';
import type { LayerContext } from './layer-context';
import {
  S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, S_IFSOCK,
  type Attr, type DirEntry, type FileKind, type Ino, type LayerFs, fileKindOfMode, type NamedEntry, type NewEntry, type NewNodeOptions, type RenameFlags,
} from './layer-store';
import {
  direntKey, direntRange, inodeKey, isWhiteout, nowTime, nsToTime, packDirent, unpackDirent, unpackInode,
  type DirentRecord, type InodeRecord, type StoredTime,
} from './records';

export const NAME_MAX_BYTES = 255;
const LINK_MAX = 65000;

/** ENOENT for an empty symlink target, ENAMETOOLONG past PATH_MAX - 1 bytes (as Linux). */
function checkSymlinkTarget(target: string): void {
  if (!target || Buffer.byteLength(target) > 4095) throw dmfsError(target ? 'NAME_TOO_LONG' : 'NOT_FOUND', 'bad symlink target');
}

function entryKind(entry: NewEntry): FileKind {
  return entry.target !== undefined ? 'symlink' : kindFromMode(entry.mode);
}

function kindFromMode(mode: number): FileKind {
  try {
    return fileKindOfMode(mode);
  } catch {
    throw dmfsError('INVALID', `unknown file type in mode ${mode.toString(8)}`);
  }
}

const TYPE_BITS: Record<FileKind, number> = {
  file: S_IFREG, dir: S_IFDIR, symlink: S_IFLNK, chardev: S_IFCHR, blockdev: S_IFBLK, fifo: S_IFIFO, socket: S_IFSOCK,
};

/**
 * The directory tree of one open layer over its chain: entries found top-down through
 * whiteouts and opaque or born directories, and every change of names and links (create,
 * link, unlink, rmdir, rename, opaque), each one synchronous metadata transaction. Owns
 * when an inode dies: at its last link, or at its last open handle for an orphan (an
 * inode whose last link went while it was open).
 */
export class LayerNamespace implements Pick<
  LayerFs,
  'lookup' | 'resolve' | 'readdir' | 'mknod' | 'createUnnamed' | 'mkdir' | 'symlink' | 'link' | 'unlink' | 'rmdir' | 'rename' | 'setOpaque'
> {
  private readonly dirents: Table;
  private readonly top: number;

  constructor(
    private readonly ctx: LayerContext,
    private readonly records: InodeRecords,
    private readonly data: FileData,
  ) {
    this.dirents = ctx.tables.dirents;
    this.top = ctx.top;
  }

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

  // ---- lookups ------------------------------------------------------------------

  /** The entry for name in dirIno from `fromLevel` down, honouring whiteouts and opaque/born directories. */
  private findEntry(dirIno: Ino, name: string, fromLevel = 0): (DirentRecord & { level: number }) | null {
    for (let level = fromLevel; level < this.ctx.segments.length; level++) {
      const seg = this.ctx.segments[level];
      const raw = this.dirents.get(direntKey(seg, dirIno, name));
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

  async resolve(path: string): Promise<Attr> {
    this.ctx.assertOpen();
    let cur = await this.records.getattr(ROOT_INO);
    for (const part of path.split('/')) {
      if (!part || part === '.') continue;
      if (cur.kind !== 'dir') throw dmfsError('NOT_DIR', `${path}: a component is not a directory`);
      if (part === '..') {
        const rec = this.records.mustInode(cur.ino).rec;
        cur = await this.records.getattr(cur.ino === ROOT_INO ? ROOT_INO : rec.parent);
        continue;
      }
      const next = await this.lookup(cur.ino, part);
      if (!next) throw dmfsError('NOT_FOUND', `${path}: no such file or directory`);
      cur = next;
    }
    return cur;
  }

  /** Merged entries, name → entry, top segment first. */
  mergedEntries(dirIno: Ino): Map<string, { ino: Ino; kind: FileKind }> {
    const out = new Map<string, { ino: Ino; kind: FileKind }>();
    const hidden = new Set<string>();
    for (let level = 0; level < this.ctx.segments.length; level++) {
      const [start, end] = direntRange(this.ctx.segments[level], dirIno);
      for (const { key, value } of this.dirents.range(start, end)) {
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

  // ---- changes (each one synchronous transaction) -------------------------------

  /** Inside txn: removes name from dirIno in the own segment, writing a whiteout when a lower segment still has it. */
  private removeEntry(dirIno: Ino, name: string): void {
    const own = this.dirents.get(direntKey(this.top, dirIno, name));
    const lowerHas = !this.dirStopsAt(dirIno, 0) && this.findEntry(dirIno, name, 1) !== null;
    if (lowerHas) this.dirents.put(direntKey(this.top, dirIno, name), packDirent({ v: 1, whiteout: true }));
    else if (own) this.dirents.del(direntKey(this.top, dirIno, name));
  }

  private touchDir(dirIno: Ino, now: StoredTime, nlinkDelta = 0): void {
    const rec = this.records.ownRecord(dirIno);
    rec.mtime = now;
    rec.ctime = now;
    rec.nlink += nlinkDelta;
    this.records.putRecord(dirIno, rec);
  }

  /** Inside txn: a new inode record of `kind` whose one link is dirIno/name (nlink as given). */
  private newRecord(dirIno: Ino, name: string, kind: FileKind, opts: NewNodeOptions & { target?: string }, now: StoredTime): InodeRecord {
    return {
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
      btime: now,
      inherit: 0,
      mapped: 0,
      born: true,
      parent: dirIno,
      name,
      ...(opts.target !== undefined ? { target: opts.target } : {}),
      ...(opts.xattrs ? { xattrs: this.checkedXattrs(opts.xattrs) } : {}),
    };
  }

  /** A new node's xattrs, copied; POSIX ACLs must be well-formed. */
  private checkedXattrs(xattrs: Record<string, Buffer>): Record<string, Buffer> {
    const out: Record<string, Buffer> = {};
    for (const [name, value] of Object.entries(xattrs)) {
      if (POSIX_ACL_XATTRS.has(name)) decodeAcl(value);
      out[name] = Buffer.from(value);
    }
    return out;
  }

  /** Inside txn: a new inode named dirIno/name, its directory touched. */
  private newInode(dirIno: Ino, name: string, kind: FileKind, opts: NewNodeOptions & { target?: string }): { ino: Ino; rec: InodeRecord } {
    const now = nowTime();
    const made = this.putInode(dirIno, name, kind, opts, now);
    this.touchDir(dirIno, now, kind === 'dir' ? 1 : 0);
    return made;
  }

  /** Inside txn: a new inode's record and its entry dirIno/name, the directory's own record untouched; `complete` finishes the record before it is put. */
  private putInode(
    dirIno: Ino, name: string, kind: FileKind, opts: NewNodeOptions & { target?: string }, now: StoredTime,
    complete?: (ino: Ino, rec: InodeRecord) => void,
  ): { ino: Ino; rec: InodeRecord } {
    const ino = this.ctx.pool.counter('ino');
    const rec = this.newRecord(dirIno, name, kind, opts, now);
    complete?.(ino, rec);
    this.records.putRecord(ino, rec);
    this.dirents.put(direntKey(this.top, dirIno, name), packDirent({ v: 1, ino, kind }));
    return { ino, rec };
  }

  private create(dirIno: Ino, name: string, kind: FileKind, opts: NewNodeOptions & { target?: string }): Attr {
    this.ctx.assertWritable();
    this.checkName(name);
    const { ino, rec } = this.ctx.pool.txn(() => {
      this.checkCanCreate(dirIno, name, kind);
      return this.newInode(dirIno, name, kind, opts);
    });
    this.ctx.markDirty();
    return this.records.toAttr(ino, rec);
  }

  /** Inside txn: NOT_FOUND / EXISTS / TOO_MANY_LINKS unless dirIno can take a new `kind` named name. */
  private checkCanCreate(dirIno: Ino, name: string, kind: FileKind): void {
    const dir = this.liveDirRecord(dirIno);
    if (this.findEntry(dirIno, name)) throw dmfsError('EXISTS', `'${name}' already exists`);
    if (kind === 'dir' && dir.rec.nlink >= LINK_MAX) throw dmfsError('TOO_MANY_LINKS', 'too many subdirectories');
  }

  /** Inside txn: dirIno's record; NOT_FOUND once it was removed. */
  private liveDirRecord(dirIno: Ino): InodeInChain {
    const dir = this.dirRecord(dirIno);
    if (dir.rec.nlink === 0) throw dmfsError('NOT_FOUND', 'directory was removed');
    return dir;
  }

  /** See LayerFs.createEntries. All content goes into blocks before the one transaction that names, maps and dates every node. */
  async createEntries(entries: readonly NamedEntry[]): Promise<Attr[]> {
    this.ctx.assertWritable();
    const contents: Buffer[] = [];
    for (const { name, entry } of entries) {
      this.checkName(name);
      const kind = entryKind(entry);
      if (kind === 'dir') throw dmfsError('INVALID', 'createEntries does not make directories');
      if (kind === 'symlink') checkSymlinkTarget(entry.target!);
      const content = entry.content ?? Buffer.alloc(0);
      if (kind !== 'file' && content.length > 0) throw dmfsError('INVALID', 'only a regular file has content');
      if (content.length > this.ctx.sizeLimitBytes) throw dmfsError('FILE_TOO_BIG', `${name}: past the layer's size limit of ${this.ctx.sizeLimitBytes} bytes`);
      contents.push(content);
    }
    const placed = await this.data.placeContents(contents);
    const newBlocks = placed.reduce((n, p) => n + p.taken.length, 0);
    const newInlineBytes = placed.reduce((n, p) => n + p.inlineBytes, 0);
    let made: { ino: Ino; rec: InodeRecord }[];
    try {
      made = this.ctx.pool.txn(() => {
        // Each directory is checked, and its times and record written, once for the run.
        const now = nowTime();
        const dirs = new Set<Ino>();
        const out = entries.map(({ dirIno, name, entry }, i) => {
          if (!dirs.has(dirIno)) this.liveDirRecord(dirIno);
          dirs.add(dirIno);
          if (this.findEntry(dirIno, name)) throw dmfsError('EXISTS', `'${name}' already exists`);
          const kind = entryKind(entry);
          return this.putInode(dirIno, name, kind, kind === 'symlink' ? { ...entry, mode: 0o777 } : entry, now, (ino, rec) => {
            if (placed[i].refs.length > 0) this.data.mapPlacedContent(ino, rec, placed[i]);
            rec.mtime = nsToTime(entry.mtimeNs);
            rec.atime = nsToTime(entry.atimeNs);
          });
        });
        this.data.checkLayerSpace(newBlocks, newInlineBytes);
        for (const dirIno of dirs) this.touchDir(dirIno, now);
        this.data.addUsage(newBlocks, newInlineBytes);
        return out;
      });
    } catch (err) {
      for (const p of placed) this.data.unplace(p);
      throw err;
    }
    this.ctx.markDirty();
    return made.map(({ ino, rec }) => this.records.toAttr(ino, rec));
  }

  /**
   * A regular file with no name (O_TMPFILE) in dirIno's layer, returned retained (the
   * caller releases it): nlink 0 and an orphan, so its last release, or the next open of
   * the pool after a crash, frees it, unless link() names it first. The directory is
   * unchanged, as on ext4.
   */
  async createUnnamed(dirIno: Ino, opts: NewNodeOptions): Promise<Attr> {
    this.ctx.assertWritable();
    if (kindFromMode(opts.mode) !== 'file') throw dmfsError('INVALID', 'an unnamed file must be a regular file');
    const { ino, rec } = this.ctx.pool.txn(() => {
      const dir = this.dirRecord(dirIno);
      if (dir.rec.nlink === 0) throw dmfsError('NOT_FOUND', 'directory was removed');
      const ino = this.ctx.pool.counter('ino');
      const rec = { ...this.newRecord(dirIno, '', 'file', opts, nowTime()), nlink: 0 };
      this.records.putRecord(ino, rec);
      this.ctx.tables.orphans.put(inodeKey(this.top, ino), Buffer.alloc(0));
      return { ino, rec };
    });
    this.ctx.openCounts.set(ino, (this.ctx.openCounts.get(ino) ?? 0) + 1);
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
    checkSymlinkTarget(target);
    return this.create(dirIno, name, 'symlink', { ...opts, mode: 0o777, target });
  }

  async link(ino: Ino, newDirIno: Ino, newName: string): Promise<Attr> {
    this.ctx.assertWritable();
    this.checkName(newName);
    const rec = this.ctx.pool.txn(() => {
      const src = this.records.mustInode(ino);
      if (src.rec.kind === 'dir') throw dmfsError('NOT_PERMITTED', 'hard links to directories are not allowed');
      if (src.rec.nlink >= LINK_MAX) throw dmfsError('TOO_MANY_LINKS', 'too many links');
      this.dirRecord(newDirIno);
      if (this.findEntry(newDirIno, newName)) throw dmfsError('EXISTS', `'${newName}' already exists`);
      const now = nowTime();
      const own = this.records.ownRecord(ino);
      // An unnamed (O_TMPFILE) or unlinked open file gets its first link: that is its name now.
      if (own.nlink === 0) {
        own.parent = newDirIno;
        own.name = newName;
      }
      own.nlink += 1;
      own.ctime = now;
      this.records.putRecord(ino, own);
      this.ctx.tables.orphans.del(inodeKey(this.top, ino));
      this.dirents.put(direntKey(this.top, newDirIno, newName), packDirent({ v: 1, ino, kind: own.kind }));
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
      this.ctx.tables.orphans.put(inodeKey(this.top, ino), Buffer.alloc(0));
      return;
    }
    this.destroyOwn(ino, rec.kind === 'dir');
  }

  /** Inside txn: deletes every record of ino in the own segment (and its directory entries), recycling its blocks. */
  private destroyOwn(ino: Ino, isDir: boolean): void {
    this.ctx.tables.inodes.del(inodeKey(this.top, ino));
    this.ctx.tables.orphans.del(inodeKey(this.top, ino));
    this.data.truncateOwnBlocks(ino, 0);
    if (isDir) {
      const [start, end] = direntRange(this.top, ino);
      for (const key of [...this.dirents.keys(start, end)]) this.dirents.del(key);
    }
  }

  async unlink(dirIno: Ino, name: string): Promise<void> {
    this.ctx.assertWritable();
    this.ctx.pool.txn(() => {
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
    this.ctx.pool.txn(() => {
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
    this.ctx.pool.txn(() => {
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
        this.dirents.put(direntKey(this.top, oldDirIno, oldName), packDirent({ v: 1, ino: dst.ino, kind: dst.kind }));
        this.dirents.put(direntKey(this.top, newDirIno, newName), packDirent({ v: 1, ino: src.ino, kind: src.kind }));
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
      this.dirents.put(direntKey(this.top, newDirIno, newName), packDirent({ v: 1, ino: src.ino, kind: src.kind }));
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

  async setOpaque(dirIno: Ino): Promise<void> {
    this.ctx.assertWritable();
    this.ctx.pool.txn(() => {
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
      for (const { key, value } of [...this.dirents.range(start, end)]) if (isWhiteout(unpackDirent(value))) this.dirents.del(key);
    });
    this.ctx.markDirty();
  }

  // ---- orphans --------------------------------------------------------------------

  /**
   * ino's last open handle is gone (under its mutex): an orphan without a link left is
   * destroyed, one linked again since is no orphan any more. One transaction.
   */
  releaseOrphan(ino: Ino): void {
    this.ctx.pool.txn(() => {
      if (this.ctx.tables.orphans.has(inodeKey(this.top, ino))) this.settleOrphan(ino);
    });
  }

  /** At close: every orphan of the own segment is settled (the handles die with the layer). One transaction. */
  releaseOrphans(): void {
    this.ctx.pool.txn(() => {
      for (const key of [...this.ctx.tables.orphans.keys([this.top], [this.top + 1])]) this.settleOrphan((key as [number, number])[1]);
    });
  }

  /** Inside txn: an orphan without open handles is destroyed if it has no link left, else it is no orphan any more. */
  private settleOrphan(ino: Ino): void {
    const raw = this.ctx.tables.inodes.get(inodeKey(this.top, ino));
    if (!raw || unpackInode(raw).nlink === 0) this.destroyOwn(ino, false);
    else this.ctx.tables.orphans.del(inodeKey(this.top, ino));
  }
}
