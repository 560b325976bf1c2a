import type { Table } from '../pool/metadata-env';
import type { ThinPool } from '../pool/thin-pool';

/** The tables the layer store keeps in the pool's metadata environment. */
export interface StoreTables {
  inodes: Table;
  dirents: Table;
  bmap: Table;
  usage: Table;
  orphans: Table;
  /** [block] → sharers (uint48): data blocks mapped by more than one entry (see block-sharing.ts). */
  blockRefs: Table;
}

export function openStoreTables(pool: ThinPool): StoreTables {
  return {
    inodes: pool.table('inodes'),
    dirents: pool.table('dirents'),
    bmap: pool.table('bmap'),
    usage: pool.table('usage'),
    orphans: pool.table('orphans'),
    blockRefs: pool.table('block-refs'),
  };
}
