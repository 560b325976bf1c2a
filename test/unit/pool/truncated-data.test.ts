/**
 * Issue 11, case 5: the data file is cut short (`truncate -s 4M` on a pool with 128
 * mapped blocks). Open refuses with DATA_DEVICE_SHORT naming sizes and what to do; check
 * still opens the pool and reports the short device and the lost blocks; `check --repair`
 * grows the file back and ends consistent (never "run check --repair" again); the lost
 * blocks then fail their checksums (EIO), never read as zeros, while intact blocks read
 * back byte-identical. A file cut short only past the used blocks is grown back silently.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Pool } from '../../../src/api';
import { isDmfsError } from '../../../src/errors';
import { ThinPool } from '../../../src/pool/thin-pool';
import { DMFS_BIN, ensureBuiltDist } from '../../support/built-dist';

beforeAll(() => ensureBuiltDist());

const S_IFREG = 0o100000;
const BLOCK = 64 * 1024;

function dmfs(root: string, ...args: string[]) {
  const r = spawnSync(process.execPath, [DMFS_BIN, ...args, '--root', root], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('truncated data file', () => {
  let dir: string;
  let root: string;
  let dataFile: string;
  let content: Buffer;
  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-trunc-'));
    root = path.join(dir, 'pool');
    dataFile = path.join(root, 'data', 'data-file');
    const pool = await Pool.create({ root, sizeBytes: 1024 ** 3 });
    await pool.store.createLayer('c1', { parent: 'base', kind: 'container' });
    const layer = await pool.store.openLayer('c1');
    const f = await layer.mknod(layer.rootIno, 'data', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    content = randomBytes(128 * BLOCK);
    await layer.write(f.ino, content, 0);
    await layer.fsync();
    await layer.close();
    await pool.close();
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  async function readFile(pool: Pool): Promise<{ head: Buffer; tailError: unknown }> {
    const layer = await pool.store.openLayer('c1', { readOnly: true });
    try {
      const ino = (await layer.lookup(layer.rootIno, 'data')).ino;
      const head = Buffer.alloc(64 * BLOCK);
      await layer.read(ino, head, 0);
      let tailError: unknown = null;
      await layer.read(ino, Buffer.alloc(BLOCK), 100 * BLOCK).catch((err) => (tailError = err));
      return { head, tailError };
    } finally {
      await layer.close();
    }
  }

  it('open refuses DATA_DEVICE_SHORT; check reports it; check --repair grows it back and ends consistent; lost blocks read EIO', async () => {
    fs.truncateSync(dataFile, 4 * 1024 ** 2);
    let caught: unknown;
    await ThinPool.open(root).catch((err) => (caught = err));
    expect(isDmfsError(caught, 'DATA_DEVICE_SHORT')).toBe(true);
    expect((caught as Error).message).toMatch(/4194304 bytes/);
    expect((caught as Error).message).toMatch(/check --repair/);
    expect(fs.statSync(dataFile).size).toBe(4 * 1024 ** 2); // open changed nothing

    const ls = dmfs(root, 'ls', '--json');
    expect(ls.code).toBe(1);
    expect(JSON.parse(ls.stdout)).toMatchObject({ error: { code: 'DATA_DEVICE_SHORT' } });
    expect(ls.stderr).not.toMatch(/\n\s+at /);

    const check = dmfs(root, 'check', '--json');
    expect(check.code).toBe(1);
    const report = JSON.parse(check.stdout) as { ok: boolean; problems: { kind: string; message: string; repaired: boolean }[] };
    expect(report.ok).toBe(false);
    const kinds = report.problems.map((p) => p.kind);
    expect(kinds).toContain('DATA_DEVICE_SHORT');
    expect(kinds.filter((k) => k === 'DATA_LOST').length).toBe(21); // 20 named, then a count
    expect(report.problems.find((p) => p.kind === 'DATA_LOST')!.message).toMatch(/layer c1, inode \d+, file block 64 /);
    expect(fs.statSync(dataFile).size).toBe(4 * 1024 ** 2); // plain check changes nothing

    const repair = dmfs(root, 'check', '--repair', '--data');
    expect(repair.code).toBe(0);
    expect(repair.stdout).toMatch(/finds the pool consistent/);
    expect(repair.stdout).not.toMatch(/run 'dmfs check --repair'/);
    expect(fs.statSync(dataFile).size).toBe(1024 ** 3);
    const again = dmfs(root, 'check', '--json');
    expect(JSON.parse(again.stdout)).toMatchObject({ ok: true, problems: [] });

    const pool = await Pool.open(root);
    try {
      const { head, tailError } = await readFile(pool);
      expect(head.equals(content.subarray(0, 64 * BLOCK))).toBe(true);
      expect(isDmfsError(tailError, 'DATA_CORRUPT')).toBe(true); // zeros never pass for data
    } finally {
      await pool.close();
    }
  });

  it('cut short only past the used blocks: open grows it back, nothing lost, check clean', async () => {
    fs.truncateSync(dataFile, 512 * BLOCK);
    const pool = await Pool.open(root);
    try {
      expect(fs.statSync(dataFile).size).toBe(1024 ** 3);
      const { head, tailError } = await readFile(pool);
      expect(head.equals(content.subarray(0, 64 * BLOCK))).toBe(true);
      expect(tailError).toBeNull();
      expect((await pool.check()).ok).toBe(true);
    } finally {
      await pool.close();
    }
  });

  it('dataDeviceCheck names the sizes and the used blocks past the end', async () => {
    const pool = await ThinPool.open(root);
    try {
      expect(pool.dataDeviceCheck()).toMatchObject({ short: false, deviceBytes: 1024 ** 3, highestUsedBlock: expect.any(Number), usedBlocksBeyondEnd: 0 });
      expect(pool.dataDeviceCheck().highestUsedBlock).toBeGreaterThanOrEqual(127);
    } finally {
      await pool.close();
    }
    fs.truncateSync(dataFile, 4 * 1024 ** 2);
    const short = await ThinPool.open(root, { allowShortDataDevice: true });
    try {
      const d = short.dataDeviceCheck();
      expect(d).toMatchObject({ short: true, deviceBytes: 4 * 1024 ** 2, deviceBlocks: 64, expectedBytes: 1024 ** 3 });
      expect(d.usedBlocksBeyondEnd).toBeGreaterThanOrEqual(64);
    } finally {
      await short.close();
    }
  });
});
