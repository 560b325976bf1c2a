import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MetadataEnv } from '../../../src/pool/metadata-env';

test('read-only, a table the file lacks (written by an older build) reads empty and refuses writes', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-absent-'));
  try {
    const w = MetadataEnv.open(dir, { create: true });
    w.txn(() => w.table('present').put(1, Buffer.from('x')));
    await w.close();
    const r = MetadataEnv.open(dir, { create: false, readOnly: true });
    try {
      expect(r.table('present').get(1)).toEqual(Buffer.from('x'));
      const absent = r.table('added-later');
      expect(absent.get(1)).toBeUndefined();
      expect([...absent.range(0, 100)]).toEqual([]);
      expect(absent.count(0, 100)).toBe(0);
      expect(() => absent.put(1, Buffer.alloc(1))).toThrow(expect.objectContaining({ code: 'POOL_READ_ONLY' }));
    } finally {
      await r.close();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
