import * as path from 'node:path';
import { Pool } from '../../../src/api';
import { ensureBuiltDist, REPO_ROOT } from '../../support/built-dist';
import { tempPool } from '../../support/temp-pool';
import { expectAcknowledgedState, runCrashWriter, type CrashOp } from '../../support/crash-workload';

const ROUNDS = Number(process.env.DMFS_CRASH_ROUNDS ?? 20);

beforeAll(() => ensureBuiltDist());

/**
 * ROUNDS times: a fresh pool with container `c` (on image `img` when `onImage`), the crash
 * writer killed with SIGKILL part-way, then a reopen that must check clean (space map,
 * reference counts, records) and hold every acknowledged op. Returns the ops acknowledged.
 */
async function crashRounds(opts: { seedBase: number; onImage: boolean; workload?: 'copies' }): Promise<CrashOp[]> {
  const ackedOps: CrashOp[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const { pool, root, remove } = await tempPool({ sizeBytes: 512 * 1024 ** 2, options: ['dm.min_free_space=0'] });
    try {
      if (opts.onImage) {
        await pool.store.createLayer('img', { kind: 'image', building: true });
        const img = await pool.store.openLayer('img');
        await img.close();
        await pool.store.sealLayer('img');
      }
      await pool.store.createLayer('c', { kind: 'container', ...(opts.onImage ? { parent: 'img' } : {}) });
      await pool.close();

      const seed = opts.seedBase + round * 7919;
      const { ops, acked } = await runCrashWriter(
        [path.join(REPO_ROOT, 'test/support/crash-writer.js'), root, 'c', String(seed), ...(opts.workload ? [opts.workload] : [])],
        150 + ((round * 97) % 500),
        (child) => child.kill('SIGKILL'),
        { expectSignal: 'SIGKILL', fromFirstOp: true },
      );
      ackedOps.push(...ops.filter((op) => op.k <= acked));

      const reopened = await Pool.open(root);
      try {
        const report = await reopened.check();
        expect(report.problems).toEqual([]);
        const fs = await reopened.store.openLayer('c', { readOnly: true });
        await expectAcknowledgedState(fs, ops, acked, `round ${round}`);
        await fs.close();
        // The container stays usable after recovery.
        const w = await reopened.store.openLayer('c');
        await w.close();
      } finally {
        await reopened.close();
      }
    } finally {
      await remove();
    }
  }
  return ackedOps;
}

test(`kill -9 during writes, ${ROUNDS} rounds: fsync-acknowledged data intact, no leaked or doubly used block`, async () => {
  expect((await crashRounds({ seedBase: 1000, onImage: true })).length).toBeGreaterThan(ROUNDS);
});

test(`kill -9 during writes mixed with block-sharing copies, ${ROUNDS} rounds: acknowledged data intact, reference counts right`, async () => {
  const acked = await crashRounds({ seedBase: 4242, onImage: false, workload: 'copies' });
  expect(acked.filter((op) => op.op === 'copy').length).toBeGreaterThan(0);
});
