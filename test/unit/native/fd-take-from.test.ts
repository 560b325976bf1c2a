/**
 * pidfd_getfd in the addon (fdTakeFrom, native/src/fd_passing.rs): the daemon's supervisor
 * keeps a duplicate of a worker's /dev/fuse descriptor this way. A child holds a file open
 * at a known descriptor; the duplicate taken from it is the same open file (same offset,
 * shared), close-on-exec, and outlives the child.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as native from '../../../src/native';

const E = os.constants.errno;
const O_CLOEXEC = 0o2000000;
const load = native.loadFuseDevice();
const mustLoad = process.env.CI === 'true' || process.env.DMFS_NATIVE === 'required';
const runnable = 'device' in load && load.device.takeFrom !== null;
if (!runnable && !mustLoad) console.log(`fdTakeFrom tests skipped: ${'reason' in load ? load.reason : 'the addon predates fdTakeFrom'}`);
const withAddon = runnable || mustLoad ? test : test.skip;

function takeFrom(pid: number, fd: number): number {
  if (!('device' in load) || !load.device.takeFrom) throw new Error(`no fdTakeFrom: ${'reason' in load ? load.reason : 'addon too old'}`);
  return load.device.takeFrom(pid, fd);
}

withAddon('a duplicate of a child\'s descriptor is the same open file, close-on-exec, and outlives the child', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-take-'));
  const file = path.join(dir, 'f');
  fs.writeFileSync(file, 'abcdef');
  const fd = fs.openSync(file, 'r');
  try {
    // The child gets the file as its fd 3, reads 2 bytes (moving the shared offset), then waits.
    const child = spawn('bash', ['-c', 'dd bs=1 count=2 status=none <&3 >/dev/null; echo ready; sleep 30'], { stdio: ['ignore', 'pipe', 'inherit', fd] });
    await new Promise<void>((r) => child.stdout!.once('data', () => r()));
    fs.closeSync(fd);
    const got = takeFrom(child.pid!, 3);
    expect(got).toBeGreaterThanOrEqual(0);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    try {
      const flags = /^flags:\s+([0-7]+)/m.exec(fs.readFileSync(`/proc/self/fdinfo/${got}`, 'utf8'))![1];
      expect(parseInt(flags, 8) & O_CLOEXEC).toBe(O_CLOEXEC);
      expect(fs.readSync(got, Buffer.alloc(16), 0, 16, null)).toBe(4); // offset 2 was shared: "cdef" left
    } finally {
      fs.closeSync(got);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

withAddon('errors come back as -errno, never a throw', () => {
  expect(takeFrom(2 ** 30, 0)).toBe(-E.ESRCH);
  expect(takeFrom(process.pid, 987654)).toBe(-E.EBADF);
});
