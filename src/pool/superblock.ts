import { dmfsError } from '../errors';
import { packRecord, unpackRecord } from './codec';
import { DEFAULT_POOL_OPTIONS, type PoolOptions } from './pool-options';

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

export function packSuperblock(sb: Superblock): Buffer {
  return packRecord(sb);
}

export function unpackSuperblock(raw: Buffer): Superblock {
  const sb = unpackRecord<Superblock>(raw);
  if (sb?.v !== 1) throw dmfsError('METADATA_CORRUPT', `pool superblock has unknown version ${String(sb?.v)}`);
  sb.options = { ...DEFAULT_POOL_OPTIONS, ...sb.options };
  return sb;
}
