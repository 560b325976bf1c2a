/**
 * A metadata commit that fails for lack of host space (LMDB's commit returns ENOSPC) must
 * roll back cleanly: POOL_FULL (ENOSPC to a FUSE writer), nothing of the transaction
 * visible, afterCommit hooks dropped, and no block handed out that the space map does not
 * hold as reserved. The failure is injected at LMDB's commit (the real host-full path runs
 * in test/integration/host-full.test.ts); no root needed.
 */
import { ABORT } from 'lmdb';
import { isDmfsError } from '../../../src/errors';
import type { MetadataEnv } from '../../../src/pool/metadata-env';
import { tempPool } from '../../support/temp-pool';

type Commit = (body: () => unknown) => void;

/** Makes the next `count` commits run their body, roll back, and fail as LMDB does (numeric errno code). */
function failCommits(env: MetadataEnv, errno: number, count = 1): () => void {
  const target = env as unknown as { commitSync: Commit };
  const original = target.commitSync.bind(env);
  let left = count;
  target.commitSync = (body) => {
    if (left <= 0) return original(body);
    left--;
    original(() => {
      body();
      return ABORT;
    });
    throw Object.assign(new Error(errno === 28 ? 'No space left on device' : 'Input/output error'), { code: errno });
  };
  return () => {
    target.commitSync = original;
  };
}

describe('metadata commit failing for lack of host space', () => {
  it('rolls back: POOL_FULL, nothing visible, afterCommit hooks dropped, the env keeps working', async () => {
    const { pool, remove } = await tempPool();
    try {
      const env = pool.thinPool.env;
      const t = env.table('test');
      let hookRan = false;
      const restore = failCommits(env, 28);
      let caught: unknown;
      try {
        env.txn(() => {
          t.put('k', Buffer.from('v'));
          env.afterCommit(() => (hookRan = true));
        });
      } catch (err) {
        caught = err;
      }
      restore();
      expect(isDmfsError(caught, 'POOL_FULL')).toBe(true);
      expect((caught as { errno: number }).errno).toBe(28);
      expect(t.get('k')).toBeUndefined();
      expect(hookRan).toBe(false);
      expect(env.inTransaction).toBe(false);
      env.txn(() => t.put('k', Buffer.from('w')));
      expect(t.get('k')?.toString()).toBe('w');
    } finally {
      await remove();
    }
  });

  it('a reservation whose commit fails hands out no block; the next one gets blocks the space map holds', async () => {
    const { pool, remove } = await tempPool();
    try {
      const thin = pool.thinPool;
      const usedBefore = [...thin.usedBlocksFromMap()].length;
      const restore = failCommits(thin.env, 28);
      let caught: unknown;
      try {
        thin.takeBlock();
      } catch (err) {
        caught = err;
      }
      restore();
      expect(isDmfsError(caught, 'POOL_FULL')).toBe(true);
      expect([...thin.usedBlocksFromMap()].length).toBe(usedBefore);
      const b = thin.takeBlock();
      expect(b).not.toBeNull();
      expect(thin.isBlockUsed(b!)).toBe(true);
      expect(thin.reservedBlocks().has(b!)).toBe(true);
      expect((await pool.check()).ok).toBe(true);
    } finally {
      await remove();
    }
  });

  it('EIO from a commit while the host has room stays IO_ERROR (not mistaken for a full host)', async () => {
    const { pool, remove } = await tempPool();
    try {
      const env = pool.thinPool.env;
      const restore = failCommits(env, 5);
      let caught: unknown;
      try {
        env.txn(() => env.table('test').put('k', Buffer.from('v')));
      } catch (err) {
        caught = err;
      }
      restore();
      expect(isDmfsError(caught, 'IO_ERROR')).toBe(true);
      expect(env.table('test').get('k')).toBeUndefined();
    } finally {
      await remove();
    }
  });
});
