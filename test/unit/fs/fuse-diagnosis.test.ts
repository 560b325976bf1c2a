/**
 * The causes a failed FUSE mount is explained by (src/fs/fuse-diagnosis.ts), each on a
 * host view built in a temp directory. The real /dev/fuse with mode 0600 and a non-root
 * user: test/integration/mount-errors.test.ts.
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { devFuseProblem, findFusermount, kernelFusermount, KERNEL_FUSERMOUNTS, libfuseMountProblem, type FuseHostView } from '../../../src/fs/fuse-diagnosis';

describe('fuse-diagnosis', () => {
  let dir: string;
  let view: FuseHostView;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'dmfs-fusediag-'));
    // /dev/null: a character device anyone may open, standing in for a usable /dev/fuse.
    view = { devFusePath: '/dev/null', uid: 1000, fusermountDirs: [path.join(dir, 'bin')], fuseConfPath: path.join(dir, 'fuse.conf') };
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  test('a missing /dev/fuse says to load the module or pass the device to the container', () => {
    const msg = devFuseProblem({ ...view, devFusePath: path.join(dir, 'fuse') });
    expect(msg).toMatch(/is missing/);
    expect(msg).toMatch(/modprobe fuse/);
    expect(msg).toMatch(/--device \/dev\/fuse/);
  });

  test('a regular file where the device should be is named as such', () => {
    writeFileSync(path.join(dir, 'fuse'), '');
    expect(devFuseProblem({ ...view, devFusePath: path.join(dir, 'fuse') })).toMatch(/not a character device/);
  });

  test('a usable device and root: nothing to report', () => {
    expect(devFuseProblem(view)).toBeNull();
    expect(libfuseMountProblem({}, { ...view, uid: 0 })).toBeNull();
  });

  test('non-root without fusermount: install fuse3 and link it', () => {
    expect(findFusermount(view)).toBeNull();
    const msg = libfuseMountProblem({}, view);
    expect(msg).toMatch(/no fusermount/);
    expect(msg).toMatch(/fuse3/);
    expect(msg).toMatch(/setup-host/);
  });

  test('non-root with a fusermount that is not setuid root', () => {
    const bin = path.join(dir, 'bin');
    mkdirSync(bin);
    writeFileSync(path.join(bin, 'fusermount'), '#!/bin/sh\n');
    chmodSync(path.join(bin, 'fusermount'), 0o755);
    expect(findFusermount(view)).toBe(path.join(bin, 'fusermount'));
    expect(libfuseMountProblem({}, view)).toMatch(/not setuid root/);
  });

  const root = process.getuid?.() === 0;
  (root ? test : test.skip)('non-root --allow-other without user_allow_other in fuse.conf (needs root to make a setuid-root stand-in)', () => {
    const bin = path.join(dir, 'bin');
    mkdirSync(bin);
    writeFileSync(path.join(bin, 'fusermount'), '#!/bin/sh\n');
    chmodSync(path.join(bin, 'fusermount'), 0o4755);
    expect(libfuseMountProblem({}, view)).toBeNull();
    expect(libfuseMountProblem({ allowOther: true }, view)).toMatch(/user_allow_other/);
    writeFileSync(view.fuseConfPath, '# comment\nuser_allow_other\n');
    expect(libfuseMountProblem({ allowOther: true }, view)).toBeNull();
  });

  describe('the fusermount of a non-root kernel-transport mount', () => {
    const stub = (name: string, mode: number) => {
      const bin = path.join(dir, 'bin');
      mkdirSync(bin, { recursive: true });
      writeFileSync(path.join(bin, name), '#!/bin/sh\n');
      chmodSync(path.join(bin, name), mode);
      return path.join(bin, name);
    };

    test('none: install fuse3', () => {
      expect(kernelFusermount({}, view)).toEqual({ problem: expect.stringMatching(/no fusermount3 or fusermount .*install fuse3/) });
    });

    test('/dev/fuse comes first: fusermount opens it as the calling user', () => {
      stub('fusermount3', 0o755);
      expect(kernelFusermount({}, { ...view, devFusePath: path.join(dir, 'fuse') })).toEqual({ problem: expect.stringMatching(/is missing/) });
    });

    test('fusermount3 is preferred to fusermount; either must be setuid root', () => {
      stub('fusermount', 0o755);
      expect(findFusermount(view, KERNEL_FUSERMOUNTS)).toBe(path.join(dir, 'bin', 'fusermount'));
      const fm3 = stub('fusermount3', 0o755);
      expect(findFusermount(view, KERNEL_FUSERMOUNTS)).toBe(fm3);
      expect(kernelFusermount({}, view)).toEqual({ problem: expect.stringMatching(/fusermount3 is not setuid root/) });
    });

    (root ? test : test.skip)('a setuid-root fusermount3 is used; --allow-other still needs user_allow_other (needs root to make the stand-in)', () => {
      const fm3 = stub('fusermount3', 0o4755);
      expect(kernelFusermount({}, view)).toEqual({ fusermount: fm3 });
      expect(kernelFusermount({ allowOther: true }, view)).toEqual({ problem: expect.stringMatching(/user_allow_other/) });
      writeFileSync(view.fuseConfPath, 'user_allow_other\n');
      expect(kernelFusermount({ allowOther: true }, view)).toEqual({ fusermount: fm3 });
    });
  });
});
