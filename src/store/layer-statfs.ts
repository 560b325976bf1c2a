/**
 * statfs(2) of a layer: the one computation both FUSE operation tables report (through
 * LayerFs.statfs), so `df` on a mount tells the truth about a thin pool.
 *
 * A layer's virtual size limit (dm.basesize, e.g. 10 GiB) can be far larger than the pool
 * (256 MiB): reporting the limit as the size makes `df` promise space that no write will
 * ever get. So, in blocks of the pool's block size:
 *   used     = what the layer's chain holds (its own segment and every ancestor's);
 *   writable = what a write may still take: the limit's headroom, capped by what the pool
 *              can still allocate (dm.min_free_space and, in loop mode, the host's free
 *              space applied: PoolSpace.availableBlocks); 0 on a read-only layer;
 *   f_blocks = used + writable  (= min(limit, used + pool available) while used <= limit);
 *   f_bfree  = f_bavail = writable.
 * So `df` adds up: Used = Size - Avail. The figures move as other layers fill the pool,
 * as they do on any thin device. Inodes likewise: f_files - f_ffree = the chain's inodes;
 * a read-only layer has no free ones (as squashfs reports).
 */
import type { StatFs } from './layer-store';

/** Inodes a writable layer reports in all (the store has no fixed table; metadata space is what runs out). */
export const LAYER_INODE_LIMIT = 2 ** 30;

export interface LayerSpaceFigures {
  blockSizeBytes: number;
  sizeLimitBytes: number;
  /** Bytes the layer's chain holds (data blocks and inline bytes, every segment). */
  chainUsedBytes: number;
  /** Blocks allocating writes may still take in the pool (PoolSpace.availableBlocks). */
  poolAvailableBlocks: number;
  /** Inodes of the chain (a copied-up inode counts once per segment holding it). */
  chainInodes: number;
  readOnly: boolean;
  nameMaxBytes: number;
}

export function layerStatfs(f: LayerSpaceFigures): StatFs {
  const usedBlocks = Math.ceil(f.chainUsedBytes / f.blockSizeBytes);
  const limitBlocks = Math.floor(f.sizeLimitBytes / f.blockSizeBytes);
  const writableBlocks = f.readOnly ? 0 : Math.max(0, Math.min(limitBlocks - usedBlocks, f.poolAvailableBlocks));
  const freeInodes = f.readOnly ? 0 : Math.max(0, LAYER_INODE_LIMIT - f.chainInodes);
  return {
    blockSizeBytes: f.blockSizeBytes,
    totalBlocks: usedBlocks + writableBlocks,
    freeBlocks: writableBlocks,
    availBlocks: writableBlocks,
    totalInodes: f.chainInodes + freeInodes,
    freeInodes,
    nameMaxBytes: f.nameMaxBytes,
  };
}
