/**
 * The fusermount protocol of src/fs/fusermount.ts against stand-in fusermounts (python3
 * scripts that speak the sending side as util/fusermount.c does, without mounting): the
 * arguments and _FUSE_COMMFD it is run with, the descriptor received, and every failure
 * with nothing left open. Real mounts through the real fusermount3, as a non-root user:
 * test/integration/fuse-nonroot.test.ts.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { mountWithFusermount } from '../../../src/fs/fusermount';
import { loadFuseDevice, type FuseDevice } from '../../../src/native';

const load = loadFuseDevice();
const mustLoad = process.env.CI === 'true' || process.env.DMFS_NATIVE === 'required';
const python = spawnSync('python3', ['-c', 'import socket; socket.send_fds'], { encoding: 'utf8' }).status === 0;
const runnable = 'device' in load && python;
if (!runnable && !mustLoad) console.log(`fusermount protocol tests skipped: ${'reason' in load ? load.reason : 'no python3 >= 3.9 for the stand-in fusermount'}`);
const withAddon = runnable || mustLoad ? test : test.skip;

/**
 * A stand-in fusermount. FAKE_MODE: ok (checks its arguments, sends FAKE_PAYLOAD's fd),
 * fail (a message and exit 1), silent (exit 0, nothing sent), hang (sleeps).
 */
const FAKE = `#!/usr/bin/env python3
import os, socket, sys, time
mode = os.environ['FAKE_MODE']
with open(os.environ['FAKE_ARGS'], 'w') as f:
    f.write('\\n'.join(sys.argv[1:] + ['COMMFD=' + os.environ.get('_FUSE_COMMFD', '')]))
if mode == 'ok':
    s = socket.socket(fileno=int(os.environ['_FUSE_COMMFD']))
    socket.send_fds(s, [b'\\0'], [os.open(os.environ['FAKE_PAYLOAD'], os.O_RDONLY)])
elif mode == 'fail':
    sys.stderr.write('fusermount3: failed to open /dev/fuse: Permission denied\\n')
    sys.exit(1)
elif mode == 'hang':
    time.sleep(60)
`;

describe('mounting through fusermount (stand-in)', () => {
  let dir: string;
  let fake: string;
  let payload: string;
  let argsFile: string;
  const saved = { ...process.env };
  const dev = (): FuseDevice => (load as { device: FuseDevice }).device;
  const openFds = () => fs.readdirSync('/proc/self/fd').length;
  const mp = () => path.join(dir, 'mnt');

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-fusermount-'));
    fake = path.join(dir, 'fusermount3');
    fs.writeFileSync(fake, FAKE, { mode: 0o755 });
    payload = path.join(dir, 'payload');
    fs.writeFileSync(payload, 'device stand-in\n');
    argsFile = path.join(dir, 'args');
    fs.mkdirSync(mp());
  });
  afterEach(() => {
    for (const k of ['FAKE_MODE', 'FAKE_ARGS', 'FAKE_PAYLOAD']) delete process.env[k];
    Object.assign(process.env, saved);
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  const withMode = (mode: string) => Object.assign(process.env, { FAKE_MODE: mode, FAKE_ARGS: argsFile, FAKE_PAYLOAD: payload });

  withAddon('runs `fusermount -o OPTIONS -- MOUNTPOINT` with _FUSE_COMMFD=3 and returns the descriptor it sent', async () => {
    withMode('ok');
    const before = openFds();
    const fd = await mountWithFusermount(dev(), fake, mp(), 'fsname=dmfs:c1,subtype=dmfs,rw,nosuid,nodev');
    try {
      expect(fs.readFileSync(argsFile, 'utf8').split('\n')).toEqual(['-o', 'fsname=dmfs:c1,subtype=dmfs,rw,nosuid,nodev', '--', mp(), 'COMMFD=3']);
      expect(fs.fstatSync(fd).ino).toBe(fs.statSync(payload).ino);
      // Only the received descriptor stays open: both socket ends are closed.
      expect(openFds()).toBe(before + 1);
    } finally {
      fs.closeSync(fd);
    }
  });

  withAddon('a failing fusermount: MOUNT_FAILED with its own words, or FUSE_UNAVAILABLE when the host explains it', async () => {
    withMode('fail');
    const before = openFds();
    await expect(mountWithFusermount(dev(), fake, mp(), 'rw')).rejects.toMatchObject({
      code: 'MOUNT_FAILED',
      message: expect.stringMatching(/fusermount3 failed \(exit 1\): fusermount3: failed to open \/dev\/fuse: Permission denied/),
    });
    await expect(mountWithFusermount(dev(), fake, mp(), 'rw', () => '/dev/fuse: permission denied (mode 0600) for uid 1000')).rejects.toMatchObject({
      code: 'FUSE_UNAVAILABLE',
      message: '/dev/fuse: permission denied (mode 0600) for uid 1000 (fusermount3: failed to open /dev/fuse: Permission denied)',
    });
    expect(openFds()).toBe(before);
  });

  withAddon('exit 0 without a descriptor, a hang (killed after the timeout), a missing program: MOUNT_FAILED, nothing left open', async () => {
    const before = openFds();
    withMode('silent');
    await expect(mountWithFusermount(dev(), fake, mp(), 'rw')).rejects.toMatchObject({ code: 'MOUNT_FAILED', message: expect.stringMatching(/exited without passing the \/dev\/fuse descriptor/) });
    withMode('hang');
    const t0 = Date.now();
    await expect(mountWithFusermount(dev(), fake, mp(), 'rw', undefined, 300)).rejects.toMatchObject({ code: 'MOUNT_FAILED', message: expect.stringMatching(/did not finish within 0.3 s/) });
    expect(Date.now() - t0).toBeLessThan(10_000);
    await expect(mountWithFusermount(dev(), path.join(dir, 'no-such-fusermount'), mp(), 'rw')).rejects.toMatchObject({ code: 'MOUNT_FAILED', message: expect.stringMatching(/cannot run .*no-such-fusermount/) });
    expect(openFds()).toBe(before);
  });
});
