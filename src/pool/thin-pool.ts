import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { DmfsError, dmfsError } from '../errors';
import type { ReadBlocksOptions } from '../native';
import { asDataBlock, type DataBlock } from './block-address';
import { BackupMark } from './backup-mark';
import { BlockReservations, RESERVATION_KEEP } from './block-reservations';
import { packUint48, unpackUint48 } from './codec';
import { DataBlockIo } from './data-block-io';
import { blockDeviceBytes, type DataDeviceCheck } from './data-device';
import { describeHostSpace, fileAllocatedBytes, HOST_RESERVE_BYTES, hostFreeBytes, isOnReadOnlyFs, type HostSpace } from './host-space';
import { listBackups, takeBackup, type BackupInfo } from './metadata-backup';
import { MetadataEnv, type Table } from './metadata-env';
import { createPoolFiles } from './pool-create';
import type { PoolCreateSettings, PoolOptions } from './pool-options';
import { poolPaths, type PoolPaths } from './pool-paths';
import { currentProcess } from './process-identity';
import { SpaceMap } from './space-map';
import { packSuperblock, unpackSuperblock, type Superblock } from './superblock';

const fdatasync = promisify(fs.fdatasync);

export interface ThinPoolOpenOptions {
  /**
   * Open even when the data device is shorter than the metadata says (DATA_DEVICE_SHORT),
   * so `check` can report it and `check --repair` can grow it back. Nothing is re-extended
   * by open itself.
   */
  allowShortDataDevice?: boolean;
}

export interface PoolSpace {
  blockSizeBytes: number;
  totalBlocks: number;
  usedBlocks: number;
  /** Blocks that allocating writes may still take (min free space and host free space applied). */
  availableBlocks: number;
  /** Blocks below which allocation stops (dm.min_free_space). */
  minFreeBlocks: number;
}

/**
 * The thin pool: a data device of fixed-size blocks, its space map, and the metadata
 * environment the layer store keeps its records in. Knows blocks, space and
 * transactions — nothing of files or layers.
 *
 * Allocation protocol (record intent before acting, reconcile at open):
 * 1. `takeBlock()` hands out a block from this process's reservation. Reserved blocks are
 *    marked used in the space map and listed under this process's owner id, committed
 *    before any data is written to them.
 * 2. The caller writes the block's data.
 * 3. Inside `txn`, the caller records the mapping and calls `consumeBlock(b)`.
 * A crash between 1 and 3 leaves the block in a dead owner's reservation; `open` frees it.
 * Freed blocks (`recycleBlock`, inside the caller's txn) return to the reservation and are
 * punched and released to the space map by `trim()`, so a freed block is never both
 * free and still referenced by an uncommitted transaction.
 */
export class ThinPool {
  readonly paths: PoolPaths;
  readonly env: MetadataEnv;
  private sb: Superblock;
  private readonly spaceMap: SpaceMap;
  private readonly meta: Table;
  private readonly backupMark: BackupMark;
  private readonly reservations: BlockReservations;
  private readonly dataFd: number;
  private readonly blocks: DataBlockIo;
  private closed = false;
  private syncing: Promise<void> | null = null;
  private syncQueued: Promise<void> | null = null;
  /** A host-full warning was emitted and no allocation has succeeded since (one line per episode). */
  private hostFullWarned = false;
  /** Set by the layer store: what a backup's listing says about the copy (layer count). */
  backupDescriber: (() => { layers: number }) | null = null;
  /** check and restore set this: a pool under repair is not what a backup should keep. */
  backupsSuspended = false;

  private constructor(paths: PoolPaths, env: MetadataEnv, sb: Superblock, dataFd: number, readonly readOnly: boolean) {
    this.paths = paths;
    this.env = env;
    this.sb = sb;
    this.dataFd = dataFd;
    this.blocks = new DataBlockIo(dataFd, {
      blockSizeBytes: sb.blockSizeBytes,
      dataPath: sb.dataMode === 'loop' ? paths.dataFile : sb.dataDevice!,
      nrBlocks: (fresh) => {
        if (fresh) this.refreshSuperblock();
        return this.sb.nrBlocks;
      },
      warnHostFull: (detail) => this.warnHostFull(detail),
    });
    this.meta = env.table('pool-meta');
    this.backupMark = new BackupMark(this.meta);
    this.spaceMap = new SpaceMap(env, sb.nrBlocks);
    const host = {
      env,
      spaceMap: this.spaceMap,
      allocationAllowance: () => this.allocationAllowance(),
      discard: (blocks: DataBlock[]) => (this.sb.options.blkDiscard ? this.blocks.punch(blocks) : Promise.resolve()),
      onRefilled: () => {
        this.hostFullWarned = false;
      },
    };
    // Read-only: no owner record (nothing may be written).
    this.reservations = new BlockReservations(host, readOnly ? null : currentProcess(), () => this.counter('nextOwner'));
  }

  /** This process's id among the pool's owners (0 when read-only). */
  get ownerId(): number {
    return this.reservations.ownerId;
  }

  /** Creates a new pool under root (see createPoolFiles) and opens it. */
  static async create(root: string, settings: PoolCreateSettings, options: PoolOptions): Promise<ThinPool> {
    await createPoolFiles(root, settings, options);
    return ThinPool.open(root);
  }

  /**
   * Opens an existing pool and frees what dead processes left reserved. A pool on a
   * read-only file system opens read-only (nothing written: no owner record, no
   * reclaim, no reservation; writes fail with POOL_READ_ONLY). A data device shorter than
   * the blocks the space map uses is refused (DATA_DEVICE_SHORT) unless
   * `opts.allowShortDataDevice`; one merely shorter than the superblock, with no used
   * block past its end, is grown back (sparse, nothing lost).
   */
  static async open(root: string, opts: ThinPoolOpenOptions = {}): Promise<ThinPool> {
    const paths = poolPaths(root);
    if (!fs.existsSync(path.join(paths.metadataDir, 'data.mdb'))) {
      throw dmfsError('POOL_NOT_FOUND', `no pool at ${paths.root}. Create one with 'dmfs pool create --root ${paths.root}'.`);
    }
    const readOnly = isOnReadOnlyFs(paths.metadataDir);
    const env = MetadataEnv.open(paths.metadataDir, {
      create: false,
      readOnly,
      // Without FORMAT or format record: the metadata proves the format when its superblock decodes.
      provesFormat: (e) => {
        try {
          const raw = e.table('pool-meta').get('superblock');
          return raw !== undefined && unpackSuperblock(raw).nrBlocks > 0;
        } catch {
          return false;
        }
      },
    });
    let raw: Buffer | undefined;
    try {
      raw = env.table('pool-meta').get('superblock');
    } catch {
      raw = undefined;
    }
    if (!raw) {
      await env.close();
      throw dmfsError('METADATA_CORRUPT', `pool at ${paths.root} has no superblock`);
    }
    let sb: Superblock;
    try {
      sb = unpackSuperblock(raw);
    } catch (err) {
      await env.close();
      throw err;
    }
    let dataFd: number;
    try {
      dataFd = fs.openSync(sb.dataMode === 'loop' ? paths.dataFile : sb.dataDevice!, readOnly ? 'r' : 'r+');
    } catch (err) {
      await env.close();
      throw dmfsError('IO_ERROR', `cannot open the pool's data device: ${(err as Error).message}`, err);
    }
    let pool: ThinPool;
    try {
      pool = new ThinPool(paths, env, sb, dataFd, readOnly);
    } catch (err) {
      fs.closeSync(dataFd);
      await env.close();
      throw err;
    }
    try {
      const dev = pool.dataDeviceCheck();
      if (dev.short && dev.usedBlocksBeyondEnd === 0 && !readOnly && sb.dataMode === 'loop') {
        // Only unused blocks were cut off: growing the file back (sparse) loses nothing.
        pool.growDataDevice();
      } else if (dev.short && dev.usedBlocksBeyondEnd > 0 && !opts.allowShortDataDevice) {
        throw dmfsError(
          'DATA_DEVICE_SHORT',
          `the data ${sb.dataMode === 'loop' ? 'file' : 'device'} ${pool.dataPath} has ${dev.deviceBytes} bytes (${dev.deviceBlocks} blocks); ` +
            `the pool's metadata expects ${dev.expectedBytes} bytes and uses blocks up to ${dev.highestUsedBlock}: ${dev.usedBlocksBeyondEnd} used blocks are past its end. ` +
            `Restore the data file from a backup if you have one; otherwise 'dmfs check --repair --root ${paths.root}' grows it back, ` +
            'and the data of the blocks past the end is lost (check lists the files; reading them fails with EIO).',
        );
      }
      if (!readOnly) await pool.reclaimDeadOwners();
    } catch (err) {
      await pool.closeWithoutWrites();
      throw err;
    }
    return pool;
  }

  /**
   * The data device's size against the metadata: short when it holds fewer bytes than
   * the superblock's nrBlocks; usedBlocksBeyondEnd counts the used blocks that are gone.
   */
  dataDeviceCheck(): DataDeviceCheck {
    this.refreshSuperblock();
    const bs = this.sb.blockSizeBytes;
    const deviceBytes = this.sb.dataMode === 'loop' ? fs.fstatSync(this.dataFd).size : blockDeviceBytes(this.sb.dataDevice!);
    const deviceBlocks = Math.floor(deviceBytes / bs);
    const expectedBytes = this.sb.nrBlocks * bs;
    const highestUsedBlock = this.spaceMap.highestUsedBlock();
    const usedBlocksBeyondEnd = deviceBlocks < this.sb.nrBlocks ? this.spaceMap.usedBlocksFrom(deviceBlocks) : 0;
    return { deviceBytes, expectedBytes, deviceBlocks, highestUsedBlock, usedBlocksBeyondEnd, short: deviceBlocks < this.sb.nrBlocks };
  }

  /**
   * Loop mode: grows a short data file back to the superblock's size (sparse: the blocks
   * that were cut off read as zeros). Returns the bytes added. Direct mode cannot grow a
   * device: NOT_SUPPORTED.
   */
  growDataDevice(): number {
    const dev = this.dataDeviceCheck();
    if (!dev.short) return 0;
    if (this.sb.dataMode !== 'loop') {
      throw dmfsError('NOT_SUPPORTED', `the data device ${this.dataPath} is ${dev.deviceBytes} bytes, the pool needs ${dev.expectedBytes}: replace it with a device of that size`);
    }
    this.env.assertWritable();
    fs.ftruncateSync(this.dataFd, dev.expectedBytes);
    return dev.expectedBytes - dev.deviceBytes;
  }

  /** Free space of the host file system under the pool (direct mode: null). */
  hostSpace(): HostSpace | null {
    if (this.sb.dataMode !== 'loop') return null;
    const dir = path.dirname(this.paths.dataFile);
    let s: fs.StatsFs;
    try {
      s = fs.statfsSync(dir);
    } catch {
      return null;
    }
    const freeBytes = Number(s.bavail) * Number(s.bsize);
    const totalBytes = Number(s.blocks) * Number(s.bsize);
    return describeHostSpace(dir, freeBytes, totalBytes, this.sb.blockSizeBytes);
  }

  get superblock(): Readonly<Superblock> {
    return this.sb;
  }

  get blockSizeBytes(): number {
    return this.sb.blockSizeBytes;
  }

  get options(): Readonly<PoolOptions> {
    return this.sb.options;
  }

  /** The data file or device path. */
  get dataPath(): string {
    return this.sb.dataMode === 'loop' ? this.paths.dataFile : this.sb.dataDevice!;
  }

  /** A persistent counter in the pool's metadata (ids); must run inside txn. Returns the next value, starting at 1. */
  counter(name: string): number {
    const next = unpackUint48(this.meta.get(`counter:${name}`)) + 1;
    this.meta.put(`counter:${name}`, packUint48(next));
    return next;
  }

  /** Inside txn: makes the counter's next value at least `next` (restore). */
  raiseCounter(name: string, next: number): void {
    if (unpackUint48(this.meta.get(`counter:${name}`)) >= next - 1) return;
    this.meta.put(`counter:${name}`, packUint48(next - 1));
  }

  // ---- metadata backups (metadata-backup.ts) ---------------------------------

  /**
   * Inside txn: marks the metadata changed since the last backup, for `reason` (create,
   * commit, rm, import, unmount...). O(1): one get and one put. The backup itself is
   * taken by close() (this process or, if it dies first, the next one to close).
   */
  noteMetadataChange(reason: string, opts: { replace?: boolean } = {}): void {
    this.backupMark.note(reason, opts);
  }

  /** Whether a change is waiting for a backup. */
  hasPendingBackup(): boolean {
    return this.backupMark.isSet();
  }

  /** Backups of this pool, newest first. */
  listBackups(): BackupInfo[] {
    return listBackups(this.paths.metadataDir);
  }

  /**
   * Takes a backup now when the metadata changed since the last one (or `force`), and
   * prunes to dmfs.metadata_backups. Null when none was taken (nothing changed, or off).
   */
  async backupMetadata(opts: { force?: boolean; reason?: string } = {}): Promise<BackupInfo | null> {
    this.refreshSuperblock();
    const keep = this.sb.options.metadataBackups;
    const pending = this.backupMark.read();
    if (keep <= 0 || (!pending && !opts.force)) return null;
    const reasons = [...(pending?.reasons ?? []), ...(opts.reason ? [opts.reason] : [])];
    // Flushed first: the copy then holds nothing the data device does not.
    await this.sync();
    const info = await takeBackup(this.env, { reasons, layers: this.backupDescriber?.().layers ?? null, keep });
    if (pending) this.env.txn(() => this.backupMark.clearIfUnchanged(pending));
    return info;
  }

  /** Whether any process other than this one has the pool open. */
  hasOtherLiveOwners(): boolean {
    return this.reservations.hasOtherLiveOwners();
  }

  /** One atomic metadata transaction (see MetadataEnv.txn). */
  txn<T>(fn: () => T): T {
    return this.env.txn(fn);
  }

  table(name: string): Table {
    return this.env.table(name);
  }

  private refreshSuperblock(): void {
    const raw = this.meta.get('superblock');
    if (raw) {
      this.sb = unpackSuperblock(raw);
      this.spaceMap.setTotalBlocks(this.sb.nrBlocks);
    }
  }

  // ---- space ----------------------------------------------------------------

  /** Blocks that must stay free (dm.min_free_space) on a device of `total` blocks. */
  private minFreeBlocks(total: number): number {
    return Math.ceil((total * this.sb.options.minFreeSpacePercent) / 100);
  }

  /** Space figures; available is capped by min free space and, in loop mode, by the host filesystem's free space. */
  space(): PoolSpace {
    this.refreshSuperblock();
    const total = this.sb.nrBlocks;
    // Blocks reserved by live processes but not yet written are free as far as anyone is concerned.
    const used = this.spaceMap.usedBlocks() - this.reservations.reservedCount();
    const minFree = this.minFreeBlocks(total);
    let available = Math.max(0, total - used - minFree);
    if (this.sb.dataMode === 'loop') {
      const hostFree = hostFreeBytes(path.dirname(this.paths.dataFile));
      if (hostFree !== null) {
        // Blocks in the sparse file not yet backed by the host also need host space.
        const allocatedBytes = fileAllocatedBytes(this.dataFd);
        const unbacked = Math.max(0, used * this.sb.blockSizeBytes - allocatedBytes);
        available = Math.min(available, Math.max(0, Math.floor((hostFree - unbacked - HOST_RESERVE_BYTES) / this.sb.blockSizeBytes)));
      }
    }
    return { blockSizeBytes: this.sb.blockSizeBytes, totalBlocks: total, usedBlocks: used, availableBlocks: available, minFreeBlocks: minFree };
  }

  /** Whether new layers may be created (dm.min_free_space). */
  hasMinFreeSpace(): boolean {
    this.refreshSuperblock();
    const total = this.sb.nrBlocks;
    const minFree = this.minFreeBlocks(total);
    // Reservations count as used here: they are what allocating writes will consume first.
    return total - this.spaceMap.usedBlocks() > minFree;
  }

  /**
   * A block for new data, reserved to this process and committed as used.
   * Null when the pool is at dm.min_free_space or the device is full.
   */
  takeBlock(): DataBlock | null {
    return this.reservations.take();
  }

  /** Fills this process's reservation if it is empty (what takeBlock would do), ahead of need. */
  reserveAhead(): void {
    this.reservations.fillAhead();
  }

  /** Returns a taken block that was not used (the caller's transaction failed). */
  untakeBlock(block: DataBlock): void {
    this.reservations.untake(block);
  }

  /** Inside the caller's txn: the block is now referenced by committed metadata. */
  consumeBlock(block: DataBlock): void {
    this.reservations.consume(block);
  }

  /** Inside the caller's txn: the block is no longer referenced; it returns to this process's reservation. */
  recycleBlock(block: DataBlock): void {
    this.reservations.recycle(block);
  }

  /** Inside txn: how many blocks a refill may take now (after any auto-extension). */
  private allocationAllowance(): number {
    this.refreshSuperblock();
    this.maybeAutoextend();
    const total = this.sb.nrBlocks;
    return Math.min(total - this.spaceMap.usedBlocks() - this.minFreeBlocks(total), this.hostBlockAllowance());
  }

  /**
   * Says once per episode, on stderr (a mount daemon's log), that the host file system
   * stopped a write; stderr write failures are ignored by Node, so this is safe when full.
   */
  private warnHostFull(detail: string): void {
    if (this.hostFullWarned) return;
    this.hostFullWarned = true;
    process.emitWarning(`dmfs: ${detail}; writes get ENOSPC until space is freed, reads keep working`, { code: 'DMFS_HOST_FULL' });
  }

  /**
   * Loop mode: how many new blocks the host file system can still back, keeping
   * HOST_RESERVE_BYTES free (a newly allocated block is counted as not yet backed, the
   * safe side). Direct mode, or statfs unavailable: no limit.
   */
  private hostBlockAllowance(): number {
    if (this.sb.dataMode !== 'loop') return Number.MAX_SAFE_INTEGER;
    const hostFree = hostFreeBytes(path.dirname(this.paths.dataFile));
    if (hostFree === null) return Number.MAX_SAFE_INTEGER;
    return Math.floor((hostFree - HOST_RESERVE_BYTES) / this.sb.blockSizeBytes);
  }

  /** Why takeBlock returned null: the POOL_FULL error a writer should raise, naming the limit that was hit. */
  noSpaceError(): DmfsError {
    const host = this.hostSpace();
    if (host && host.state === 'full') {
      this.warnHostFull(`the host file system under the pool is full (${host.freeBytes} bytes free at ${host.path})`);
      return dmfsError('POOL_FULL', `the host file system under the pool is full (${host.freeBytes} bytes free at ${host.path}): ${host.advice}`);
    }
    return dmfsError('POOL_FULL', 'the thin pool is out of data space (at dm.min_free_space); free space with dmfs rm or grow it with dmfs pool resize');
  }

  /** Loop mode: grows the data file when usage crosses dm.thinp_autoextend_threshold. Runs inside txn. */
  private maybeAutoextend(): void {
    const o = this.sb.options;
    if (this.sb.dataMode !== 'loop' || o.autoextendThresholdPercent <= 0) return;
    const total = this.sb.nrBlocks;
    const used = this.spaceMap.usedBlocks();
    if (used * 100 < total * o.autoextendThresholdPercent) return;
    const growBlocks = Math.max(1, Math.floor((total * o.autoextendPercent) / 100));
    const hostFree = hostFreeBytes(path.dirname(this.paths.dataFile)) ?? Infinity;
    const cappedBlocks = Math.min(growBlocks, Math.floor(hostFree / this.sb.blockSizeBytes));
    if (cappedBlocks <= 0) return;
    this.setDataBlocks(total + cappedBlocks);
    process.emitWarning(`dmfs: data file auto-extended from ${total} to ${total + cappedBlocks} blocks`, { code: 'DMFS_AUTOEXTEND' });
  }

  private setDataBlocks(nrBlocks: number): void {
    fs.ftruncateSync(this.dataFd, nrBlocks * this.sb.blockSizeBytes);
    this.sb = { ...this.sb, nrBlocks };
    this.meta.put('superblock', packSuperblock(this.sb));
    this.spaceMap.setTotalBlocks(nrBlocks);
  }

  /** Grows the pool (loop mode: the data file; direct mode: to the device's current size). Online. */
  async resize(newSizeBytes: number | null): Promise<{ oldBlocks: number; newBlocks: number }> {
    return this.env.txn(() => {
      this.refreshSuperblock();
      const oldBlocks = this.sb.nrBlocks;
      const bytes = this.sb.dataMode === 'direct' ? blockDeviceBytes(this.sb.dataDevice!) : newSizeBytes;
      if (bytes === null) throw dmfsError('USAGE', 'a loop-mode pool needs the new size');
      const newBlocks = Math.floor(bytes / this.sb.blockSizeBytes);
      if (newBlocks < oldBlocks) throw dmfsError('NOT_SUPPORTED', `shrinking a pool is not supported (${oldBlocks} blocks now, ${newBlocks} asked)`);
      if (newBlocks > oldBlocks) this.setDataBlocks(newBlocks);
      return { oldBlocks, newBlocks };
    });
  }

  /** Changes runtime options (dm.basesize, dm.min_free_space, ...). */
  setOptions(options: PoolOptions): void {
    this.env.txn(() => {
      this.refreshSuperblock();
      this.sb = { ...this.sb, options };
      this.meta.put('superblock', packSuperblock(this.sb));
    });
  }

  /** Gives recycled blocks beyond `keep` back to the space map, punching holes first (dm.blkdiscard). */
  trim(keep = RESERVATION_KEEP): Promise<void> {
    return this.reservations.trim(keep);
  }

  /** Frees blocks reserved by processes that died, and forgets those owners. Returns how many blocks. */
  reclaimDeadOwners(): Promise<number> {
    return this.reservations.reclaimDeadOwners();
  }

  /** Whether the process registered as ownerId is still alive. */
  isOwnerAlive(ownerId: number): boolean {
    return this.reservations.isOwnerAlive(ownerId);
  }

  /** Every block reserved by live or dead owners (for check). */
  reservedBlocks(): Set<number> {
    return this.reservations.allReserved();
  }

  usedBlocksFromMap(): Iterable<DataBlock> {
    return this.spaceMap.usedBlockList();
  }

  isBlockUsed(block: DataBlock): boolean {
    return this.spaceMap.isUsed(block);
  }

  /** check --repair: marks blocks used or free to match what metadata references. */
  repairSpaceMap(referenced: ReadonlySet<number>): { markedUsed: number; markedFree: number } {
    return this.env.txn(() => {
      const reserved = this.reservedBlocks();
      const free: DataBlock[] = [];
      for (const b of this.spaceMap.usedBlockList()) if (!referenced.has(b) && !reserved.has(b)) free.push(b);
      this.spaceMap.release(free);
      let markedUsed = 0;
      for (const b of referenced) {
        if (!this.spaceMap.isUsed(asDataBlock(b))) {
          this.spaceMap.markUsed(asDataBlock(b));
          markedUsed++;
        }
      }
      this.spaceMap.recount();
      return { markedUsed, markedFree: free.length };
    });
  }

  // ---- data (data-block-io.ts) ----------------------------------------------

  /** Fills targets[i] from block blocks[i] at offsetsInBlock[i] (gathered). `opts.mayBlock`: see BlockIo.readBlocks. */
  readBlocks(blocks: readonly DataBlock[], offsetsInBlockBytes: readonly number[], targets: Buffer[], opts?: ReadBlocksOptions): Promise<void> {
    return this.blocks.readBlocks(blocks, offsetsInBlockBytes, targets, opts);
  }

  /** Writes several (block, offset in block, data) pieces in one gathered call. */
  writeBlocks(pieces: readonly { block: DataBlock; offset: number; data: Buffer }[]): Promise<void> {
    return this.blocks.writeBlocks(pieces);
  }

  /** Copies a whole block (native path: reflink or copy_file_range when possible). */
  copyBlock(from: DataBlock, to: DataBlock): Promise<void> {
    return this.blocks.copyBlock(from, to);
  }

  /**
   * Flushes data blocks, then the metadata that points at them. A caller always gets a
   * flush that started after its call: while one runs, later callers share the single
   * flush queued behind it (group commit).
   */
  async sync(): Promise<void> {
    if (!this.syncing) return this.startSync();
    if (!this.syncQueued) {
      this.syncQueued = this.syncing.catch(() => undefined).then(() => {
        this.syncQueued = null;
        return this.startSync();
      });
    }
    return this.syncQueued;
  }

  private startSync(): Promise<void> {
    const run = (async () => {
      await fdatasync(this.dataFd);
      await this.env.sync();
    })();
    this.syncing = run;
    const clear = () => {
      if (this.syncing === run) this.syncing = null;
    };
    run.then(clear, clear);
    return run;
  }

  /** Gives back this process's reservation, flushes, closes. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.readOnly) return this.closeWithoutWrites();
    this.closed = true;
    await this.trim(0);
    await this.sync();
    this.reservations.giveBackAll();
    await this.env.sync();
    if (!this.backupsSuspended) {
      // A failed backup must not fail the close (the pool itself is intact); the mark stays for the next close.
      await this.backupMetadata().catch((err) => {
        process.emitWarning(`dmfs: metadata backup failed: ${(err as Error).message}`, { code: 'DMFS_BACKUP' });
      });
    }
    fs.closeSync(this.dataFd);
    await this.env.close();
  }

  /** Closes the files without giving anything back (read-only pools, failed opens; a dead owner's reservation is reclaimed later). */
  private async closeWithoutWrites(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.dataFd);
    if (!this.readOnly) {
      try {
        this.reservations.forgetOwnerIfEmpty();
      } catch {
        /* left for the next open's reclaim (this process will be dead) */
      }
    }
    await this.env.close();
  }

  /** Size of the data file as the host sees it (allocated bytes), loop mode; null in direct mode. */
  dataFileAllocatedBytes(): number | null {
    return this.sb.dataMode === 'loop' ? fileAllocatedBytes(this.dataFd) : null;
  }
}
