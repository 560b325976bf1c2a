/**
 * Which route the kernel transport mounts by (kernelMountRoute: mount(8) as root, a setuid
 * fusermount otherwise), the transport a mount then uses (chooseTransport), and the option
 * strings each route passes. Host views are built in a temp directory (tempFuseHost); mounts for real:
 * test/integration/fuse-transport.test.ts (root), fuse-nonroot.test.ts (nobody).
 */
import * as path from 'node:path';
import { fusermountOptions, kernelMountOptions, kernelMountRoute, kernelTransportUnavailable } from '../../../src/fs/kernel-session';
import { chooseTransport } from '../../../src/fs/mount-service';
import { loadFuseDevice } from '../../../src/native';
import { eachTempFuseHost } from '../../support/fuse-host-view';

const addon = 'device' in loadFuseDevice();
const mustLoad = process.env.CI === 'true' || process.env.DMFS_NATIVE === 'required';
const withAddon = addon || mustLoad ? test : test.skip;
const asRoot = process.getuid?.() === 0;

describe('kernel mount route', () => {
  const host = eachTempFuseHost();
  const fusermount3 = (mode: number) => host.stub('fusermount3', mode);

  withAddon('root mounts with mount(8); fusermount is not looked at', () => {
    expect(kernelMountRoute({ ...host.view, uid: 0 })).toEqual({ route: { via: 'mount' } });
  });

  withAddon('non-root without a usable fusermount: the reason says what to install or fix', () => {
    expect(kernelTransportUnavailable(host.view)).toMatch(/no fusermount3 or fusermount .*install fuse3/);
    fusermount3(0o755);
    expect(kernelTransportUnavailable(host.view)).toMatch(/not setuid root/);
    expect(kernelTransportUnavailable({ ...host.view, devFusePath: path.join(host.dir, 'fuse') })).toMatch(/\/fuse is missing/);
  });

  (asRoot ? withAddon : test.skip)('non-root with a setuid-root fusermount3 goes through it (needs root to make the stand-in)', () => {
    const file = fusermount3(0o4755);
    expect(kernelMountRoute(host.view)).toEqual({ route: { via: 'fusermount', fusermount: file } });
    expect(kernelTransportUnavailable(host.view)).toBeNull();
  });

  test('without the addon there is no kernel transport, whoever mounts', () => {
    const saved = process.env.DMFS_NATIVE;
    process.env.DMFS_NATIVE = 'off';
    try {
      expect(kernelTransportUnavailable({ ...host.view, uid: 0 })).toBe('the native addon is unavailable: DMFS_NATIVE=off');
      expect(kernelTransportUnavailable(host.view)).toBe('the native addon is unavailable: DMFS_NATIVE=off');
    } finally {
      if (saved === undefined) delete process.env.DMFS_NATIVE;
      else process.env.DMFS_NATIVE = saved;
    }
  });
});

describe('chooseTransport', () => {
  const viaFusermount = { route: { via: 'fusermount' as const, fusermount: '/usr/bin/fusermount3' } };
  const blocked = { unavailable: 'no fusermount3 or fusermount for a non-root mount' };

  test('auto: kernel when it can mount, saying by which route; else libfuse 2 with the reason', () => {
    expect(chooseTransport('auto', {}, { route: { via: 'mount' } })).toEqual({ transport: 'kernel', reason: expect.stringMatching(/^root: mount\(8\)/) });
    expect(chooseTransport('auto', {}, viaFusermount)).toEqual({ transport: 'kernel', reason: expect.stringMatching(/^not root: \/usr\/bin\/fusermount3 \(setuid root\)/) });
    expect(chooseTransport('auto', {}, blocked)).toEqual({ transport: 'libfuse2', reason: blocked.unavailable });
  });

  test('libfuse2 and debug pick libfuse 2; kernel where it cannot mount is FUSE_UNAVAILABLE with the reason', () => {
    expect(chooseTransport('libfuse2', {}, viaFusermount).transport).toBe('libfuse2');
    expect(chooseTransport('auto', { debug: true }, viaFusermount)).toEqual({ transport: 'libfuse2', reason: expect.stringMatching(/debug/) });
    expect(chooseTransport('kernel', {}, viaFusermount).transport).toBe('kernel');
    expect(() => chooseTransport('kernel', {}, blocked)).toThrow(expect.objectContaining({ code: 'FUSE_UNAVAILABLE', message: expect.stringMatching(/no fusermount3/) }));
  });
});

describe('mount options', () => {
  const rw = { source: 'dmfs:web 1', readOnly: false, suid: false, dev: false };

  test('mount(8) gets the device fd and owner; fusermount gets fsname and subtype and adds those itself', () => {
    expect(kernelMountOptions(rw, 0, 0)).toBe('fd=3,rootmode=40000,user_id=0,group_id=0,rw,nosuid,nodev');
    expect(fusermountOptions(rw)).toBe('fsname=dmfs:web_1,subtype=dmfs,rw,nosuid,nodev');
    expect(fusermountOptions({ ...rw, readOnly: true, allowOther: true })).toBe('fsname=dmfs:web_1,subtype=dmfs,allow_other,default_permissions,ro,nosuid,nodev');
    expect(kernelMountOptions({ ...rw, suid: true, dev: true }, 0, 0)).toBe('fd=3,rootmode=40000,user_id=0,group_id=0,rw');
  });
});
