//! The byte moves themselves: plain Rust over a few libc calls declared by hand (no libc
//! crate). Runs on libuv pool threads; never touches N-API. Offsets and lengths arrive
//! validated (non-negative, at most 2^53 - 1, offset + length too), so they fit `off_t`.
//!
//! Linux only: FICLONERANGE, copy_file_range and fallocate are Linux interfaces.

use std::ffi::{c_int, c_uint, c_ulong, c_void};
use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::os::unix::fs::MetadataExt;

#[repr(C)]
struct Iovec {
    base: *mut c_void,
    len: usize,
}

/// struct file_clone_range (linux/fs.h).
#[repr(C)]
struct FileCloneRange {
    src_fd: i64,
    src_offset: u64,
    src_length: u64,
    dest_offset: u64,
}

extern "C" {
    fn pread64(fd: c_int, buf: *mut c_void, count: usize, offset: i64) -> isize;
    fn pwrite64(fd: c_int, buf: *const c_void, count: usize, offset: i64) -> isize;
    fn preadv64(fd: c_int, iov: *const Iovec, iovcnt: c_int, offset: i64) -> isize;
    fn pwritev64(fd: c_int, iov: *const Iovec, iovcnt: c_int, offset: i64) -> isize;
    fn preadv64v2(fd: c_int, iov: *const Iovec, iovcnt: c_int, offset: i64, flags: c_int) -> isize;
    fn pwritev64v2(fd: c_int, iov: *const Iovec, iovcnt: c_int, offset: i64, flags: c_int) -> isize;
    fn copy_file_range(fd_in: c_int, off_in: *mut i64, fd_out: c_int, off_out: *mut i64, len: usize, flags: c_uint) -> isize;
    fn fallocate64(fd: c_int, mode: c_int, offset: i64, len: i64) -> c_int;
    fn ioctl(fd: c_int, request: c_ulong, ...) -> c_int;
}

/// _IOW(0x94, 13, struct file_clone_range)
const FICLONERANGE: c_ulong = 0x4020_940d;
const FALLOC_FL_KEEP_SIZE: c_int = 0x01;
const FALLOC_FL_PUNCH_HOLE: c_int = 0x02;
/// Linux UIO_MAXIOV: most iovecs one preadv/pwritev accepts.
const IOV_MAX: usize = 1024;
/// preadv2/pwritev2: fail with EAGAIN instead of waiting (page cache only).
const RWF_NOWAIT: c_int = 0x08;
/// Bounce buffer of the pread/pwrite copy path; the TypeScript fallback uses the same.
pub const COPY_CHUNK_BYTES: usize = 1 << 20;
/// Largest single copy_file_range request (the kernel caps it near 2 GiB anyway).
const CFR_CHUNK_BYTES: u64 = 1 << 30;

pub const EINTR: i32 = 4;
pub const EIO: i32 = 5;
pub const EXDEV: i32 = 18;
pub const EINVAL: i32 = 22;
pub const ENOTTY: i32 = 25;
pub const ENOSYS: i32 = 38;
pub const EOPNOTSUPP: i32 = 95;

/// Why an operation failed: a bad request found only once the fds are looked at, or a
/// failed system call (positive errno and the call's name).
#[derive(Debug)]
pub enum OpErr {
    Invalid(String),
    Sys { errno: i32, syscall: &'static str },
}

pub type OpResult<T> = Result<T, OpErr>;

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(EIO)
}

fn sys(syscall: &'static str) -> OpErr {
    OpErr::Sys { errno: last_errno(), syscall }
}

struct Stat {
    dev: u64,
    ino: u64,
    size: u64,
    blksize: u64,
    regular: bool,
}

fn fstat(fd: i32) -> OpResult<Stat> {
    // Borrow the fd as a File without taking ownership: ManuallyDrop never closes it.
    let f = ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    match f.metadata() {
        Ok(m) => Ok(Stat {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            blksize: m.blksize(),
            regular: m.file_type().is_file(),
        }),
        Err(e) => Err(OpErr::Sys { errno: e.raw_os_error().unwrap_or(EIO), syscall: "fstat" }),
    }
}

/// Errnos after which a reflink or copy_file_range attempt falls through to the next method.
fn unsupported(errno: i32) -> bool {
    matches!(errno, EOPNOTSUPP | EXDEV | EINVAL | ENOTTY | ENOSYS)
}

/// FICLONERANGE. Ok(true) when cloned, Ok(false) when this file system or these ranges
/// cannot be cloned (EOPNOTSUPP, EXDEV, EINVAL, ENOTTY, ENOSYS), Err otherwise.
pub fn clone_range(fd_in: i32, off_in: u64, fd_out: i32, off_out: u64, len: u64) -> OpResult<bool> {
    let arg = FileCloneRange { src_fd: fd_in as i64, src_offset: off_in, src_length: len, dest_offset: off_out };
    loop {
        let r = unsafe { ioctl(fd_out, FICLONERANGE, &arg as *const FileCloneRange) };
        if r == 0 {
            return Ok(true);
        }
        let e = last_errno();
        if e == EINTR {
            continue;
        }
        if unsupported(e) {
            return Ok(false);
        }
        return Err(OpErr::Sys { errno: e, syscall: "ioctl(FICLONERANGE)" });
    }
}

fn pread_some(fd: i32, buf: &mut [u8], off: u64) -> OpResult<usize> {
    loop {
        let n = unsafe { pread64(fd, buf.as_mut_ptr() as *mut c_void, buf.len(), off as i64) };
        if n >= 0 {
            return Ok(n as usize);
        }
        if last_errno() != EINTR {
            return Err(sys("pread"));
        }
    }
}

fn pwrite_all(fd: i32, mut buf: &[u8], mut off: u64) -> OpResult<()> {
    while !buf.is_empty() {
        let n = unsafe { pwrite64(fd, buf.as_ptr() as *const c_void, buf.len(), off as i64) };
        if n < 0 {
            if last_errno() == EINTR {
                continue;
            }
            return Err(sys("pwrite"));
        }
        if n == 0 {
            return Err(OpErr::Sys { errno: EIO, syscall: "pwrite" });
        }
        buf = &buf[n as usize..];
        off += n as u64;
    }
    Ok(())
}

/// Copies up to `len` bytes; see BlockIo.copyRange. Order: FICLONERANGE (block-aligned
/// ranges of regular files), copy_file_range, pread/pwrite. Returns bytes copied, short
/// only at EOF of `fd_in`.
pub fn copy_range(fd_in: i32, off_in: u64, fd_out: i32, off_out: u64, len: u64) -> OpResult<u64> {
    let st_in = fstat(fd_in)?;
    let st_out = fstat(fd_out)?;
    if st_in.dev == st_out.dev && st_in.ino == st_out.ino && len > 0 && off_in < off_out + len && off_out < off_in + len {
        return Err(OpErr::Invalid("copyRange: source and destination ranges overlap in one file".into()));
    }
    if len == 0 {
        return Ok(0);
    }

    if st_in.regular && st_out.regular {
        if off_in >= st_in.size {
            return Ok(0);
        }
        let n = len.min(st_in.size - off_in);
        let bs = st_in.blksize.max(st_out.blksize).max(1);
        let aligned = off_in % bs == 0 && off_out % bs == 0 && (n % bs == 0 || off_in + n == st_in.size);
        if aligned && clone_range(fd_in, off_in, fd_out, off_out, n)? {
            return Ok(n);
        }
    }

    let mut done: u64 = 0;
    let mut cin = off_in as i64;
    let mut cout = off_out as i64;
    while done < len {
        let want = (len - done).min(CFR_CHUNK_BYTES) as usize;
        let n = unsafe { copy_file_range(fd_in, &mut cin, fd_out, &mut cout, want, 0) };
        if n < 0 {
            let e = last_errno();
            if e == EINTR {
                continue;
            }
            if unsupported(e) {
                break;
            }
            return Err(OpErr::Sys { errno: e, syscall: "copy_file_range" });
        }
        if n == 0 {
            // EOF, or a file system whose copy_file_range reports 0 without being at EOF
            // (some pseudo file systems): the pread path below settles which.
            break;
        }
        done += n as u64;
    }
    if done == len {
        return Ok(done);
    }

    let mut buf = vec![0u8; ((len - done) as usize).min(COPY_CHUNK_BYTES)];
    while done < len {
        let want = ((len - done) as usize).min(buf.len());
        let n = pread_some(fd_in, &mut buf[..want], off_in + done)?;
        if n == 0 {
            break;
        }
        pwrite_all(fd_out, &buf[..n], off_out + done)?;
        done += n as u64;
    }
    Ok(done)
}

/// One buffer of a gathered read or write: raw JS memory, kept alive by the caller.
pub struct Seg {
    pub ptr: *mut u8,
    pub len: usize,
    pub off: u64,
}

/// Groups consecutive segments whose offsets are contiguous (`off[i+1] == off[i] + len[i]`)
/// into runs, skipping empty segments. Each run is half-open `[begin, end)` in `segs`.
fn runs(segs: &[Seg]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < segs.len() {
        if segs[i].len == 0 {
            i += 1;
            continue;
        }
        let begin = i;
        let mut next_off = segs[i].off + segs[i].len as u64;
        i += 1;
        while i < segs.len() && (segs[i].len == 0 || segs[i].off == next_off) && i - begin < IOV_MAX {
            next_off += segs[i].len as u64;
            i += 1;
        }
        out.push((begin, i));
    }
    out
}

/// Gathered read or write of one run: one preadv/pwritev per call, continued after
/// partial transfers. Reads stop at EOF. Returns bytes moved.
fn vector_run(fd: i32, segs: &[Seg], write: bool) -> OpResult<u64> {
    let mut iov: Vec<Iovec> = segs.iter().filter(|s| s.len > 0).map(|s| Iovec { base: s.ptr as *mut c_void, len: s.len }).collect();
    let mut off = segs[0].off;
    let mut first = 0usize;
    let mut done: u64 = 0;
    while first < iov.len() {
        let rest = &iov[first..];
        let n = unsafe {
            if write {
                pwritev64(fd, rest.as_ptr(), rest.len() as c_int, off as i64)
            } else {
                preadv64(fd, rest.as_ptr(), rest.len() as c_int, off as i64)
            }
        };
        if n < 0 {
            if last_errno() == EINTR {
                continue;
            }
            return Err(sys(if write { "pwritev" } else { "preadv" }));
        }
        if n == 0 {
            if write {
                return Err(OpErr::Sys { errno: EIO, syscall: "pwritev" });
            }
            break; // EOF
        }
        let mut n = n as usize;
        done += n as u64;
        off += n as u64;
        while n > 0 {
            let cur = &mut iov[first];
            if n >= cur.len {
                n -= cur.len;
                first += 1;
            } else {
                cur.base = unsafe { (cur.base as *mut u8).add(n) } as *mut c_void;
                cur.len -= n;
                n = 0;
            }
        }
    }
    Ok(done)
}

/// readBlocks / writeBlocks: each contiguous run of segments in one syscall sequence.
pub fn vector_io(fd: i32, segs: &[Seg], write: bool) -> OpResult<u64> {
    let mut total = 0;
    for (b, e) in runs(segs) {
        total += vector_run(fd, &segs[b..e], write)?;
    }
    Ok(total)
}

/// Largest write done on the calling thread where RWF_NOWAIT is refused (see vector_io_nowait).
const SYNC_WRITE_MAX_BYTES: usize = 256 * 1024;

/// Set once the file system has refused non-blocking writes (EOPNOTSUPP): not tried again.
static WRITE_NOWAIT_UNSUPPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// readBlocks / writeBlocks without waiting: every run in one preadv2/pwritev2 with
/// RWF_NOWAIT, on the calling thread. Some(bytes) when all of it moved at once (data in
/// the page cache, no writeback throttling); None when any part would have waited, came
/// short or failed: the caller then does the whole transfer the blocking way (repeating
/// what moved here is harmless: same bytes, same offsets).
pub fn vector_io_nowait(fd: i32, segs: &[Seg], write: bool) -> Option<u64> {
    use std::sync::atomic::Ordering;
    if write && WRITE_NOWAIT_UNSUPPORTED.load(Ordering::Relaxed) {
        // Buffered writes do not take RWF_NOWAIT here (ext4 before 6.x...): a write to the
        // page cache is still a memcpy, done on the calling thread unless it is large.
        let bytes: usize = segs.iter().map(|s| s.len).sum();
        if bytes > SYNC_WRITE_MAX_BYTES {
            return None;
        }
        return vector_io(fd, segs, true).ok();
    }
    let mut total = 0u64;
    for (b, e) in runs(segs) {
        let run = &segs[b..e];
        let iov: Vec<Iovec> = run.iter().filter(|s| s.len > 0).map(|s| Iovec { base: s.ptr as *mut c_void, len: s.len }).collect();
        let want: usize = iov.iter().map(|v| v.len).sum();
        let n = unsafe {
            if write {
                pwritev64v2(fd, iov.as_ptr(), iov.len() as c_int, run[0].off as i64, RWF_NOWAIT)
            } else {
                preadv64v2(fd, iov.as_ptr(), iov.len() as c_int, run[0].off as i64, RWF_NOWAIT)
            }
        };
        if n < 0 {
            if write && matches!(last_errno(), EOPNOTSUPP | EINVAL | ENOSYS) {
                WRITE_NOWAIT_UNSUPPORTED.store(true, Ordering::Relaxed);
            }
            return None;
        }
        if n as usize != want {
            return None;
        }
        total += want as u64;
    }
    Some(total)
}

/// fallocate(PUNCH_HOLE | KEEP_SIZE). Ok(false) when the file system cannot punch.
/// A zero length punches nothing and only checks the fd.
pub fn punch_hole(fd: i32, off: u64, len: u64) -> OpResult<bool> {
    if len == 0 {
        fstat(fd)?;
        return Ok(true);
    }
    loop {
        let r = unsafe { fallocate64(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off as i64, len as i64) };
        if r == 0 {
            return Ok(true);
        }
        let e = last_errno();
        match e {
            EINTR => continue,
            EOPNOTSUPP | ENOSYS => return Ok(false),
            _ => return Err(OpErr::Sys { errno: e, syscall: "fallocate" }),
        }
    }
}
