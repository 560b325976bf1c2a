/**
 * Issue 11, case 6: a pool on a read-only file system. A real read-only bind mount of a
 * pool made in the test (root needed; under CI=true as root this never skips). Read-only
 * commands work through real CLI processes, writing commands fail with POOL_READ_ONLY and
 * a message saying why, never a stack trace, and nothing under the pool changes. With the
 * FORMAT file missing as well, the metadata still proves the format and nothing is written.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DMFS_BIN, ensureBuiltDist } from '../support/built-dist';

const isRoot = process.getuid?.() === 0;
const describeRoot = isRoot ? describe : describe.skip;
if (!isRoot) console.log('skipping read-only pool tests: a read-only bind mount needs root'); // eslint-disable-line no-console

function sh(cmd: string): void {
  const r = spawnSync('bash', ['-c', cmd], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr}`);
}

function dmfs(root: string, ...args: string[]) {
  const r = spawnSync(process.execPath, [DMFS_BIN, ...args, '--root', root], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Every file under dir with its size and content hash: must not change. */
function snapshot(dir: string): string {
  const r = spawnSync('bash', ['-c', `cd '${dir}' && find . -type f -printf '%p %s\\n' | sort && find . -type f | sort | xargs sha256sum`], { encoding: 'utf8' });
  return r.stdout;
}

describeRoot('pool on a read-only file system (real read-only bind mount)', () => {
  let dir: string;
  let rw: string;
  let ro: string;
  let payload: Buffer;
  beforeAll(() => {
    ensureBuiltDist();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-ro-'));
    rw = path.join(dir, 'rw');
    ro = path.join(dir, 'ro');
    fs.mkdirSync(ro);
    const pool = path.join(rw, 'pool');
    expect(dmfs(pool, 'pool', 'create', '--size', '64M').code).toBe(0);
    expect(dmfs(pool, 'create', 'c1').code).toBe(0);
    // Content without FUSE: a directory imported as an image layer.
    const src = path.join(dir, 'src');
    fs.mkdirSync(src);
    payload = Buffer.alloc(300_000);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7919) & 0xff;
    fs.writeFileSync(path.join(src, 'big'), payload);
    fs.writeFileSync(path.join(src, 'small'), 'hello\n');
    const imp = dmfs(pool, 'import', src, '--name', 'img');
    if (imp.code !== 0) throw new Error(`import failed: ${imp.stdout}${imp.stderr}`);
    sh(`mount --bind '${rw}' '${ro}' && mount -o remount,bind,ro '${ro}'`);
  });
  afterAll(() => {
    spawnSync('umount', [ro]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const roPool = () => path.join(ro, 'pool');

  it('read-only commands work: info, ls, inspect, check, check --data, export', () => {
    const before = snapshot(roPool());
    const info = dmfs(roPool(), 'info', '--json');
    expect(info.code).toBe(0);
    expect(JSON.parse(info.stdout)).toMatchObject({ readOnly: true });
    expect(dmfs(roPool(), 'info').stdout).toMatch(/Read-only: +yes/);
    const ls = dmfs(roPool(), 'ls', '--json');
    expect(ls.code).toBe(0);
    expect((JSON.parse(ls.stdout) as { name: string }[]).map((l) => l.name).sort()).toEqual(expect.arrayContaining(['base', 'c1']));
    const img = (JSON.parse(ls.stdout) as { name: string; kind: string }[]).find((l) => l.kind === 'image')!;
    expect(dmfs(roPool(), 'inspect', 'c1').code).toBe(0);
    const doctor = JSON.parse(dmfs(roPool(), 'doctor', '--json').stdout) as { checks: { id: string; status: string; detail: string }[] };
    expect(doctor.checks.find((c) => c.id === 'root.space')).toMatchObject({ status: 'warn', detail: expect.stringMatching(/read-only file system/) });
    for (const args of [['check'], ['check', '--data']]) {
      const r = dmfs(roPool(), ...args, '--json');
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, problems: [] });
    }
    const out = path.join(dir, 'export.tar');
    const exp = dmfs(roPool(), 'export', img.name, '-o', out);
    expect(exp.stderr).toBe('');
    expect(exp.code).toBe(0);
    const back = path.join(dir, 'back');
    fs.mkdirSync(back);
    sh(`tar -C '${back}' -xf '${out}'`);
    expect(fs.readFileSync(path.join(back, 'big')).equals(payload)).toBe(true);
    expect(fs.readFileSync(path.join(back, 'small'), 'utf8')).toBe('hello\n');
    expect(snapshot(roPool())).toBe(before);
  });

  it('writing commands fail with POOL_READ_ONLY and say so, without a stack trace, and change nothing', () => {
    const before = snapshot(roPool());
    const mnt = path.join(dir, 'mnt');
    fs.mkdirSync(mnt, { recursive: true });
    for (const args of [['create', 'c2'], ['rm', 'c1'], ['check', '--repair'], ['pool', 'resize', '2G'], ['mount', 'c1', mnt, '--ro']]) {
      const r = dmfs(roPool(), ...args, '--json');
      expect([args.join(' '), r.code]).toEqual([args.join(' '), 1]);
      // The error object (top level, or per layer for rm) carries the stable code.
      expect(JSON.stringify(JSON.parse(r.stdout))).toMatch(/"code":"POOL_READ_ONLY","message":"[^"]*read-only file system/);
      expect(r.stderr).not.toMatch(/\n\s+at /);
      const human = dmfs(roPool(), ...args);
      expect(human.stderr).toMatch(/read-only file system/);
      expect(human.stderr).not.toMatch(/\n\s+at /);
    }
    expect(snapshot(roPool())).toBe(before);
  });

  it('FORMAT missing as well: the metadata proves the format, read-only commands work, nothing is written', () => {
    spawnSync('umount', [ro]);
    fs.renameSync(path.join(rw, 'pool', 'metadata', 'FORMAT'), path.join(dir, 'FORMAT.saved'));
    sh(`mount --bind '${rw}' '${ro}' && mount -o remount,bind,ro '${ro}'`);
    try {
      const before = snapshot(roPool());
      const ls = dmfs(roPool(), 'ls', '--json');
      expect(ls.code).toBe(0);
      expect(ls.stderr).not.toMatch(/destroy/);
      expect(fs.existsSync(path.join(roPool(), 'metadata', 'FORMAT'))).toBe(false);
      expect(snapshot(roPool())).toBe(before);
    } finally {
      fs.renameSync(path.join(dir, 'FORMAT.saved'), path.join(rw, 'pool', 'metadata', 'FORMAT'));
    }
  });
});
