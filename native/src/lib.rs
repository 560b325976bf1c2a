//! dmfs native block path: a Node-API addon that only moves bytes between file
//! descriptors. Offsets and lengths in, counts out; it knows nothing of pools or layers.
//! `src/native/index.ts` wraps it into the `BlockIo` interface (src/native/block-io.ts).
//!
//! Exports (raw; the TypeScript wrapper turns errors into DmfsError):
//!   copyRange(fdIn, inOff, fdOut, outOff, len)   -> Promise<number>
//!   cloneRange(fdIn, inOff, fdOut, outOff, len)  -> Promise<boolean>  (FICLONERANGE only)
//!   readBlocks(fd, buffers[], offsets[])         -> Promise<number>
//!   writeBlocks(fd, buffers[], offsets[])        -> Promise<number>
//!   punchHole(fd, off, len)                      -> Promise<boolean>
//!   crc32c(buf, seed?)                           -> number  (sync)
//!   crc32cTable(buf, seed?)                      -> number  (sync, software path only)
//!   readBlocksNowait(fd, buffers[], offsets[], mayBlock?) / writeBlocksNowait(fd, buffers[], offsets[])
//!                                                -> n | -1  (sync: page cache only, or waiting when mayBlock)
//!   fuseWatch(fd, onReadable, spinMicros) -> id, fuseUnwatch(id)  (see fuse_dev.rs)
//!   fuseRead(fd, buf) -> n | -errno, fuseWrite(fd, buf) -> n | -errno  (sync, never throw for errno)
//!   fdSocketPair(out) -> 0 | -errno, fdReceive(sock) -> fd | -errno, fdSetNonblocking(fd) -> 0 | -errno
//!                                                (sync, never throw for errno; see fd_passing.rs)
//!   fuseMount(source, target, fstype, flags, data) -> 0 | -errno  (sync; Buffers holding C
//!                                                strings; see fuse_mount.rs). Added within ABI 3:
//!                                                callers check that it exists.
//!   fdTakeFrom(pid, fd) -> fd | -errno           (sync; pidfd_getfd, see fd_passing.rs; same)
//!   abiVersion: number, crc32cImpl: 'sse4.2' | 'table'
//!
//! Errors: bad arguments throw synchronously an Error with code 'INVALID'. A failed system
//! call rejects with an Error with code 'ERRNO', `errno` (positive) and `syscall`. A bug
//! (panic) becomes an Error with code 'INTERNAL'; no panic ever unwinds into Node.
//!
//! Concurrency: the async functions run on libuv pool threads. The Buffers of
//! readBlocks/writeBlocks are held by N-API references until the work completes; the
//! caller must not touch their bytes meanwhile (as with fs.read).

mod crc32c;
mod fd_passing;
mod file_lock;
mod fuse_dev;
mod fuse_mount;
mod napi;
mod sys;

use napi::*;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null_mut;
use sys::{OpErr, OpResult, Seg};

/// Bumped when the exports change incompatibly; the loader refuses other versions.
const ABI_VERSION: u32 = 4;

/// Largest fd accepted (fds are C ints).
const MAX_FD: u64 = i32::MAX as u64;

// ---------------------------------------------------------------------------------------
// Entry-point guard

/// Runs one JS entry point: arguments errors are thrown, panics are caught and thrown
/// as INTERNAL errors, never unwound across the FFI boundary.
unsafe fn entry<const N: usize>(env: napi_env, info: napi_callback_info, f: impl FnOnce([napi_value; N]) -> JsResult<napi_value>) -> napi_value {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let argv = args::<N>(env, info)?;
        f(argv)
    }));
    match r {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            throw(env, e);
            null_mut()
        }
        Err(p) => {
            throw(env, JsErr::Internal(format!("panic in dmfs native addon: {}", panic_message(&p))));
            null_mut()
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

// ---------------------------------------------------------------------------------------
// Async jobs

enum Op {
    Copy { fd_in: i32, off_in: u64, fd_out: i32, off_out: u64, len: u64 },
    Clone { fd_in: i32, off_in: u64, fd_out: i32, off_out: u64, len: u64 },
    Vector { fd: i32, segs: Vec<Seg>, write: bool },
    Punch { fd: i32, off: u64, len: u64 },
}

enum Value {
    Number(u64),
    Bool(bool),
}

/// One queued operation. Owned by the async work from `start` until `complete` frees it.
struct Job {
    op: Op,
    outcome: Option<Result<OpResult<Value>, String>>,
    deferred: napi_deferred,
    work: napi_async_work,
    /// Strong references to the Buffers whose memory `op` points into.
    refs: Vec<napi_ref>,
}

fn run(op: &Op) -> OpResult<Value> {
    match *op {
        Op::Copy { fd_in, off_in, fd_out, off_out, len } => sys::copy_range(fd_in, off_in, fd_out, off_out, len).map(Value::Number),
        Op::Clone { fd_in, off_in, fd_out, off_out, len } => sys::clone_range(fd_in, off_in, fd_out, off_out, len).map(Value::Bool),
        Op::Vector { fd, ref segs, write } => sys::vector_io(fd, segs, write).map(Value::Number),
        Op::Punch { fd, off, len } => sys::punch_hole(fd, off, len).map(Value::Bool),
    }
}

/// Pool thread: no N-API calls here.
unsafe extern "C" fn execute(_env: napi_env, data: *mut c_void) {
    let job = &mut *(data as *mut Job);
    let r = catch_unwind(AssertUnwindSafe(|| run(&job.op)));
    job.outcome = Some(r.map_err(|p| panic_message(&p)));
}

unsafe fn rejection(env: napi_env, outcome: Result<OpResult<Value>, String>) -> JsResult<Result<napi_value, napi_value>> {
    Ok(match outcome {
        Ok(Ok(Value::Number(n))) => Ok(double(env, n as f64)?),
        Ok(Ok(Value::Bool(b))) => Ok(boolean(env, b)?),
        Ok(Err(OpErr::Invalid(m))) => Err(error(env, "INVALID", &m)?),
        Ok(Err(OpErr::Sys { errno, syscall })) => {
            let e = error(env, "ERRNO", &format!("{syscall} failed: errno {errno}"))?;
            set_property(env, e, c"errno", int32(env, errno)?)?;
            set_property(env, e, c"syscall", string(env, syscall)?)?;
            Err(e)
        }
        Err(m) => Err(error(env, "INTERNAL", &format!("panic in dmfs native addon: {m}"))?),
    })
}

/// JS thread: settle the promise, drop the references, free the job.
unsafe extern "C" fn complete(env: napi_env, status: napi_status, data: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let job = Box::from_raw(data as *mut Job);
        let outcome = if status == NAPI_CANCELLED {
            Err("async work cancelled".to_string())
        } else {
            job.outcome.unwrap_or_else(|| Err("async work did not run".to_string()))
        };
        match rejection(env, outcome) {
            Ok(settled) => settle(env, job.deferred, settled),
            Err(_) => {
                // Creating the result failed (out of memory or a pending exception);
                // reject with whatever we can make so the promise never hangs.
                if let Ok(e) = error(env, "INTERNAL", "could not create the result") {
                    settle(env, job.deferred, Err(e));
                }
            }
        }
        for r in job.refs {
            unref(env, r);
        }
        delete_work(env, job.work);
    }));
}

/// Queues `op` and returns its promise. On failure, releases `refs` and throws.
unsafe fn start(env: napi_env, name: &str, op: Op, refs: Vec<napi_ref>) -> JsResult<napi_value> {
    let release = |refs: &Vec<napi_ref>| {
        for &r in refs {
            unref(env, r);
        }
    };
    let (deferred, promise) = match napi::promise(env) {
        Ok(p) => p,
        Err(e) => {
            release(&refs);
            return Err(e);
        }
    };
    let job = Box::into_raw(Box::new(Job { op, outcome: None, deferred, work: null_mut(), refs }));
    match queue_work(env, name, execute, complete, job as *mut c_void) {
        Ok(w) => {
            (*job).work = w;
            Ok(promise)
        }
        Err(e) => {
            let job = Box::from_raw(job);
            release(&job.refs);
            if let Ok(err) = napi::error(env, "INTERNAL", "could not queue async work") {
                settle(env, job.deferred, Err(err));
            }
            Err(e)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Argument checks (the same rules as src/native/fallback.ts)

unsafe fn fd_arg(env: napi_env, v: napi_value, name: &str) -> JsResult<i32> {
    Ok(uint_arg(env, v, name, MAX_FD)? as i32)
}

fn check_end(name: &str, off: u64, len: u64) -> JsResult<()> {
    if off + len > MAX_SAFE_INTEGER {
        return Err(JsErr::Invalid(format!("{name} + length exceeds 2^53 - 1")));
    }
    Ok(())
}

unsafe fn seed_arg(env: napi_env, v: napi_value) -> JsResult<u32> {
    if is_undefined(env, v)? {
        return Ok(0);
    }
    Ok(uint_arg(env, v, "seed", u32::MAX as u64)? as u32)
}

type Range5 = (i32, u64, i32, u64, u64);

unsafe fn range_args(env: napi_env, a: &[napi_value; 5]) -> JsResult<Range5> {
    let fd_in = fd_arg(env, a[0], "fdIn")?;
    let off_in = uint_arg(env, a[1], "inOffsetBytes", MAX_SAFE_INTEGER)?;
    let fd_out = fd_arg(env, a[2], "fdOut")?;
    let off_out = uint_arg(env, a[3], "outOffsetBytes", MAX_SAFE_INTEGER)?;
    let len = uint_arg(env, a[4], "lengthBytes", MAX_SAFE_INTEGER)?;
    check_end("inOffsetBytes", off_in, len)?;
    check_end("outOffsetBytes", off_out, len)?;
    Ok((fd_in, off_in, fd_out, off_out, len))
}

// ---------------------------------------------------------------------------------------
// Exports

unsafe extern "C" fn js_copy_range(env: napi_env, info: napi_callback_info) -> napi_value {
    entry::<5>(env, info, |a| {
        let (fd_in, off_in, fd_out, off_out, len) = range_args(env, &a)?;
        start(env, "dmfs.copyRange", Op::Copy { fd_in, off_in, fd_out, off_out, len }, Vec::new())
    })
}

unsafe extern "C" fn js_clone_range(env: napi_env, info: napi_callback_info) -> napi_value {
    entry::<5>(env, info, |a| {
        let (fd_in, off_in, fd_out, off_out, len) = range_args(env, &a)?;
        start(env, "dmfs.cloneRange", Op::Clone { fd_in, off_in, fd_out, off_out, len }, Vec::new())
    })
}

unsafe fn segments(env: napi_env, a: &[napi_value; 3]) -> JsResult<(i32, Vec<napi_value>, Vec<Seg>)> {
    let fd = fd_arg(env, a[0], "fd")?;
    let buffers = array_arg(env, a[1], "buffers")?;
    let offsets = array_arg(env, a[2], "offsetsBytes")?;
    if buffers.len() != offsets.len() {
        return Err(JsErr::Invalid(format!("buffers ({}) and offsetsBytes ({}) differ in length", buffers.len(), offsets.len())));
    }
    let mut segs = Vec::with_capacity(buffers.len());
    for (i, (&b, &o)) in buffers.iter().zip(offsets.iter()).enumerate() {
        let (ptr, len) = bytes_arg(env, b, &format!("buffers[{i}]"))?;
        let off = uint_arg(env, o, &format!("offsetsBytes[{i}]"), MAX_SAFE_INTEGER)?;
        check_end(&format!("offsetsBytes[{i}]"), off, len as u64)?;
        segs.push(Seg { ptr, len, off });
    }
    Ok((fd, buffers, segs))
}

unsafe fn vector(env: napi_env, a: [napi_value; 3], write: bool) -> JsResult<napi_value> {
    let (fd, buffers, segs) = segments(env, &a)?;
    // All arguments are valid: only now take references (nothing to release on error above).
    let mut refs = Vec::with_capacity(buffers.len());
    for &b in &buffers {
        match reference(env, b) {
            Ok(r) => refs.push(r),
            Err(e) => {
                for r in refs {
                    unref(env, r);
                }
                return Err(e);
            }
        }
    }
    start(env, if write { "dmfs.writeBlocks" } else { "dmfs.readBlocks" }, Op::Vector { fd, segs, write }, refs)
}

unsafe extern "C" fn js_read_blocks(env: napi_env, info: napi_callback_info) -> napi_value {
    entry::<3>(env, info, |a| vector(env, a, false))
}

unsafe extern "C" fn js_write_blocks(env: napi_env, info: napi_callback_info) -> napi_value {
    entry::<3>(env, info, |a| vector(env, a, true))
}

/// readBlocksNowait / writeBlocksNowait: the bytes moved, or -1 when the caller must use
/// the asynchronous call (see sys::vector_io_nowait). Synchronous, on the JS thread.
unsafe fn vector_nowait(env: napi_env, a: [napi_value; 3], write: bool, may_block: bool) -> JsResult<napi_value> {
    let (fd, _buffers, segs) = segments(env, &a)?;
    if let Some(n) = sys::vector_io_nowait(fd, &segs, write) {
        return double(env, n as f64);
    }
    // The caller has nothing else to do: wait for the disk here (errors go the async way,
    // which reports them properly).
    if may_block {
        if let Ok(n) = sys::vector_io(fd, &segs, write) {
            return double(env, n as f64);
        }
    }
    int32(env, -1)
}

unsafe extern "C" fn js_read_blocks_nowait(env: napi_env, info: napi_callback_info) -> napi_value {
    entry::<4>(env, info, |[fd, bufs, offs, may_block]| {
        let may_block = !is_undefined(env, may_block)? && bool_arg(env, may_block, "mayBlock")?;
        vector_nowait(env, [fd, bufs, offs], false, may_block)
    })
}

unsafe extern "C" fn js_write_blocks_nowait(env: napi_env, info: napi_callback_info) -> napi_value {
    entry::<3>(env, info, |a| vector_nowait(env, a, true, false))
}

unsafe extern "C" fn js_punch_hole(env: napi_env, info: napi_callback_info) -> napi_value {
    entry::<3>(env, info, |a| {
        let fd = fd_arg(env, a[0], "fd")?;
        let off = uint_arg(env, a[1], "offsetBytes", MAX_SAFE_INTEGER)?;
        let len = uint_arg(env, a[2], "lengthBytes", MAX_SAFE_INTEGER)?;
        check_end("offsetBytes", off, len)?;
        start(env, "dmfs.punchHole", Op::Punch { fd, off, len }, Vec::new())
    })
}

unsafe fn crc_entry(env: napi_env, info: napi_callback_info, f: fn(u32, &[u8]) -> u32) -> napi_value {
    entry::<2>(env, info, |a| {
        let (ptr, len) = bytes_arg(env, a[0], "data")?;
        let seed = seed_arg(env, a[1])?;
        // Synchronous: the bytes cannot change or move while we hold the JS thread.
        let data: &[u8] = if len == 0 { &[] } else { std::slice::from_raw_parts(ptr, len) };
        uint32(env, f(seed, data))
    })
}

unsafe extern "C" fn js_crc32c(env: napi_env, info: napi_callback_info) -> napi_value {
    crc_entry(env, info, crc32c::crc32c)
}

unsafe extern "C" fn js_crc32c_table(env: napi_env, info: napi_callback_info) -> napi_value {
    crc_entry(env, info, crc32c::crc32c_table)
}

unsafe extern "C" fn js_fuse_watch(env: napi_env, info: napi_callback_info) -> napi_value {
    entry::<3>(env, info, |[fd, cb, spin]| {
        let fd = uint_arg(env, fd, "fd", MAX_FD)? as i32;
        uint32(env, fuse_dev::watch(env, fd, cb, spin)?)
    })
}

unsafe extern "C" fn js_fuse_unwatch(env: napi_env, info: napi_callback_info) -> napi_value {
    entry::<1>(env, info, |[id]| {
        fuse_dev::unwatch(uint_arg(env, id, "id", u32::MAX as u64)? as u32);
        boolean(env, true)
    })
}

unsafe extern "C" fn js_fuse_read(env: napi_env, info: napi_callback_info) -> napi_value {
    entry::<2>(env, info, |[fd, buf]| {
        let fd = uint_arg(env, fd, "fd", MAX_FD)? as i32;
        let (ptr, len) = bytes_arg(env, buf, "buf")?;
        let slice = if len == 0 { &mut [][..] } else { std::slice::from_raw_parts_mut(ptr, len) };
        double(env, fuse_dev::read_once(fd, slice) as f64)
    })
}

unsafe extern "C" fn js_fuse_write(env: napi_env, info: napi_callback_info) -> napi_value {
    entry::<2>(env, info, |[fd, buf]| {
        let fd = uint_arg(env, fd, "fd", MAX_FD)? as i32;
        let (ptr, len) = bytes_arg(env, buf, "buf")?;
        let slice = if len == 0 { &[][..] } else { std::slice::from_raw_parts(ptr as *const u8, len) };
        double(env, fuse_dev::write_once(fd, slice) as f64)
    })
}

/// 0 on success, else the negative errno (the convention of the synchronous FUSE calls).
fn status(r: Result<i32, i32>) -> f64 {
    match r {
        Ok(v) => v as f64,
        Err(errno) => -(errno as f64),
    }
}

unsafe extern "C" fn js_fd_socket_pair(env: napi_env, info: napi_callback_info) -> napi_value {
    entry::<1>(env, info, |[out]| {
        let (ptr, len) = bytes_arg(env, out, "out")?;
        if len < 8 {
            return Err(JsErr::Invalid(format!("out must hold 8 bytes, got {len}")));
        }
        let r = fd_passing::socket_pair().map(|[a, b]| {
            // Synchronous: the Buffer cannot move while we hold the JS thread.
            let out = std::slice::from_raw_parts_mut(ptr, 8);
            out[..4].copy_from_slice(&a.to_le_bytes());
            out[4..].copy_from_slice(&b.to_le_bytes());
            0
        });
        double(env, status(r))
    })
}

unsafe extern "C" fn js_fd_receive(env: napi_env, info: napi_callback_info) -> napi_value {
    entry::<1>(env, info, |[sock]| {
        let sock = fd_arg(env, sock, "sock")?;
        double(env, status(fd_passing::receive(sock)))
    })
}

unsafe extern "C" fn js_fd_set_nonblocking(env: napi_env, info: napi_callback_info) -> napi_value {
    entry::<1>(env, info, |[fd]| {
        let fd = fd_arg(env, fd, "fd")?;
        double(env, status(fd_passing::set_nonblocking(fd).map(|()| 0)))
    })
}

unsafe extern "C" fn js_fd_take_from(env: napi_env, info: napi_callback_info) -> napi_value {
    entry::<2>(env, info, |[pid, fd]| {
        let pid = uint_arg(env, pid, "pid", i32::MAX as u64)? as i32;
        let fd = fd_arg(env, fd, "fd")?;
        double(env, status(fd_passing::take_from(pid, fd)))
    })
}

unsafe extern "C" fn js_file_lock(env: napi_env, info: napi_callback_info) -> napi_value {
    entry::<2>(env, info, |[fd, mode]| {
        let fd = fd_arg(env, fd, "fd")?;
        let mode = uint_arg(env, mode, "mode", 2)? as u32;
        double(env, status(file_lock::set(fd, mode).map(|()| 0)))
    })
}

unsafe extern "C" fn js_fuse_mount(env: napi_env, info: napi_callback_info) -> napi_value {
    entry::<5>(env, info, |[source, target, fstype, flags, data]| {
        let mut strings: [&[u8]; 4] = [&[]; 4];
        for (i, (v, name)) in [(source, "source"), (target, "target"), (fstype, "fstype"), (data, "data")].into_iter().enumerate() {
            let (ptr, len) = bytes_arg(env, v, name)?;
            let s: &[u8] = if len == 0 { &[] } else { std::slice::from_raw_parts(ptr as *const u8, len) };
            if !fuse_mount::is_c_string(s) {
                return Err(JsErr::Invalid(format!("{name} must be a NUL-terminated string without other NULs")));
            }
            strings[i] = s;
        }
        let flags = uint_arg(env, flags, "flags", u32::MAX as u64)?;
        double(env, status(fuse_mount::mount_fs(strings[0], strings[1], strings[2], flags, strings[3])))
    })
}

/// The exported functions: name and entry point.
const EXPORTS: &[(&std::ffi::CStr, unsafe extern "C" fn(napi_env, napi_callback_info) -> napi_value)] = &[
    (c"readBlocksNowait", js_read_blocks_nowait),
    (c"writeBlocksNowait", js_write_blocks_nowait),
    (c"fuseWatch", js_fuse_watch),
    (c"fuseUnwatch", js_fuse_unwatch),
    (c"fuseRead", js_fuse_read),
    (c"fuseWrite", js_fuse_write),
    (c"fdSocketPair", js_fd_socket_pair),
    (c"fdReceive", js_fd_receive),
    (c"fdSetNonblocking", js_fd_set_nonblocking),
    (c"fuseMount", js_fuse_mount),
    (c"fdTakeFrom", js_fd_take_from),
    (c"fileLock", js_file_lock),
    (c"copyRange", js_copy_range),
    (c"cloneRange", js_clone_range),
    (c"readBlocks", js_read_blocks),
    (c"writeBlocks", js_write_blocks),
    (c"punchHole", js_punch_hole),
    (c"crc32c", js_crc32c),
    (c"crc32cTable", js_crc32c_table),
];

unsafe fn register(env: napi_env, exports: napi_value) -> JsResult<()> {
    for (name, f) in EXPORTS {
        set_property(env, exports, name, function(env, name, *f)?)?;
    }
    set_property(env, exports, c"abiVersion", uint32(env, ABI_VERSION)?)?;
    let imp = if crc32c::hardware_available() { "sse4.2" } else { "table" };
    set_property(env, exports, c"crc32cImpl", string(env, imp)?)?;
    Ok(())
}

/// Module entry point Node looks up after dlopen.
///
/// # Safety
/// Called by Node only, on the JS thread, with a live `env` and the `exports` object.
#[no_mangle]
pub unsafe extern "C" fn napi_register_module_v1(env: napi_env, exports: napi_value) -> napi_value {
    let r = catch_unwind(AssertUnwindSafe(|| register(env, exports)));
    match r {
        Ok(Ok(())) => exports,
        Ok(Err(e)) => {
            throw(env, e);
            null_mut()
        }
        Err(_) => {
            throw(env, JsErr::Internal("panic while registering dmfs native addon".into()));
            null_mut()
        }
    }
}
