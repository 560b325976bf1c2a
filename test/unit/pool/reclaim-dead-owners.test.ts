import { packRecord } from '../../../src/pool/codec';
import { tempPool } from '../../support/temp-pool';

/** The parts of ThinPool this test forges a dead process's reservation through (pool-owners and pool-reserved are block-reservations.ts's tables). */
interface ThinPoolInternals {
  env: { txn<T>(fn: () => T): T };
  spaceMap: { allocate(n: number): number[]; usedBlocks(): number; isUsed(b: number): boolean };
  table(name: 'pool-owners' | 'pool-reserved'): { put(key: number | number[], value: Buffer): void };
  reclaimDeadOwners(): Promise<number>;
}

const DEAD_OWNER = 999_999;

test('two reclaims of one dead owner at once free each of its blocks once', async () => {
  const { pool, remove } = await tempPool();
  try {
    const tp = pool.thinPool as unknown as ThinPoolInternals;
    const usedBefore = tp.env.txn(() => tp.spaceMap.usedBlocks());
    const blocks = tp.env.txn(() => {
      const bs = tp.spaceMap.allocate(16);
      // No process has start time 1: the owner is dead.
      tp.table('pool-owners').put(DEAD_OWNER, packRecord({ v: 1, pid: 2 ** 22 + 7, startTicks: 1 }));
      for (const b of bs) tp.table('pool-reserved').put([DEAD_OWNER, b], Buffer.alloc(0));
      return bs;
    });
    expect(blocks).toHaveLength(16);
    // Both read the dead owner before either frees (the punch awaits in between): two
    // processes opening the pool at the same moment. Before the fix: "freed twice".
    const freed = await Promise.all([tp.reclaimDeadOwners(), tp.reclaimDeadOwners()]);
    expect(freed[0] + freed[1]).toBe(16);
    expect(tp.env.txn(() => tp.spaceMap.usedBlocks())).toBe(usedBefore);
    for (const b of blocks) expect(tp.spaceMap.isUsed(b)).toBe(false);
    expect((await pool.check()).problems).toEqual([]);
  } finally {
    await remove();
  }
});
