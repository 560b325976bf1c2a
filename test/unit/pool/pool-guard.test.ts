import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isDmfsError } from '../../../src/errors';
import { assertOutsidePool, resolvePath } from '../../../src/pool/pool-guard';

/** A pool-shaped directory (the guard needs no real pool: it looks at paths and inodes). */
function fakePool(base: string): string {
  const root = path.join(base, 'pool');
  fs.mkdirSync(path.join(root, 'data'), { recursive: true });
  fs.mkdirSync(path.join(root, 'metadata'));
  fs.mkdirSync(path.join(root, 'run'));
  fs.writeFileSync(path.join(root, 'data', 'data-file'), 'blocks');
  fs.writeFileSync(path.join(root, 'metadata', 'data.mdb'), 'meta');
  return root;
}

function codeOf(fn: () => unknown): string | null {
  try {
    fn();
    return null;
  } catch (err) {
    if (isDmfsError(err)) return err.code;
    throw err;
  }
}

describe('pool guard', () => {
  let base: string;
  let root: string;
  beforeEach(() => {
    base = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-guard-')));
    root = fakePool(base);
  });
  afterEach(() => fs.rmSync(base, { recursive: true, force: true }));

  const refused = (target: string, opts = {}) => codeOf(() => assertOutsidePool(root, target, 'output', opts));

  test('the pool root, its files and new names inside it are refused', () => {
    expect(refused(root)).toBe('PATH_IN_POOL');
    expect(refused(path.join(root, 'data', 'data-file'))).toBe('PATH_IN_POOL');
    expect(refused(path.join(root, 'metadata', 'data.mdb'))).toBe('PATH_IN_POOL');
    expect(refused(path.join(root, 'run', 'new-file'))).toBe('PATH_IN_POOL');
    expect(refused(path.join(root, 'no', 'such', 'dir', 'x'))).toBe('PATH_IN_POOL');
  });

  test('.. and relative paths are resolved', () => {
    fs.mkdirSync(path.join(base, 'elsewhere'));
    expect(refused(`${base}/elsewhere/../pool/data/data-file`)).toBe('PATH_IN_POOL');
    // path.join would fold these '..' away; the guard must see them as written.
    expect(refused(`${root}/run/../../pool/metadata/data.mdb`)).toBe('PATH_IN_POOL');
    const cwd = process.cwd();
    try {
      process.chdir(path.join(root, 'run'));
      expect(refused('../data/data-file')).toBe('PATH_IN_POOL');
      expect(refused('x')).toBe('PATH_IN_POOL');
      process.chdir(base);
      expect(refused('pool/./metadata//data.mdb')).toBe('PATH_IN_POOL');
      expect(refused('out.tar')).toBeNull();
    } finally {
      process.chdir(cwd);
    }
  });

  test('symlinks to the pool, to a pool file, dangling into the pool, and link/.. are refused', () => {
    fs.symlinkSync(root, path.join(base, 'to-pool'));
    fs.symlinkSync(path.join(root, 'data', 'data-file'), path.join(base, 'to-data'));
    fs.symlinkSync(path.join(root, 'data', 'not-yet'), path.join(base, 'dangling'));
    fs.symlinkSync(path.join(root, 'run'), path.join(base, 'to-run'));
    fs.symlinkSync('to-run', path.join(base, 'chain'));
    expect(refused(path.join(base, 'to-pool', 'data', 'data-file'))).toBe('PATH_IN_POOL');
    expect(refused(path.join(base, 'to-data'))).toBe('PATH_IN_POOL');
    expect(refused(path.join(base, 'dangling'))).toBe('PATH_IN_POOL');
    // The kernel follows to-run before taking '..': this is POOL/data, not BASE/data.
    expect(refused(`${base}/chain/../data/data-file`)).toBe('PATH_IN_POOL');
    expect(refused(`${base}/chain/../data/new-file`)).toBe('PATH_IN_POOL');
    fs.mkdirSync(path.join(base, 'data'));
    expect(refused(path.join(base, 'data', 'data-file'))).toBeNull();
  });

  test('a hard link elsewhere to a pool file is refused by its inode', () => {
    fs.linkSync(path.join(root, 'data', 'data-file'), path.join(base, 'hard'));
    expect(refused(path.join(base, 'hard'))).toBe('PATH_IN_POOL');
    fs.writeFileSync(path.join(base, 'unrelated'), 'x');
    expect(refused(path.join(base, 'unrelated'))).toBeNull();
  });

  test('extra paths (direct-mode data device) are protected by inode', () => {
    const dev = path.join(base, 'device');
    fs.writeFileSync(dev, 'x');
    expect(refused(dev)).toBeNull();
    expect(refused(dev, { extraPaths: [dev] })).toBe('PATH_IN_POOL');
  });

  test('refuseAncestor: a directory containing the pool', () => {
    expect(refused(base)).toBeNull();
    expect(refused(base, { refuseAncestor: true })).toBe('PATH_IN_POOL');
    expect(refused('/', { refuseAncestor: true })).toBe('PATH_IN_POOL');
    expect(refused(path.join(base, 'sibling'), { refuseAncestor: true })).toBeNull();
    // A sibling whose name starts like the pool's is not inside it.
    expect(refused(`${root}2`)).toBeNull();
  });

  test('a symlink loop is LOOP, not a hang', () => {
    fs.symlinkSync('b', path.join(base, 'a'));
    fs.symlinkSync('a', path.join(base, 'b'));
    expect(refused(path.join(base, 'a', 'x'))).toBe('LOOP');
  });

  test('resolvePath reports the existing prefix', () => {
    const r = resolvePath(path.join(base, 'missing', 'deeper'));
    expect(r).toEqual({ realPath: path.join(base, 'missing', 'deeper'), existingPath: base, exists: false });
    expect(resolvePath(root).exists).toBe(true);
  });

  test('PATH_IN_POOL exits 2', () => {
    try {
      assertOutsidePool(root, root, 'output');
    } catch (err) {
      expect(isDmfsError(err, 'PATH_IN_POOL') && err.exitCode).toBe(2);
    }
    expect.assertions(1);
  });
});
