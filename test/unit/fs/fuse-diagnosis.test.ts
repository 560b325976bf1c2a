/**
 * The causes a failed FUSE mount is explained by (src/fs/fuse-diagnosis.ts), each on a
 * host view built in a temp directory. The real /dev/fuse with mode 0600 and a non-root
 * user: test/integration/mount-errors.test.ts.
 */
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { eachTempFuseHost } from '../../support/fuse-host-view';
import { devFuseProblem, findFusermount, kernelFusermount, KERNEL_FUSERMOUNTS, libfuseMountProblem } from '../../../src/fs/fuse-diagnosis';

describe('fuse-diagnosis', () => {
  const host = eachTempFuseHost();

  test('a missing /dev/fuse says to load the module or pass the device to the container', () => {
    const msg = devFuseProblem({ ...host.view, devFusePath: path.join(host.dir, 'fuse') });
    expect(msg).toMatch(/is missing/);
    expect(msg).toMatch(/modprobe fuse/);
    expect(msg).toMatch(/--device \/dev\/fuse/);
  });

  test('a regular file where the device should be is named as such', () => {
    writeFileSync(path.join(host.dir, 'fuse'), '');
    expect(devFuseProblem({ ...host.view, devFusePath: path.join(host.dir, 'fuse') })).toMatch(/not a character device/);
  });

  test('a usable device and root: nothing to report', () => {
    expect(devFuseProblem(host.view)).toBeNull();
    expect(libfuseMountProblem({}, { ...host.view, uid: 0 })).toBeNull();
  });

  test('non-root without fusermount: install fuse3 and link it', () => {
    expect(findFusermount(host.view)).toBeNull();
    const msg = libfuseMountProblem({}, host.view);
    expect(msg).toMatch(/no fusermount/);
    expect(msg).toMatch(/fuse3/);
    expect(msg).toMatch(/setup-host/);
  });

  test('non-root with a fusermount that is not setuid root', () => {
    const stub = host.stub('fusermount', 0o755);
    expect(findFusermount(host.view)).toBe(stub);
    expect(libfuseMountProblem({}, host.view)).toMatch(/not setuid root/);
  });

  const root = process.getuid?.() === 0;
  (root ? test : test.skip)('non-root --allow-other without user_allow_other in fuse.conf (needs root to make a setuid-root stand-in)', () => {
    host.stub('fusermount', 0o4755);
    expect(libfuseMountProblem({}, host.view)).toBeNull();
    expect(libfuseMountProblem({ allowOther: true }, host.view)).toMatch(/user_allow_other/);
    writeFileSync(host.view.fuseConfPath, '# comment\nuser_allow_other\n');
    expect(libfuseMountProblem({ allowOther: true }, host.view)).toBeNull();
  });

  describe('the fusermount of a non-root kernel-transport mount', () => {
    const stub = (name: string, mode: number) => host.stub(name, mode);

    test('none: install fuse3', () => {
      expect(kernelFusermount({}, host.view)).toEqual({ problem: expect.stringMatching(/no fusermount3 or fusermount .*install fuse3/) });
    });

    test('/dev/fuse comes first: fusermount opens it as the calling user', () => {
      stub('fusermount3', 0o755);
      expect(kernelFusermount({}, { ...host.view, devFusePath: path.join(host.dir, 'fuse') })).toEqual({ problem: expect.stringMatching(/is missing/) });
    });

    test('fusermount3 is preferred to fusermount; either must be setuid root', () => {
      stub('fusermount', 0o755);
      expect(findFusermount(host.view, KERNEL_FUSERMOUNTS)).toBe(path.join(host.dir, 'bin', 'fusermount'));
      const fm3 = stub('fusermount3', 0o755);
      expect(findFusermount(host.view, KERNEL_FUSERMOUNTS)).toBe(fm3);
      expect(kernelFusermount({}, host.view)).toEqual({ problem: expect.stringMatching(/fusermount3 is not setuid root/) });
    });

    (root ? test : test.skip)('a setuid-root fusermount3 is used; --allow-other still needs user_allow_other (needs root to make the stand-in)', () => {
      const fm3 = stub('fusermount3', 0o4755);
      expect(kernelFusermount({}, host.view)).toEqual({ fusermount: fm3 });
      expect(kernelFusermount({ allowOther: true }, host.view)).toEqual({ problem: expect.stringMatching(/user_allow_other/) });
      writeFileSync(host.view.fuseConfPath, 'user_allow_other\n');
      expect(kernelFusermount({ allowOther: true }, host.view)).toEqual({ fusermount: fm3 });
    });
  });
});
