//! Whole-file advisory locks (flock(2)) for the metadata open gate (src/pool/open-gate.ts):
//! every metadata commit holds a shared lock, every opening of the LMDB environment an
//! exclusive one, so no process opens the environment while another one commits.
//!
//! Never blocks: the caller (synchronous code on the JS thread) retries EWOULDBLOCK with
//! short sleeps up to a deadline, so a process stopped while it holds the lock (SIGSTOP
//! during an open) turns into a clear error instead of a hang. EINTR is retried here.

use std::ffi::c_int;

extern "C" {
    fn flock(fd: c_int, operation: c_int) -> c_int;
}

const LOCK_SH: c_int = 1;
const LOCK_EX: c_int = 2;
const LOCK_NB: c_int = 4;
const LOCK_UN: c_int = 8;
const EINTR: i32 = 4;

/// The lock `fd` should hold: 0 none, 1 shared, 2 exclusive. Err(EWOULDBLOCK) when another
/// open file holds a conflicting lock.
pub fn set(fd: c_int, mode: u32) -> Result<(), i32> {
    let op = match mode {
        0 => LOCK_UN,
        1 => LOCK_SH | LOCK_NB,
        2 => LOCK_EX | LOCK_NB,
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
