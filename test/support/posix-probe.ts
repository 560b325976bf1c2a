/**
 * The syscall probe of the differential POSIX tests: a Python 3 program (standard library
 * and ctypes only) that runs the steps of each case (posix-cases.ts) and prints one result
 * per step: `ok`, `ok:<value>` or `E<errno name>`. The same program runs in a directory of
 * the host's ext4 and in a dmfs mount; the results must match.
 *
 * Python because its os module is a thin layer over the syscalls (openat, renameat,
 * utimensat through ctypes, mmap, fork) and it is on every Debian host; the program is
 * written to a temporary file at run time.
 *
 * Effective ids: `as UID GID` uses seteuid/setegid, so the FUSE request carries the
 * unprivileged caller (fuse_get_context and the kernel's default_permissions both use
 * fsuid = euid). Each case starts and ends as the base identity, and `root` returns to it:
 * root, or the spec's `base` [uid, gid] for the non-root suites (the probe itself still
 * starts as root, so that `as` can switch to any uid; with a non-zero euid the kernel
 * clears the effective capabilities, so the base user is unprivileged). `exec` runs its
 * shell with the real ids set to the effective ones (bash would otherwise drop back to the
 * real uid, root).
 */
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';

export const PROBE_PY = String.raw`
import ctypes, ctypes.util, errno, json, mmap, os, stat, sys, time

libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


class Timespec(ctypes.Structure):
    _fields_ = [('tv_sec', ctypes.c_long), ('tv_nsec', ctypes.c_long)]


libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(Timespec), ctypes.c_int]
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
libc.linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
libc.posix_fallocate.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_long]


def cerr(rc):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


FLAGS = {n: getattr(os, n) for n in dir(os) if n.startswith('O_')}


def flags(s):
    v = 0
    for part in s.split('|'):
        v |= FLAGS[part]
    return v


def ts(spec):
    if spec == 'now':
        return Timespec(0, UTIME_NOW)
    if spec == 'omit':
        return Timespec(0, UTIME_OMIT)
    return Timespec(spec[0], spec[1])


def b(p):
    return os.fsencode(p)


def fmt_stat(st, fields):
    out = []
    for f in fields.split(','):
        if f == 'type':
            out.append('type=' + {stat.S_IFREG: 'file', stat.S_IFDIR: 'dir', stat.S_IFLNK: 'symlink', stat.S_IFIFO: 'fifo',
                                  stat.S_IFCHR: 'chr', stat.S_IFBLK: 'blk', stat.S_IFSOCK: 'sock'}[stat.S_IFMT(st.st_mode)])
        elif f == 'mode':
            out.append('mode=%o' % stat.S_IMODE(st.st_mode))
        elif f == 'rdev':
            out.append('rdev=%d:%d' % (os.major(st.st_rdev), os.minor(st.st_rdev)))
        elif f in ('atime', 'mtime', 'ctime'):
            out.append('%s=%d' % (f, getattr(st, 'st_%s_ns' % f)))
        else:
            out.append('%s=%d' % (f, getattr(st, 'st_' + f)))
    return ' '.join(out)


BASE = [0, 0]


def to_base():
    os.seteuid(0)
    os.setegid(0)
    os.setgroups([])
    if BASE[0]:
        os.setegid(BASE[1])
        os.seteuid(BASE[0])


def real_ids_as_effective():
    os.setregid(os.getegid(), os.getegid())
    os.setreuid(os.geteuid(), os.geteuid())


def run_case(steps, fds, snaps):
    res = []
    for step in steps:
        op, a = step[0], step[1:]
        try:
            r = do(op, a, fds, snaps)
            res.append('ok' if r is None else 'ok:' + str(r))
        except OSError as e:
            res.append('E' + (errno.errorcode.get(e.errno, str(e.errno))))
        except Exception as e:
            res.append('X' + type(e).__name__)
    return res


def do(op, a, fds, snaps):
    if op == 'open':
        fds[a[0]] = os.open(a[1], flags(a[2]), a[3] if len(a) > 3 else 0o644)
    elif op == 'close':
        os.close(fds.pop(a[0]))
    elif op == 'write':
        return os.write(fds[a[0]], a[1].encode())
    elif op == 'pwrite':
        return os.pwrite(fds[a[0]], a[1].encode(), a[2])
    elif op == 'read':
        return os.read(fds[a[0]], a[1]).decode('latin-1')
    elif op == 'pread':
        return os.pread(fds[a[0]], a[1], a[2]).decode('latin-1')
    elif op == 'lseek':
        return os.lseek(fds[a[0]], a[1], {'SET': 0, 'CUR': 1, 'END': 2, 'DATA': 3, 'HOLE': 4}[a[2]])
    elif op == 'lseek_in':
        # SEEK_DATA / SEEK_HOLE whose exact answer depends on the block size: 'in' when it
        # lies in [lo, hi] (what any block size allows), else the offset itself.
        r = os.lseek(fds[a[0]], a[1], {'DATA': 3, 'HOLE': 4}[a[2]])
        return 'in' if a[3] <= r <= a[4] else r
    elif op == 'ftruncate':
        os.ftruncate(fds[a[0]], a[1])
    elif op == 'truncate':
        os.truncate(a[0], a[1])
    elif op == 'fsync':
        os.fsync(fds[a[0]])
    elif op == 'fstat':
        return fmt_stat(os.fstat(fds[a[0]]), a[1])
    elif op == 'mkdir':
        os.mkdir(a[0], a[1] if len(a) > 1 else 0o755)
    elif op == 'rmdir':
        os.rmdir(a[0])
    elif op == 'unlink':
        os.unlink(a[0])
    elif op == 'rename':
        os.rename(a[0], a[1])
    elif op == 'renameat2':
        cerr(libc.renameat2(AT_FDCWD, b(a[0]), AT_FDCWD, b(a[1]), {'NOREPLACE': 1, 'EXCHANGE': 2, 'WHITEOUT': 4}[a[2]]))
    elif op == 'link':
        os.link(a[0], a[1], follow_symlinks=False)
    elif op == 'linkfd':
        # linkat("/proc/self/fd/N", name, AT_SYMLINK_FOLLOW): how an O_TMPFILE file gets a name
        # (os.link calls link(2), which would link the /proc symlink itself: EXDEV).
        cerr(libc.linkat(AT_FDCWD, b('/proc/self/fd/%d' % fds[a[0]]), AT_FDCWD, b(a[1]), AT_SYMLINK_FOLLOW))
    elif op == 'linkempty':
        # linkat(fd, "", AT_FDCWD, name, AT_EMPTY_PATH) (needs CAP_DAC_READ_SEARCH).
        cerr(libc.linkat(fds[a[0]], b'', AT_FDCWD, b(a[1]), AT_EMPTY_PATH))
    elif op == 'symlink':
        os.symlink(a[0], a[1])
    elif op == 'readlink':
        return os.readlink(a[0])
    elif op == 'mkfifo':
        os.mkfifo(a[0], a[1])
    elif op == 'mknod':
        kind = {'chr': stat.S_IFCHR, 'blk': stat.S_IFBLK, 'reg': stat.S_IFREG, 'fifo': stat.S_IFIFO, 'sock': stat.S_IFSOCK}[a[1]]
        os.mknod(a[0], kind | a[2], os.makedev(a[3], a[4]) if len(a) > 3 else 0)
    elif op == 'chmod':
        os.chmod(a[0], a[1])
    elif op == 'chown':
        os.chown(a[0], a[1], a[2])
    elif op == 'lchown':
        os.lchown(a[0], a[1], a[2])
    elif op == 'fchown':
        os.fchown(fds[a[0]], a[1], a[2])
    elif op == 'fchmod':
        os.fchmod(fds[a[0]], a[1])
    elif op == 'utimens':
        arr = (Timespec * 2)(ts(a[1]), ts(a[2]))
        cerr(libc.utimensat(AT_FDCWD, b(a[0]), arr, AT_SYMLINK_NOFOLLOW if len(a) > 3 and a[3] else 0))
    elif op == 'utimens_null':
        cerr(libc.utimensat(AT_FDCWD, b(a[0]), None, 0))
    elif op == 'stat':
        return fmt_stat(os.stat(a[0]), a[1])
    elif op == 'lstat':
        return fmt_stat(os.lstat(a[0]), a[1])
    elif op == 'snap':
        snaps[a[1] if len(a) > 1 else a[0]] = os.lstat(a[0])
    elif op in ('changed', 'achanged'):
        old = snaps[a[1] if len(a) > 1 else a[0]]
        new = os.lstat(a[0])
        out = []
        for f in (('mtime', 'ctime') if op == 'changed' else ('atime',)):
            o, n = getattr(old, 'st_%s_ns' % f), getattr(new, 'st_%s_ns' % f)
            out.append(f[0] + ('>' if n > o else '=' if n == o else '<'))
        return ''.join(out)
    elif op == 'sleep':
        time.sleep(a[0] / 1000)
    elif op == 'as':
        os.setegid(0)
        os.seteuid(0)
        os.setgroups(a[2] if len(a) > 2 else [])
        os.setegid(a[1])
        os.seteuid(a[0])
    elif op == 'root':
        to_base()
    elif op == 'umask':
        os.umask(a[0])
    elif op == 'ls':
        return ','.join(sorted(os.listdir(a[0])))
    elif op == 'exists':
        return os.path.lexists(a[0])
    elif op == 'access':
        return os.access(a[0], a[1], effective_ids=True)
    elif op == 'sameino':
        return os.lstat(a[0]).st_ino == os.lstat(a[1]).st_ino
    elif op == 'getxattr':
        return os.getxattr(a[0], a[1], follow_symlinks=False).hex()
    elif op == 'setxattr':
        os.setxattr(a[0], a[1], bytes.fromhex(a[2]), a[3] if len(a) > 3 else 0, follow_symlinks=False)
    elif op == 'listxattr':
        return ','.join(sorted(os.listxattr(a[0], follow_symlinks=False)))
    elif op == 'removexattr':
        os.removexattr(a[0], a[1], follow_symlinks=False)
    elif op == 'fallocate':
        cerr(libc.fallocate(fds[a[0]], a[1], a[2], a[3]))
    elif op == 'posix_fallocate':
        rc = libc.posix_fallocate(fds[a[0]], a[1], a[2])
        if rc:
            raise OSError(rc, os.strerror(rc))
    elif op == 'mmapwrite':
        fd = fds[a[0]]
        m = mmap.mmap(fd, a[3], mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=a[1])
        m[0:len(a[2])] = a[2].encode()
        if len(a) <= 4 or a[4]:
            m.flush()
        m.close()
    elif op == 'mmapread':
        fd = fds[a[0]]
        m = mmap.mmap(fd, a[2], mmap.MAP_SHARED, mmap.PROT_READ, offset=a[1])
        r = m[0:a[2]].decode('latin-1')
        m.close()
        return r
    elif op == 'blocks':
        return os.lstat(a[0]).st_blocks
    elif op == 'chdir':
        os.chdir(a[0])
    elif op == 'copy_file_range':
        return os.copy_file_range(fds[a[0]], fds[a[1]], a[2], a[3], a[4])
    elif op == 'exec':
        import subprocess
        p = subprocess.run(a[0], shell=True, capture_output=True, text=True, preexec_fn=real_ids_as_effective if BASE[0] else None)
        return '%d:%s' % (p.returncode, p.stdout.strip())
    elif op == 'fsx':
        return fsx(a[0], a[1], a[2], a[3], len(a) > 4 and a[4], len(a) > 5 and a[5])
    elif op == 'parallel_pwrite':
        return parallel_pwrite(a[0], a[1], a[2], a[3])
    elif op == 'parallel_append':
        return parallel_append(a[0], a[1], a[2])
    elif op == 'sha':
        import hashlib
        with open(a[0], 'rb') as fh:
            return hashlib.sha256(fh.read()).hexdigest()[:16]
    else:
        raise Exception('unknown op ' + op)


def fsx(path, seed, nops, maxsize, keep=False, falloc=False):
    # fsx-style: random pwrite / ftruncate / mmap write+msync / pread / reopen against an
    # in-memory model; the first mismatch is the answer, else the content's digest. With
    # falloc, also fallocate (mode 0, KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE) and SEEK_DATA /
    # SEEK_HOLE, whose answers are checked for what every block size allows: SEEK_DATA
    # skips no non-zero byte, SEEK_HOLE lands at the end or where a 4 KiB block reads zeros.
    import hashlib, random
    rnd = random.Random(seed)
    kinds = ['write', 'write', 'write', 'truncate', 'mapwrite', 'read', 'read', 'reopen']
    if falloc:
        kinds += ['falloc', 'punch', 'punch', 'zero', 'seek', 'seek']
    model = bytearray()
    if keep:
        with open(path, 'rb') as fh:
            model = bytearray(fh.read())
    fd = os.open(path, os.O_CREAT | os.O_RDWR | (0 if keep else os.O_TRUNC), 0o644)
    try:
        for i in range(nops):
            kind = rnd.choice(kinds)
            if kind in ('falloc', 'punch', 'zero'):
                off = rnd.randrange(0, maxsize)
                n = rnd.randrange(1, min(maxsize - off, 300000) + 1)
                keep_size = kind == 'punch' or rnd.random() < 0.5
                mode = (1 if keep_size else 0) | {'falloc': 0, 'punch': 2, 'zero': 0x10}[kind]
                cerr(libc.fallocate(fd, mode, off, n))
                if not keep_size and len(model) < off + n:
                    model.extend(bytes(off + n - len(model)))
                if kind != 'falloc' and off < len(model):
                    end = min(len(model), off + n)
                    model[off:end] = bytes(end - off)
            elif kind == 'seek':
                if not model:
                    continue
                at = rnd.randrange(0, len(model))
                try:
                    data = os.lseek(fd, at, 3)
                except OSError as e:
                    if e.errno != errno.ENXIO:
                        raise
                    data = len(model)
                if data < at or any(model[at:data]):
                    return 'mismatch op %d SEEK_DATA from %d gave %d past data' % (i, at, data)
                hole = os.lseek(fd, at, 4)
                block_end = min(len(model), (hole // 4096 + 1) * 4096)
                if hole < at or hole > len(model) or (hole < len(model) and any(model[hole:block_end])):
                    return 'mismatch op %d SEEK_HOLE from %d gave %d, data there' % (i, at, hole)
            elif kind == 'write':
                off = rnd.randrange(0, maxsize)
                n = rnd.randrange(1, min(maxsize - off, 200000) + 1)
                data = rnd.randbytes(n)
                os.pwrite(fd, data, off)
                if len(model) < off:
                    model.extend(bytes(off - len(model)))
                model[off:off + n] = data
            elif kind == 'truncate':
                n = rnd.randrange(0, maxsize)
                os.ftruncate(fd, n)
                if n < len(model):
                    del model[n:]
                else:
                    model.extend(bytes(n - len(model)))
            elif kind == 'mapwrite':
                if len(model) < 4096:
                    continue
                off = rnd.randrange(0, len(model) - 1) & ~4095
                n = rnd.randrange(1, min(len(model) - off, 100000) + 1)
                data = rnd.randbytes(n)
                m = mmap.mmap(fd, n, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=off)
                m[0:n] = data
                m.flush()
                m.close()
                model[off:off + n] = data
            elif kind == 'read':
                off = rnd.randrange(0, maxsize)
                n = rnd.randrange(1, 300000)
                got = os.pread(fd, n, off)
                want = bytes(model[off:off + n])
                if got != want:
                    return 'mismatch op %d read off=%d len=%d got=%d bytes want=%d' % (i, off, n, len(got), len(want))
            else:
                os.close(fd)
                fd = os.open(path, os.O_RDWR)
            if os.fstat(fd).st_size != len(model):
                return 'size mismatch after op %d (%s): %d != %d' % (i, kind, os.fstat(fd).st_size, len(model))
        os.close(fd)
        fd = os.open(path, os.O_RDONLY)
        whole = b''
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            whole += chunk
        if whole != bytes(model):
            return 'final content mismatch'
        return hashlib.sha256(whole).hexdigest()[:16]
    finally:
        os.close(fd)


def in_processes(path, nprocs, work):
    # Empties path, runs work(p) for p in 0..nprocs-1 in forked processes at once, and
    # returns their wait statuses (0 each when work returned, 256 when it raised).
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    os.close(fd)
    pids = []
    for p in range(nprocs):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                work(p)
            except BaseException:
                code = 1
            os._exit(code)
        pids.append(pid)
    return [os.waitpid(pid, 0)[1] for pid in pids]


def parallel_pwrite(path, nprocs, nchunks, chunk):
    # nprocs processes, each with its own descriptor, write interleaved chunks of one file.
    import hashlib
    def work(p):
        fd = os.open(path, os.O_WRONLY)
        for k in range(p, nchunks, nprocs):
            os.pwrite(fd, bytes([65 + p]) * chunk + ('%08d' % k).encode(), k * (chunk + 8))
        os.close(fd)
    codes = in_processes(path, nprocs, work)
    with open(path, 'rb') as fh:
        data = fh.read()
    return '%s size=%d digest=%s' % (codes, len(data), hashlib.sha256(data).hexdigest()[:16])


def parallel_append(path, nprocs, nlines):
    # nprocs processes append whole lines with O_APPEND: no line may be lost or torn.
    def work(p):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        for k in range(nlines):
            os.write(fd, ('proc%d line%06d %s\n' % (p, k, 'x' * (k % 97))).encode())
        os.close(fd)
    codes = in_processes(path, nprocs, work)
    with open(path, 'rb') as fh:
        lines = fh.read().split(b'\n')
    good = sum(1 for l in lines if l.startswith(b'proc') and len(l.split(b' ')) == 3 and len(l.split(b' ')[2]) == int(l.split(b' ')[1][4:]) % 97)
    return '%s lines=%d good=%d' % (codes, len(lines) - 1, good)


def main():
    root = sys.argv[1]
    spec = json.load(open(sys.argv[2]))
    BASE[:] = spec.get('base', [0, 0])
    to_base()
    os.umask(0o022)
    out = {}
    for i, case in enumerate(spec['cases']):
        d = os.path.join(root, case.get('dir') or 'c%03d' % i)
        if not case.get('dir'):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, case.get('dirmode', 0o777))
        os.chdir(d)
        fds, snaps = {}, {}
        try:
            out[case['name']] = run_case(case['steps'], fds, snaps)
        finally:
            to_base()
            os.umask(0o022)
            for fd in fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
    json.dump(out, sys.stdout)


main()
`;

/** Writes the probe into dir; returns its path. */
export function writeProbe(dir: string): string {
  const file = path.join(dir, 'posix-probe.py');
  writeFileSync(file, PROBE_PY, { mode: 0o644 });
  return file;
}
