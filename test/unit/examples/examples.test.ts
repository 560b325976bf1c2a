import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ensureBuiltDist, REPO_ROOT } from '../../support/built-dist';

beforeAll(() => ensureBuiltDist());

test('examples/node-api.js runs and shows one copied-up block', () => {
  const r = spawnSync(process.execPath, [path.join(REPO_ROOT, 'examples/node-api.js')], { encoding: 'utf8' });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  expect(r.stdout).toMatch(/deleted\s+\/etc\/hostname/);
  expect(r.stdout).toMatch(/modified \/srv\/data\/table.bin/);
  expect(r.stdout).toMatch(/web-1\s+container exclusive\s+64.0 KiB/);
});

test('examples/cli.sh runs', () => {
  const r = spawnSync('sh', [path.join(REPO_ROOT, 'examples/cli.sh')], { encoding: 'utf8' });
  expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
  expect(r.stdout).toMatch(/pool is consistent/);
  expect(r.stdout).toMatch(/Chain:\s+app-2 -> app-v1 -> app-base -> base/);
});

test('the CI job examples are well-formed and use the dmfs commands that exist', () => {
  const commands = new Set(['pool', 'import', 'create', 'mount', 'umount', 'diff', 'export', 'rm']);
  for (const file of ['github-actions.yml', 'gitlab-ci.yml']) {
    const text = fs.readFileSync(path.join(REPO_ROOT, 'examples/ci', file), 'utf8');
    expect(text).not.toMatch(/\t/);
    const commandLines = text.split('\n').filter((l) => !/^\s*#/.test(l) && !/name:/.test(l));
    const used = commandLines.flatMap((l) => [...l.matchAll(/(?:^|[\s(])dmfs (\w+)/g)].map((m) => m[1]));
    expect(used.length).toBeGreaterThan(4);
    for (const c of used) expect(commands.has(c) || c === 'pool').toBe(true);
  }
});
