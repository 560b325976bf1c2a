import * as path from 'node:path';
import { Pool } from '../../../src/api';
import { ensureBuiltDist, REPO_ROOT } from '../../support/built-dist';
import { tempPool } from '../../support/temp-pool';
import { expectAcknowledgedState, runCrashWriter } from '../../support/crash-workload';

const ROUNDS = Number(process.env.DMFS_CRASH_ROUNDS ?? 12);

beforeAll(() => ensureBuiltDist());

test(`kill -9 during writes mixed with block-sharing copies, ${ROUNDS} rounds: acknowledged data intact, reference counts right`, async () => {
  let totalAcked = 0;
  let copiesAcked = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const { pool, root, remove } = await tempPool({ sizeBytes: 512 * 1024 ** 2, options: ['dm.min_free_space=0'] });
    try {
      await pool.store.createLayer('c', { kind: 'container' });
      await pool.close();

      const seed = 4242 + round * 7919;
      const { ops, acked } = await runCrashWriter(
        [path.join(REPO_ROOT, 'test/support/crash-copy-writer.js'), root, 'c', String(seed)],
        200 + ((round * 131) % 600),
        (child) => child.kill('SIGKILL'),
        { expectSignal: 'SIGKILL' },
      );
      totalAcked += acked + 1;
      copiesAcked += ops.filter((op) => op.op === 'copy' && op.k <= acked).length;

      const reopened = await Pool.open(root);
      try {
        // check covers the reference counts: every shared block counted exactly, no block both free and in use.
        const report = await reopened.check();
        expect(report.problems).toEqual([]);
        const fs = await reopened.store.openLayer('c', { readOnly: true });
        await expectAcknowledgedState(fs, ops, acked, `round ${round}`);
        await fs.close();
      } finally {
        await reopened.close();
      }
    } finally {
      await remove();
    }
  }
  expect(totalAcked).toBeGreaterThan(ROUNDS);
  expect(copiesAcked).toBeGreaterThan(0);
});
