/**
 * serveMount, the path of the mount daemon and of Node callers that serve a mount in-process,
 * refuses a mountpoint in or above the pool before it opens the pool or touches the
 * mountpoint (the CLI's refusals are in output-guard.test.ts).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Pool } from '../../../src/api';
import { assertMountpointOutsidePool, serveMount } from '../../../src/cli/commands/mount';
import { isDmfsError } from '../../../src/errors';

describe('serveMount refuses mountpoints in or above the pool', () => {
  const work = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-mount-guard-')));
  const root = path.join(work, 'pool');
  beforeAll(async () => {
    const pool = await Pool.create({ root, sizeBytes: 64 * 1024 ** 2 });
    await pool.store.createLayer('c1', { parent: 'base', kind: 'container' });
    await pool.close();
  });
  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  test.each([
    ['in the run directory (new)', () => path.join(root, 'run', 'mnt')],
    ['the data directory', () => path.join(root, 'data')],
    ['the pool root', () => root],
    ['above the pool', () => work],
  ])('%s', async (_label, mp) => {
    const log: string[] = [];
    const err = await serveMount(
      { root, layer: 'c1', mountpoint: mp(), readOnly: false, allowOther: false },
      { log: (l) => log.push(l), onReady: () => undefined, logFile: null, recovered: false },
    ).then(() => null, (e: unknown) => e);
    expect(isDmfsError(err, 'PATH_IN_POOL') && err.exitCode).toBe(2);
    expect(fs.existsSync(path.join(root, 'run', 'mnt'))).toBe(false);
    expect(fs.readdirSync(path.join(root, 'run'))).toEqual([]); // no run record, no exit record
  });

  test('a mountpoint beside the pool passes the check', () => {
    expect(() => assertMountpointOutsidePool(root, path.join(work, 'mnt'))).not.toThrow();
  });
});
