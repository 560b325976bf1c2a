import * as path from 'node:path';
import { Pool } from '../../../src/api';
import { ensureBuiltDist, REPO_ROOT } from '../../support/built-dist';
import { tempPool } from '../../support/temp-pool';
import { expectAcknowledgedState, runCrashWriter } from '../../support/crash-workload';

const ROUNDS = Number(process.env.DMFS_CRASH_ROUNDS ?? 20);

beforeAll(() => ensureBuiltDist());

test(`kill -9 during writes, ${ROUNDS} rounds: fsync-acknowledged data intact, no leaked or doubly used block`, async () => {
  let totalAcked = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const { pool, root, remove } = await tempPool({ sizeBytes: 512 * 1024 ** 2, options: ['dm.min_free_space=0'] });
    try {
      await pool.store.createLayer('img', { kind: 'image', building: true });
      const img = await pool.store.openLayer('img');
      await img.close();
      await pool.store.sealLayer('img');
      await pool.store.createLayer('c', { parent: 'img', kind: 'container' });
      await pool.close();

      const seed = 1000 + round * 7919;
      const { ops, acked } = await runCrashWriter(
        [path.join(REPO_ROOT, 'test/support/crash-writer.js'), root, 'c', String(seed)],
        150 + ((round * 97) % 500),
        (child) => child.kill('SIGKILL'),
        { expectSignal: 'SIGKILL' },
      );
      totalAcked += acked + 1;

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
  expect(totalAcked).toBeGreaterThan(ROUNDS);
});
