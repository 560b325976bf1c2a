import { dmfsError } from '../errors';
import type { ThinPool } from '../pool/thin-pool';
import { KeyedMutex } from './keyed-mutex';
import type { Ino } from './layer-store';
import { sectorSizeBytes } from './records';
import type { StoreTables } from './store-tables';

export interface LayerContextOptions {
  layerName: string;
  /** Segments top-down: [own segment, parent's, ..., base's]. */
  segments: number[];
  readOnly: boolean;
  sizeLimitBytes: number;
}

/**
 * What the parts of one open layer share (records, namespace, file data, xattrs, change
 * listing): the pool and its tables, the chain and its geometry, the per-inode mutex,
 * the open-handle counts and the layer's lifecycle flags. Each part is handed this one
 * object at construction and reaches the others only through the parts it is given.
 *
 * Fixed at open: everything but `openCounts`, `closed` and `dirty`. Lower segments never
 * change while a chain is open; only `top` is ever written, and only when not readOnly.
 *
 * Concurrency: namespace changes are single synchronous metadata transactions (atomic, no
 * await inside); data-path operations on one inode (write, truncate, the release of an
 * orphan) run one at a time under `inodeMutex`.
 */
export class LayerContext {
  readonly layerName: string;
  readonly readOnly: boolean;
  readonly sizeLimitBytes: number;
  /** Segments top-down: [own segment, parent's, ..., base's]. */
  readonly segments: readonly number[];
  /** The own segment, segments[0]. */
  readonly top: number;
  readonly blockSizeBytes: number;
  /** Bytes covered by one per-sector CRC. */
  readonly sectorBytes: number;
  /** Inline block content up to this many bytes is kept in metadata instead of a data block. */
  readonly inlineMaxBytes: number;
  readonly inodeMutex = new KeyedMutex();
  /** Open handles per inode (retain / release): an inode without links lives while it has one. */
  readonly openCounts = new Map<Ino, number>();
  /** Set by close(), after the final sync. */
  closed = false;
  /** Something changed since the last fsync (the periodic sync has work). */
  dirty = false;

  constructor(readonly pool: ThinPool, readonly tables: StoreTables, opts: LayerContextOptions) {
    this.layerName = opts.layerName;
    this.readOnly = opts.readOnly;
    this.sizeLimitBytes = opts.sizeLimitBytes;
    this.segments = opts.segments;
    this.top = opts.segments[0];
    this.blockSizeBytes = pool.blockSizeBytes;
    this.sectorBytes = sectorSizeBytes(this.blockSizeBytes);
    this.inlineMaxBytes = Math.min(32 * 1024, this.blockSizeBytes / 2);
  }

  assertWritable(): void {
    if (this.closed) throw dmfsError('INVALID', `layer ${this.layerName} is closed`);
    if (this.readOnly) throw dmfsError('READ_ONLY_LAYER', `layer ${this.layerName} is read-only`);
  }

  assertOpen(): void {
    if (this.closed) throw dmfsError('INVALID', `layer ${this.layerName} is closed`);
  }

  markDirty(): void {
    this.dirty = true;
  }
}
