/**
 * Issue 11, case 6: the FORMAT file beside the metadata is deleted from an intact pool.
 * The metadata itself proves the format (a format record written at create, or for pools
 * from before the record, a superblock that decodes), so open recreates FORMAT and every
 * command works; no message ever advises `pool destroy` for metadata that reads fine.
 * Metadata that proves nothing is refused with POOL_FORMAT and left untouched.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { open } from 'lmdb';
import { Pool } from '../../../src/api';
import { isDmfsError } from '../../../src/errors';
import { METADATA_FORMAT } from '../../../src/pool/metadata-env';
import { ThinPool } from '../../../src/pool/thin-pool';
import { DMFS_BIN, ensureBuiltDist } from '../../support/built-dist';

beforeAll(() => ensureBuiltDist());

function dmfs(root: string, ...args: string[]) {
  const r = spawnSync(process.execPath, [DMFS_BIN, ...args, '--root', root], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('FORMAT marker', () => {
  let dir: string;
  let root: string;
  let marker: string;
  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-format-'));
    root = path.join(dir, 'pool');
    marker = path.join(root, 'metadata', 'FORMAT');
    const pool = await Pool.create({ root, sizeBytes: 1024 ** 3 });
    await pool.store.createLayer('c1', { parent: 'base', kind: 'container' });
    await pool.close();
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('deleted from an intact pool: the format record proves the format, FORMAT is recreated, commands work', async () => {
    fs.rmSync(marker);
    const ls = dmfs(root, 'ls', '--json');
    expect(ls.code).toBe(0);
    expect((JSON.parse(ls.stdout) as { name: string }[]).map((l) => l.name)).toEqual(['base', 'c1']);
    expect(ls.stderr).toMatch(/FORMAT was missing/);
    expect(ls.stderr).not.toMatch(/destroy/);
    expect(fs.readFileSync(marker, 'utf8')).toBe(`${METADATA_FORMAT}\n`);
    // The next command finds it in place and says nothing.
    const info = dmfs(root, 'info', '--json');
    expect(info.code).toBe(0);
    expect(info.stderr).toBe('');
    const pool = await ThinPool.open(root);
    expect(pool.env.formatEvidence).toBe('marker');
    await pool.close();
  });

  it('a pool from before the format record: the decoding superblock proves it; marker and record are both written', async () => {
    // Make the pool look like one created before the record existed.
    // As MetadataEnv opens it (no overlapping sync, whose meta copies the walker refuses).
    const env = open({ path: path.join(root, 'metadata'), maxDbs: 32, encoding: 'binary', mapSize: 64 * 1024 ** 3, noSync: true, overlappingSync: false });
    const t = env.openDB({ name: 'env-format', encoding: 'binary' });
    await t.remove('format');
    await env.close();
    fs.rmSync(marker);

    const first = await ThinPool.open(root);
    expect(first.env.formatEvidence).toBe('records-read');
    await first.close();
    expect(fs.readFileSync(marker, 'utf8')).toBe(`${METADATA_FORMAT}\n`);
    fs.rmSync(marker);
    const second = await ThinPool.open(root);
    expect(second.env.formatEvidence).toBe('record'); // the first open wrote the record
    await second.close();
    expect(dmfs(root, 'check').code).toBe(0);
  });

  it('no marker and a data.mdb that is not this LMDB: POOL_FORMAT, nothing written, no advice to destroy', async () => {
    fs.rmSync(marker);
    const dataMdb = path.join(root, 'metadata', 'data.mdb');
    const fd = fs.openSync(dataMdb, 'r+');
    fs.writeSync(fd, Buffer.alloc(8192, 0x5a), 0, 8192, 0);
    fs.closeSync(fd);
    const before = fs.readFileSync(dataMdb);
    let caught: unknown;
    await ThinPool.open(root).catch((err) => (caught = err));
    expect(isDmfsError(caught, 'POOL_FORMAT')).toBe(true);
    expect((caught as Error).message).not.toMatch(/destroy/);
    expect(fs.existsSync(marker)).toBe(false);
    expect(fs.readFileSync(dataMdb).equals(before)).toBe(true);
    const r = dmfs(root, 'ls');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/FORMAT/);
    expect(r.stderr).not.toMatch(/destroy|\n\s+at /);
  });

  it('a marker naming another format is still refused (POOL_FORMAT)', async () => {
    fs.writeFileSync(marker, 'dmfs-metadata-0 lmdb-1.0\n');
    let caught: unknown;
    await ThinPool.open(root).catch((err) => (caught = err));
    expect(isDmfsError(caught, 'POOL_FORMAT')).toBe(true);
  });
});
