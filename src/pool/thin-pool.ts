import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { DmfsError, dmfsError, isDmfsError } from '../errors';
import { blockIo, type ReadBlocksOptions } from '../native';
import { asDataBlock, type DataBlock } from './block-address';
import { packRecord, packUint48, unpackRecord, unpackUint48 } from './codec';
import { listBackups, takeBackup, type BackupInfo } from './metadata-backup';
import { MetadataEnv, isHostFullError, type Table } from './metadata-env';
import {
  DEFAULT_POOL_OPTIONS,
  type PoolCreateSettings,
  type PoolOptions,
  validateBlockSize,
} from './pool-options';
import { poolPaths, type PoolPaths } from './pool-paths';
import { currentProcess, isProcessAlive, type ProcessIdentity } from './process-identity';
import { SpaceMap } from './space-map';

const fdatasync = promisify(fs.fdatasync);

/** The pool superblock: what the pool is, fixed at creation except size and runtime options. */
export interface Superblock {
  v: 1;
  poolName: string;
  blockSizeBytes: number;
  nrBlocks: number;
  dataMode: 'loop' | 'direct';
  /** Direct mode: the block device. Loop mode: null (the file is poolPaths().dataFile). */
  dataDevice: string | null;
  options: PoolOptions;
  createdMs: number;
}

function packSuperblock(sb: Superblock): Buffer {
  return packRecord(sb);
}

function unpackSuperblock(raw: Buffer): Superblock {
  const sb = unpackRecord<Superblock>(raw);
  if (sb?.v !== 1) throw dmfsError('METADATA_CORRUPT', `pool superblock has unknown version ${String(sb?.v)}`);
  sb.options = { ...DEFAULT_POOL_OPTIONS, ...sb.options };
  return sb;
}

interface OwnerRecord extends ProcessIdentity {
  v: 1;
}

/** pool-meta 'backup:pending': metadata changed since the last backup (see metadata-backup.ts). */
interface BackupPendingRecord {
  v: 1;
  /** Bumped by every change: a backup clears the mark only if no change came in meanwhile. */
  seq: number;
  reasons: string[];
}
const BACKUP_PENDING_KEY = 'backup:pending';

/** How many blocks one process takes from the space map at a time. */
const RESERVATION_BATCH = 64;
/** Recycled blocks a process keeps before giving the rest back (and punching them). */
const RESERVATION_KEEP = 128;
/**
 * Loop mode: host bytes new data blocks leave free on the file system under the pool, so
 * the metadata commits that follow (and the headroom it keeps, see metadata-env.ts)
 * still find room. Below it, allocation stops and writes get POOL_FULL (ENOSPC).
 */
export const HOST_RESERVE_BYTES = 8 * 1024 ** 2;
/** Host free space below which info and doctor call the host file system "nearly full" (also: under 5%). */
export const HOST_LOW_BYTES = 1024 ** 3;

/** Free space of the host file system under the pool (loop mode: the data file's directory). */
export interface HostSpace {
  path: string;
  freeBytes: number;
  totalBytes: number;
  /** full: allocation has stopped (free <= HOST_RESERVE_BYTES); low: under 5% or HOST_LOW_BYTES free. */
  state: 'ok' | 'low' | 'full';
  /** What to do, when state is not ok. */
  advice: string | null;
}

/** What open may find about the data device against the metadata (see `dataDeviceCheck`). */
export interface DataDeviceCheck {
  /** Bytes the data file / device has now. */
  deviceBytes: number;
  /** Bytes the superblock says it has (nrBlocks * blockSizeBytes). */
  expectedBytes: number;
  /** Whole blocks the device holds now. */
  deviceBlocks: number;
  /** Highest block the space map marks used, or -1. */
  highestUsedBlock: number;
  /** Used blocks at or past deviceBlocks: their data is gone (a re-extension reads zeros). */
  usedBlocksBeyondEnd: number;
  short: boolean;
}

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
  private readonly owners: Table;
  private readonly reserved: Table;
  private readonly dataFd: number;
  readonly ownerId: number;
  /** Reserved, committed, not yet handed out. */
  private readonly freeReserved: DataBlock[] = [];
  private closed = false;
  private syncing: Promise<void> | null = null;
  private syncQueued: Promise<void> | null = null;
  private trimming: Promise<void> | null = null;
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
    this.meta = env.table('pool-meta');
    this.owners = env.table('pool-owners');
    this.reserved = env.table('pool-reserved');
    this.spaceMap = new SpaceMap(env, sb.nrBlocks);
    const identity = currentProcess();
    // Read-only: no owner record (nothing may be written); owner id 0 is never allocated.
    this.ownerId = readOnly ? 0 : env.txn(() => {
      const next = this.counter('nextOwner');
      this.owners.put(next, packRecord({ v: 1, ...identity } satisfies OwnerRecord));
      return next;
    });
  }

  /** Creates a new pool under root. Nothing is left behind when it fails. */
  static async create(root: string, settings: PoolCreateSettings, options: PoolOptions): Promise<ThinPool> {
    validateBlockSize(settings.blockSizeBytes);
    const paths = poolPaths(root);
    if (fs.existsSync(path.join(paths.metadataDir, 'data.mdb'))) {
      throw dmfsError('POOL_EXISTS', `a pool already exists at ${paths.root}`);
    }
    let dataBytes: number;
    let dataMode: Superblock['dataMode'] = 'loop';
    if (settings.dataDevice) {
      dataMode = 'direct';
      dataBytes = blockDeviceBytes(settings.dataDevice);
      const signature = filesystemSignature(settings.dataDevice);
      if (signature && !settings.forceDevice) {
        throw dmfsError(
          'DEVICE_HAS_FILESYSTEM',
          `${settings.dataDevice} holds a ${signature} signature; refusing to use it. Pass --force (dm.directlvm_device_force=true) to overwrite it.`,
        );
      }
    } else {
      dataBytes = settings.dataSizeBytes;
    }
    const nrBlocks = Math.floor(dataBytes / settings.blockSizeBytes);
    if (nrBlocks < 16) {
      throw dmfsError('BAD_OPTION', `data size ${dataBytes} bytes holds fewer than 16 blocks of ${settings.blockSizeBytes} bytes`);
    }
    const createdRoot = !fs.existsSync(paths.root);
    try {
      fs.mkdirSync(paths.root, { recursive: true, mode: 0o700 });
      fs.chmodSync(paths.root, 0o700);
      fs.mkdirSync(paths.runDir, { recursive: true, mode: 0o700 });
      if (dataMode === 'loop') {
        fs.mkdirSync(path.dirname(paths.dataFile), { recursive: true, mode: 0o700 });
        const fd = fs.openSync(paths.dataFile, 'wx', 0o600);
        fs.ftruncateSync(fd, nrBlocks * settings.blockSizeBytes);
        fs.closeSync(fd);
      }
      const env = MetadataEnv.open(paths.metadataDir, { create: true });
      const st = fs.statSync(paths.root);
      const sb: Superblock = {
        v: 1,
        poolName: `dmfs-${st.dev}-${st.ino}-pool`,
        blockSizeBytes: settings.blockSizeBytes,
        nrBlocks,
        dataMode,
        dataDevice: settings.dataDevice,
        options,
        createdMs: Date.now(),
      };
      env.txn(() => env.table('pool-meta').put('superblock', packSuperblock(sb)));
      await env.sync();
      await env.close();
      return await ThinPool.open(root);
    } catch (err) {
      if (createdRoot) fs.rmSync(paths.root, { recursive: true, force: true });
      else {
        fs.rmSync(paths.metadataDir, { recursive: true, force: true });
        if (dataMode === 'loop' && !isDmfsError(err, 'POOL_EXISTS')) fs.rmSync(path.dirname(paths.dataFile), { recursive: true, force: true });
      }
      throw err;
    }
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
    const raw = this.meta.get(BACKUP_PENDING_KEY);
    const prev = raw ? unpackRecord<BackupPendingRecord>(raw) : null;
    // replace: the reasons so far do not apply (a restored copy carries its own backup's mark).
    const reasons = opts.replace ? [] : prev?.reasons ?? [];
    this.meta.put(BACKUP_PENDING_KEY, packRecord({
      v: 1, seq: (prev?.seq ?? 0) + 1, reasons: reasons.includes(reason) ? reasons : [...reasons, reason],
    } satisfies BackupPendingRecord));
  }

  /** Whether a change is waiting for a backup. */
  hasPendingBackup(): boolean {
    return this.meta.has(BACKUP_PENDING_KEY);
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
    const raw = this.meta.get(BACKUP_PENDING_KEY);
    if (keep <= 0 || (!raw && !opts.force)) return null;
    const pending = raw ? unpackRecord<BackupPendingRecord>(raw) : null;
    const reasons = [...(pending?.reasons ?? []), ...(opts.reason ? [opts.reason] : [])];
    // Flushed first: the copy then holds nothing the data device does not.
    await this.sync();
    const info = await takeBackup(this.env, { reasons, layers: this.backupDescriber?.().layers ?? null, keep });
    // A change that came in after the mark was read may be missing from the copy: keep the mark then.
    this.env.txn(() => {
      const now = this.meta.get(BACKUP_PENDING_KEY);
      if (now && pending && unpackRecord<BackupPendingRecord>(now).seq === pending.seq) this.meta.del(BACKUP_PENDING_KEY);
    });
    return info;
  }

  /** Whether any process other than this one has the pool open. */
  hasOtherLiveOwners(): boolean {
    for (const { key, value } of this.owners.range(0, Number.MAX_SAFE_INTEGER)) {
      if ((key as number) !== this.ownerId && isProcessAlive(unpackRecord<OwnerRecord>(value))) return true;
    }
    return false;
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
    const used = this.spaceMap.usedBlocks() - this.reserved.count([0], [Number.MAX_SAFE_INTEGER]);
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
    if (!this.freeReserved.length) this.refill();
    return this.freeReserved.pop() ?? null;
  }

  /** Fills this process's reservation if it is empty (what takeBlock would do), ahead of need. */
  reserveAhead(): void {
    if (!this.freeReserved.length) this.refill();
  }

  /** Returns a taken block that was not used (the caller's transaction failed). */
  untakeBlock(block: DataBlock): void {
    this.freeReserved.push(block);
  }

  /** Inside the caller's txn: the block is now referenced by committed metadata. */
  consumeBlock(block: DataBlock): void {
    this.reserved.del([this.ownerId, block]);
  }

  /** Inside the caller's txn: the block is no longer referenced; it returns to this process's reservation. */
  recycleBlock(block: DataBlock): void {
    this.reserved.put([this.ownerId, block], EMPTY);
    this.env.afterCommit(() => {
      this.freeReserved.push(block);
      if (this.freeReserved.length > RESERVATION_KEEP * 2 && !this.trimming) setImmediate(() => void this.trim().catch(() => undefined));
    });
  }

  private refill(): void {
    let fresh: DataBlock[] = [];
    this.env.txn(() => {
      this.refreshSuperblock();
      this.maybeAutoextend();
      const total = this.sb.nrBlocks;
      const used = this.spaceMap.usedBlocks();
      const minFree = this.minFreeBlocks(total);
      const allowed = Math.min(RESERVATION_BATCH, total - used - minFree, this.hostBlockAllowance());
      if (allowed <= 0) return;
      fresh = this.spaceMap.allocate(allowed);
      for (const b of fresh) this.reserved.put([this.ownerId, b], EMPTY);
    });
    // Handed out only once committed: a failed commit (host full) leaves them free.
    // Lowest blocks first out of pop(): keeps files roughly sequential on the device.
    fresh.reverse();
    this.freeReserved.push(...fresh);
    if (fresh.length) this.hostFullWarned = false;
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
  async trim(keep = RESERVATION_KEEP): Promise<void> {
    while (this.trimming) await this.trimming;
    if (this.freeReserved.length <= keep) return;
    this.trimming = (async () => {
      const excess = this.freeReserved.splice(0, this.freeReserved.length - keep);
      if (this.sb.options.blkDiscard) await this.punch(excess);
      this.env.txn(() => {
        for (const b of excess) this.reserved.del([this.ownerId, b]);
        this.spaceMap.release(excess);
      });
    })();
    try {
      await this.trimming;
    } finally {
      this.trimming = null;
    }
  }

  private async punch(blocks: DataBlock[]): Promise<void> {
    const sorted = [...blocks].sort((a, b) => a - b);
    const bs = this.sb.blockSizeBytes;
    for (let i = 0; i < sorted.length; ) {
      let j = i + 1;
      while (j < sorted.length && sorted[j] === sorted[j - 1] + 1) j++;
      await blockIo.punchHole(this.dataFd, sorted[i] * bs, (j - i) * bs);
      i = j;
    }
  }

  /** Frees blocks reserved by processes that died, and forgets those owners. Returns how many blocks. */
  async reclaimDeadOwners(): Promise<number> {
    const dead: number[] = [];
    for (const { key, value } of this.owners.range(0, Number.MAX_SAFE_INTEGER)) {
      const owner = unpackRecord<OwnerRecord>(value);
      if ((key as number) !== this.ownerId && !isProcessAlive(owner)) dead.push(key as number);
    }
    let freed = 0;
    for (const ownerId of dead) {
      // Two processes may reclaim the same dead owner at once. What is still reserved to it
      // is read and moved to this process's own reservation in one transaction, so each
      // block is claimed by exactly one reclaimer; only then is it punched (no one else can
      // allocate it meanwhile) and released.
      const blocks = this.env.txn(() => {
        const claimed: DataBlock[] = [];
        for (const key of this.reserved.keys([ownerId], [ownerId + 1])) claimed.push(asDataBlock((key as number[])[1]));
        for (const b of claimed) {
          this.reserved.del([ownerId, b]);
          this.reserved.put([this.ownerId, b], EMPTY);
        }
        this.owners.del(ownerId);
        return claimed;
      });
      if (!blocks.length) continue;
      if (this.sb.options.blkDiscard) await this.punch(blocks);
      this.env.txn(() => {
        for (const b of blocks) this.reserved.del([this.ownerId, b]);
        this.spaceMap.release(blocks);
      });
      freed += blocks.length;
    }
    return freed;
  }

  /** Whether the process registered as ownerId is still alive. */
  isOwnerAlive(ownerId: number): boolean {
    if (ownerId === this.ownerId) return true;
    const raw = this.owners.get(ownerId);
    return raw ? isProcessAlive(unpackRecord<OwnerRecord>(raw)) : false;
  }

  /** Every block reserved by live or dead owners (for check). */
  reservedBlocks(): Set<number> {
    const out = new Set<number>();
    for (const key of this.reserved.keys([0], [Number.MAX_SAFE_INTEGER])) out.add((key as number[])[1]);
    return out;
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

  // ---- data -----------------------------------------------------------------

  private checkBlock(block: DataBlock): void {
    if (!Number.isSafeInteger(block) || block < 0 || block >= this.sb.nrBlocks) {
      this.refreshSuperblock();
      if (!Number.isSafeInteger(block) || block < 0 || block >= this.sb.nrBlocks) {
        throw dmfsError('METADATA_CORRUPT', `data block ${block} is outside the data device (${this.sb.nrBlocks} blocks)`);
      }
    }
  }

  /** Fills targets[i] from block blocks[i] at offsetsInBlock[i] (gathered). */
  /** `opts.mayBlock`: see BlockIo.readBlocks. */
  async readBlocks(blocks: readonly DataBlock[], offsetsInBlockBytes: readonly number[], targets: Buffer[], opts?: ReadBlocksOptions): Promise<void> {
    const bs = this.sb.blockSizeBytes;
    const offsets = blocks.map((b, i) => {
      this.checkBlock(b);
      return b * bs + offsetsInBlockBytes[i];
    });
    await blockIo.readBlocks(this.dataFd, targets, offsets, opts);
  }

  /** Writes several (block, offset in block, data) pieces in one gathered call. */
  async writeBlocks(pieces: readonly { block: DataBlock; offset: number; data: Buffer }[]): Promise<void> {
    const bs = this.sb.blockSizeBytes;
    for (const p of pieces) {
      this.checkBlock(p.block);
      if (p.offset + p.data.length > bs) throw dmfsError('INVALID', 'write crosses a block boundary');
    }
    try {
      await blockIo.writeBlocks(this.dataFd, pieces.map((p) => p.data), pieces.map((p) => p.block * bs + p.offset));
    } catch (err) {
      throw this.hostFullOr(err);
    }
  }

  /** ENOSPC/EDQUOT from the data device becomes POOL_FULL (ENOSPC to a FUSE writer, not EIO); anything else passes. */
  private hostFullOr(err: unknown): unknown {
    if (!isHostFullError(err)) return err;
    this.warnHostFull(`writing the data file ${this.dataPath} failed with ENOSPC`);
    return dmfsError(
      'POOL_FULL',
      `the host file system under the pool is full (writing ${this.dataPath} failed with ENOSPC): free space on the host or move the pool`,
      err,
    );
  }

  /** Copies a whole block (native path: reflink or copy_file_range when possible). */
  async copyBlock(from: DataBlock, to: DataBlock): Promise<void> {
    this.checkBlock(from);
    this.checkBlock(to);
    const bs = this.sb.blockSizeBytes;
    try {
      const n = await blockIo.copyRange(this.dataFd, from * bs, this.dataFd, to * bs, bs);
      if (n < bs) {
        // The source lies (partly) beyond the end of a short device file: the rest is zeros.
        await blockIo.writeBlocks(this.dataFd, [Buffer.alloc(bs - n)], [to * bs + n]);
      }
    } catch (err) {
      throw this.hostFullOr(err);
    }
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
    this.env.txn(() => {
      const left: DataBlock[] = [];
      for (const key of this.reserved.keys([this.ownerId], [this.ownerId + 1])) left.push(asDataBlock((key as number[])[1]));
      for (const b of left) this.reserved.del([this.ownerId, b]);
      this.spaceMap.release(left);
      this.owners.del(this.ownerId);
    });
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
      // Opened writable but failed: drop the owner record unless it holds a reservation
      // (blocks claimed from a dead owner half-way through reclaimDeadOwners), which the
      // next open's reclaim frees once this process is gone.
      try {
        this.env.txn(() => {
          for (const _ of this.reserved.keys([this.ownerId], [this.ownerId + 1])) return;
          this.owners.del(this.ownerId);
        });
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

const EMPTY = Buffer.alloc(0);


/** Classifies host free space (see HostSpace.state). */
export function describeHostSpace(dir: string, freeBytes: number, totalBytes: number, blockSizeBytes: number): HostSpace {
  let state: HostSpace['state'] = 'ok';
  if (freeBytes < HOST_RESERVE_BYTES + blockSizeBytes) state = 'full';
  else if (freeBytes < HOST_LOW_BYTES || freeBytes < totalBytes * 0.05) state = 'low';
  const advice =
    state === 'full'
      ? `the host file system is full: new data cannot be written (writes get ENOSPC, reads work). Free space on the host file system holding ${dir} (or remove layers / files in the pool), or move the pool to a larger one`
      : state === 'low'
        ? `the host file system holding ${dir} is nearly full: free space on it or move the pool before writes start failing with ENOSPC`
        : null;
  return { path: dir, freeBytes, totalBytes, state, advice };
}

/** Whether dir sits on a read-only file system (access(2) says EROFS). */
function isOnReadOnlyFs(dir: string): boolean {
  try {
    fs.accessSync(dir, fs.constants.W_OK);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EROFS';
  }
}

function fileAllocatedBytes(fd: number): number {
  return fs.fstatSync(fd).blocks * 512;
}

function hostFreeBytes(dir: string): number | null {
  try {
    const s = fs.statfsSync(dir);
    return s.bavail * s.bsize;
  } catch {
    return null;
  }
}

/** Size of a block device in bytes, from sysfs. */
function blockDeviceBytes(device: string): number {
  let st: fs.Stats;
  try {
    st = fs.statSync(device);
  } catch (err) {
    throw dmfsError('BAD_OPTION', `data device ${device}: ${(err as Error).message}`, err);
  }
  if (!st.isBlockDevice()) throw dmfsError('BAD_OPTION', `data device ${device} is not a block device`);
  const name = path.basename(fs.realpathSync(device));
  try {
    return Number(fs.readFileSync(`/sys/class/block/${name}/size`, 'utf8').trim()) * 512;
  } catch (err) {
    throw dmfsError('BAD_OPTION', `cannot read the size of ${device} from /sys/class/block/${name}/size`, err);
  }
}

/** The filesystem (or other) signature on a device, via blkid/wipefs; null when blank. */
function filesystemSignature(device: string): string | null {
  try {
    const out = execFileSync('blkid', ['-p', '-o', 'value', '-s', 'TYPE', device], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    return out || 'unknown';
  } catch (err) {
    // blkid exits 2 when it finds nothing.
    if ((err as { status?: number }).status === 2) return null;
    try {
      const out = execFileSync('wipefs', ['-n', '-p', device], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      const lines = out.trim().split('\n').filter((l) => l && !l.startsWith('#'));
      return lines.length ? lines[0].split(',')[3] || 'unknown' : null;
    } catch {
      return null;
    }
  }
}
