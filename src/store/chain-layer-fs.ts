import { dmfsError } from '../errors';
import type { ThinPool } from '../pool/thin-pool';
import { FileData } from './file-data';
import { InodeRecords, ROOT_INO } from './inode-records';
import { LayerContext, type LayerContextOptions } from './layer-context';
import { LayerNamespace, NAME_MAX_BYTES } from './layer-namespace';
import {
  type Attr, type ChangeDir, type DirEntry, type FileKind, type Ino, type LayerChange, type LayerFs,
  type NewNodeOptions, type ReadOptions, type RenameFlags, type SetAttr, type StatFs, type XattrSetFlags,
} from './layer-store';
import { layerStatfs } from './layer-statfs';
import { direntRange, isWhiteout, nowTime, unpackDirent, unpackInode, type DirentRecord, type InodeRecord } from './records';
import type { StoreTables } from './store-tables';
import { VerifiedBlockReader } from './verified-block-reader';

const XATTR_NAME_MAX_BYTES = 255;
const XATTR_VALUE_MAX_BYTES = 64 * 1024;

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
  private readonly namespace: LayerNamespace;
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
    this.namespace = new LayerNamespace(ctx, this.records, this.data);
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

  // ---- namespace ------------------------------------------------------------------

  lookup(dirIno: Ino, name: string): Promise<Attr | null> {
    return this.namespace.lookup(dirIno, name);
  }

  resolve(path: string): Promise<Attr> {
    return this.namespace.resolve(path);
  }

  readdir(dirIno: Ino): Promise<DirEntry[]> {
    return this.namespace.readdir(dirIno);
  }

  mknod(dirIno: Ino, name: string, opts: NewNodeOptions): Promise<Attr> {
    return this.namespace.mknod(dirIno, name, opts);
  }

  mkdir(dirIno: Ino, name: string, opts: NewNodeOptions): Promise<Attr> {
    return this.namespace.mkdir(dirIno, name, opts);
  }

  symlink(dirIno: Ino, name: string, target: string, opts: Omit<NewNodeOptions, 'mode'>): Promise<Attr> {
    return this.namespace.symlink(dirIno, name, target, opts);
  }

  link(ino: Ino, newDirIno: Ino, newName: string): Promise<Attr> {
    return this.namespace.link(ino, newDirIno, newName);
  }

  unlink(dirIno: Ino, name: string): Promise<void> {
    return this.namespace.unlink(dirIno, name);
  }

  rmdir(dirIno: Ino, name: string): Promise<void> {
    return this.namespace.rmdir(dirIno, name);
  }

  rename(oldDirIno: Ino, oldName: string, newDirIno: Ino, newName: string, flags?: RenameFlags): Promise<void> {
    return this.namespace.rename(oldDirIno, oldName, newDirIno, newName, flags);
  }

  setOpaque(dirIno: Ino): Promise<void> {
    return this.namespace.setOpaque(dirIno);
  }

  // ---- inode records ------------------------------------------------------------

  async getattr(ino: Ino): Promise<Attr> {
    return this.records.getattr(ino);
  }

  async readlink(ino: Ino): Promise<string> {
    return this.records.readlink(ino);
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
      this.namespace.releaseOrphan(ino);
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
      const merged = this.namespace.mergedEntries(dirIno);
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
      this.namespace.releaseOrphans();
      await this.pool.sync();
    }
    this.ctx.closed = true;
    await this.onClose();
  }
}
