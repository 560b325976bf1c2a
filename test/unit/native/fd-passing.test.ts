/**
 * Descriptor passing in the addon (native/src/fd_passing.rs): socketpair, recvmsg with
 * SCM_RIGHTS, O_NONBLOCK. Node cannot send descriptors, so the sending side is a python3
 * child given one socket end as its fd 3, as fusermount is. The fallback has no descriptor
 * passing: without the addon the kernel transport is not offered (test/unit/fs/
 * kernel-mount-route.test.ts), and mounts use libfuse 2.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as native from '../../../src/native';
import type { FuseDevice } from '../../../src/native';

const E = os.constants.errno;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const load = native.loadFuseDevice();
const mustLoad = process.env.CI === 'true' || process.env.DMFS_NATIVE === 'required';
const python = spawnSync('python3', ['-c', 'import socket; socket.send_fds'], { encoding: 'utf8' }).status === 0;
const runnable = 'device' in load && python;
if (!runnable && !mustLoad) console.log(`fd passing tests skipped: ${'reason' in load ? load.reason : 'no python3 >= 3.9 to send descriptors'}`);
const withAddon = runnable || mustLoad ? test : test.skip;

/** The sending side, run with the socket as fd 3: `one FILE`, `two FILE`, `bytes` (no fd), `none` (close). */
const SENDER = `
import os, socket, sys
s = socket.socket(fileno=3)
mode = sys.argv[1]
if mode == 'one':
    socket.send_fds(s, [b'\\0'], [os.open(sys.argv[2], os.O_RDONLY)])
elif mode == 'two':
    socket.send_fds(s, [b'\\0'], [os.open(sys.argv[2], os.O_RDONLY), os.open(sys.argv[2], os.O_RDONLY)])
elif mode == 'bytes':
    s.send(b'\\0')
`;

const dev = (): FuseDevice => (load as { device: FuseDevice }).device;

function openFds(): string[] {
  return fs.readdirSync('/proc/self/fd').sort();
}

function fdFlags(fd: number): number {
  const m = /^flags:\s+([0-7]+)/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return parseInt(m![1], 8);
}

function pair(): [number, number] {
  const out = Buffer.alloc(8);
  expect(dev().socketPair(out)).toBe(0);
  return [out.readInt32LE(0), out.readInt32LE(4)];
}

/** Runs the sender with `theirs` as its fd 3, closes our copy, and returns what `ours` receives. */
function sendAndReceive(mode: string, ...args: string[]): number {
  const [ours, theirs] = pair();
  try {
    const r = spawnSync('python3', ['-c', SENDER, mode, ...args], { stdio: ['ignore', 'inherit', 'inherit', theirs], timeout: 30_000 });
    expect(r.status).toBe(0);
    fs.closeSync(theirs);
    return dev().receive(ours);
  } finally {
    fs.closeSync(ours);
  }
}

describe('descriptor passing (addon)', () => {
  let dir: string;
  let file: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-fdpass-'));
    file = path.join(dir, 'payload');
    fs.writeFileSync(file, 'passed over a unix socket\n');
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  withAddon('socketPair gives two connected close-on-exec unix sockets', () => {
    const [a, b] = pair();
    try {
      expect(a).not.toBe(b);
      for (const fd of [a, b]) {
        expect(fs.readlinkSync(`/proc/self/fd/${fd}`)).toMatch(/^socket:\[\d+\]$/);
        expect(fdFlags(fd) & O_CLOEXEC).toBe(O_CLOEXEC);
      }
      // Nothing sent yet: receive does not wait.
      expect(dev().receive(a)).toBe(-E.EAGAIN);
    } finally {
      fs.closeSync(a);
      fs.closeSync(b);
    }
  });

  withAddon('the one descriptor a message carries arrives open, close-on-exec, on the same file', () => {
    const fd = sendAndReceive('one', file);
    expect(fd).toBeGreaterThanOrEqual(0);
    try {
      expect(fs.fstatSync(fd).ino).toBe(fs.statSync(file).ino);
      expect(fdFlags(fd) & O_CLOEXEC).toBe(O_CLOEXEC);
      const buf = Buffer.alloc(64);
      expect(buf.toString('utf8', 0, fs.readSync(fd, buf, 0, 64, 0))).toBe('passed over a unix socket\n');
    } finally {
      fs.closeSync(fd);
    }
  });

  withAddon('no descriptor: -ENOMSG for bytes alone or a closed peer; two descriptors: -EBADMSG, none left open', () => {
    const before = openFds();
    expect(sendAndReceive('bytes')).toBe(-E.ENOMSG);
    expect(sendAndReceive('none')).toBe(-E.ENOMSG);
    expect(sendAndReceive('two', file)).toBe(-E.EBADMSG);
    expect(openFds()).toEqual(before);
  });

  withAddon('system call errors come back as -errno, never thrown', () => {
    const fd = fs.openSync(file, 'r');
    try {
      expect(dev().receive(fd)).toBe(-E.ENOTSOCK);
    } finally {
      fs.closeSync(fd);
    }
    const closed = fs.openSync(file, 'r');
    fs.closeSync(closed);
    expect(dev().receive(closed)).toBe(-E.EBADF);
    expect(dev().setNonblocking(closed)).toBe(-E.EBADF);
  });

  withAddon('setNonblocking adds O_NONBLOCK and keeps the other flags', () => {
    const fd = fs.openSync(file, 'r');
    try {
      const before = fdFlags(fd);
      expect(before & O_NONBLOCK).toBe(0);
      expect(dev().setNonblocking(fd)).toBe(0);
      expect(fdFlags(fd)).toBe(before | O_NONBLOCK);
      expect(dev().setNonblocking(fd)).toBe(0); // idempotent
    } finally {
      fs.closeSync(fd);
    }
  });

  withAddon('bad arguments throw INVALID', () => {
    const raw = (native.tryLoadNative().blockIo as native.NativeBlockIo).addon;
    const codeOf = (f: () => unknown) => {
      try {
        f();
        return null;
      } catch (e) {
        return (e as { code?: string }).code;
      }
    };
    expect(codeOf(() => raw.fdSocketPair(Buffer.alloc(4)))).toBe('INVALID');
    expect(codeOf(() => raw.fdSocketPair('out' as unknown as Buffer))).toBe('INVALID');
    expect(codeOf(() => raw.fdReceive(-1))).toBe('INVALID');
    expect(codeOf(() => raw.fdSetNonblocking(1.5))).toBe('INVALID');
  });
});
