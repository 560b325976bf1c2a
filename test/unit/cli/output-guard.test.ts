/**
 * Issue 11, outputs and mountpoints: every path the CLI writes (export/dump/save -o), mounts
 * on, or reads whole (import) that resolves into the pool — through '..', symlinks, hard
 * links or bind mounts — is refused with exit 2 before anything is written, and the pool
 * is intact afterwards (check --data clean, the image exports to the same bytes).
 * Runs the real CLI (bin/dmfs.js) in child processes.
 */
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DMFS_BIN, ensureBuiltDist } from '../../support/built-dist';

beforeAll(() => ensureBuiltDist());

function dmfs(root: string, ...args: string[]) {
  const r = spawnSync(process.execPath, [DMFS_BIN, ...args, '--root', root], { encoding: 'utf8' });
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

const sha = (file: string) => createHash('sha256').update(fs.readFileSync(file)).digest('hex');

/**
 * Content hash of the data file; of data.mdb (sparse, 64 GiB, and its meta pages change at
 * every open as the pool commits a transaction) its size and inode: an append grows it.
 */
function fingerprint(file: string): string {
  const st = fs.statSync(file);
  return st.size <= 256 * 1024 ** 2 ? `${st.size}:${sha(file)}` : `${st.size}:${st.ino}`;
}

describe('outputs, mountpoints and sources in the pool are refused', () => {
  // Paths are fixed when the tables below are built (before beforeAll runs).
  const work = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-guard-cli-')));
  const root = path.join(work, 'pool');
  const dataFile = path.join(root, 'data', 'data-file');
  const mdb = path.join(root, 'metadata', 'data.mdb');
  let goodTar: string;
  let goodTarSha: string;
  beforeAll(() => {
    expect(dmfs(root, 'pool', 'create', '--size', '64M').code).toBe(0);
    const src = path.join(work, 'src');
    fs.mkdirSync(src);
    fs.writeFileSync(path.join(src, 'big'), randomBytes(300 * 1024)); // whole data blocks, not inline
    fs.writeFileSync(path.join(src, 'small'), 'hello\n');
    expect(dmfs(root, 'import', src, '--name', 'img').code).toBe(0);
    expect(dmfs(root, 'create', 'c1', '--from', 'img').code).toBe(0);
    goodTar = path.join(work, 'good.tar');
    expect(dmfs(root, 'export', 'img', '-o', goodTar).code).toBe(0);
    goodTarSha = sha(goodTar);
    fs.symlinkSync(root, path.join(work, 'to-pool'));
    fs.symlinkSync(path.join(root, 'data'), path.join(work, 'to-data-dir'));
    fs.symlinkSync(dataFile, path.join(work, 'to-data-file'));
    fs.symlinkSync(path.join(root, 'run', 'not-yet'), path.join(work, 'dangling'));
    fs.symlinkSync(path.join(root, 'run'), path.join(work, 'to-run'));
    fs.linkSync(dataFile, path.join(work, 'hard-data-file'));
    fs.linkSync(mdb, path.join(work, 'hard-data.mdb'));
  });
  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  /** Pool intact: data blocks verify, and the image exports to the bytes it had. */
  function expectPoolIntact(): void {
    const check = dmfs(root, 'check', '--data', '--json');
    expect({ code: check.code, ok: JSON.parse(check.stdout).ok }).toEqual({ code: 0, ok: true });
    const again = path.join(work, 'again.tar');
    expect(dmfs(root, 'export', 'img', '-o', again).code).toBe(0);
    expect(sha(again)).toBe(goodTarSha);
    fs.rmSync(again);
  }

  function expectRefused(args: string[]): void {
    const dataBefore = sha(dataFile);
    const mdbIno = fs.statSync(mdb).ino;
    const r = dmfs(root, ...args, '--json');
    expect({ code: r.code, signal: r.signal }).toEqual({ code: 2, signal: null });
    expect(JSON.parse(r.stdout)).toEqual({ error: { code: 'PATH_IN_POOL', message: expect.any(String) } });
    expect(r.stderr).not.toMatch(/\n\s+at |internal error/); // no stack trace
    expect(sha(dataFile)).toBe(dataBefore);
    expect(fs.statSync(dataFile).isFile()).toBe(true);
    expect(fs.statSync(mdb).ino).toBe(mdbIno); // not replaced by a rename
    // No temporary file was left anywhere in the pool.
    const leftovers = fs.readdirSync(root, { recursive: true }).map(String).filter((n) => /tmp|dmfs-save/.test(n));
    expect(leftovers).toEqual([]);
  }

  const outputs = (): [string, string][] => [
    ['the data file', dataFile],
    ['the metadata file', mdb],
    ['the pool root', root],
    ['a new name in the pool', path.join(root, 'new.tar')],
    ['a new name in a missing directory of the pool', path.join(root, 'no', 'such', 'x.tar')],
    ["'..' through the pool", `${root}/run/../data/data-file`],
    ['a symlink to the pool', path.join(work, 'to-pool', 'data', 'data-file')],
    ['a symlink to a pool directory, new name', path.join(work, 'to-data-dir', 'x.tar')],
    ['a symlink to the data file', path.join(work, 'to-data-file')],
    ['a dangling symlink into the pool', path.join(work, 'dangling')],
    ["symlink then '..' (the kernel's order)", `${work}/to-run/../metadata/data.mdb`],
    ['a hard link to the data file', path.join(work, 'hard-data-file')],
    ['a hard link to data.mdb', path.join(work, 'hard-data.mdb')],
  ];

  describe('export -o', () => {
    test.each(outputs())('%s', (_label, target) => {
      expectRefused(['export', 'img', '-o', target]);
      expectRefused(['export', 'img', '--full', '-o', target]);
    });
    afterAll(() => expectPoolIntact());
  });

  describe('dump -o', () => {
    test.each(outputs())('%s', (_label, target) => expectRefused(['dump', '-o', target]));
    afterAll(() => expectPoolIntact());
  });

  describe('save -o (archive and layout directory)', () => {
    test.each(outputs())('%s', (_label, target) => expectRefused(['save', 'img', '-o', target]));
    test('a layout directory in the pool, or one holding the pool', () => {
      expectRefused(['save', 'img', '-o', path.join(root, 'layout')]);
      expectRefused(['save', 'img', '-o', path.join(root, 'run') + '/']);
      expectRefused(['save', 'img', '-o', work]);
      expectRefused(['save', 'img', '-o', path.join(work, 'to-pool')]);
      expect(fs.existsSync(path.join(root, 'layout'))).toBe(false);
      expect(fs.existsSync(path.join(root, 'run', 'oci-layout'))).toBe(false);
    });
    afterAll(() => expectPoolIntact());
  });

  describe('mount', () => {
    // Refused before FUSE is touched: no FUSE needed.
    test.each([
      ['the pool root', () => root],
      ['its data directory', () => path.join(root, 'data')],
      ['its run directory', () => path.join(root, 'run')],
      ['a new directory in the pool', () => path.join(root, 'run', 'mnt')],
      ['the parent of the pool', () => work],
      ['/', () => '/'],
      ['a symlink to the pool', () => path.join(work, 'to-pool')],
    ])('%s', (_label, target) => {
      expectRefused(['mount', 'c1', target()]);
      expect(fs.existsSync(path.join(root, 'run', 'mnt'))).toBe(false);
      const ls = JSON.parse(dmfs(root, 'ls', '--json').stdout) as { name: string; mounts: unknown[] }[];
      expect(ls.find((l) => l.name === 'c1')?.mounts).toEqual([]);
    });
    test('mount.dmfs passes the same check', () => {
      const helper = path.join(__dirname, '..', '..', '..', 'mount-helpers', 'mount.dmfs');
      const r = spawnSync('sh', [helper, `${root}:c1`, path.join(root, 'data')], { encoding: 'utf8', env: { ...process.env, DMFS_BIN: DMFS_BIN } });
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(/inside the pool/);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    });
    afterAll(() => expectPoolIntact());
  });

  describe('standard output opened by the shell onto a pool file', () => {
    test.each([
      ['export -o -', 'export img -o -', /standard output is a file of the pool/],
      ['dump --json', 'dump --json', /standard output is a file of the pool/],
      ['diff --json', 'diff img --json', /standard output is a file of the pool/],
      ['ls --json', 'ls --json', /standard output is a file of the pool/],
      // A usage error's --json document is not written there either.
      ['export -o - --json (usage error)', 'export img -o - --json', /both want stdout/],
      ['ls --bogus --json (parse error)', 'ls --bogus --json', /Unknown option/],
    ])('%s >> the data file / data.mdb', (_label, args, message) => {
      for (const file of [dataFile, mdb]) {
        const before = fingerprint(file);
        const r = spawnSync('sh', ['-c', `"$0" "$1" ${args} --root "$2" >> "$3"`, process.execPath, DMFS_BIN, root, file], { encoding: 'utf8' });
        expect(r.status).toBe(2);
        expect(r.stderr).toMatch(message);
        expect(r.stderr).not.toMatch(/\n\s+at /);
        expect(fingerprint(file)).toBe(before);
      }
    });
    afterAll(() => expectPoolIntact());
  });

  describe('import', () => {
    test.each([
      ['the data file as a layer tar', () => dataFile],
      ['the pool directory', () => root],
      ['a directory holding the pool', () => work],
      ['a hard link to the data file', () => path.join(work, 'hard-data-file')],
    ])('%s', (_label, source) => {
      const before = dmfs(root, 'ls', '--json').stdout;
      expectRefused(['import', source(), '--name', 'evil']);
      expect(dmfs(root, 'ls', '--json').stdout).toBe(before);
    });
    afterAll(() => expectPoolIntact());
  });
});

describe('outputs outside the pool', () => {
  let work: string;
  let root: string;
  beforeAll(() => {
    work = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-out-cli-')));
    root = path.join(work, 'pool');
    expect(dmfs(root, 'pool', 'create', '--size', '64M').code).toBe(0);
    const src = path.join(work, 'src');
    fs.mkdirSync(src);
    fs.writeFileSync(path.join(src, 'f'), 'data\n');
    expect(dmfs(root, 'import', src, '--name', 'img').code).toBe(0);
  });
  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  const noStack = (stderr: string) => expect(stderr).not.toMatch(/\n\s+at |internal error/);

  test('export replaces an existing file through a temporary one, leaving nothing beside it', () => {
    const out = path.join(work, 'out', 'layer.tar');
    fs.mkdirSync(path.dirname(out));
    fs.writeFileSync(out, 'old');
    expect(dmfs(root, 'export', 'img', '-o', out).code).toBe(0);
    expect(fs.readFileSync(out).subarray(0, 512).toString('latin1')).toMatch(/f/);
    expect(fs.statSync(out).size % 512).toBe(0);
    expect(fs.readdirSync(path.dirname(out))).toEqual(['layer.tar']);
  });

  test('a symlink outside the pool is written through (its target replaced)', () => {
    const target = path.join(work, 'target.tar');
    const link = path.join(work, 'link.tar');
    fs.symlinkSync(target, link);
    expect(dmfs(root, 'dump', '-o', link).code).toBe(0);
    expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
    expect(JSON.parse(fs.readFileSync(target, 'utf8')).layers.length).toBeGreaterThan(0);
  });

  test.each([
    ['export', ['export', 'img', '-o']],
    ['dump', ['dump', '-o']],
    ['save', ['save', 'img', '-o']],
  ])('%s into a missing directory: NOT_FOUND, exit 1, no stack, nothing created', (_label, args) => {
    const out = path.join(work, 'missing-dir', 'x.tar');
    const r = dmfs(root, ...args, out, '--json');
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout).error.code).toBe('NOT_FOUND');
    expect(r.stderr).toMatch(/mkdir -p/);
    noStack(r.stderr);
    expect(fs.existsSync(path.join(work, 'missing-dir'))).toBe(false);
  });

  test('a character device or FIFO is written directly, never renamed over', () => {
    expect(dmfs(root, 'export', 'img', '-o', '/dev/null').code).toBe(0);
    expect(fs.statSync('/dev/null').isCharacterDevice()).toBe(true);
    const fifo = path.join(work, 'fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const got = path.join(work, 'from-fifo.tar');
    const r = spawnSync('sh', ['-c', `cat "$1" > "$2" & "$3" "$4" export img -o "$1" --root "$5"; s=$?; wait; exit $s`, 'sh', fifo, got, process.execPath, DMFS_BIN, root], { encoding: 'utf8' });
    expect({ code: r.status, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    expect(fs.statSync(fifo).isFIFO()).toBe(true);
    const plain = path.join(work, 'plain.tar');
    expect(dmfs(root, 'export', 'img', '-o', plain).code).toBe(0);
    expect(sha(got)).toBe(sha(plain));
  });

  test('export or dump onto a directory: IS_DIR, the directory untouched', () => {
    const d = path.join(work, 'a-dir');
    fs.mkdirSync(d);
    for (const args of [['export', 'img', '-o', d], ['dump', '-o', d]]) {
      const r = dmfs(root, ...args, '--json');
      expect({ code: r.code, err: JSON.parse(r.stdout).error.code }).toEqual({ code: 1, err: 'IS_DIR' });
      noStack(r.stderr);
    }
    expect(fs.readdirSync(d)).toEqual([]);
  });

  test('save -o an existing file without .tar writes an archive over it (no ENOTDIR)', () => {
    const out = path.join(work, 'image-archive');
    fs.writeFileSync(out, 'placeholder');
    const r = dmfs(root, 'save', 'img', '-o', out);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    const names = spawnSync('tar', ['tf', out], { encoding: 'utf8' }).stdout.split('\n');
    expect(names).toEqual(expect.arrayContaining(['oci-layout', 'index.json']));
    expect(fs.readdirSync(work).filter((n) => n.includes('image-archive'))).toEqual(['image-archive']);
  });

  test('save -o NAME.tar is an archive, -o NEWNAME and -o DIR/ are layout directories', () => {
    const tar = path.join(work, 'img.tar');
    expect(dmfs(root, 'save', 'img', '-o', tar).code).toBe(0);
    expect(fs.statSync(tar).isFile()).toBe(true);
    const layout = path.join(work, 'layout');
    expect(dmfs(root, 'save', 'img', '-o', layout).code).toBe(0);
    expect(fs.existsSync(path.join(layout, 'oci-layout'))).toBe(true);
    const slash = path.join(work, 'layout2.tar');
    expect(dmfs(root, 'save', 'img', '-o', `${slash}/`).code).toBe(0);
    expect(fs.existsSync(path.join(slash, 'index.json'))).toBe(true);
    // A file named DIR/ cannot be a layout: a clear error, the file untouched.
    const r = dmfs(root, 'save', 'img', '-o', `${tar}/`, '--json');
    expect({ code: r.code, err: JSON.parse(r.stdout).error.code }).toEqual({ code: 1, err: 'NOT_DIR' });
    noStack(r.stderr);
  });

  test('pool create --root FILE: exit 2, the file untouched, no stack', () => {
    const file = path.join(work, 'a-file');
    fs.writeFileSync(file, 'precious\n');
    for (const r of [dmfs(file, 'pool', 'create', '--size', '64M', '--json'), dmfs(path.join(file, 'sub'), 'pool', 'create', '--json')]) {
      expect(r.code).toBe(2);
      expect(JSON.parse(r.stdout).error.code).toBe('BAD_OPTION');
      noStack(r.stderr);
    }
    expect(fs.readFileSync(file, 'utf8')).toBe('precious\n');
  });

  test('pool destroy removes the pool and nothing else in its directory', () => {
    const dir = path.join(work, 'shared-dir');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'notes.txt'), 'keep me');
    expect(dmfs(dir, 'pool', 'create', '--size', '64M').code).toBe(0);
    const r = dmfs(dir, 'pool', 'destroy', '--force', '--json');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ destroyed: dir, kept: ['notes.txt'] });
    expect(fs.readdirSync(dir)).toEqual(['notes.txt']);
    // A pool alone in its directory takes the directory with it.
    const alone = path.join(work, 'alone');
    expect(dmfs(alone, 'pool', 'create', '--size', '64M').code).toBe(0);
    expect(dmfs(alone, 'pool', 'destroy', '--force').code).toBe(0);
    expect(fs.existsSync(alone)).toBe(false);
  });

  test('pool create in a directory holding foreign data/ or run/: exit 2, nothing removed', () => {
    const dir = path.join(work, 'home');
    fs.mkdirSync(path.join(dir, 'data'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'data', 'thesis.txt'), 'years of work');
    const r = dmfs(dir, 'pool', 'create', '--size', '64M', '--json');
    expect({ code: r.code, err: JSON.parse(r.stdout).error.code }).toEqual({ code: 2, err: 'BAD_OPTION' });
    expect(fs.readdirSync(dir)).toEqual(['data']);
    expect(fs.readFileSync(path.join(dir, 'data', 'thesis.txt'), 'utf8')).toBe('years of work');
    // An empty existing directory is fine.
    const empty = path.join(work, 'empty');
    fs.mkdirSync(empty);
    expect(dmfs(empty, 'pool', 'create', '--size', '64M').code).toBe(0);
  });
});
