/**
 * Issue 11, CLI output: global options before or after the command, diff names escaped
 * (ls -b) or NUL-terminated (-z), and a reader that goes away (| head) ending the command
 * quietly. Real CLI processes, real shell pipes.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Pool } from '../../../src/api';
import { escapePath } from '../../../src/cli/commands/diff';
import { splitGlobalOptions } from '../../../src/cli/main';
import { S_IFREG } from '../../../src/store/layer-store';
import { DMFS_BIN, ensureBuiltDist } from '../../support/built-dist';

beforeAll(() => ensureBuiltDist());

function dmfsRaw(...args: string[]) {
  const r = spawnSync(process.execPath, [DMFS_BIN, ...args], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** `sh -c SCRIPT` with $DMFS the CLI; returns status, stdout and stderr. */
function shell(script: string) {
  const r = spawnSync('sh', ['-c', script], { encoding: 'utf8', env: { ...process.env, DMFS: `${process.execPath} ${DMFS_BIN}` } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const NAMES = ['plain', 'two words', 'new\nline', 'tab\there', 'back\\slash', 'bell\x07', 'del\x7f', 'c1\u0085', 'ünïcode'];

describe('CLI output', () => {
  const work = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-cli-out-')));
  const root = path.join(work, 'pool');
  beforeAll(async () => {
    const pool = await Pool.create({ root, sizeBytes: 64 * 1024 ** 2 });
    try {
      await pool.store.createLayer('c1', { parent: 'base', kind: 'container' });
      const fs1 = await pool.store.openLayer('c1');
      for (const n of NAMES) await fs1.mknod(fs1.rootIno, n, { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
      await fs1.close();
      // Enough changes that the listing outgrows a pipe buffer (64 KiB) many times over.
      await pool.store.createLayer('many', { parent: 'base', kind: 'container' });
      const fs2 = await pool.store.openLayer('many');
      const dir = await fs2.mkdir(fs2.rootIno, 'd', { mode: 0o755, uid: 0, gid: 0 });
      for (let i = 0; i < 12000; i++) await fs2.mknod(dir.ino, `file-with-a-longish-name-${i}`, { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
      await fs2.close();
    } finally {
      await pool.close();
    }
  }, 120_000);
  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  describe('global options anywhere', () => {
    test.each([
      ['before', ['--root', root, 'ls', '--json']],
      ['--root= before', [`--root=${root}`, 'ls', '--json']],
      ['after', ['ls', '--root', root, '--json']],
      ['--json before too', ['--json', '--root', root, 'ls']],
      ['between pool and its sub-command', ['pool', '--json', '--root', root, 'set', 'dm.blkdiscard=true']],
      ['before pool', ['--root', root, '--json', 'pool', 'set', 'dm.blkdiscard=true']],
    ])('%s', (_label, args) => {
      const r = dmfsRaw(...args);
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
      expect(() => JSON.parse(r.stdout)).not.toThrow();
    });

    test('pool create with --root before the command', () => {
      const p = path.join(work, 'p2');
      const r = dmfsRaw('--root', p, '--json', 'pool', 'create', '--size', '64M');
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout).root).toBe(p);
      expect(fs.existsSync(path.join(p, 'metadata', 'data.mdb'))).toBe(true);
    });

    test('--help before a command is that command\'s help; alone it is the main help', () => {
      expect(dmfsRaw('--help', 'diff').stdout).toMatch(/^Usage: dmfs diff/);
      expect(dmfsRaw('--root', root, '--help').stdout).toMatch(/^Usage: dmfs COMMAND/);
      expect(dmfsRaw('--root', root, '--help').code).toBe(0);
    });

    test('usage errors before the command exit 2', () => {
      expect(dmfsRaw('--root').code).toBe(2);
      expect(dmfsRaw('--bogus', 'ls').code).toBe(2);
      expect(dmfsRaw('--root', root).code).toBe(2); // no command
    });

    test('splitGlobalOptions moves leading globals behind the command', () => {
      expect(splitGlobalOptions(['--root', 'R', '--json', 'pool', 'create', '--size', '1G'])).toEqual({
        name: 'pool', rest: ['create', '--size', '1G', '--root', 'R', '--json'], leading: ['--root', 'R', '--json'],
      });
      expect(splitGlobalOptions(['--root=R', 'ls']).rest).toEqual(['--root=R']);
      expect(splitGlobalOptions([]).name).toBeNull();
    });
  });

  describe('diff names', () => {
    test('escapePath follows ls -b for control characters and backslash', () => {
      expect(NAMES.map(escapePath)).toEqual([
        'plain', 'two words', 'new\\nline', 'tab\\there', 'back\\\\slash', 'bell\\a', 'del\\177', 'c1\\302\\205', 'ünïcode',
      ]);
    });

    test('one line per change, whatever the names hold', () => {
      const r = dmfsRaw('diff', 'c1', '--root', root);
      expect(r.code).toBe(0);
      const lines = r.stdout.split('\n').filter(Boolean);
      expect(lines).toHaveLength(NAMES.length);
      expect(lines).toEqual(expect.arrayContaining(['A /new\\nline', 'A /back\\\\slash', 'A /two words', 'A /ünïcode']));
    });

    test('-z: NUL-terminated records with the raw names', () => {
      const r = spawnSync(process.execPath, [DMFS_BIN, 'diff', '-z', 'c1', '--root', root]);
      expect(r.status).toBe(0);
      const records = r.stdout.toString('utf8').split('\0');
      expect(records.pop()).toBe('');
      expect(records.sort()).toEqual(NAMES.map((n) => `A /${n}`).sort());
    });

    test('-z with --json is a usage error', () => {
      expect(dmfsRaw('diff', '-z', '--json', 'c1', '--root', root).code).toBe(2);
    });
  });

  describe('a reader that goes away', () => {
    test.each([
      ['diff | head -1', `$DMFS diff many --root '${root}' | head -1`],
      ['diff -z | head -c 10', `$DMFS diff -z many --root '${root}' | head -c 10 >/dev/null`],
      ['ls | true', `$DMFS ls --root '${root}' | true`],
      ['dump | head -c 100', `$DMFS dump --root '${root}' | head -c 100 >/dev/null`],
      ['export -o - | head -c 100', `$DMFS export many -o - --root '${root}' | head -c 100 >/dev/null`],
    ])('%s: nothing on stderr (no EPIPE, no stack)', (_label, script) => {
      const r = shell(script);
      expect(r.stderr).not.toMatch(/EPIPE|internal error/);
      expect(r.stderr).toBe('');
    });

    test('the writer exits 141 (128 + SIGPIPE) when its output was cut short', () => {
      // bash's PIPESTATUS gives the writer's status; sh may not have it.
      const r = spawnSync('bash', ['-c', `$DMFS diff many --root '${root}' | head -1 >/dev/null; echo "\${PIPESTATUS[0]}"`], {
        encoding: 'utf8', env: { ...process.env, DMFS: `${process.execPath} ${DMFS_BIN}` },
      });
      expect(r.stderr).toBe('');
      expect(r.stdout.trim()).toBe('141');
    });

    test('the pool is fine afterwards', () => {
      const r = dmfsRaw('check', '--root', root, '--json');
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout).ok).toBe(true);
    });
  });
});
