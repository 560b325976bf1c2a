//! Whole-file advisory locks (flock(2)) for the metadata open gate (src/pool/open-gate.ts):
//! every metadata commit holds a shared lock, every opening of the LMDB environment an
//! exclusive one, so no process opens the environment while another one commits.
//!
//! Blocking on purpose: a commit waits at most for one environment open (milliseconds), and
//! the callers are synchronous code on the JS thread. EINTR is retried here.

use std::ffi::c_int;

extern "C" {
    fn flock(fd: c_int, operation: c_int) -> c_int;
}

const LOCK_SH: c_int = 1;
const LOCK_EX: c_int = 2;
const LOCK_UN: c_int = 8;
const EINTR: i32 = 4;

/// The lock `fd` should hold: 0 none, 1 shared, 2 exclusive.
pub fn set(fd: c_int, mode: u32) -> Result<(), i32> {
    let op = match mode {
        0 => LOCK_UN,
        1 => LOCK_SH,
        2 => LOCK_EX,
        _ => return Err(22), // EINVAL
    };
    loop {
        if unsafe { flock(fd, op) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error().raw_os_error().unwrap_or(5);
        if err != EINTR {
            return Err(err);
        }
    }
}
