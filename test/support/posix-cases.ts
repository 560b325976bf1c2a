/**
 * Syscall-level cases for the differential POSIX tests (test/integration/posix-*.test.ts),
 * run by the probe of posix-probe.ts once in a directory of the host's ext4 and once in a
 * dmfs mount; each case's results (one per step: `ok[:value]` or `E<errno name>`) must
 * be identical. The expected errnos follow what pjdfstest checks per area; the oracle is
 * ext4 itself, so no expectation is written down here.
 *
 * Step vocabulary (see the probe): paths are relative to the case's own directory, which
 * is fresh and mode 0777 unless the case names a `dir` (an existing tree, e.g. one
 * that lives in an image layer). `as UID GID` switches the effective ids (and clears the
 * supplementary groups), `root` switches back. `snap P` then `changed P` reports whether
 * mtime and ctime moved (`m>c=`), `achanged P` the atime (`a>`); a `sleep` comes first so
 * that a change is visible. `exec CMD` runs a shell command in the case directory.
 */

export type Step = [string, ...unknown[]];

export interface ProbeCase {
  name: string;
  steps: Step[];
  /** An existing directory (relative to the probe's root) instead of a fresh one. */
  dir?: string;
  /** Mode of the fresh case directory (default 0777). */
  dirmode?: number;
}

const NOBODY: Step = ['as', 65534, 65534];
const ROOT: Step = ['root'];
const TICK: Step = ['sleep', 15];
/**
 * Longer than the kernel keeps attributes of a writable dmfs mount (attr_timeout 1 s). Each
 * name of a hard link is its own kernel inode under libfuse 2's path API (report row R2), so
 * a case that checks one name after changing the file through another waits this long
 * first: it then checks the store's state. The R2 cases check without waiting.
 */
const SETTLE: Step = ['sleep', 1100];
const STAT = 'type,mode,nlink,uid,gid,size';

/** The long name: 255 bytes is fine, 256 is ENAMETOOLONG. */
const N255 = 'x'.repeat(255);
const N256 = 'y'.repeat(256);

/** An access ACL: user::rw-, user:1000:rwx, group::r--, mask::rwx, other::r-- (the xattr's binary form). */
const ACL_USER_1000 = '02000000' + '01000600ffffffff' + '02000700e8030000' + '04000400ffffffff' + '10000700ffffffff' + '20000400ffffffff';

export const POSIX_CASES: ProbeCase[] = [
  // ---- open -------------------------------------------------------------------------------
  {
    name: 'open: O_CREAT|O_EXCL on an existing file, dir, dangling symlink',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_WRONLY|O_EXCL', 0o644], ['close', 'f'],
      ['open', 'g', 'f', 'O_CREAT|O_WRONLY|O_EXCL', 0o644],
      ['mkdir', 'd'], ['open', 'g', 'd', 'O_CREAT|O_RDONLY|O_EXCL', 0o644],
      ['symlink', 'nowhere', 'dangling'], ['open', 'g', 'dangling', 'O_CREAT|O_WRONLY|O_EXCL', 0o644],
      ['exists', 'nowhere'],
      ['open', 'g', 'dangling', 'O_CREAT|O_WRONLY', 0o600], ['close', 'g'], ['lstat', 'nowhere', STAT],
    ],
  },
  {
    name: 'open: ENOTDIR, EISDIR, ENOENT, ELOOP, ENAMETOOLONG, EINVAL',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'], ['mkdir', 'd'],
      ['open', 'g', 'f', 'O_RDONLY|O_DIRECTORY'],
      ['open', 'g', 'f/', 'O_RDONLY'],
      ['open', 'g', 'f/x', 'O_CREAT|O_WRONLY', 0o644],
      ['open', 'g', 'd', 'O_WRONLY'],
      ['open', 'g', 'd', 'O_RDWR'],
      ['open', 'g', 'd', 'O_RDONLY|O_TRUNC'],
      ['open', 'g', 'missing', 'O_RDONLY'],
      ['open', 'g', 'missing/x', 'O_CREAT|O_WRONLY', 0o644],
      ['symlink', 'loop2', 'loop1'], ['symlink', 'loop1', 'loop2'],
      ['open', 'g', 'loop1', 'O_RDONLY'],
      ['symlink', 'f', 'tof'], ['open', 'g', 'tof', 'O_RDONLY|O_NOFOLLOW'],
      ['open', 'g', N255, 'O_CREAT|O_WRONLY', 0o644], ['close', 'g'],
      ['open', 'g', N256, 'O_CREAT|O_WRONLY', 0o644],
      ['open', 'g', `${N256}/x`, 'O_RDONLY'],
      ['open', 'g', 'newdir', 'O_CREAT|O_DIRECTORY|O_RDONLY', 0o755],
    ],
  },
  {
    name: 'open: O_TRUNC empties the file and moves mtime/ctime; O_CREAT of an existing file keeps mode and times',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_WRONLY', 0o640], ['write', 'f', 'hello world'], ['close', 'f'],
      ['snap', 'f'], TICK,
      ['open', 'f', 'f', 'O_CREAT|O_WRONLY', 0o600], ['close', 'f'],
      ['changed', 'f'], ['stat', 'f', STAT],
      TICK, ['open', 'f', 'f', 'O_WRONLY|O_TRUNC'], ['close', 'f'],
      ['changed', 'f'], ['stat', 'f', STAT],
    ],
  },
  {
    name: 'open: O_TRUNC of an empty file moves mtime and ctime',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'],
      ['snap', 'f'], TICK, ['open', 'f', 'f', 'O_WRONLY|O_TRUNC'], ['close', 'f'], ['changed', 'f'],
      ['snap', 'f'], TICK, ['exec', ': > f'], ['changed', 'f'],
    ],
  },
  {
    name: 'open: O_APPEND writes at the end whatever the offset',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_WRONLY|O_APPEND', 0o644], ['write', 'f', 'abc'],
      ['lseek', 'f', 0, 'SET'], ['write', 'f', 'def'], ['pwrite', 'f', 'XY', 0], ['close', 'f'],
      ['open', 'r', 'f', 'O_RDONLY'], ['read', 'r', 100],
    ],
  },
  {
    name: 'open: creation mode honours the umask; the parent directory times move',
    steps: [
      ['snap', '.'], TICK,
      ['umask', 0o027], ['open', 'f', 'f', 'O_CREAT|O_WRONLY', 0o777], ['close', 'f'], ['stat', 'f', STAT],
      ['changed', '.'],
      ['umask', 0], ['open', 'f', 'g', 'O_CREAT|O_WRONLY', 0o7777], ['close', 'f'], ['stat', 'g', STAT],
    ],
  },
  {
    name: 'open: permission denials as an unprivileged user (EACCES)',
    steps: [
      ['open', 'f', 'secret', 'O_CREAT|O_WRONLY', 0o600], ['write', 'f', 'x'], ['close', 'f'],
      ['open', 'f', 'ro', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'],
      ['mkdir', 'closed', 0o755], ['mkdir', 'noexec', 0o666], ['open', 'f', 'noexec/in', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'],
      NOBODY,
      ['open', 'g', 'secret', 'O_RDONLY'],
      ['open', 'g', 'ro', 'O_WRONLY'],
      ['open', 'g', 'ro', 'O_RDONLY'], ['close', 'g'],
      ['open', 'g', 'closed/new', 'O_CREAT|O_WRONLY', 0o644],
      ['open', 'g', 'noexec/in', 'O_RDONLY'],
      ['open', 'g', 'ro', 'O_RDONLY|O_TRUNC'],
      ['truncate', 'ro', 0],
      ['access', 'ro', 2], ['access', 'ro', 4],
      ROOT, ['open', 'g', 'secret', 'O_RDWR'], ['close', 'g'], ['chmod', 'secret', 0], ['open', 'g', 'secret', 'O_RDWR'], ['close', 'g'],
    ],
  },

  // ---- chmod ------------------------------------------------------------------------------
  {
    name: 'chmod: modes incl. setuid/setgid/sticky, ctime moves, symlink followed',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'], ['mkdir', 'd'],
      ['snap', 'f'], TICK, ['chmod', 'f', 0o7777], ['stat', 'f', STAT], ['changed', 'f'],
      ['chmod', 'd', 0o3777], ['stat', 'd', STAT],
      ['symlink', 'f', 'l'], ['chmod', 'l', 0o600], ['stat', 'f', STAT], ['lstat', 'l', 'type,mode'],
      ['chmod', 'missing', 0o600], ['chmod', 'f/x', 0o600],
    ],
  },
  {
    name: 'chmod: non-owner gets EPERM; owner not in the group loses setgid; sticky on a file',
    steps: [
      ['open', 'f', 'rootfile', 'O_CREAT|O_WRONLY', 0o666], ['close', 'f'],
      ['open', 'f', 'mine', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'], ['chown', 'mine', 65534, 0],
      NOBODY,
      ['chmod', 'rootfile', 0o600],
      ['chmod', 'mine', 0o2755], ['stat', 'mine', STAT],
      ['chmod', 'mine', 0o1755], ['stat', 'mine', STAT],
      ['chmod', 'mine', 0o4755], ['stat', 'mine', STAT],
    ],
  },

  // ---- chown ------------------------------------------------------------------------------
  {
    name: 'chown: root changes owner; setuid/setgid cleared on files, kept on dirs; -1 keeps; ctime',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'],
      ['chmod', 'f', 0o6755], ['snap', 'f'], TICK, ['chown', 'f', 1, 2], ['stat', 'f', STAT], ['changed', 'f'],
      ['chmod', 'f', 0o6755], ['chown', 'f', -1, -1], ['stat', 'f', STAT],
      ['chmod', 'f', 0o2745], ['chown', 'f', 3, -1], ['stat', 'f', STAT],
      ['chmod', 'f', 0o6755], ['chown', 'f', -1, 4], ['stat', 'f', STAT],
      ['mkdir', 'd'], ['chmod', 'd', 0o6755], ['chown', 'd', 5, 6], ['stat', 'd', STAT],
      ['symlink', 'f', 'l'], ['lchown', 'l', 7, 8], ['lstat', 'l', 'uid,gid'], ['stat', 'f', 'uid,gid'],
      ['chown', 'l', 9, 10], ['lstat', 'l', 'uid,gid'], ['stat', 'f', 'uid,gid'],
    ],
  },
  {
    name: 'chown: unprivileged user: EPERM to give away or to a foreign group, allowed no-op',
    steps: [
      ['open', 'f', 'mine', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'], ['chown', 'mine', 65534, 65534],
      ['open', 'f', 'other', 'O_CREAT|O_WRONLY', 0o666], ['close', 'f'],
      NOBODY,
      ['chown', 'mine', 0, -1],
      ['chown', 'mine', -1, 0],
      ['chown', 'mine', 65534, 65534],
      ['chown', 'mine', -1, -1],
      ['chown', 'other', 65534, -1],
      ['chown', 'other', -1, -1],
      ['stat', 'mine', STAT],
    ],
  },

  // ---- setuid/setgid clearing on write/truncate by non-owner ------------------------------
  {
    name: 'suid: a write or truncate by an unprivileged user clears setuid and setgid (group-exec)',
    steps: [
      ['open', 'f', 'w', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'], ['chmod', 'w', 0o6777],
      ['open', 'f', 't', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'], ['chmod', 't', 0o6777],
      ['open', 'f', 'r', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'], ['chmod', 'r', 0o6777],
      ['open', 'f', 'r', 'O_WRONLY'], ['write', 'f', 'by root'], ['close', 'f'], ['stat', 'r', STAT],
      NOBODY,
      ['open', 'f', 'w', 'O_WRONLY'], ['write', 'f', 'data'], ['close', 'f'],
      ['truncate', 't', 10],
      ROOT,
      ['stat', 'w', STAT], ['stat', 't', STAT],
    ],
  },

  // ---- link -------------------------------------------------------------------------------
  {
    name: 'link: nlink, ctime of the source, parent times; EEXIST, EPERM on dirs, ENOENT, ENOTDIR',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'], ['mkdir', 'd'], ['mkdir', 'sub'],
      ['snap', 'f'], ['snap', 'sub'], TICK,
      ['link', 'f', 'sub/g'], ['stat', 'sub/g', STAT], ['sameino', 'f', 'sub/g'], ['changed', 'sub'],
      SETTLE, ['stat', 'f', STAT], ['changed', 'f'],
      ['link', 'f', 'd'], ['link', 'd', 'd2'], ['link', 'missing', 'x'], ['link', 'f/x', 'y'], ['link', 'f', 'missing/x'],
      ['link', 'f', N256],
      ['symlink', 'f', 'sl'], ['link', 'sl', 'sl2'], ['lstat', 'sl2', 'type,nlink'],
      ['unlink', 'f'], ['stat', 'sub/g', STAT],
      ['open', 'r', 'sub/g', 'O_RDONLY'], ['close', 'r'],
    ],
  },
  {
    name: 'link: writing through one name is seen through the other at an open a second later',
    steps: [
      ['open', 'a', 'a', 'O_CREAT|O_RDWR', 0o644], ['write', 'a', 'first version'], ['close', 'a'],
      ['link', 'a', 'b'], ['open', 'rb', 'b', 'O_RDONLY'], ['pread', 'rb', 100, 0], ['close', 'rb'],
      ['open', 'a', 'a', 'O_WRONLY'], ['pwrite', 'a', 'SECOND', 0], ['close', 'a'],
      SETTLE, ['open', 'rb', 'b', 'O_RDONLY'], ['pread', 'rb', 100, 0], ['close', 'rb'], ['stat', 'b', 'size,nlink'],
    ],
  },
  {
    name: 'link: right after link, unlink and rename, the other names show the new st_nlink and st_ctime',
    steps: [
      ['open', 'f', 'a', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'], ['stat', 'a', 'nlink'], ['snap', 'a'], TICK,
      ['link', 'a', 'b'], ['stat', 'a', 'nlink'], ['changed', 'a'],
      ['link', 'b', 'c'], ['stat', 'a', 'nlink'], ['stat', 'b', 'nlink'],
      ['unlink', 'c'], ['stat', 'a', 'nlink'], ['stat', 'b', 'nlink'],
      ['open', 'f', 'x', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'], ['rename', 'x', 'b'], ['stat', 'a', 'nlink'],
    ],
  },
  {
    name: 'link: writing through one name is seen through the other at the next open',
    steps: [
      ['open', 'a', 'a', 'O_CREAT|O_RDWR', 0o644], ['write', 'a', 'first version'], ['close', 'a'],
      ['link', 'a', 'b'], ['open', 'rb', 'b', 'O_RDONLY'], ['pread', 'rb', 100, 0], ['close', 'rb'],
      ['open', 'a', 'a', 'O_WRONLY'], ['pwrite', 'a', 'SECOND', 0], ['close', 'a'],
      ['open', 'rb', 'b', 'O_RDONLY'], ['pread', 'rb', 100, 0], ['close', 'rb'],
      ['open', 'a', 'a', 'O_WRONLY|O_APPEND'], ['write', 'a', ' longer now'], ['close', 'a'],
      ['stat', 'b', 'size,nlink'], ['open', 'rb', 'b', 'O_RDONLY'], ['pread', 'rb', 100, 0], ['close', 'rb'],
    ],
  },
  {
    name: 'link: a descriptor open on one name sees writes made through the other',
    steps: [
      ['open', 'a', 'a', 'O_CREAT|O_RDWR', 0o644], ['write', 'a', 'first version'], ['close', 'a'],
      ['link', 'a', 'b'],
      ['open', 'rb', 'b', 'O_RDONLY'], ['pread', 'rb', 100, 0],
      ['open', 'a', 'a', 'O_WRONLY'], ['pwrite', 'a', 'SECOND', 0], ['close', 'a'],
      ['pread', 'rb', 100, 0],
      ['open', 'a', 'a', 'O_WRONLY|O_APPEND'], ['write', 'a', ' longer now'], ['close', 'a'],
      ['pread', 'rb', 100, 0], ['fstat', 'rb', 'size'],
    ],
  },

  // ---- mkdir / rmdir ----------------------------------------------------------------------
  {
    name: 'mkdir: modes with umask, setgid inheritance, nlink of the parent, EEXIST, ENOENT, ENOTDIR',
    steps: [
      ['snap', '.'], TICK,
      ['umask', 0o022], ['mkdir', 'a', 0o7777], ['stat', 'a', STAT], ['stat', '.', 'nlink'], ['changed', '.'],
      ['umask', 0], ['mkdir', 'b', 0o1777], ['stat', 'b', STAT],
      ['chmod', 'b', 0o2777], ['chown', 'b', 0, 1234], ['mkdir', 'b/c', 0o755], ['stat', 'b/c', STAT],
      ['open', 'f', 'b/file', 'O_CREAT|O_WRONLY', 0o2755], ['close', 'f'], ['stat', 'b/file', STAT],
      ['mkdir', 'a'], ['symlink', 'a', 'sl'], ['mkdir', 'sl'], ['mkdir', 'missing/x'],
      ['open', 'f', 'file', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'], ['mkdir', 'file/x'], ['mkdir', N256],
      ['mkdir', 'a/'], ['mkdir', 'new/'], ['stat', 'new', 'type'],
    ],
  },
  {
    name: 'mkdir/open: an unprivileged user in a setgid directory of a foreign group',
    steps: [
      ['mkdir', 'sg', 0o777], ['chown', 'sg', 0, 4321], ['chmod', 'sg', 0o2777],
      NOBODY, ['umask', 0],
      ['mkdir', 'sg/d', 0o777], ['open', 'f', 'sg/f', 'O_CREAT|O_WRONLY', 0o2777], ['close', 'f'],
      ['mknod', 'sg/n', 'reg', 0o2777],
      ROOT, ['stat', 'sg/d', STAT], ['stat', 'sg/f', STAT], ['stat', 'sg/n', STAT],
    ],
  },
  {
    name: 'rmdir: ENOTEMPTY, ENOTDIR, ENOENT, EINVAL on ".", parent nlink and times',
    steps: [
      ['mkdir', 'd'], ['mkdir', 'full'], ['mkdir', 'full/x'], ['open', 'f', 'file', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'],
      ['snap', '.'], TICK,
      ['rmdir', 'd'], ['stat', '.', 'nlink'], ['changed', '.'],
      ['rmdir', 'full'], ['rmdir', 'file'], ['rmdir', 'missing'], ['rmdir', 'full/x/.'], ['rmdir', 'full/x/..'],
      ['rmdir', 'file/x'], ['symlink', 'full', 'sl'], ['rmdir', 'sl'],
      ['rmdir', 'full/x'], ['rmdir', 'full'], ['ls', '.'],
    ],
  },
  {
    name: 'rmdir/unlink/rename: sticky directory rules for an unprivileged user',
    steps: [
      ['mkdir', 'tmp', 0o777], ['chmod', 'tmp', 0o1777],
      ['open', 'f', 'tmp/roots', 'O_CREAT|O_WRONLY', 0o666], ['close', 'f'],
      ['mkdir', 'tmp/rootdir'],
      NOBODY,
      ['open', 'f', 'tmp/mine', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'],
      ['unlink', 'tmp/roots'], ['rename', 'tmp/roots', 'tmp/stolen'], ['rmdir', 'tmp/rootdir'],
      ['rename', 'tmp/mine', 'tmp/roots'],
      ['rename', 'tmp/mine', 'tmp/mine2'], ['unlink', 'tmp/mine2'],
      ['ls', 'tmp'],
    ],
  },

  // ---- mkfifo / mknod ---------------------------------------------------------------------
  {
    name: 'mkfifo/mknod: fifo, char, block, regular, socket nodes; EEXIST; times of the parent',
    steps: [
      ['snap', '.'], TICK,
      ['mkfifo', 'p', 0o640], ['stat', 'p', STAT], ['changed', '.'],
      ['mknod', 'c', 'chr', 0o600, 1, 3], ['stat', 'c', `${STAT},rdev`],
      ['mknod', 'b', 'blk', 0o600, 259, 65537], ['stat', 'b', `${STAT},rdev`],
      ['mknod', 'r', 'reg', 0o600], ['stat', 'r', STAT],
      ['mknod', 's', 'sock', 0o600], ['stat', 's', STAT],
      ['mkfifo', 'p', 0o640], ['mknod', 'c', 'chr', 0o600, 1, 3],
      NOBODY, ['mknod', 'c2', 'chr', 0o600, 1, 3], ['mkfifo', 'p2', 0o644], ['stat', 'p2', STAT],
    ],
  },

  // ---- rename -----------------------------------------------------------------------------
  {
    name: 'rename: file over file, file over dir, dir over file, dir over (non-)empty dir, into itself',
    steps: [
      ['open', 'f', 'a', 'O_CREAT|O_WRONLY', 0o644], ['write', 'f', 'A'], ['close', 'f'],
      ['open', 'f', 'b', 'O_CREAT|O_WRONLY', 0o644], ['write', 'f', 'B'], ['close', 'f'],
      ['link', 'b', 'b2'],
      ['rename', 'a', 'b'], ['exists', 'a'], ['stat', 'b', STAT], SETTLE, ['stat', 'b2', STAT],
      ['mkdir', 'd'], ['mkdir', 'e'], ['mkdir', 'full'], ['mkdir', 'full/in'],
      ['rename', 'b', 'd'], ['rename', 'd', 'b'], ['rename', 'd', 'full'],
      ['rename', 'd', 'e'], ['exists', 'd'], ['stat', 'e', STAT], ['stat', '.', 'nlink'],
      ['rename', 'full', 'full/in/x'], ['rename', 'full', 'full/in'],
      ['rename', 'missing', 'x'], ['rename', 'b', 'missing/x'], ['rename', 'b/', 'c'], ['rename', 'b', 'c/'],
      ['rename', 'e', 'e/'], ['rename', 'b', N256], ['rename', 'e/.', 'x'], ['rename', 'e', 'full/..'],
      ['ls', '.'],
    ],
  },
  {
    name: 'rename: hard links of one inode, rename to itself, dirs across parents move ".." and nlinks, times',
    steps: [
      ['open', 'f', 'a', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'], ['link', 'a', 'b'],
      ['rename', 'a', 'b'], ['ls', '.'], ['stat', 'a', 'nlink'],
      ['rename', 'a', 'a'], ['stat', 'a', 'nlink'],
      ['mkdir', 'p1'], ['mkdir', 'p2'], ['mkdir', 'p1/moved'],
      ['snap', 'p1'], ['snap', 'p2'], ['snap', 'p1/moved', 'moved'], ['snap', 'a'], TICK,
      ['rename', 'p1/moved', 'p2/moved'],
      ['stat', 'p1', 'nlink'], ['stat', 'p2', 'nlink'], ['sameino', 'p2/moved/..', 'p2'],
      ['changed', 'p1'], ['changed', 'p2'], ['changed', 'p2/moved', 'moved'],
      ['rename', 'a', 'p1/a'], ['changed', 'p1/a', 'a'],
    ],
  },
  {
    name: 'rename: renameat2 RENAME_NOREPLACE and RENAME_EXCHANGE',
    steps: [
      ['open', 'f', 'a', 'O_CREAT|O_WRONLY', 0o644], ['write', 'f', 'A'], ['close', 'f'],
      ['open', 'f', 'b', 'O_CREAT|O_WRONLY', 0o644], ['write', 'f', 'BB'], ['close', 'f'],
      ['renameat2', 'a', 'b', 'NOREPLACE'],
      ['renameat2', 'a', 'c', 'NOREPLACE'], ['ls', '.'],
      ['renameat2', 'b', 'c', 'EXCHANGE'], ['stat', 'b', 'size'], ['stat', 'c', 'size'],
      ['exec', 'touch x && mv -n x b; echo $?; cat b'],
    ],
  },

  // ---- symlink / readlink -----------------------------------------------------------------
  {
    name: 'symlink: mode, size, owner, EEXIST, target lengths, readlink on a file',
    steps: [
      ['snap', '.'], TICK,
      ['symlink', 'some/target', 'l'], ['lstat', 'l', STAT], ['readlink', 'l'], ['changed', '.'],
      ['symlink', 'x', 'l'], ['symlink', 'x', 'missing/l'],
      ['symlink', 'y'.repeat(4095), 'long'], ['lstat', 'long', 'size'],
      ['symlink', 'y'.repeat(4096), 'toolong'],
      ['open', 'f', 'f', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'], ['readlink', 'f'],
      NOBODY, ['symlink', 'f', 'mine'], ['lstat', 'mine', STAT],
    ],
  },

  // ---- truncate ---------------------------------------------------------------------------
  {
    name: 'truncate: grow with zeros, shrink, same size, times, EISDIR, EINVAL, O_RDONLY ftruncate',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_RDWR', 0o644], ['write', 'f', 'abcdefghij'],
      ['snap', 'f'], TICK, ['ftruncate', 'f', 4], ['changed', 'f'], ['fstat', 'f', 'size'],
      ['ftruncate', 'f', 8], ['pread', 'f', 20, 0],
      ['truncate', 'f', -1], ['mkdir', 'd'], ['truncate', 'd', 0], ['truncate', 'missing', 0],
      ['close', 'f'], ['open', 'r', 'f', 'O_RDONLY'], ['ftruncate', 'r', 0],
      ['truncate', 'f', 70000], ['truncate', 'f', 65537], ['pread', 'r', 10, 65530], ['stat', 'f', 'size'],
    ],
  },

  {
    name: 'truncate: truncate(2) and ftruncate(2) to the current size move mtime and ctime',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_RDWR', 0o644], ['write', 'f', 'abcdefgh'],
      ['snap', 'f'], TICK, ['truncate', 'f', 8], ['changed', 'f'],
      ['snap', 'f'], TICK, ['ftruncate', 'f', 8], ['changed', 'f'],
    ],
  },

  // ---- unlink -----------------------------------------------------------------------------
  {
    name: 'unlink: EISDIR, ENOENT, ENOTDIR, nlink and ctime of the other name, parent times',
    steps: [
      ['open', 'f', 'a', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'], ['link', 'a', 'b'], ['mkdir', 'd'],
      ['snap', 'b'], ['snap', '.'], TICK,
      ['unlink', 'a'], ['changed', '.'], SETTLE, ['stat', 'b', STAT], ['changed', 'b'],
      ['unlink', 'd'], ['unlink', 'missing'], ['unlink', 'b/x'], ['unlink', 'd/'],
      ['symlink', 'b', 'sl'], ['unlink', 'sl'], ['exists', 'b'],
      NOBODY, ['unlink', 'b'],
    ],
  },

  // ---- utimensat --------------------------------------------------------------------------
  {
    name: 'utimensat: ns times, UTIME_NOW, UTIME_OMIT, pre-1970 and far future, symlinks',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'],
      ['utimens', 'f', [1000000000, 123456789], [1100000000, 987654321]], ['stat', 'f', 'atime,mtime'],
      ['snap', 'f'], TICK, ['utimens', 'f', 'omit', 'omit'], ['changed', 'f'],
      TICK, ['utimens', 'f', 'omit', [1200000000, 1]], ['changed', 'f'], ['stat', 'f', 'atime,mtime'],
      ['snap', 'f'], TICK, ['utimens', 'f', 'now', 'omit'], ['changed', 'f'],
      ['snap', 'f'], TICK, ['utimens', 'f', 'now', 'now'], ['changed', 'f'],
      ['utimens', 'f', [-1, 500000000], [-86400 * 365, 0]], ['stat', 'f', 'atime,mtime'],
      ['utimens', 'f', [2 ** 33, 0], [2 ** 33 + 7, 999999999]], ['stat', 'f', 'atime,mtime'],
      ['utimens', 'f', [0, 1000000000], 'omit'],
      ['symlink', 'f', 'l'], ['utimens', 'l', [5, 5], [6, 6], true], ['lstat', 'l', 'atime,mtime'], ['stat', 'f', 'mtime'],
      ['utimens', 'missing', 'now', 'now'],
    ],
  },
  {
    name: 'utimensat: permissions of an unprivileged user (owner, writable, read-only)',
    steps: [
      ['open', 'f', 'writable', 'O_CREAT|O_WRONLY', 0o666], ['close', 'f'],
      ['open', 'f', 'readonly', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'],
      // Times set before the chown, so that where the chown is refused (the non-root suites)
      // the last stat still compares fixed values, not two creation times.
      ['open', 'f', 'mine', 'O_CREAT|O_WRONLY', 0o600], ['close', 'f'], ['utimens', 'mine', [7, 0], [7, 0]], ['chown', 'mine', 65534, 65534],
      NOBODY,
      ['utimens_null', 'writable'], ['utimens', 'writable', 'now', 'now'], ['utimens', 'writable', [1, 0], [1, 0]],
      ['utimens_null', 'readonly'], ['utimens', 'readonly', 'now', 'now'], ['utimens', 'readonly', [1, 0], [1, 0]],
      ['utimens', 'mine', [1, 0], [2, 0]], ['stat', 'mine', 'atime,mtime'],
    ],
  },

  // ---- atime ------------------------------------------------------------------------------
  {
    name: 'atime: a read after a write moves atime (relatime), readdir of a changed directory too',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_RDWR', 0o644], ['write', 'f', 'data'], ['close', 'f'],
      ['utimens', 'f', [1000, 0], 'omit'],
      ['snap', 'f'], TICK, ['open', 'r', 'f', 'O_RDONLY'], ['read', 'r', 10], ['close', 'r'], ['achanged', 'f'],
      ['mkdir', 'd'], ['utimens', 'd', [1000, 0], 'omit'], ['snap', 'd'], TICK, ['ls', 'd'], ['achanged', 'd'],
      // relatime: atime is now newer than mtime and ctime, so a re-read within a day leaves it.
      ['snap', 'f'], TICK, ['open', 'r', 'f', 'O_RDONLY'], ['read', 'r', 10], ['close', 'r'], ['achanged', 'f'],
      ['exec', 'cat f >/dev/null && stat -c %X f > a1 && sleep 0.02 && cat f >/dev/null && [ "$(stat -c %X f)" = "$(cat a1)" ] && echo same'],
    ],
  },

  // ---- data -------------------------------------------------------------------------------
  {
    name: 'data: mmap MAP_SHARED writes with msync reach the file, read(2) and a new open see them',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_RDWR', 0o644], ['ftruncate', 'f', 200000],
      ['mmapwrite', 'f', 0, 'mapped-at-zero', 8192],
      ['mmapwrite', 'f', 131072, 'mapped-at-128k', 8192],
      ['pread', 'f', 14, 0], ['pread', 'f', 14, 131072],
      ['close', 'f'],
      ['open', 'r', 'f', 'O_RDONLY'], ['pread', 'r', 14, 0], ['pread', 'r', 14, 131072], ['fstat', 'r', 'size'],
      ['open', 'w', 'f', 'O_RDWR'], ['pwrite', 'w', 'WRITTEN', 65536], ['mmapread', 'r', 65536, 7],
    ],
  },
  {
    name: 'data: O_DIRECT aligned write and read',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_RDWR|O_DIRECT', 0o644],
      ['exec', 'dd if=/dev/zero bs=4096 count=4 2>/dev/null | tr "\\0" "z" | dd of=f bs=4096 oflag=direct conv=notrunc status=none && dd if=f bs=4096 count=1 iflag=direct status=none | head -c 8'],
      ['fstat', 'f', 'size'],
    ],
  },
  {
    name: 'data: fallocate modes and posix_fallocate',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_RDWR', 0o644],
      ['fallocate', 'f', 0, 0, 1048576], ['fstat', 'f', 'size'],
      ['fallocate', 'f', 1, 0, 4194304], ['fstat', 'f', 'size'],
      ['pwrite', 'f', 'x'.repeat(8192), 0],
      ['fallocate', 'f', 3, 0, 4096], ['pread', 'f', 4, 4092], ['pread', 'f', 4, 0],
      ['posix_fallocate', 'f', 0, 2097152], ['fstat', 'f', 'size'],
      ['fallocate', 'f', 0x10, 4096, 4096], ['pread', 'f', 2, 8191],
    ],
  },
  {
    name: 'data: SEEK_DATA / SEEK_HOLE on a file with a leading 1 MiB hole',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_RDWR', 0o644], ['pwrite', 'f', 'data', 1048576], ['ftruncate', 'f', 4194304],
      ['fsync', 'f'],
      // The hole after the 4 bytes starts at their block's end: 4 KiB on ext4, 64 KiB on dmfs.
      ['lseek', 'f', 0, 'DATA'], ['lseek', 'f', 0, 'HOLE'], ['lseek_in', 'f', 1048576, 'HOLE', 1048580, 4194304],
      ['lseek', 'f', 4194304, 'DATA'], ['lseek', 'f', 4194304, 'HOLE'],
    ],
  },
  {
    // Offsets are multiples of 64 KiB, where ext4's and dmfs's block boundaries agree.
    name: 'data: SEEK_DATA / SEEK_HOLE after punching, fallocate and a write into the reservation',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_RDWR', 0o644], ['pwrite', 'f', 'd'.repeat(262144), 0], ['ftruncate', 'f', 1048576],
      ['fallocate', 'f', 3, 65536, 65536],
      ['lseek', 'f', 0, 'HOLE'], ['lseek', 'f', 65536, 'DATA'], ['lseek', 'f', 70000, 'HOLE'], ['lseek', 'f', 131072, 'HOLE'],
      ['lseek', 'f', 262144, 'DATA'], ['lseek', 'f', 262144, 'HOLE'], ['lseek', 'f', 1048575, 'HOLE'], ['lseek', 'f', 1048576, 'HOLE'],
      ['fallocate', 'f', 1, 393216, 65536], ['lseek', 'f', 262144, 'DATA'],
      ['pwrite', 'f', 'x', 400000], ['lseek_in', 'f', 262144, 'DATA', 393216, 400000], ['lseek_in', 'f', 400000, 'HOLE', 400001, 458752],
      ['pread', 'f', 3, 399999], ['fstat', 'f', 'size'],
      ['lseek', 'f', 0, 'END'], ['lseek', 'f', 10, 'SET'], ['lseek', 'f', 5, 'CUR'], ['read', 'f', 2],
    ],
  },
  {
    name: 'data: offsets past 4 GiB',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_RDWR', 0o644],
      ['pwrite', 'f', 'above-4g', 5 * 2 ** 30 + 12345], ['pwrite', 'f', 'at-4g', 2 ** 32 - 2],
      ['fstat', 'f', 'size'], ['pread', 'f', 8, 5 * 2 ** 30 + 12345], ['pread', 'f', 5, 2 ** 32 - 2],
      ['pread', 'f', 4, 3 * 2 ** 30], ['ftruncate', 'f', 2 ** 32 + 1], ['fstat', 'f', 'size'], ['pread', 'f', 10, 2 ** 32 - 2],
    ],
  },
  {
    name: 'data: copy_file_range (block-aligned and not, past EOF, overlap, read-only and O_APPEND targets, times, then a write)',
    steps: [
      ['open', 's', 's', 'O_CREAT|O_RDWR', 0o644], ['pwrite', 's', 'a'.repeat(70000), 0], ['pwrite', 's', 'b'.repeat(70000), 70000],
      ['pwrite', 's', 'tail', 140000],
      ['open', 'd', 'd', 'O_CREAT|O_RDWR', 0o644], ['snap', 'd'], TICK,
      ['copy_file_range', 's', 'd', 131072, 0, 0], ['changed', 'd'], ['fstat', 'd', 'size'],
      ['copy_file_range', 's', 'd', 20000, 65636, 300], ['copy_file_range', 's', 'd', 1000, 139500, 262144],
      ['copy_file_range', 's', 'd', 100, 140004, 0], ['copy_file_range', 's', 'd', 100, 200000, 0],
      ['copy_file_range', 's', 's', 1000, 0, 500],
      ['fstat', 'd', 'size'], ['sha', 'd'], ['pread', 'd', 8, 262640],
      ['pwrite', 'd', 'Z'.repeat(10), 70000], ['pread', 's', 10, 70000], ['sha', 's'],
      ['open', 'r', 'd', 'O_RDONLY'], ['copy_file_range', 's', 'r', 10, 0, 0],
      ['open', 'p', 'd', 'O_WRONLY|O_APPEND'], ['copy_file_range', 's', 'p', 10, 0, 0],
    ],
  },

  // ---- names ------------------------------------------------------------------------------
  {
    name: 'names: UTF-8 names (accents, CJK, emoji, 255 bytes of multi-byte characters)',
    steps: [
      ['open', 'f', 'ünïcødé', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'], ['mkdir', '目录'], ['symlink', '😀', 'emoji-link'],
      ['open', 'f', 'é'.repeat(127), 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'],
      ['open', 'f', 'é'.repeat(128), 'O_CREAT|O_WRONLY', 0o644],
      ['ls', '.'], ['readlink', 'emoji-link'], ['rename', 'ünïcødé', '目录/ünïcødé'], ['ls', '目录'],
    ],
  },
  {
    name: 'names: bytes that are not UTF-8 (Latin-1 names, symlink targets) are kept as they are',
    steps: [
      ['open', 'f', 'caf\udce9', 'O_CREAT|O_WRONLY', 0o644], ['write', 'f', 'latin1'], ['close', 'f'],
      ['ls', '.'], ['stat', 'caf\udcfe', 'size'], ['stat', 'caf\ufffd', 'size'],
      ['open', 'f', 'caf\udcfe', 'O_CREAT|O_WRONLY|O_EXCL', 0o644], ['close', 'f'], ['ls', '.'],
      ['symlink', 'tar\udce9get', 'sl'], ['readlink', 'sl'],
      ['mkdir', 'dir\udcff'], ['rename', 'caf\udce9', 'dir\udcff/\udce0'], ['ls', 'dir\udcff'],
      ['open', 'f', '\udcff'.repeat(255), 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'],
    ],
  },

  // ---- node kinds FUSE leaves to the file system ---------------------------------------
  {
    name: 'open: O_TMPFILE (an unnamed file in a directory)',
    steps: [
      ['open', 't', '.', 'O_TMPFILE|O_RDWR', 0o600], ['write', 't', 'anonymous'], ['fstat', 't', 'nlink,size,mode'], ['ls', '.'],
    ],
  },
  {
    name: 'open: O_TMPFILE named by linkat through /proc/self/fd and AT_EMPTY_PATH; O_EXCL never gets a name',
    steps: [
      ['open', 't', '.', 'O_TMPFILE|O_RDWR', 0o640], ['write', 't', 'anonymous'],
      ['linkfd', 't', 'named'], ['fstat', 't', 'nlink,size'], ['stat', 'named', STAT], ['close', 't'],
      ['open', 'r', 'named', 'O_RDONLY'], ['read', 'r', 20], ['close', 'r'],
      ['open', 'u', '.', 'O_TMPFILE|O_WRONLY', 0o644], ['write', 'u', 'by fd'], ['linkempty', 'u', 'empty-path'], ['close', 'u'],
      ['stat', 'empty-path', STAT],
      ['open', 'x', '.', 'O_TMPFILE|O_RDWR|O_EXCL', 0o600], ['write', 'x', 'x'], ['linkfd', 'x', 'never'], ['close', 'x'], ['exists', 'never'],
      ['open', 'n', 'named', 'O_TMPFILE|O_RDWR', 0o600], ['open', 'n', '.', 'O_TMPFILE|O_RDONLY', 0o600],
      ['open', 'y', '.', 'O_TMPFILE|O_RDWR', 0o600], ['linkfd', 'y', 'named'], ['close', 'y'],
      ['ls', '.'],
    ],
  },
  {
    name: 'stat: statx reports a birth time',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'],
      ['exec', '[ "$(stat -c %W f)" -gt 0 ] && echo has-btime || echo no-btime'],
      ['exec', '[ "$(stat -c %W .)" -gt 0 ] && echo has-btime || echo no-btime'],
      ['exec', 'stat -c %W f > b1 && sleep 1.1 && echo more >> f && chmod 600 f && [ "$(stat -c %W f)" = "$(cat b1)" ] && [ "$(stat -c %Y f)" -gt "$(cat b1)" ] && echo kept'],
    ],
  },

  // ---- xattrs / chattr ------------------------------------------------------------------------
  {
    name: 'xattr: create/replace flags, ENODATA, namespaces, on dirs and symlinks, ctime',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'], ['mkdir', 'd'], ['symlink', 'f', 'l'],
      ['snap', 'f'], TICK,
      ['setxattr', 'f', 'user.a', '6869'], ['changed', 'f'], ['getxattr', 'f', 'user.a'],
      ['setxattr', 'f', 'user.a', '00', 1], ['setxattr', 'f', 'user.b', '00', 2],
      ['setxattr', 'f', 'user.a', '', 2], ['getxattr', 'f', 'user.a'],
      ['getxattr', 'f', 'user.none'], ['removexattr', 'f', 'user.none'],
      ['setxattr', 'd', 'user.d', '01'], ['listxattr', 'd'],
      ['setxattr', 'l', 'user.l', '01'], ['setxattr', 'l', 'trusted.l', '01'], ['listxattr', 'l'],
      ['setxattr', 'f', 'trusted.t', '02'], ['setxattr', 'f', 'security.capability', '0100000200200000000000000000000000000000'],
      ['listxattr', 'f'], ['setxattr', 'f', 'bogus.x', '00'],
      NOBODY, ['setxattr', 'f', 'user.c', '00'], ['getxattr', 'f', 'user.a'], ['getxattr', 'f', 'trusted.t'],
    ],
  },
  {
    name: 'xattr: an unprivileged listxattr does not show trusted.*',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'],
      ['setxattr', 'f', 'user.a', '01'], ['setxattr', 'f', 'trusted.t', '02'], ['listxattr', 'f'],
      NOBODY, ['listxattr', 'f'],
    ],
  },
  {
    name: 'xattr: POSIX ACLs (system.posix_acl_access with a named user), setfacl -b',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'],
      ['setxattr', 'f', 'system.posix_acl_access', ACL_USER_1000], ['stat', 'f', 'mode'],
      ['getxattr', 'f', 'system.posix_acl_access'],
      ['setxattr', 'f', 'system.posix_acl_access', '02000000'],
    ],
  },
  {
    name: 'acl: setfacl/getfacl with a named user and group, the mask, chmod, setfacl -b',
    steps: [
      ['open', 'f', 'f', 'O_CREAT|O_WRONLY', 0o640], ['close', 'f'],
      ['exec', 'setfacl -m u:65534:rw,g:65534:r f && getfacl -nc f'], ['stat', 'f', 'mode'],
      ['exec', 'chmod 604 f && getfacl -nc f'], ['stat', 'f', 'mode'],
      ['exec', 'setfacl -m m::rwx f && stat -c %a f'], ['listxattr', 'f'],
      ['exec', 'setfacl -m u::rwx,g::-,o::r f && getfacl -nc f'],
      ['exec', 'setfacl -b f && getfacl -nc f'], ['stat', 'f', 'mode'], ['listxattr', 'f'],
      ['exec', 'setfacl -m u:65534:x f && cp -p f g && getfacl -nc g'],
    ],
  },
  {
    name: 'acl: a default ACL is inherited by new files and directories, and the umask does not apply under it',
    steps: [
      ['mkdir', 'd', 0o755], ['exec', 'setfacl -d -m u:65534:rwx,g::r-x,o::- d && getfacl -nc d'], ['stat', 'd', 'mode'],
      ['umask', 0o077],
      ['open', 'f', 'd/file', 'O_CREAT|O_WRONLY', 0o666], ['close', 'f'], ['stat', 'd/file', 'mode'],
      ['mkdir', 'd/sub', 0o777], ['stat', 'd/sub', 'mode'],
      ['mkfifo', 'd/fifo', 0o640], ['stat', 'd/fifo', 'mode'],
      ['open', 't', 'd', 'O_TMPFILE|O_RDWR', 0o660], ['linkfd', 't', 'd/was-tmp'], ['close', 't'], ['stat', 'd/was-tmp', 'mode'],
      ['exec', 'getfacl -nc d/file d/sub d/was-tmp'],
      ['exec', 'mkdir d/sub/deeper && getfacl -nc d/sub/deeper'],
      ['open', 'f', 'outside', 'O_CREAT|O_WRONLY', 0o666], ['close', 'f'], ['stat', 'outside', 'mode'],
      ['umask', 0o022],
      ['exec', 'setfacl -k d && touch d/after && getfacl -nc d/after'],
    ],
  },
  {
    name: 'acl: the kernel enforces ACL entries for another uid (named user, mask, named group)',
    steps: [
      ['open', 'f', 'secret', 'O_CREAT|O_WRONLY', 0o600], ['write', 'f', 'top secret'], ['close', 'f'],
      ['mkdir', 'box', 0o700],
      ['exec', 'setfacl -m u:65534:r secret && setfacl -m u:65534:rwx box'],
      NOBODY,
      ['open', 'g', 'secret', 'O_RDONLY'], ['read', 'g', 20], ['close', 'g'],
      ['open', 'g', 'secret', 'O_WRONLY'],
      ['open', 'g', 'box/mine', 'O_CREAT|O_WRONLY', 0o644], ['close', 'g'],
      ['access', 'secret', 4], ['access', 'secret', 2],
      ROOT,
      ['exec', 'setfacl -m m::- secret'],
      NOBODY, ['open', 'g', 'secret', 'O_RDONLY'],
      ROOT,
      ['exec', 'setfacl -x u:65534 box && setfacl -m g:65534:rx box'],
      NOBODY, ['ls', 'box'], ['open', 'g', 'box/other', 'O_CREAT|O_WRONLY', 0o644],
      ROOT,
      ['exec', 'setfacl -d -m u:65534:rwx box && mkdir box/shared && chmod 700 box/shared'],
      NOBODY, ['open', 'g', 'box/shared/x', 'O_CREAT|O_WRONLY', 0o644],
      ROOT,
    ],
  },
  {
    name: 'xattr: a write to a file clears security.capability (as root too); chown clears it',
    steps: [
      ['open', 'f', 'cap', 'O_CREAT|O_WRONLY', 0o755], ['close', 'f'],
      ['setxattr', 'cap', 'security.capability', '0100000200200000000000000000000000000000'],
      ['open', 'f', 'cap', 'O_WRONLY'], ['write', 'f', 'x'], ['close', 'f'], ['listxattr', 'cap'],
      ['setxattr', 'cap', 'security.capability', '0100000200200000000000000000000000000000'],
      ['chown', 'cap', 1, 1], ['listxattr', 'cap'],
    ],
  },
];

/**
 * The tree every layer case starts from: it lives in the image layer under the dmfs
 * container, and is copied with `cp -a` into the ext4 directory. Each case works in its
 * own top-level directory (the case name's prefix), so cases do not disturb each other.
 */
export const LOWER_TREE_SCRIPT = `
set -e
mk() { mkdir -p "$@"; }
mk unl/d; echo a > unl/a; echo b > unl/b; echo keep > unl/keep; echo inner > unl/d/inner
mk rmd/empty rmd/full/sub; echo x > rmd/full/x; echo y > rmd/full/sub/y; mk rmd/emptied/e1; echo z > rmd/emptied/z
mk ren/dir1/deep ren/target_empty ren/target_full ren/other; echo c1 > ren/dir1/c1; echo c2 > ren/dir1/deep/c2
echo f1 > ren/file1; echo over > ren/over; echo tf > ren/target_full/t; echo o > ren/other/o
mk lnk; echo shared > lnk/hl1; ln lnk/hl1 lnk/hl2; echo orig > lnk/orig; mk lnk/sub; ln lnk/hl1 lnk/sub/hl3
mk lnk2; echo shared > lnk2/hl1; ln lnk2/hl1 lnk2/hl2; echo orig > lnk2/orig; mk lnk2/sub; ln lnk2/hl1 lnk2/sub/hl3
mk trc; seq 1 40000 > trc/big; echo small > trc/small; seq 1 100 > trc/mid
mk att; echo f > att/f; echo s > att/suid; chmod 4755 att/suid; echo g > att/sgid; chmod 2755 att/sgid
touch -d '2001-01-01 00:00:00.123456789' att/f; chown 1000:1000 att/f; mk att/d; chmod 1777 att/d
mk opq/a/b; echo 1 > opq/a/one; echo 2 > opq/a/b/two; echo 3 > opq/three
mk wh/d; echo f > wh/f; echo g > wh/d/g
mk dpk/usr/bin; printf 'v1-binary' > dpk/usr/bin/tool; chmod 755 dpk/usr/bin/tool; ln dpk/usr/bin/tool dpk/usr/bin/tool-alias
mk tim/d; echo t > tim/f; echo u > tim/d/u
mk cow; head -c 300000 /dev/zero | tr '\\0' 'L' > cow/blocks
mk fal; seq 1 100000 > fal/lower
mk opq2/d/sub; echo old > opq2/d/old; echo deeper > opq2/d/sub/deeper
echo gone > unl/gone-in-l2
`;

/**
 * The second image layer, built through a mount of the building layer: xattrs on lower
 * files (\`dmfs import DIR\` carries none, see posix-layers.test.ts), a whiteout, a new
 * file, a hard link to a file of the layer below, and an opaque directory.
 */
export const LOWER_OVERLAY_SCRIPT = `
set -e
setfattr -n user.k -v lower att/f
setfattr -n security.capability -v 0x0100000200200000000000000000000000000000 att/suid
rm unl/gone-in-l2
echo l2 > unl/added-in-l2
ln lnk/orig lnk/orig-l2
ln lnk2/orig lnk2/orig-l2
rm -rf opq2/d && mkdir opq2/d && echo new > opq2/d/new
`;

export const LAYER_CASES: ProbeCase[] = [
  {
    name: 'layers: unlink of lower files (whiteouts), recreate as file and dir, no resurrection',
    dir: 'unl',
    steps: [
      ['snap', '.'], TICK,
      ['unlink', 'a'], ['exists', 'a'], ['stat', 'a', STAT], ['ls', '.'], ['changed', '.'],
      ['open', 'f', 'a', 'O_CREAT|O_RDWR', 0o600], ['pread', 'f', 10, 0], ['close', 'f'], ['stat', 'a', STAT],
      ['unlink', 'b'], ['mkdir', 'b', 0o700], ['ls', 'b'], ['stat', 'b', STAT], ['stat', '.', 'nlink'],
      ['unlink', 'd/inner'], ['rmdir', 'd'], ['open', 'f', 'd', 'O_CREAT|O_WRONLY', 0o644], ['close', 'f'], ['stat', 'd', STAT],
      ['unlink', 'd'], ['mkdir', 'd'], ['ls', 'd'], ['exists', 'd/inner'],
      ['unlink', 'a'], ['unlink', 'a'], ['link', 'keep', 'a'], ['stat', 'a', STAT], SETTLE, ['stat', 'keep', STAT], ['ls', '.'],
    ],
  },
  {
    name: 'layers: rmdir of lower directories (empty, full, emptied in the container), opaque re-creation',
    dir: 'rmd',
    steps: [
      ['rmdir', 'full'], ['rmdir', 'empty'], ['stat', '.', 'nlink'], ['exists', 'empty'],
      ['unlink', 'emptied/z'], ['rmdir', 'emptied'], ['rmdir', 'emptied/e1'], ['rmdir', 'emptied'], ['stat', '.', 'nlink'],
      ['mkdir', 'emptied'], ['ls', 'emptied'], ['stat', 'emptied', STAT],
      ['unlink', 'full/sub/y'], ['rmdir', 'full/sub'], ['unlink', 'full/x'], ['rmdir', 'full'], ['ls', '.'],
      ['mkdir', 'full'], ['mkdir', 'full/sub'], ['ls', 'full/sub'], ['stat', 'full', 'nlink'],
    ],
  },
  {
    name: 'layers: rename of lower files and directories, over lower targets, into own subdir',
    dir: 'ren',
    steps: [
      ['rename', 'dir1', 'moved'], ['ls', 'moved'], ['ls', 'moved/deep'], ['exists', 'dir1'],
      ['rename', 'moved', 'target_full'], ['rename', 'moved', 'target_empty'], ['ls', 'target_empty/deep'],
      ['exists', 'moved'], ['stat', '.', 'nlink'],
      ['rename', 'target_empty', 'target_empty/deep/x'],
      ['rename', 'file1', 'over'], ['exists', 'file1'], ['stat', 'over', STAT],
      ['open', 'r', 'over', 'O_RDONLY'], ['read', 'r', 10], ['close', 'r'],
      ['rename', 'over', 'other'], ['rename', 'other', 'over'],
      ['mkdir', 'dir1'], ['ls', 'dir1'], ['rename', 'target_empty', 'dir1'], ['ls', 'dir1'],
      ['rename', 'dir1/c1', 'c1-up'], ['ls', 'dir1'], ['ls', '.'],
      ['rename', 'other/o', 'other/o2'], ['rmdir', 'other'], ['unlink', 'other/o2'], ['rmdir', 'other'],
      ['ls', '.'],
    ],
  },
  {
    name: 'layers: hard links of the image, checked a second after each change (write, chmod, link, unlink, truncate, rename over)',
    dir: 'lnk2',
    steps: [
      ['stat', 'hl1', STAT], ['sameino', 'hl1', 'hl2'], ['sameino', 'hl1', 'sub/hl3'], ['stat', 'orig', 'nlink'],
      ['open', 'w', 'hl1', 'O_WRONLY|O_APPEND'], ['write', 'w', 'more\n'], ['close', 'w'], ['chmod', 'hl2', 0o600],
      ['link', 'hl1', 'hl4'],
      SETTLE,
      ['open', 'r', 'hl2', 'O_RDONLY'], ['read', 'r', 100], ['close', 'r'],
      ['open', 'r', 'sub/hl3', 'O_RDONLY'], ['read', 'r', 100], ['close', 'r'],
      ['stat', 'hl1', STAT], ['stat', 'hl2', STAT], ['stat', 'sub/hl3', STAT], ['stat', 'hl4', STAT],
      ['unlink', 'hl1'], ['truncate', 'hl4', 3], ['rename', 'orig', 'hl2'], ['link', 'hl2', 'sub/orig2'],
      SETTLE,
      ['stat', 'hl4', STAT], ['stat', 'sub/hl3', STAT], ['stat', 'hl2', STAT], ['stat', 'orig-l2', STAT], ['stat', 'sub/orig2', STAT],
      ['open', 'r', 'sub/hl3', 'O_RDONLY'], ['read', 'r', 100], ['close', 'r'], ['ls', '.'], ['ls', 'sub'],
    ],
  },
  {
    name: 'layers: hard links of the image, checked right after each change (write, chmod, link, unlink, truncate, rename over)',
    dir: 'lnk',
    steps: [
      ['stat', 'hl1', STAT], ['sameino', 'hl1', 'hl2'], ['sameino', 'hl1', 'sub/hl3'],
      ['open', 'w', 'hl1', 'O_WRONLY|O_APPEND'], ['write', 'w', 'more\n'], ['close', 'w'],
      ['open', 'r', 'hl2', 'O_RDONLY'], ['read', 'r', 100], ['close', 'r'],
      ['open', 'r', 'sub/hl3', 'O_RDONLY'], ['read', 'r', 100], ['close', 'r'],
      ['chmod', 'hl2', 0o600], ['stat', 'hl1', STAT], ['stat', 'sub/hl3', STAT],
      ['link', 'hl1', 'hl4'], ['stat', 'hl2', 'nlink'],
      ['unlink', 'hl1'], ['stat', 'hl2', STAT], ['open', 'r', 'hl4', 'O_RDONLY'], ['read', 'r', 100], ['close', 'r'],
      ['truncate', 'hl4', 3], ['open', 'r', 'sub/hl3', 'O_RDONLY'], ['read', 'r', 100], ['close', 'r'],
      ['rename', 'orig', 'hl2'], ['stat', 'hl4', 'nlink'], ['stat', 'hl2', 'nlink'],
      ['link', 'orig', 'x'], ['link', 'hl2', 'sub/orig2'], ['stat', 'hl2', 'nlink'],
    ],
  },
  {
    name: 'layers: hard links of the image, both names open while one is written',
    dir: 'lnk',
    steps: [
      ['open', 'r', 'sub/hl3', 'O_RDONLY'], ['pread', 'r', 100, 0],
      ['open', 'w', 'hl4', 'O_WRONLY'], ['pwrite', 'w', 'XY', 0], ['close', 'w'],
      ['pread', 'r', 100, 0], ['close', 'r'],
    ],
  },
  {
    name: 'layers: truncate and partial writes of lower files (copy-on-write of blocks)',
    dir: 'trc',
    steps: [
      ['truncate', 'big', 100000], ['truncate', 'big', 200000], ['open', 'r', 'big', 'O_RDONLY'],
      ['pread', 'r', 16, 99990], ['pread', 'r', 16, 150000], ['fstat', 'r', 'size'],
      ['open', 'w', 'big', 'O_WRONLY'], ['pwrite', 'w', 'PATCH', 65530], ['pwrite', 'w', 'END', 199997], ['close', 'w'],
      ['pread', 'r', 20, 65525], ['pread', 'r', 10, 199995], ['pread', 'r', 20, 0], ['close', 'r'],
      ['open', 'w', 'small', 'O_WRONLY|O_TRUNC'], ['close', 'w'], ['stat', 'small', 'size'],
      ['open', 'w', 'mid', 'O_RDWR'], ['ftruncate', 'w', 5], ['pwrite', 'w', 'Z', 10], ['pread', 'w', 20, 0], ['close', 'w'],
    ],
  },
  {
    name: 'layers: chmod, chown, utimens, xattrs of lower files; setuid and capability cleared on write',
    dir: 'att',
    steps: [
      ['stat', 'f', STAT], ['getxattr', 'f', 'user.k'], ['listxattr', 'suid'],
      ['chmod', 'f', 0o600], ['chown', 'f', 2000, 2001], ['stat', 'f', STAT],
      ['setxattr', 'f', 'user.k', '7570'], ['getxattr', 'f', 'user.k'], ['removexattr', 'f', 'user.k'], ['listxattr', 'f'],
      ['utimens', 'f', [10, 1], [20, 2]], ['stat', 'f', 'atime,mtime'],
      ['chmod', 'suid', 0o4777], ['as', 1000, 1000],
      ['open', 'w', 'suid', 'O_WRONLY|O_APPEND'], ['write', 'w', 'x'], ['close', 'w'], ['root'], ['stat', 'suid', STAT],
      ['listxattr', 'suid'],
      ['chown', 'sgid', 5, 5], ['stat', 'sgid', STAT],
      ['as', 1000, 1000], ['open', 'w', 'd/mine', 'O_CREAT|O_WRONLY', 0o644], ['close', 'w'], ['root'], ['stat', 'd/mine', STAT],
    ],
  },
  {
    name: 'layers: rm -rf of a lower tree, mkdir of the same name is empty (opaque), rename into it',
    dir: 'opq',
    steps: [
      ['unlink', 'a/b/two'], ['rmdir', 'a/b'], ['unlink', 'a/one'], ['rmdir', 'a'], ['mkdir', 'a'],
      ['ls', 'a'], ['exists', 'a/b'], ['stat', 'a', 'nlink'], ['mkdir', 'a/b'], ['ls', 'a/b'],
      ['rename', 'three', 'a/three'], ['ls', 'a'], ['ls', '.'],
    ],
  },
  {
    name: 'layers: a directory made opaque in the image (only its new entries show)',
    dir: 'opq2',
    steps: [
      ['ls', 'd'], ['exists', 'd/old'], ['stat', 'd', 'nlink'], ['rmdir', 'd'], ['unlink', 'd/new'], ['rmdir', 'd'],
      ['mkdir', 'd'], ['ls', 'd'], ['exists', 'd/sub'], ['mkdir', 'd/sub'], ['ls', 'd/sub'],
    ],
  },
  {
    name: 'layers: operations on whited-out names (stat, open, link onto, rename onto, rmdir, chmod)',
    dir: 'wh',
    steps: [
      ['unlink', 'f'], ['unlink', 'd/g'], ['rmdir', 'd'],
      ['stat', 'f', STAT], ['open', 'x', 'f', 'O_RDONLY'], ['chmod', 'f', 0o600], ['truncate', 'f', 0],
      ['rmdir', 'd'], ['open', 'x', 'd/g', 'O_RDONLY'], ['rename', 'f', 'g'], ['link', 'f', 'g'],
      ['open', 'x', 'n', 'O_CREAT|O_WRONLY', 0o644], ['close', 'x'],
      ['rename', 'n', 'f'], ['link', 'f', 'd'], ['ls', '.'], ['stat', 'f', 'nlink'], ['stat', 'd', 'nlink'],
    ],
  },
  {
    name: 'layers: dpkg-style replacement of a lower binary (link backup, rename over, unlink backup)',
    dir: 'dpk',
    steps: [
      ['open', 'n', 'usr/bin/tool.dpkg-new', 'O_CREAT|O_WRONLY|O_EXCL', 0o600], ['write', 'n', 'v2-binary'],
      ['fsync', 'n'], ['fchown', 'n', 0, 0], ['fchmod', 'n', 0o755], ['close', 'n'],
      ['link', 'usr/bin/tool', 'usr/bin/tool.dpkg-tmp'],
      ['rename', 'usr/bin/tool.dpkg-new', 'usr/bin/tool'],
      ['unlink', 'usr/bin/tool.dpkg-tmp'],
      ['open', 'r', 'usr/bin/tool', 'O_RDONLY'], ['read', 'r', 100], ['close', 'r'],
      ['open', 'r', 'usr/bin/tool-alias', 'O_RDONLY'], ['read', 'r', 100], ['close', 'r'],
      ['stat', 'usr/bin/tool', STAT], ['stat', 'usr/bin/tool-alias', STAT], ['ls', 'usr/bin'],
    ],
  },
  {
    name: 'layers: times of lower files and directories on each operation',
    dir: 'tim',
    steps: [
      ['snap', '.'], ['snap', 'd'], ['snap', 'f'], TICK,
      ['open', 'w', 'f', 'O_WRONLY|O_APPEND'], ['write', 'w', 'x'], ['close', 'w'], ['changed', 'f'], ['changed', '.'],
      TICK, ['unlink', 'd/u'], ['changed', 'd'],
      ['snap', 'f'], TICK, ['chmod', 'f', 0o640], ['changed', 'f'],
      ['snap', 'f'], TICK, ['link', 'f', 'g'], ['changed', '.'], SETTLE, ['changed', 'f'],
      ['snap', 'd'], TICK, ['rename', 'g', 'd/g'], ['changed', 'd'],
    ],
  },
  {
    name: 'layers: st_blocks and sizes of lower files; one-byte writes into the middle',
    dir: 'cow',
    steps: [
      ['stat', 'blocks', 'size'],
      ['open', 'w', 'blocks', 'O_RDWR'], ['pwrite', 'w', 'a', 0], ['pwrite', 'w', 'b', 65536], ['pwrite', 'w', 'c', 299999],
      ['pread', 'w', 3, 65535], ['pread', 'w', 2, 299998], ['pread', 'w', 3, 0], ['close', 'w'],
      ['stat', 'blocks', 'size'],
    ],
  },
];

/** Random and concurrent data-path cases: the probe checks each against its own model too. */
const DATA_EXTRA_CASES: ProbeCase[] = [
  { name: 'data: fsx, 400 ops in a 1 MiB file (writes, truncates, mmap writes, reads, reopens)', steps: [['fsx', 'f', 1, 400, 1048576]] },
  { name: 'data: fsx, 500 ops in a 140 KB file (inline tails, block boundaries)', steps: [['fsx', 'f', 2, 500, 140000]] },
  { name: 'data: fsx, 250 ops in a 3 MB file', steps: [['fsx', 'f', 3, 250, 3000000]] },
  { name: 'data: fsx with fallocate modes and SEEK_DATA / SEEK_HOLE, 600 ops in a 1 MiB file', steps: [['fsx', 'f', 4, 600, 1048576, false, true]] },
  { name: 'data: four processes pwrite interleaved chunks of one file', steps: [['parallel_pwrite', 'f', 4, 400, 5000]] },
  { name: 'data: four processes append lines with O_APPEND (none lost, none torn)', steps: [['parallel_append', 'f', 4, 800]] },
];

/** Cases of the data test (posix-data.test.ts). */
export const DATA_CASES: ProbeCase[] = [...POSIX_CASES.filter((c) => c.name.startsWith('data:')), ...DATA_EXTRA_CASES];

/** Cases of the syscall test (posix-syscalls.test.ts). */
export const SYSCALL_CASES: ProbeCase[] = POSIX_CASES.filter((c) => !c.name.startsWith('data:'));

/** Layer cases that fsx a lower file in place (copy-on-write under random writes). */
export const LAYER_DATA_CASES: ProbeCase[] = [
  { name: 'layers: fsx on a lower 300 KB file (copy-on-write under random I/O)', dir: 'cow', steps: [['fsx', 'blocks', 7, 300, 700000, true]] },
  { name: 'layers: fsx on a lower text file', dir: 'trc', steps: [['fsx', 'big', 8, 300, 400000, true]] },
  { name: 'layers: fsx with fallocate and SEEK_DATA / SEEK_HOLE on a lower file (punched lower blocks read zeros)', dir: 'fal', steps: [['fsx', 'lower', 9, 300, 800000, true, true]] },
];
