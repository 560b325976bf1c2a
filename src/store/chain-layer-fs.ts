import type { ThinPool } from '../pool/thin-pool';
import { ChangeListing } from './change-listing';
import { FileData } from './file-data';
import { FileSpace } from './file-space';
import { FileRangeCopy } from './file-range-copy';
import { InodeRecords, ROOT_INO } from './inode-records';
import { LayerContext, type LayerContextOptions } from './layer-context';
import { LayerNamespace, NAME_MAX_BYTES } from './layer-namespace';
import type {
  Attr, DirEntry, FallocateHow, Ino, LayerChange, LayerFs, NamedEntry, NewNodeOptions, ReadOptions, RenameFlags, SetAttr, StatFs, XattrSetFlags,
} from './layer-store';
import { layerStatfs } from './layer-statfs';
import { LayerXattrs } from './layer-xattrs';
import type { StoreTables } from './store-tables';
import { VerifiedBlockReader } from './verified-block-reader';

export interface ChainLayerFsOptions extends LayerContextOptions {
  /** Called once by close(), after the final sync. */
  onClose: () => Promise<void>;
  /** The store's mount registration (see LayerFs.claimMount / releaseMount). */
  onClaimMount?: (mountpoint: string, coherent: boolean) => void;
  onReleaseMount?: (mountpoint: string) => void;
}

/**
 * A layer seen through its chain of segments. Namespace changes are single synchronous
 * metadata transactions (atomic, no await inside); data writes put bytes into blocks this
 * layer owns (or freshly reserved ones) before the transaction that maps them.
 *
 * Invariants kept by every method:
 * - bytes of a file past its size, inside its last block, read as zeros in every segment;
 * - no segment maps a file block at or past ceil(size / blockSize) of its own record,
 *   except unwritten blocks that fallocate reserved with KEEP_SIZE (they read as zeros);
 * - a data block mapped by several block-map entries has a reference count and is never
 *   written in place (block-sharing.ts).
 *
 * Made of parts sharing one LayerContext: InodeRecords (records, attributes), FileData
 * (block maps, copy-on-write, inline tails; checksums through VerifiedBlockReader),
 * FileSpace (fallocate's modes, SEEK_DATA / SEEK_HOLE),
 * LayerNamespace (entries, whiteouts, links, orphans), LayerXattrs and ChangeListing.
 * This class forwards each operation to its part, which checks the layer is open (or
 * writable) and its arguments; it keeps what belongs to the layer as a whole: open
 * handles, statfs, mount claims, the periodic sync and close. Forwarders are not async,
 * so a call costs no promise more than the part's own.
 */
export class ChainLayerFs implements LayerFs {
  readonly layerName: string;
  readonly readOnly: boolean;
  readonly rootIno = ROOT_INO;
  readonly sizeLimitBytes: number;

  private readonly ctx: LayerContext;
  private readonly records: InodeRecords;
  private readonly data: FileData;
  private readonly space: FileSpace;
  private readonly rangeCopy: FileRangeCopy;
  private readonly namespace: LayerNamespace;
  private readonly xattrs: LayerXattrs;
  private readonly changeListing: ChangeListing;
  /** Inodes of the lower segments (statfs), counted at the first statfs. */
  private lowerInodeCount: number | null = null;
  private syncTimer: NodeJS.Timeout | null = null;
  private readonly onClose: () => Promise<void>;
  private readonly onClaimMount: (mountpoint: string, coherent: boolean) => void;
  private readonly onReleaseMount: (mountpoint: string) => void;

  constructor(pool: ThinPool, tables: StoreTables, opts: ChainLayerFsOptions) {
    const ctx = new LayerContext(pool, tables, opts);
    this.ctx = ctx;
    this.layerName = ctx.layerName;
    this.readOnly = ctx.readOnly;
    this.sizeLimitBytes = ctx.sizeLimitBytes;
    this.records = new InodeRecords(ctx);
    this.data = new FileData(ctx, this.records, new VerifiedBlockReader(ctx));
    this.space = new FileSpace(ctx, this.records, this.data);
    this.rangeCopy = new FileRangeCopy(ctx, this.records, this.data);
    this.namespace = new LayerNamespace(ctx, this.records, this.data);
    this.xattrs = new LayerXattrs(ctx, this.records);
    this.changeListing = new ChangeListing(ctx, this.records, this.namespace);
    this.onClose = opts.onClose;
    this.onClaimMount = opts.onClaimMount ?? (() => undefined);
    this.onReleaseMount = opts.onReleaseMount ?? (() => undefined);
    if (!this.readOnly) {
      // Metadata commits at once; this makes it (and the data under it) durable at least every second.
      this.syncTimer = setInterval(() => void this.periodicSync(), 1000);
      this.syncTimer.unref();
    }
  }

  // ---- inode records ------------------------------------------------------------

  getattr(ino: Ino): Promise<Attr> {
    return this.records.getattr(ino);
  }

  readlink(ino: Ino): Promise<string> {
    return this.records.readlink(ino);
  }

  async setattr(ino: Ino, changes: SetAttr): Promise<Attr> {
    this.ctx.assertWritable();
    if (changes.sizeBytes !== undefined) await this.data.truncate(ino, changes.sizeBytes);
    return this.records.setAttributes(ino, changes);
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

  createEntries(entries: readonly NamedEntry[]): Promise<Attr[]> {
    return this.namespace.createEntries(entries);
  }

  createUnnamed(dirIno: Ino, opts: NewNodeOptions): Promise<Attr> {
    return this.namespace.createUnnamed(dirIno, opts);
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

  // ---- data ---------------------------------------------------------------------

  read(ino: Ino, target: Buffer, offsetBytes: number, opts?: ReadOptions): Promise<number> {
    return this.data.read(ino, target, offsetBytes, opts);
  }

  write(ino: Ino, data: Buffer, offsetBytes: number): Promise<number> {
    return this.data.write(ino, data, offsetBytes);
  }

  fallocate(ino: Ino, offsetBytes: number, lengthBytes: number, how: FallocateHow): Promise<void> {
    return this.space.fallocate(ino, offsetBytes, lengthBytes, how);
  }

  seekData(ino: Ino, offsetBytes: number, what: 'data' | 'hole'): Promise<number> {
    return this.space.seekData(ino, offsetBytes, what);
  }

  copyFileRange(inoIn: Ino, offInBytes: number, inoOut: Ino, offOutBytes: number, lengthBytes: number): Promise<number> {
    return this.rangeCopy.copy(inoIn, offInBytes, inoOut, offOutBytes, lengthBytes);
  }

  // ---- open handles -------------------------------------------------------------

  retain(ino: Ino): void {
    const openCounts = this.ctx.openCounts;
    openCounts.set(ino, (openCounts.get(ino) ?? 0) + 1);
  }

  async release(ino: Ino): Promise<void> {
    const openCounts = this.ctx.openCounts;
    const n = (openCounts.get(ino) ?? 0) - 1;
    if (n > 0) {
      openCounts.set(ino, n);
      return;
    }
    openCounts.delete(ino);
    if (this.readOnly || this.ctx.closed) return;
    await this.ctx.inodeMutex.run(ino, async () => {
      this.namespace.releaseOrphan(ino);
    });
  }

  // ---- xattrs -------------------------------------------------------------------

  getxattr(ino: Ino, name: string): Promise<Buffer | null> {
    return this.xattrs.getxattr(ino, name);
  }

  listxattr(ino: Ino): Promise<string[]> {
    return this.xattrs.listxattr(ino);
  }

  setxattr(ino: Ino, name: string, value: Buffer, flags?: XattrSetFlags): Promise<void> {
    return this.xattrs.setxattr(ino, name, value, flags);
  }

  removexattr(ino: Ino, name: string): Promise<void> {
    return this.xattrs.removexattr(ino, name);
  }

  // ---- whole layer --------------------------------------------------------------

  async statfs(): Promise<StatFs> {
    const ctx = this.ctx;
    ctx.assertOpen();
    const inodes = ctx.tables.inodes;
    const top = ctx.top;
    // Lower segments never change under an open layer: counted once.
    this.lowerInodeCount ??= ctx.segments.slice(1).reduce((n, s) => n + inodes.count([s], [s + 1]), 0);
    return layerStatfs({
      blockSizeBytes: ctx.blockSizeBytes,
      sizeLimitBytes: this.sizeLimitBytes,
      chainUsedBytes: this.data.chainUsedBytes(),
      poolAvailableBlocks: ctx.pool.space().availableBlocks,
      chainInodes: this.lowerInodeCount + inodes.count([top], [top + 1]),
      readOnly: this.readOnly,
      nameMaxBytes: NAME_MAX_BYTES,
    });
  }

  async claimMount(mountpoint: string, opts: { coherent?: boolean } = {}): Promise<void> {
    this.ctx.assertOpen();
    this.onClaimMount(mountpoint, opts.coherent === true);
  }

  async releaseMount(mountpoint: string): Promise<void> {
    if (!this.ctx.closed) this.onReleaseMount(mountpoint);
  }

  changes(): AsyncIterable<LayerChange> {
    return this.changeListing.changes();
  }

  private async periodicSync(): Promise<void> {
    if (!this.ctx.dirty || this.ctx.closed) return;
    try {
      await this.fsync();
      await this.ctx.pool.trim();
    } catch {
      // The next tick or an explicit fsync reports the error.
    }
  }

  async fsync(): Promise<void> {
    this.ctx.dirty = false;
    await this.ctx.pool.sync();
  }

  async close(): Promise<void> {
    if (this.ctx.closed) return;
    if (this.syncTimer) clearInterval(this.syncTimer);
    this.syncTimer = null;
    if (!this.readOnly) {
      // Files still open at close: their orphans are freed now (the handles die with the layer).
      this.namespace.releaseOrphans();
      await this.ctx.pool.sync();
    }
    this.ctx.closed = true;
    await this.onClose();
  }
}
