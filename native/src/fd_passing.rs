//! Passing a file descriptor between processes over a unix socket (SCM_RIGHTS), which
//! Node cannot do. The kernel FUSE transport needs it to mount as a non-root user: the
//! setuid `fusermount3` opens /dev/fuse, mounts it and sends the descriptor back over a
//! socket it inherited (src/fs/fusermount.ts drives the protocol; this side only moves the
//! descriptor).
//!
//! Contract (all synchronous, on the JS thread; none blocks, none throws for a system error):
//!   fdSocketPair(out) -> 0 | -errno   socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC): the
//!                                     two descriptors as little-endian i32 at out[0..4] and
//!                                     out[4..8] (out: a Buffer of at least 8 bytes).
//!   fdReceive(sock) -> fd | -errno    one recvmsg(MSG_DONTWAIT | MSG_CMSG_CLOEXEC): the one
//!                                     descriptor the message carried (close-on-exec).
//!                                     -EAGAIN: nothing has arrived yet. -ENOMSG: the peer
//!                                     closed without sending, or sent bytes without a
//!                                     descriptor. -EBADMSG: more than one descriptor, or
//!                                     the control data was truncated; every descriptor
//!                                     that did arrive is closed, so none leaks.
//!   fdSetNonblocking(fd) -> 0 | -errno  adds O_NONBLOCK to the open file's status flags.
//!   fdTakeFrom(pid, fd) -> fd | -errno  pidfd_getfd: a close-on-exec duplicate of another
//!                                     process's descriptor (the daemon's supervisor).
//!
//! Descriptors are closed with Node's fs.closeSync, which works on any descriptor.
//!
//! Layouts are glibc's on 64-bit Linux (x86_64; aarch64 is the same): checked at compile
//! time below, since a wrong layout would have the kernel write outside the buffers.

use std::ffi::{c_int, c_uint, c_void};
use std::mem::size_of;

#[repr(C)]
struct Iovec {
    base: *mut c_void,
    len: usize,
}

/// struct msghdr (sys/socket.h). msg_namelen is a socklen_t (u32), padded to 8.
#[repr(C)]
struct MsgHdr {
    name: *mut c_void,
    namelen: c_uint,
    iov: *mut Iovec,
    iovlen: usize,
    control: *mut c_void,
    controllen: usize,
    flags: c_int,
}

/// struct cmsghdr (sys/socket.h); the data follows at CMSG_ALIGN(size_of::<CmsgHdr>()).
#[repr(C)]
struct CmsgHdr {
    len: usize,
    level: c_int,
    kind: c_int,
}

const _: () = assert!(size_of::<usize>() == 8, "fd_passing.rs declares 64-bit Linux layouts");
const _: () = assert!(size_of::<MsgHdr>() == 56);
const _: () = assert!(size_of::<CmsgHdr>() == 16);
const _: () = assert!(size_of::<Iovec>() == 16);

extern "C" {
    fn socketpair(domain: c_int, kind: c_int, protocol: c_int, sv: *mut c_int) -> c_int;
    fn recvmsg(sockfd: c_int, msg: *mut MsgHdr, flags: c_int) -> isize;
    fn close(fd: c_int) -> c_int;
    fn fcntl(fd: c_int, cmd: c_int, ...) -> c_int;
    fn __errno_location() -> *mut c_int;
}

const AF_UNIX: c_int = 1;
const SOCK_STREAM: c_int = 1;
const SOCK_CLOEXEC: c_int = 0o2000000;
const SOL_SOCKET: c_int = 1;
const SCM_RIGHTS: c_int = 1;
const MSG_CTRUNC: c_int = 0x08;
const MSG_DONTWAIT: c_int = 0x40;
const MSG_CMSG_CLOEXEC: c_int = 0x4000_0000;
const F_GETFL: c_int = 3;
const F_SETFL: c_int = 4;
const O_NONBLOCK: c_int = 0o4000;

const EINTR: i32 = 4;
const ENOMSG: i32 = 42;
const EBADMSG: i32 = 74;

/// Descriptors one message may bring before it counts as truncated: one is expected; room
/// for a few more lets the extra ones be received (and closed) instead of dropped unseen.
const MAX_FDS: usize = 4;

/// CMSG_ALIGN: round up to the alignment of size_t.
const fn cmsg_align(len: usize) -> usize {
    (len + size_of::<usize>() - 1) & !(size_of::<usize>() - 1)
}

/// CMSG_LEN(n): header plus n data bytes (the value of cmsg_len).
const fn cmsg_len(n: usize) -> usize {
    cmsg_align(size_of::<CmsgHdr>()) + n
}

/// CMSG_SPACE(n): what one control message of n data bytes takes, padding included.
const fn cmsg_space(n: usize) -> usize {
    cmsg_align(size_of::<CmsgHdr>()) + cmsg_align(n)
}

const CONTROL_BYTES: usize = cmsg_space(MAX_FDS * size_of::<c_int>());

// glibc's values on 64-bit Linux: CMSG_LEN(4) == 20, CMSG_SPACE(4) == 24, CMSG_SPACE(16) == 32.
const _: () = assert!(cmsg_len(4) == 20 && cmsg_space(4) == 24 && cmsg_space(16) == 32);
const _: () = assert!(CONTROL_BYTES % 8 == 0);

fn errno() -> i32 {
    unsafe { *__errno_location() }
}

/// socketpair(2) of two close-on-exec stream sockets.
pub fn socket_pair() -> Result<[i32; 2], i32> {
    let mut sv = [-1 as c_int; 2];
    if unsafe { socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv.as_mut_ptr()) } != 0 {
        return Err(errno());
    }
    Ok(sv)
}

/// The descriptors of every SCM_RIGHTS message in the first `used` bytes of `control`
/// (msg_controllen after recvmsg). Walks them as CMSG_FIRSTHDR/CMSG_NXTHDR do and stops at
/// a malformed header; other message kinds are skipped.
fn rights_in(control: &[u8], used: usize) -> Vec<i32> {
    let mut fds = Vec::new();
    let end = used.min(control.len());
    let mut at = 0usize;
    while at + size_of::<CmsgHdr>() <= end {
        // SAFETY: in bounds (checked above); the buffer is 8-byte aligned and `at` stays a
        // multiple of 8 (cmsg_align), so the header read is aligned.
        let hdr = unsafe { &*(control.as_ptr().add(at) as *const CmsgHdr) };
        if hdr.len < size_of::<CmsgHdr>() || at + hdr.len > end {
            break;
        }
        if hdr.level == SOL_SOCKET && hdr.kind == SCM_RIGHTS {
            let data = at + cmsg_len(0);
            let n = (hdr.len - cmsg_len(0)) / size_of::<c_int>();
            for i in 0..n {
                let p = data + i * size_of::<c_int>();
                fds.push(i32::from_ne_bytes([control[p], control[p + 1], control[p + 2], control[p + 3]]));
            }
        }
        at += cmsg_align(hdr.len);
    }
    fds
}

/// One recvmsg without waiting: the single descriptor it carried (see the contract above).
pub fn receive(sock: i32) -> Result<i32, i32> {
    let mut byte = [0u8; 1];
    let mut iov = Iovec { base: byte.as_mut_ptr() as *mut c_void, len: 1 };
    // u64 words: the control buffer must be aligned for cmsghdr.
    let mut control = [0u64; CONTROL_BYTES / 8];
    let mut msg = MsgHdr {
        name: std::ptr::null_mut(),
        namelen: 0,
        iov: &mut iov,
        iovlen: 1,
        control: control.as_mut_ptr() as *mut c_void,
        controllen: CONTROL_BYTES,
        flags: 0,
    };
    let n = loop {
        let n = unsafe { recvmsg(sock, &mut msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) };
        if n >= 0 || errno() != EINTR {
            break n;
        }
    };
    if n < 0 {
        return Err(errno());
    }
    // SAFETY: a view of the same u64 array as bytes.
    let bytes = unsafe { std::slice::from_raw_parts(control.as_ptr() as *const u8, CONTROL_BYTES) };
    let fds = rights_in(bytes, msg.controllen);
    if fds.len() == 1 && msg.flags & MSG_CTRUNC == 0 {
        return Ok(fds[0]);
    }
    for &fd in &fds {
        unsafe { close(fd) };
    }
    Err(if fds.is_empty() && msg.flags & MSG_CTRUNC == 0 { ENOMSG } else { EBADMSG })
}

/// Adds O_NONBLOCK to the file status flags of `fd`.
pub fn set_nonblocking(fd: i32) -> Result<(), i32> {
    let flags = unsafe { fcntl(fd, F_GETFL) };
    if flags < 0 {
        return Err(errno());
    }
    if flags & O_NONBLOCK == 0 && unsafe { fcntl(fd, F_SETFL, flags | O_NONBLOCK) } < 0 {
        return Err(errno());
    }
    Ok(())
}

extern "C" {
    fn syscall(number: std::ffi::c_long, ...) -> std::ffi::c_long;
}

/// pidfd_open(2) and pidfd_getfd(2): the same numbers on x86_64 and aarch64 (the unified table).
const SYS_PIDFD_OPEN: std::ffi::c_long = 434;
const SYS_PIDFD_GETFD: std::ffi::c_long = 438;

/// A duplicate, in this process, of descriptor `fd` of process `pid` (pidfd_getfd: same
/// open file description, close-on-exec), for the daemon's supervisor to keep a worker's
/// /dev/fuse descriptors alive across the worker's death. Needs ptrace rights over `pid`
/// (root, or the same user under the Yama scope). Linux 5.6 and later.
pub fn take_from(pid: i32, fd: i32) -> Result<i32, i32> {
    let pidfd = unsafe { syscall(SYS_PIDFD_OPEN, pid as std::ffi::c_long, 0 as std::ffi::c_long) };
    if pidfd < 0 {
        return Err(errno());
    }
    let got = unsafe { syscall(SYS_PIDFD_GETFD, pidfd, fd as std::ffi::c_long, 0 as std::ffi::c_long) };
    let err = if got < 0 { errno() } else { 0 };
    unsafe { close(pidfd as c_int) };
    if got < 0 {
        Err(err)
    } else {
        Ok(got as i32)
    }
}
