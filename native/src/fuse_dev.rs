//! The FUSE device side of the kernel transport (src/fs/kernel-session.ts): watching a
//! non-blocking `/dev/fuse` descriptor on Node's own event loop, and reading/writing it
//! without exceptions.
//!
//! Why on the event loop: a request then costs one epoll wake-up and two system calls on
//! the JS thread, with no thread hand-off (libfuse 2 via fuse-native needed four), and no
//! libuv pool thread is parked in a blocking read (several mounts in one process would
//! otherwise exhaust the pool and deadlock their own file I/O).
//!
//! Contract:
//!   fuseWatch(fd, onReadable, spinMicros) -> id
//!                                     calls onReadable() on the JS thread whenever fd is
//!                                     readable (or in error); level-triggered, so the
//!                                     callback reads until EAGAIN or returns early.
//!   fuseUnwatch(id)                   stops and frees the watcher (idempotent).
//!   fuseRead(fd, buf) -> n | -errno   one read(2); never throws for a system error.
//!   fuseWrite(fd, buf) -> n | -errno  one write(2): one whole reply.
//! An exception thrown by onReadable is reported as an uncaught exception.
//!
//! Busy polling: after each call of onReadable (and the microtasks it queued), spinMicros()
//! says how many microseconds to keep watching the device on this thread before going
//! back to the event loop (0: none; JS answers 0 while it has requests in flight). On small
//! VMs waking an idle vCPU costs tens of microseconds; a request that arrives within the
//! window is served without that wake-up.

use crate::napi::*;
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::ptr::null_mut;
use std::sync::Mutex;

/// Bytes reserved for a `uv_poll_t` (about 160 on 64-bit Linux libuv 1.x); libuv only
/// writes within its own size, so a larger zeroed block is safe.
const UV_POLL_BYTES: usize = 512;
const UV_READABLE: c_int = 1;

type UvPollCb = unsafe extern "C" fn(handle: *mut c_void, status: c_int, events: c_int);
type UvCloseCb = unsafe extern "C" fn(handle: *mut c_void);

extern "C" {
    fn napi_get_uv_event_loop(env: napi_env, uv_loop: *mut *mut c_void) -> napi_status;
    fn uv_poll_init(uv_loop: *mut c_void, handle: *mut c_void, fd: c_int) -> c_int;
    fn uv_poll_start(handle: *mut c_void, events: c_int, cb: UvPollCb) -> c_int;
    fn uv_poll_stop(handle: *mut c_void) -> c_int;
    fn uv_close(handle: *mut c_void, cb: UvCloseCb);
    fn read(fd: c_int, buf: *mut c_void, count: usize) -> isize;
    fn write(fd: c_int, buf: *const c_void, count: usize) -> isize;
    fn poll(fds: *mut PollFd, nfds: u64, timeout: c_int) -> c_int;
    fn __errno_location() -> *mut c_int;
}

#[repr(C)]
struct PollFd {
    fd: c_int,
    events: i16,
    revents: i16,
}
const POLLIN: i16 = 1;

/// Longest busy-poll window accepted from onReadable.
const MAX_SPIN_MICROS: f64 = 1000.0;

/// True when fd becomes readable (or errors) within `micros`, polling without sleeping.
fn spin_until_readable(fd: c_int, micros: f64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_nanos((micros * 1000.0) as u64);
    loop {
        let mut p = PollFd { fd, events: POLLIN, revents: 0 };
        if unsafe { poll(&mut p, 1, 0) } > 0 && p.revents != 0 {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::hint::spin_loop();
    }
}

/// One watcher. The uv handle's first field (`data`) points back here.
struct Watcher {
    fd: c_int,
    /// Set by unwatch (possibly from inside the callback); the handle closes later.
    stopped: std::cell::Cell<bool>,
    env: napi_env,
    callback: napi_ref,
    spin: napi_ref,
    context: napi_async_context,
    handle: *mut u64,
}

struct Registry {
    next: u32,
    live: HashMap<u32, usize>,
}

// Touched only on the JS thread; the Mutex just makes the static well-formed.
static WATCHERS: Mutex<Option<Registry>> = Mutex::new(None);

fn errno() -> i32 {
    unsafe { *__errno_location() }
}

unsafe extern "C" fn on_poll(handle: *mut c_void, _status: c_int, _events: c_int) {
    let w = *(handle as *mut *mut Watcher);
    if w.is_null() {
        return;
    }
    let w = &*w;
    let env = w.env;
    let mut scope = null_mut();
    if napi_open_handle_scope(env, &mut scope) != NAPI_OK {
        return;
    }
    loop {
        if call(env, w, w.callback).is_none() {
            break;
        }
        // Asked after the microtasks of onReadable ran, so its replies are counted as sent.
        let mut spin = 0.0f64;
        match call(env, w, w.spin) {
            Some(v) if !v.is_null() && napi_get_value_double(env, v, &mut spin) == NAPI_OK => {}
            _ => break,
        }
        // The callback may have stopped the watcher (session ended): never spin on a dead fd.
        if !(spin > 0.0) || w.stopped.get() || !spin_until_readable(w.fd, spin.min(MAX_SPIN_MICROS)) {
            break;
        }
    }
    napi_close_handle_scope(env, scope);
}

/// Calls `f` with no arguments through napi_make_callback, which runs the microtask queue
/// afterwards, as any libuv callback into JS must (the receiver must be an object: the
/// global). A thrown exception becomes an uncaught exception and yields None.
unsafe fn call(env: napi_env, w: &Watcher, f: napi_ref) -> Option<napi_value> {
    let mut func = null_mut();
    let mut recv = null_mut();
    if napi_get_reference_value(env, f, &mut func) != NAPI_OK || napi_get_global(env, &mut recv) != NAPI_OK {
        return None;
    }
    let mut result = null_mut();
    if napi_make_callback(env, w.context, recv, func, 0, null_mut(), &mut result) == NAPI_OK {
        return Some(result);
    }
    let mut pending = false;
    napi_is_exception_pending(env, &mut pending);
    if pending {
        let mut exc = null_mut();
        if napi_get_and_clear_last_exception(env, &mut exc) == NAPI_OK {
            napi_fatal_exception(env, exc);
        }
    }
    None
}

unsafe extern "C" fn on_close(handle: *mut c_void) {
    let w = *(handle as *mut *mut Watcher);
    if !w.is_null() {
        let w = Box::from_raw(w);
        unref(w.env, w.callback);
        unref(w.env, w.spin);
        napi_async_destroy(w.env, w.context);
    }
    drop(Box::from_raw(handle as *mut [u64; UV_POLL_BYTES / 8]));
}

pub unsafe fn watch(env: napi_env, fd: i32, callback: napi_value, spin: napi_value) -> JsResult<u32> {
    let mut uv_loop = null_mut();
    if napi_get_uv_event_loop(env, &mut uv_loop) != NAPI_OK || uv_loop.is_null() {
        return Err(JsErr::Internal("napi_get_uv_event_loop failed".into()));
    }
    let handle = Box::into_raw(Box::new([0u64; UV_POLL_BYTES / 8])) as *mut u64;
    let rc = uv_poll_init(uv_loop, handle as *mut c_void, fd);
    if rc != 0 {
        drop(Box::from_raw(handle as *mut [u64; UV_POLL_BYTES / 8]));
        return Err(JsErr::Invalid(format!("uv_poll_init on fd {fd} failed ({rc})")));
    }
    let name = string(env, "dmfs:fuse")?;
    let mut context = null_mut();
    let callback = reference(env, callback)?;
    let spin = match reference(env, spin) {
        Ok(r) => r,
        Err(e) => {
            unref(env, callback);
            uv_close(handle as *mut c_void, on_close);
            return Err(e);
        }
    };
    let mut resource = null_mut();
    napi_create_object(env, &mut resource);
    if napi_async_init(env, resource, name, &mut context) != NAPI_OK {
        unref(env, callback);
        unref(env, spin);
        uv_close(handle as *mut c_void, on_close);
        return Err(JsErr::Internal("napi_async_init failed".into()));
    }
    let w = Box::into_raw(Box::new(Watcher { fd, stopped: std::cell::Cell::new(false), env, callback, spin, context, handle }));
    *(handle as *mut *mut Watcher) = w;
    let rc = uv_poll_start(handle as *mut c_void, UV_READABLE, on_poll);
    if rc != 0 {
        uv_close(handle as *mut c_void, on_close);
        return Err(JsErr::Invalid(format!("uv_poll_start on fd {fd} failed ({rc})")));
    }
    let mut guard = WATCHERS.lock().unwrap_or_else(|e| e.into_inner());
    let reg = guard.get_or_insert_with(|| Registry { next: 1, live: HashMap::new() });
    let id = reg.next;
    reg.next = reg.next.wrapping_add(1).max(1);
    reg.live.insert(id, handle as usize);
    Ok(id)
}

pub unsafe fn unwatch(id: u32) {
    let handle = {
        let mut guard = WATCHERS.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_mut().and_then(|reg| reg.live.remove(&id))
    };
    if let Some(h) = handle {
        let h = h as *mut c_void;
        let w = *(h as *mut *mut Watcher);
        if !w.is_null() {
            (*w).stopped.set(true);
        }
        uv_poll_stop(h);
        uv_close(h, on_close);
    }
}

pub fn read_once(fd: i32, buf: &mut [u8]) -> i64 {
    let n = unsafe { read(fd, buf.as_mut_ptr() as *mut c_void, buf.len()) };
    if n < 0 {
        -(errno() as i64)
    } else {
        n as i64
    }
}

pub fn write_once(fd: i32, buf: &[u8]) -> i64 {
    let n = unsafe { write(fd, buf.as_ptr() as *const c_void, buf.len()) };
    if n < 0 {
        -(errno() as i64)
    } else {
        n as i64
    }
}
