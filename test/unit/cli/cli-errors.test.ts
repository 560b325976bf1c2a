import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DMFS_BIN, ensureBuiltDist } from '../../support/built-dist';

beforeAll(() => ensureBuiltDist());

function dmfs(root: string, ...args: string[]) {
  const r = spawnSync(process.execPath, [DMFS_BIN, ...args, '--root', root], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** What a user can see of a pool: its layers and space. Must not change on a failed command. */
function poolState(root: string): string {
  const ls = JSON.parse(dmfs(root, 'ls', '--json').stdout);
  const info = JSON.parse(dmfs(root, 'info', '--json').stdout);
  return JSON.stringify({
    layers: ls.map((l: Record<string, unknown>) => [l.name, l.kind, l.parent, l.exclusiveBytes, l.labels]),
    used: info.dataSpaceUsedBytes,
    total: info.dataSpaceTotalBytes,
  });
}

describe('dmfs CLI error paths', () => {
  let root: string;
  beforeAll(() => {
    root = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-cli-')), 'pool');
    expect(dmfs(root, 'pool', 'create', '--size', '1G').code).toBe(0);
    expect(dmfs(root, 'create', '--image', 'img').code).toBe(0);
    expect(dmfs(root, 'create', 'c1', '--from', 'img', '--label', 'a=b').code).toBe(0);
  });
  afterAll(() => fs.rmSync(path.dirname(root), { recursive: true, force: true }));

  const cases: [string, string[], number, RegExp][] = [
    ['unknown command', ['frobnicate'], 2, /unknown command/],
    ['unknown flag', ['ls', '--bogus'], 2, /Unknown option/],
    ['missing argument', ['create'], 2, /usage: dmfs create/],
    ['too many arguments', ['inspect', 'a', 'b'], 2, /usage/],
    ['existing pool', ['pool', 'create'], 1, /already exists/],
    ['unknown pool sub-command', ['pool', 'shrink'], 2, /unknown pool sub-command/],
    ['duplicate layer name', ['create', 'c1', '--from', 'img'], 1, /already exists/],
    ['missing parent', ['create', 'c2', '--from', 'nope'], 1, /no layer named 'nope'/],
    ['container as parent', ['create', 'c2', '--from', 'c1'], 2, /commit it first/],
    ['invalid layer name', ['create', 'bad name'], 2, /not a valid layer name/],
    ['bad size', ['create', 'c2', '--size', 'lots'], 2, /not a size/],
    ['bad label', ['create', 'c2', '--label', 'novalue'], 2, /KEY=VALUE/],
    ['commit an image', ['commit', 'img', 'x'], 2, /not a container/],
    ['commit unknown', ['commit', 'nope', 'x'], 1, /no layer named/],
    ['commit onto an existing name', ['commit', 'c1', 'img'], 1, /already exists/],
    ['rm with children', ['rm', 'img'], 1, /has children/],
    ['rm unknown', ['rm', 'nope'], 1, /no layer named/],
    ['rm base', ['rm', 'base'], 1, /cannot be removed/],
    ['inspect unknown', ['inspect', 'nope'], 1, /no layer named/],
    ['resize smaller', ['pool', 'resize', '100M'], 1, /shrinking/],
    ['set unknown option', ['pool', 'set', 'dm.nope=1'], 2, /unknown option/],
    ['set fixed option', ['pool', 'set', 'dm.blocksize=128K'], 2, /fixed at creation/],
    ['set bad value', ['pool', 'set', 'dm.min_free_space=200%'], 2, /percentage/],
  ];

  test.each(cases)('%s: exit %#', (_label, args, code, message) => {
    const before = poolState(root);
    const r = dmfs(root, ...args);
    expect({ code: r.code, stderr: r.stderr }).toMatchObject({ code, stderr: expect.stringMatching(message) });
    expect(poolState(root)).toBe(before);
  });

  test('--json errors are one JSON document with the code', () => {
    const r = dmfs(root, 'inspect', 'nope', '--json');
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout)).toEqual({ error: { code: 'LAYER_NOT_FOUND', message: expect.any(String) } });
  });

  test('a missing pool says how to create one', () => {
    const r = dmfs(path.join(root, 'nowhere'), 'ls');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/dmfs pool create/);
  });
});

describe('dmfs pool create rejects bad options and creates nothing', () => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-cli-create-'));
  afterAll(() => fs.rmSync(base, { recursive: true, force: true }));
  const badConfig = path.join(base, 'bad.json');
  const unknownKeyConfig = path.join(base, 'unknown.json');
  const goodConfig = path.join(base, 'good.json');
  fs.writeFileSync(badConfig, '{"storage-opts": ["dm.basesize=20G",]}');
  fs.writeFileSync(unknownKeyConfig, '{"storage-opts": [], "log-level": "debug"}');
  fs.writeFileSync(goodConfig, JSON.stringify({ 'storage-driver': 'devicemapper', 'storage-opts': ['dm.basesize=20G', 'dm.min_free_space=5%'] }));

  test.each([
    ['unknown option', ['--opt', 'dm.nope=1'], /unknown option 'dm.nope'/],
    ['option without value', ['--opt', 'dm.basesize'], /dm.NAME=VALUE/],
    ['bad basesize', ['--opt', 'dm.basesize=ten'], /dm.basesize/],
    ['bad percent', ['--opt', 'dm.min_free_space=101%'], /percentage/],
    ['bad bool', ['--opt', 'dm.blkdiscard=maybe'], /boolean/],
    ['block size not a power of two', ['--block-size', '96K'], /power of two/],
    ['block size too large', ['--block-size', '2M'], /power of two/],
    ['bad size', ['--size=-5G'], /not a size/],
    ['malformed JSON config', ['--config', badConfig], /not valid JSON/],
    ['unknown config key', ['--config', unknownKeyConfig], /unknown key 'log-level'/],
    ['missing config', ['--config', path.join(base, 'none.json')], /cannot read config/],
  ])('%s', (_label, args, message) => {
    const root = path.join(base, 'p-' + Math.random().toString(36).slice(2));
    const r = dmfs(root, 'pool', 'create', '--size', '1G', ...(args as string[]));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message as RegExp);
    expect(fs.existsSync(root)).toBe(false);
  });

  test('a daemon.json-style config applies its storage-opts', () => {
    const root = path.join(base, 'good');
    expect(dmfs(root, 'pool', 'create', '--size', '1G', '--config', goodConfig).code).toBe(0);
    const info = JSON.parse(dmfs(root, 'info', '--json').stdout);
    expect(info.baseDeviceSizeBytes).toBe(20 * 1024 ** 3);
    expect(info.minFreeSpacePercent).toBe(5);
    expect(fs.statSync(root).mode & 0o777).toBe(0o700);
  });
});

describe('host conditions and damaged pools: a clear error, never a stack trace', () => {
  let base: string;
  beforeAll(() => {
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-cli-host-'));
  });
  afterAll(() => fs.rmSync(base, { recursive: true, force: true }));

  const isRoot = process.getuid?.() === 0;
  (isRoot ? test : test.skip)('pool create where the user may not write: ACCESS_DENIED naming the path and what to do', () => {
    fs.chmodSync(base, 0o755); // nobody may look in, not write
    const parent = path.join(base, 'root-only');
    fs.mkdirSync(parent, { mode: 0o755 });
    const root = path.join(parent, 'pool');
    const r = spawnSync('runuser', ['-u', 'nobody', '--', process.execPath, DMFS_BIN, 'pool', 'create', '--size', '64M', '--root', root, '--json'], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).not.toMatch(/internal error|\n\s+at /);
    expect(r.stderr).toContain(root);
    expect(r.stderr).toMatch(/permission denied.*--root DIR/);
    expect(JSON.parse(r.stdout).error.code).toBe('ACCESS_DENIED');
  });

  test.each([
    ['metadata meta page overwritten', (root: string) => {
      const fd = fs.openSync(path.join(root, 'metadata', 'data.mdb'), 'r+');
      fs.writeSync(fd, Buffer.alloc(4096, 0xa5), 0, 4096, 0);
      fs.closeSync(fd);
    }],
    ['data device deleted', (root: string) => fs.rmSync(path.join(root, 'data', 'data-file'))],
  ])('pool destroy --force removes a pool that cannot be opened (%s)', (_label, damage) => {
    const root = path.join(base, 'p-' + Math.random().toString(36).slice(2));
    expect(dmfs(root, 'pool', 'create', '--size', '64M').code).toBe(0);
    expect(dmfs(root, 'create', 'c1').code).toBe(0);
    damage(root);
    expect(dmfs(root, 'ls').code).toBe(1);
    const r = dmfs(root, 'pool', 'destroy', '--force', '--json');
    expect(r.stderr).not.toMatch(/internal error|\n\s+at /);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).damaged).toEqual(expect.any(String));
    expect(fs.existsSync(root)).toBe(false);
  });

  test('pool destroy --force of a directory that is no pool still refuses', () => {
    const dir = path.join(base, 'not-a-pool');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'keep'), 'x');
    const r = dmfs(dir, 'pool', 'destroy', '--force');
    expect(r.code).toBe(1);
    expect(fs.readFileSync(path.join(dir, 'keep'), 'utf8')).toBe('x');
  });
});
