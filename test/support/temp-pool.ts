import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Pool, type PoolCreateOptions } from '../../src/api';

/** A fresh pool in a temp directory; remove() closes it and deletes everything. */
export async function tempPool(opts: Partial<PoolCreateOptions> = {}): Promise<{ pool: Pool; root: string; remove: () => Promise<void> }> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-test-'));
  const pool = await Pool.create({ root, sizeBytes: 1024 ** 3, ...opts });
  let closed = false;
  return {
    pool,
    root,
    remove: async () => {
      if (!closed) await pool.close().catch(() => undefined);
      closed = true;
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
}
