//! mount(2) of a FUSE file system whose /dev/fuse descriptor this process holds, so a
//! root mount needs no mount(8) process (fork, exec, libmount: tens of ms on a small VM).
//! The kernel answers at once: FUSE's INIT is sent after mount(2) returns, so calling it on
//! the JS thread cannot wait on the thread that will answer INIT. The caller makes sure the
//! target's path does not pass through a mount this process serves (a LOOKUP there would
//! wait for this thread).
//!
//! Contract: mount_fs(source, target, fstype, flags, data) -> Ok(0) | Err(errno); each
//! string one NUL-terminated byte slice without other NULs (checked by the caller).

use std::ffi::{c_char, c_int, c_ulong, c_void};

extern "C" {
    fn mount(source: *const c_char, target: *const c_char, fstype: *const c_char, flags: c_ulong, data: *const c_void) -> c_int;
    fn __errno_location() -> *mut c_int;
}

/// True when `s` is a C string: ends with its only NUL.
pub fn is_c_string(s: &[u8]) -> bool {
    !s.is_empty() && s[s.len() - 1] == 0 && !s[..s.len() - 1].contains(&0)
}

pub fn mount_fs(source: &[u8], target: &[u8], fstype: &[u8], flags: u64, data: &[u8]) -> Result<i32, i32> {
    // SAFETY: every slice is a C string (checked by the caller) that outlives the call.
    let rc = unsafe {
        mount(source.as_ptr() as *const c_char, target.as_ptr() as *const c_char, fstype.as_ptr() as *const c_char, flags as c_ulong, data.as_ptr() as *const c_void)
    };
    if rc == 0 {
        Ok(0)
    } else {
        // SAFETY: errno is thread-local and valid right after the failed call.
        Err(unsafe { *__errno_location() })
    }
}
