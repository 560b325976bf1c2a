/**
 * pjdfstest's areas, differentially: every case of SYSCALL_CASES (posix-cases.ts) runs in
 * a directory of the host's ext4 and in a fresh dmfs container layer mounted with
 * allow_other + default_permissions; the transcripts (one result per syscall) must be
 * equal. Permission cases switch to uid/gid 65534 inside the probe. Every transport runs as
 * root (the mount served by this process) and as a non-root user (`dmfs mount` of that
 * user, the probe's base identity that user on both sides: posix-user-mount.ts).
 *
 * Known differences are `test.failing` under the row of the QA report that diagnoses
 * them (the report is in the commit that added this file).
 */
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describeFuse, fuseTransports, run, sh } from '../support/fuse-harness';
import { SYSCALL_CASES } from '../support/posix-cases';
import {
  defineProbeTests, mountFreshContainer, openTempDir, probeSession, PYTHON, removeDirs,
} from '../support/posix-harness';
import { posixRuns, runLabel, testUser, type Privilege } from '../support/posix-user-mount';

/**
 * Case name -> report row (QA report of the commit that added this file; diagnosis in short),
 * on both transports.
 * R4  names are decoded as UTF-8 into the store's strings: non-UTF-8 bytes become U+FFFD.
 * R12 listxattr shows trusted.* to unprivileged callers (ext4 hides them).
 */
const KNOWN_BOTH: Record<string, string> = {
  'names: bytes that are not UTF-8 (Latin-1 names, symlink targets) are kept as they are': 'R4 non-UTF-8 names',
  'xattr: an unprivileged listxattr does not show trusted.*': 'R12 trusted.* listing',
};

/**
 * As a non-root user R12 cannot show: an unprivileged caller cannot set trusted.* (EPERM on
 * ext4 and dmfs alike), so nothing is there to hide and that case passes.
 */
const ROOT_ONLY = new Set(['xattr: an unprivileged listxattr does not show trusted.*']);

function knownFor(transport: 'kernel' | 'libfuse2', privilege: Privilege): Record<string, string> {
  if (privilege === 'root') return KNOWN[transport];
  return Object.fromEntries(Object.entries(KNOWN[transport]).filter(([name]) => !ROOT_ONLY.has(name)));
}

/**
 * libfuse 2 only; fixed by the kernel transport (kernel-transport.ts):
 * R2  libfuse 2's path API gives each name of a hard link its own kernel inode (the
 *     kernel transport's node id is the inode).
 * R8  libfuse 2 speaks FUSE 7.19, before RENAME2: renameat2 with flags is EINVAL.
 * R10 no FUSE_POSIX_ACL through fuse-native: the kernel would not enforce stored ACLs, so
 *     setting one is refused (EOPNOTSUPP).
 * R11 no FUSE_TMPFILE in libfuse 2: O_TMPFILE is EOPNOTSUPP.
 * R13 no FUSE_STATX in libfuse 2: statx has no birth time.
 */
const KNOWN: Record<'kernel' | 'libfuse2', Record<string, string>> = {
  kernel: KNOWN_BOTH,
  libfuse2: {
    ...KNOWN_BOTH,
    'link: a descriptor open on one name sees writes made through the other': 'R2 hard-link aliases',
    'rename: renameat2 RENAME_NOREPLACE and RENAME_EXCHANGE': 'R8 renameat2 flags',
    'xattr: POSIX ACLs (system.posix_acl_access with a named user), setfacl -b': 'R10 POSIX ACLs',
    'acl: setfacl/getfacl with a named user and group, the mask, chmod, setfacl -b': 'R10 POSIX ACLs',
    'acl: a default ACL is inherited by new files and directories, and the umask does not apply under it': 'R10 POSIX ACLs',
    'acl: the kernel enforces ACL entries for another uid (named user, mask, named group)': 'R10 POSIX ACLs',
    'open: O_TMPFILE (an unnamed file in a directory)': 'R11 O_TMPFILE',
    'open: O_TMPFILE named by linkat through /proc/self/fd and AT_EMPTY_PATH; O_EXCL never gets a name': 'R11 O_TMPFILE',
    'stat: statx reports a birth time': 'R13 btime',
  },
};

for (const { transport, privilege } of posixRuns(fuseTransports())) {
  describeFuse(`POSIX syscalls: dmfs container layer vs ext4 (${runLabel({ transport, privilege })})`, () => {
    const s = probeSession(SYSCALL_CASES, () => mountFreshContainer(transport, privilege), { privilege });

    it('the oracle is ext4', () => {
      expect(s.oracle.fsType).toBe('ext2/ext3');
    });

    defineProbeTests(SYSCALL_CASES, knownFor(transport, privilege), () => s);

    // ---- mount-level behaviour -------------------------------------------------------------

    const suidProbe = (dir: string) =>
      sh(`cp /usr/bin/id ${dir}/suid-id && chmod 4755 ${dir}/suid-id && setpriv --reuid=65534 --regid=65534 --clear-groups ${dir}/suid-id -u`);

    const devProbe = (dir: string) => sh(`mknod ${dir}/null c 1 3 && chmod 666 ${dir}/null && echo x > ${dir}/null && head -c 4 ${dir}/null | wc -c`);
    if (privilege === 'root') {
      // R1: libfuse 2 mounts nosuid,nodev unless told `suid,dev` (fuseOptionList in fuse-adapter.ts).
      test('a setuid-root program runs with euid 0, as on ext4 (the mount is not nosuid)', async () => {
        const [e, d] = [await suidProbe(s.oracle.dir), await suidProbe(s.m.mnt)];
        expect(e.stdout.trim()).toBe('0');
        expect(d.stdout.trim()).toBe(e.stdout.trim());
      });

      test('a character device node in the mount can be opened, as on ext4 (the mount is not nodev)', async () => {
        const [e, d] = [await devProbe(s.oracle.dir), await devProbe(s.m.mnt)];
        expect(e.code).toBe(0);
        expect({ code: d.code, out: d.stdout }).toEqual({ code: e.code, out: e.stdout });
      });
    } else {
      // fusermount3 forces nosuid,nodev on every mount a user makes (ext4 mounted by root has neither).
      test('a user\'s mount is nosuid,nodev: a setuid-root program runs with the caller\'s euid, a device node cannot be opened', async () => {
        const opts = (await run(`grep ' ${s.m.mnt} ' /proc/self/mounts`)).split(' ')[3].split(',');
        expect(opts).toEqual(expect.arrayContaining(['nosuid', 'nodev']));
        expect((await suidProbe(s.m.mnt)).stdout.trim()).toBe('65534');
        const d = await devProbe(s.m.mnt);
        expect(d.code).not.toBe(0);
        expect(d.stderr).toMatch(/Permission denied/);
        expect((await run(`stat -c '%F %U' ${s.m.mnt}/null`)).trim()).toBe('character special file root');
        expect((await run(`stat -c '%U' ${s.m.mnt}`)).trim()).toBe(testUser().name);
      });
    }

    it('unix domain sockets bind and connect in the mount; fcntl locks conflict across processes', async () => {
      const script = `
import socket, os, sys, fcntl, errno
d = sys.argv[1]
s = socket.socket(socket.AF_UNIX); s.bind(d + '/sock'); s.listen(1)
c = socket.socket(socket.AF_UNIX); c.connect(d + '/sock'); a, _ = s.accept(); c.send(b'hi'); print(a.recv(2).decode())
fd = os.open(d + '/lk', os.O_CREAT | os.O_RDWR); fcntl.lockf(fd, fcntl.LOCK_EX)
pid = os.fork()
if pid == 0:
    fd2 = os.open(d + '/lk', os.O_RDWR)
    try:
        fcntl.lockf(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB); os._exit(1)
    except OSError as e:
        os._exit(2 if e.errno in (errno.EAGAIN, errno.EACCES) else 3)
print('child', os.waitpid(pid, 0)[1] >> 8)
fcntl.flock(fd, fcntl.LOCK_EX); print('flock ok')
  `;
      const dir = openTempDir('posix-sock');
      const file = path.join(dir, 'sockets.py');
      writeFileSync(file, script);
      const go = (d: string) => run(`${PYTHON} ${file} ${d}`);
      await run(`mkdir -p ${s.oracle.dir}/sockets ${s.m.mnt}/sockets`);
      try {
        expect(await go(`${s.m.mnt}/sockets`)).toBe(await go(`${s.oracle.dir}/sockets`));
      } finally {
        await removeDirs(dir);
      }
    });

    it('chattr/lsattr: the flags ioctl is refused (EOPNOTSUPP/ENOTTY), not answered wrongly', async () => {
      await run(`touch ${s.m.mnt}/attrs-file`);
      const r = await sh(`lsattr ${s.m.mnt}/attrs-file; chattr +i ${s.m.mnt}/attrs-file`);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/Operation not supported|Inappropriate ioctl/);
      await run(`echo still-writable > ${s.m.mnt}/attrs-file`);
    });

    it('no unexpected errors were logged by the mount', () => {
      expect(s.m.log.filter((l) => /unexpected/.test(l))).toEqual([]);
    });
  });
}
