import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DMFS_BIN, ensureBuiltDist } from '../../support/built-dist';

beforeAll(() => ensureBuiltDist());

function run(root: string, ...args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [DMFS_BIN, ...args, '--root', root], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code) => resolve({ code, stderr }));
  });
}

test('concurrent commands on one pool serialise or fail clearly, never corrupt', async () => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-concurrent-'));
  const root = path.join(base, 'pool');
  try {
    const tree = path.join(base, 'tree');
    fs.mkdirSync(tree);
    for (let i = 0; i < 200; i++) fs.writeFileSync(path.join(tree, `f${i}`), Buffer.alloc(20000 + i * 100, i % 200));
    const tar = path.join(base, 'layer.tar');
    expect(spawnSync('tar', ['-C', tree, '-cf', tar, '.']).status).toBe(0);
    expect(spawnSync(process.execPath, [DMFS_BIN, 'pool', 'create', '--size', '2G', '--root', root]).status).toBe(0);

    // Two imports of the same layer, plus unrelated creates, all at once.
    const results = await Promise.all([
      run(root, 'import', tar, '--name', 'a'),
      run(root, 'import', tar, '--name', 'b'),
      run(root, 'create', 'c1'),
      run(root, 'create', 'c2'),
      run(root, 'create', 'c1'),
    ]);
    for (const r of results) {
      if (r.code !== 0) expect(r.stderr).toMatch(/already exists|in use|being built/);
    }
    expect(results.filter((r) => r.code === 0).length).toBeGreaterThanOrEqual(3);
    // Creates of one name: exactly one wins.
    expect([results[2].code, results[4].code].filter((c) => c === 0)).toHaveLength(1);

    const ls = JSON.parse(spawnSync(process.execPath, [DMFS_BIN, 'ls', '--json', '--root', root], { encoding: 'utf8' }).stdout) as { name: string }[];
    const names = ls.map((l) => l.name);
    expect(names).toEqual(expect.arrayContaining(['base', 'c1', 'c2']));
    // Removing while another process creates containers on the same image.
    const imported = names.includes('a') ? 'a' : 'b';
    const more = await Promise.all([
      run(root, 'create', 'x1', '--from', imported),
      run(root, 'rm', imported),
      run(root, 'create', 'x2', '--from', imported),
    ]);
    for (const r of more) if (r.code !== 0) expect(r.stderr).toMatch(/has children|no layer named|being removed/);
    const check = JSON.parse(spawnSync(process.execPath, [DMFS_BIN, 'check', '--json', '--root', root], { encoding: 'utf8' }).stdout);
    expect(check.problems).toEqual([]);
  } finally {
    fs.rmSync(base, { recursive: true, force: true });
  }
});
