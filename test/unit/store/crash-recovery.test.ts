import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { Pool } from '../../../src/api';
import { ensureBuiltDist, REPO_ROOT } from '../../support/built-dist';
import { tempPool } from '../../support/temp-pool';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const { applyOp } = require('../../support/crash-ops.js');

const ROUNDS = Number(process.env.DMFS_CRASH_ROUNDS ?? 20);

beforeAll(() => ensureBuiltDist());

/** Runs the writer until it has acknowledged at least minAcks ops and `afterMs` passed, then SIGKILLs it. */
function runAndKill(root: string, seed: number, killAfterMs: number): Promise<{ ops: Record<string, unknown>[]; acked: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(REPO_ROOT, 'test/support/crash-writer.js'), root, 'c', String(seed)], { stdio: ['ignore', 'pipe', 'pipe'] });
    const ops: Record<string, unknown>[] = [];
    let acked = -1;
    let buf = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.startsWith('BEGIN ')) ops.push(JSON.parse(line.slice(6)));
        else if (line.startsWith('ACK ')) acked = Number(line.slice(4));
      }
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (signal !== 'SIGKILL') return reject(new Error(`writer exited early (${code}): ${stderr}`));
      resolve({ ops, acked });
    });
  });
}

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
      const { ops, acked } = await runAndKill(root, seed, 150 + ((round * 97) % 500));
      totalAcked += acked + 1;

      const reopened = await Pool.open(root);
      try {
        const report = await reopened.check();
        expect(report.problems).toEqual([]);
        // Model: every acknowledged op applied; the op in flight may or may not have landed.
        const model = new Map<string, Buffer>();
        for (const op of ops) if ((op.k as number) <= acked) applyOp(model, op);
        const inflight = ops.find((op) => (op.k as number) === acked + 1);
        const touched = new Set<string>(inflight ? [inflight.name as string, (inflight.to as string) ?? ''] : []);
        const fs = await reopened.store.openLayer('c', { readOnly: true });
        for (const [name, content] of model) {
          if (touched.has(name)) continue;
          const a = await fs.lookup(fs.rootIno, name);
          expect({ name, exists: a !== null }).toEqual({ name, exists: true });
          expect({ name, size: a!.sizeBytes }).toEqual({ name, size: content.length });
          const back = Buffer.alloc(content.length);
          await fs.read(a!.ino, back, 0);
          expect({ name, same: back.equals(content) }).toEqual({ name, same: true });
        }
        const names = (await fs.readdir(fs.rootIno)).map((e) => e.name).filter((n) => !touched.has(n));
        expect(names.sort()).toEqual([...model.keys()].filter((n) => !touched.has(n)).sort());
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
