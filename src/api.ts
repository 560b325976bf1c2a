import * as fs from 'node:fs';
import { dmfsError } from './errors';
import { blockIo } from './native';
import {
  applyOptionStrings, DEFAULT_CREATE_SETTINGS, readConfigFile, validateBlockSize,
  type PoolOptions,
} from './pool/pool-options';
import type { HostSpace } from './pool/host-space';
import type { Superblock } from './pool/superblock';
import { ThinPool, type ThinPoolOpenOptions } from './pool/thin-pool';
import type { LayerInfo, LayerStore } from './store/layer-store';
import { ThinLayerStore } from './store/thin-layer-store';
import type { BackupInfo } from './pool/metadata-backup';
import { checkPool, type CheckOptions, type CheckReport } from './store/check';
import { restoreFromBackup, type RestoreReport } from './store/metadata-restore';
import { pullImage, type PullOptions, type PullResult } from './image/registry-pull';
import { pushImage, type PushOptions, type PushResult } from './image/registry-push';
import type { PoolClient } from './service/pool-client';

export interface PoolCreateOptions {
  root: string;
  /** Loop mode data file size (default 100G). */
  sizeBytes?: number;
  /** 64 KiB..1 MiB, power of two (default 64 KiB). */
  blockSizeBytes?: number;
  /** Direct mode: a raw block device. */
  dataDevice?: string;
  /** Use a data device that holds a filesystem signature. */
  force?: boolean;
  /** `dm.NAME=VALUE` strings, applied after the config file. */
  options?: string[];
  /** A daemon.json-style file with storage-opts. */
  configFile?: string;
}

/** What `docker info` printed for devicemapper, plus layer counts. */
export interface PoolInfo {
  poolName: string;
  poolBlocksizeBytes: number;
  baseDeviceSizeBytes: number;
  backingFilesystem: string;
  dataMode: 'loop' | 'direct';
  dataFile: string;
  metadataFile: string;
  dataSpaceUsedBytes: number;
  dataSpaceTotalBytes: number;
  dataSpaceAvailableBytes: number;
  /** Host bytes the data file really occupies (loop mode; holes excluded). */
  dataFileAllocatedBytes: number | null;
  metadataSpaceUsedBytes: number;
  metadataSpaceTotalBytes: number;
  metadataSpaceAvailableBytes: number;
  minFreeSpacePercent: number;
  minFreeSpaceBytes: number;
  autoextendThresholdPercent: number;
  autoextendPercent: number;
  blkDiscard: boolean;
  deferredRemovalEnabled: boolean;
  deferredDeletionEnabled: boolean;
  deferredDeletedDeviceCount: number;
  /** dmfs.metadata_backups: backups kept (0 = off), and how many there are now. */
  metadataBackupsKept: number;
  metadataBackupCount: number;
  nativeBlockPath: 'native' | 'fallback';
  /** The host file system under the pool (loop mode; null in direct mode): free space and whether it is full. */
  hostFilesystem: HostSpace | null;
  /** The pool was opened read-only because it sits on a read-only file system. */
  readOnly: boolean;
  layers: { total: number; base: number; images: number; containers: number; building: number };
}

/**
 * A dmfs pool: the thin pool and its layer store. The Node API entry point.
 *
 *   const pool = await Pool.create({ root: '/tmp/p', sizeBytes: 10 * 2 ** 30 });
 *   await pool.store.createLayer('c1', { parent: 'base', kind: 'container' });
 *   const fs = await pool.store.openLayer('c1');
 *   ...
 *   await pool.close();
 */
export class Pool {
  private constructor(readonly thinPool: ThinPool, readonly store: LayerStore & ThinLayerStore) {}

  get root(): string {
    return this.thinPool.paths.root;
  }

  static async create(opts: PoolCreateOptions): Promise<Pool> {
    const pairs = [...(opts.configFile ? readConfigFile(opts.configFile) : []), ...(opts.options ?? [])];
    const { options, create } = applyOptionStrings(pairs);
    if (opts.sizeBytes !== undefined) create.dataSizeBytes = opts.sizeBytes;
    if (opts.blockSizeBytes !== undefined) create.blockSizeBytes = validateBlockSize(opts.blockSizeBytes);
    if (opts.dataDevice !== undefined) create.dataDevice = opts.dataDevice;
    if (opts.force !== undefined) create.forceDevice = opts.force || create.forceDevice;
    if (!Number.isSafeInteger(create.dataSizeBytes) || create.dataSizeBytes <= 0) {
      throw dmfsError('BAD_OPTION', `bad data size ${create.dataSizeBytes}`);
    }
    const thin = await ThinPool.create(opts.root, { ...DEFAULT_CREATE_SETTINGS, ...create }, options);
    return Pool.wrap(thin);
  }

  /**
   * The pool at `root` for creating, listing and mounting layers: through the pool's daemon
   * when one runs (`dmfs daemon`; its mounts outlive this process), else opened in this
   * process (a PoolHost: mounts last until close()). Same calls, same results.
   */
  static async connect(root: string): Promise<PoolClient> {
    const { DaemonClient } = await import('./service/control-client');
    const viaDaemon = await DaemonClient.connect(root);
    if (viaDaemon) return viaDaemon;
    const { PoolHost } = await import('./service/pool-host');
    return PoolHost.open(root);
  }

  /** opts.allowShortDataDevice: for check, which reports (and with --repair fixes) a short data device. */
  static async open(root: string, opts: ThinPoolOpenOptions = {}): Promise<Pool> {
    return Pool.wrap(await ThinPool.open(root, opts));
  }

  private static async wrap(thin: ThinPool): Promise<Pool> {
    try {
      return new Pool(thin, await ThinLayerStore.open(thin));
    } catch (err) {
      // A store that does not open may be damaged: no metadata backup of it at this close.
      thin.backupsSuspended = true;
      await thin.close().catch(() => undefined);
      throw err;
    }
  }

  get superblock(): Readonly<Superblock> {
    return this.thinPool.superblock;
  }

  async info(): Promise<PoolInfo> {
    const p = this.thinPool;
    const space = p.space();
    const meta = p.env.usage();
    const layers = await this.store.listLayers();
    const bs = p.blockSizeBytes;
    let backing = 'unknown';
    try {
      backing = fsTypeName(fs.statfsSync(p.paths.root).type);
    } catch {
      /* keep unknown */
    }
    return {
      poolName: p.superblock.poolName,
      poolBlocksizeBytes: bs,
      baseDeviceSizeBytes: p.options.baseSizeBytes,
      backingFilesystem: backing,
      dataMode: p.superblock.dataMode,
      dataFile: p.dataPath,
      metadataFile: `${p.paths.metadataDir}/data.mdb`,
      dataSpaceUsedBytes: space.usedBlocks * bs,
      dataSpaceTotalBytes: space.totalBlocks * bs,
      dataSpaceAvailableBytes: space.availableBlocks * bs,
      dataFileAllocatedBytes: p.dataFileAllocatedBytes(),
      metadataSpaceUsedBytes: meta.usedBytes,
      metadataSpaceTotalBytes: meta.totalBytes,
      metadataSpaceAvailableBytes: Math.max(0, meta.totalBytes - meta.usedBytes),
      minFreeSpacePercent: p.options.minFreeSpacePercent,
      minFreeSpaceBytes: space.minFreeBlocks * bs,
      autoextendThresholdPercent: p.options.autoextendThresholdPercent,
      autoextendPercent: p.options.autoextendPercent,
      blkDiscard: p.options.blkDiscard,
      deferredRemovalEnabled: p.options.deferredRemoval,
      deferredDeletionEnabled: p.options.deferredDeletion,
      deferredDeletedDeviceCount: layers.filter((l) => l.deferredRemoval).length,
      metadataBackupsKept: p.options.metadataBackups,
      metadataBackupCount: p.listBackups().length,
      nativeBlockPath: blockIo.kind,
      hostFilesystem: p.hostSpace(),
      readOnly: p.readOnly,
      layers: {
        total: layers.length,
        base: layers.filter((l) => l.kind === 'base').length,
        images: layers.filter((l) => l.kind === 'image' && l.state === 'committed').length,
        containers: layers.filter((l) => l.kind === 'container').length,
        building: layers.filter((l) => l.state === 'building').length,
      },
    };
  }

  /** Changes runtime options (`dm.basesize`, `dm.min_free_space`, ...). */
  setOptions(pairs: string[]): PoolOptions {
    const { options, create } = applyOptionStrings(pairs, this.thinPool.options);
    const fixed = applyOptionStrings([]).create;
    if (JSON.stringify(create) !== JSON.stringify(fixed)) {
      throw dmfsError('BAD_OPTION', 'dm.loopdatasize, dm.blocksize and dm.directlvm_device are fixed at creation (use dmfs pool resize to grow)');
    }
    this.thinPool.setOptions(options);
    return options;
  }

  async resize(sizeBytes: number | null): Promise<{ oldBytes: number; newBytes: number }> {
    const r = await this.thinPool.resize(sizeBytes);
    return { oldBytes: r.oldBlocks * this.thinPool.blockSizeBytes, newBytes: r.newBlocks * this.thinPool.blockSizeBytes };
  }

  /** Consistency check (like thin_check); with repair, fixes what can be fixed without losing data (see checkPool). */
  async check(opts: CheckOptions = {}): Promise<CheckReport> {
    return checkPool(this.thinPool, opts);
  }

  /** Metadata backups of this pool, newest first (see pool/metadata-backup.ts). */
  listBackups(): BackupInfo[] {
    return this.thinPool.listBackups();
  }

  /** Takes a metadata backup now (also when nothing changed), pruned to dmfs.metadata_backups; null when they are off. */
  async backupMetadata(): Promise<BackupInfo | null> {
    return this.thinPool.backupMetadata({ force: true, reason: 'manual' });
  }

  /**
   * Rolls the metadata of the (closed, unused) pool at `root` back to the newest backup that
   * checks clean; what `dmfs check --repair --from-backup` does.
   */
  static async restoreFromBackup(root: string, opts: { data?: boolean } = {}): Promise<RestoreReport> {
    return restoreFromBackup(root, opts);
  }

  /**
   * Pulls `ref` (`[HOST[:PORT]/]REPO[:TAG][@DIGEST]`) from its registry into image layers,
   * as `dmfs pull` does (image/registry-pull.ts): streamed, verified, all or nothing.
   */
  async pull(ref: string, opts: PullOptions = {}): Promise<PullResult> {
    return pullImage(this.store, ref, opts);
  }

  /** Pushes image `image` to `ref`, as `dmfs push` does (image/registry-push.ts). */
  async push(image: string, ref: string, opts: PushOptions = {}): Promise<PushResult> {
    return pushImage(this.store, image, ref, opts);
  }

  async close(): Promise<void> {
    await this.store.close();
    await this.thinPool.close();
  }
}

export type { LayerInfo, PoolClient };

const FS_TYPES: Record<number, string> = {
  0xef53: 'extfs', 0x58465342: 'xfs', 0x9123683e: 'btrfs', 0x01021994: 'tmpfs', 0x794c7630: 'overlayfs',
  0x65735546: 'fuse', 0x2fc12fc1: 'zfs', 0x6969: 'nfs',
};

function fsTypeName(type: number | bigint): string {
  return FS_TYPES[Number(type)] ?? `0x${Number(type).toString(16)}`;
}
