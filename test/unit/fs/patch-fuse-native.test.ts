import { copyFileSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

// The install-time patch of fuse-native (scripts/patch-fuse-native.js), on copies of the
// package's pristine sources: no build here, the integration tests load the real binding.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const patcher = require('../../../scripts/patch-fuse-native.js') as {
  PATCH_VERSION: number;
  patchSources(dir: string): boolean;
  status(dir: string): { present: boolean; patched: boolean; built: boolean };
  findFuseNative(root: string): string | null;
};
import { FUSE_PATCH_VERSION } from '../../../src/fs/fuse-adapter';

const installed = patcher.findFuseNative(path.resolve(__dirname, '../../..'));

function pristine(name: string): string {
  const orig = path.join(installed!, `${name}.dmfs-orig`);
  return readFileSync(existsSync(orig) ? orig : path.join(installed!, name), 'utf8');
}

function copyPackage(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dmfs-fn-'));
  copyFileSync(path.join(installed!, 'package.json'), path.join(dir, 'package.json'));
  writeFileSync(path.join(dir, 'fuse-native.c'), pristine('fuse-native.c'));
  writeFileSync(path.join(dir, 'index.js'), pristine('index.js'));
  return dir;
}

const maybe = installed ? describe : describe.skip;

maybe('patch-fuse-native', () => {
  it('speaks the version the adapter expects', () => {
    expect(patcher.PATCH_VERSION).toBe(FUSE_PATCH_VERSION);
  });

  it('patches the pristine 2.2.6 sources, keeps the originals, and is idempotent', () => {
    const dir = copyPackage();
    expect(patcher.status(dir).patched).toBe(false);
    expect(patcher.patchSources(dir)).toBe(true);
    const c = readFileSync(path.join(dir, 'fuse-native.c'), 'utf8');
    const js = readFileSync(path.join(dir, 'index.js'), 'utf8');
    expect(c).toContain(`dmfs-patch ${patcher.PATCH_VERSION}`);
    // The utimens defect: atime passed twice, in ms. Now both times, exact.
    expect(c).not.toMatch(/FUSE_UINT64_TO_INTS_ARGV\(l->atime, 5\)/);
    expect(c).toContain('FUSE_INT64_ARGV(l->times[1].tv_nsec, 6)');
    expect(c).toContain('ops.flag_utime_omit_ok = 1;');
    expect(c).toContain('stat->st_ino = uint32s_to_uint64(&ints);');
    expect(js).toContain("require('./build/Release/fuse.node')");
    expect(js).toContain('this.ops.fgetattr(path, fd');
    expect(readFileSync(path.join(dir, 'fuse-native.c.dmfs-orig'), 'utf8')).toBe(pristine('fuse-native.c'));
    expect(patcher.status(dir).patched).toBe(true);
    expect(patcher.status(dir).built).toBe(false);

    expect(patcher.patchSources(dir)).toBe(false);
    expect(readFileSync(path.join(dir, 'fuse-native.c'), 'utf8')).toBe(c);
    expect(readFileSync(path.join(dir, 'index.js'), 'utf8')).toBe(js);
  });

  it('re-patches from the originals when an older patch version is found', () => {
    const dir = copyPackage();
    patcher.patchSources(dir);
    const current = readFileSync(path.join(dir, 'fuse-native.c'), 'utf8');
    writeFileSync(path.join(dir, 'fuse-native.c'), current.replace(`dmfs-patch ${patcher.PATCH_VERSION}`, 'dmfs-patch 0') + '\n/* stale */\n');
    expect(patcher.patchSources(dir)).toBe(true);
    expect(readFileSync(path.join(dir, 'fuse-native.c'), 'utf8')).toBe(current);
  });

  it('refuses another fuse-native version instead of patching blindly', () => {
    const dir = copyPackage();
    const pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8'));
    writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ ...pkg, version: '2.2.7' }));
    expect(() => patcher.patchSources(dir)).toThrow(/2\.2\.7/);
  });

  it('refuses sources whose anchors moved', () => {
    const dir = copyPackage();
    writeFileSync(path.join(dir, 'fuse-native.c'), pristine('fuse-native.c').replace('FUSE_UINT64_TO_INTS_ARGV(l->atime, 5)', 'X'));
    expect(() => patcher.patchSources(dir)).toThrow(/anchor/);
  });
});
