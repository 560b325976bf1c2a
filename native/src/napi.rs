//! The slice of Node-API this addon uses, declared by hand (no external crates).
//!
//! The symbols are exported by the `node` binary and bound when Node `dlopen`s the
//! addon: the cdylib leaves them undefined (Linux allows undefined symbols in shared
//! objects unless linked with `-z defs`, which rustc does not pass for cdylibs).
//!
//! Every helper here returns `Result<_, JsErr>`; a failing N-API status becomes
//! `JsErr::Pending` when a JS exception is already pending (never throw twice) and
//! `JsErr::Internal` otherwise.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_void};
use std::ptr::null_mut;

pub type napi_env = *mut c_void;
pub type napi_value = *mut c_void;
pub type napi_callback_info = *mut c_void;
pub type napi_deferred = *mut c_void;
pub type napi_async_work = *mut c_void;
pub type napi_ref = *mut c_void;
pub type napi_status = i32;
pub type napi_async_context = *mut c_void;
pub type napi_handle_scope = *mut c_void;

pub const NAPI_OK: napi_status = 0;
pub const NAPI_CANCELLED: napi_status = 11;

// napi_valuetype
pub const NAPI_UNDEFINED: i32 = 0;
pub const NAPI_BOOLEAN: i32 = 2;
pub const NAPI_NUMBER: i32 = 3;
pub const NAPI_OBJECT: i32 = 6;

// napi_typedarray_type
pub const NAPI_UINT8_ARRAY: i32 = 1;

pub type napi_callback = Option<unsafe extern "C" fn(napi_env, napi_callback_info) -> napi_value>;
pub type napi_async_execute_callback = Option<unsafe extern "C" fn(napi_env, *mut c_void)>;
pub type napi_async_complete_callback = Option<unsafe extern "C" fn(napi_env, napi_status, *mut c_void)>;

extern "C" {
    fn napi_create_function(env: napi_env, name: *const c_char, length: usize, cb: napi_callback, data: *mut c_void, result: *mut napi_value) -> napi_status;
    fn napi_set_named_property(env: napi_env, object: napi_value, name: *const c_char, value: napi_value) -> napi_status;
    fn napi_get_cb_info(env: napi_env, info: napi_callback_info, argc: *mut usize, argv: *mut napi_value, this_arg: *mut napi_value, data: *mut *mut c_void) -> napi_status;
    fn napi_typeof(env: napi_env, value: napi_value, result: *mut i32) -> napi_status;
    fn napi_is_typedarray(env: napi_env, value: napi_value, result: *mut bool) -> napi_status;
    fn napi_get_typedarray_info(env: napi_env, value: napi_value, kind: *mut i32, length: *mut usize, data: *mut *mut c_void, arraybuffer: *mut napi_value, byte_offset: *mut usize) -> napi_status;
    fn napi_is_array(env: napi_env, value: napi_value, result: *mut bool) -> napi_status;
    fn napi_get_array_length(env: napi_env, value: napi_value, result: *mut u32) -> napi_status;
    fn napi_get_element(env: napi_env, object: napi_value, index: u32, result: *mut napi_value) -> napi_status;
    fn napi_create_double(env: napi_env, value: f64, result: *mut napi_value) -> napi_status;
    fn napi_create_uint32(env: napi_env, value: u32, result: *mut napi_value) -> napi_status;
    fn napi_create_int32(env: napi_env, value: i32, result: *mut napi_value) -> napi_status;
    fn napi_get_boolean(env: napi_env, value: bool, result: *mut napi_value) -> napi_status;
    fn napi_get_value_bool(env: napi_env, value: napi_value, result: *mut bool) -> napi_status;
    fn napi_create_string_utf8(env: napi_env, s: *const c_char, length: usize, result: *mut napi_value) -> napi_status;
    fn napi_create_error(env: napi_env, code: napi_value, msg: napi_value, result: *mut napi_value) -> napi_status;
    fn napi_throw(env: napi_env, error: napi_value) -> napi_status;
    fn napi_create_promise(env: napi_env, deferred: *mut napi_deferred, promise: *mut napi_value) -> napi_status;
    fn napi_resolve_deferred(env: napi_env, deferred: napi_deferred, resolution: napi_value) -> napi_status;
    fn napi_reject_deferred(env: napi_env, deferred: napi_deferred, rejection: napi_value) -> napi_status;
    fn napi_create_async_work(env: napi_env, async_resource: napi_value, async_resource_name: napi_value, execute: napi_async_execute_callback, complete: napi_async_complete_callback, data: *mut c_void, result: *mut napi_async_work) -> napi_status;
    fn napi_queue_async_work(env: napi_env, work: napi_async_work) -> napi_status;
    fn napi_delete_async_work(env: napi_env, work: napi_async_work) -> napi_status;
    fn napi_create_reference(env: napi_env, value: napi_value, initial_refcount: u32, result: *mut napi_ref) -> napi_status;
    fn napi_delete_reference(env: napi_env, reference: napi_ref) -> napi_status;
}

// Used directly by fuse_dev.rs, which calls into JS from a libuv callback.
extern "C" {
    pub fn napi_open_handle_scope(env: napi_env, result: *mut napi_handle_scope) -> napi_status;
    pub fn napi_close_handle_scope(env: napi_env, scope: napi_handle_scope) -> napi_status;
    pub fn napi_get_reference_value(env: napi_env, reference: napi_ref, result: *mut napi_value) -> napi_status;
    pub fn napi_get_global(env: napi_env, result: *mut napi_value) -> napi_status;
    pub fn napi_create_object(env: napi_env, result: *mut napi_value) -> napi_status;
    pub fn napi_async_init(env: napi_env, resource: napi_value, name: napi_value, result: *mut napi_async_context) -> napi_status;
    pub fn napi_async_destroy(env: napi_env, context: napi_async_context) -> napi_status;
    pub fn napi_make_callback(env: napi_env, context: napi_async_context, recv: napi_value, func: napi_value, argc: usize, argv: *const napi_value, result: *mut napi_value) -> napi_status;
    pub fn napi_is_exception_pending(env: napi_env, result: *mut bool) -> napi_status;
    pub fn napi_get_and_clear_last_exception(env: napi_env, result: *mut napi_value) -> napi_status;
    pub fn napi_fatal_exception(env: napi_env, err: napi_value) -> napi_status;
    pub fn napi_get_value_double(env: napi_env, value: napi_value, result: *mut f64) -> napi_status;
}

/// Why a JS entry point failed. `Invalid` becomes an Error with code 'INVALID'.
pub enum JsErr {
    Invalid(String),
    Internal(String),
    /// A JS exception is already pending; return to JS without throwing another.
    Pending,
}

pub type JsResult<T> = Result<T, JsErr>;

unsafe fn check(env: napi_env, status: napi_status, what: &str) -> JsResult<()> {
    if status == NAPI_OK {
        return Ok(());
    }
    let mut pending = false;
    napi_is_exception_pending(env, &mut pending);
    if pending {
        Err(JsErr::Pending)
    } else {
        Err(JsErr::Internal(format!("{what} failed (napi_status {status})")))
    }
}

pub unsafe fn string(env: napi_env, s: &str) -> JsResult<napi_value> {
    let mut v = null_mut();
    check(env, napi_create_string_utf8(env, s.as_ptr() as *const c_char, s.len(), &mut v), "napi_create_string_utf8")?;
    Ok(v)
}

pub unsafe fn double(env: napi_env, d: f64) -> JsResult<napi_value> {
    let mut v = null_mut();
    check(env, napi_create_double(env, d, &mut v), "napi_create_double")?;
    Ok(v)
}

pub unsafe fn uint32(env: napi_env, n: u32) -> JsResult<napi_value> {
    let mut v = null_mut();
    check(env, napi_create_uint32(env, n, &mut v), "napi_create_uint32")?;
    Ok(v)
}

pub unsafe fn int32(env: napi_env, n: i32) -> JsResult<napi_value> {
    let mut v = null_mut();
    check(env, napi_create_int32(env, n, &mut v), "napi_create_int32")?;
    Ok(v)
}

pub unsafe fn boolean(env: napi_env, b: bool) -> JsResult<napi_value> {
    let mut v = null_mut();
    check(env, napi_get_boolean(env, b, &mut v), "napi_get_boolean")?;
    Ok(v)
}

pub unsafe fn set_property(env: napi_env, object: napi_value, name: &std::ffi::CStr, value: napi_value) -> JsResult<()> {
    check(env, napi_set_named_property(env, object, name.as_ptr(), value), "napi_set_named_property")
}

pub unsafe fn function(env: napi_env, name: &std::ffi::CStr, cb: unsafe extern "C" fn(napi_env, napi_callback_info) -> napi_value) -> JsResult<napi_value> {
    let mut v = null_mut();
    let bytes = name.to_bytes();
    check(env, napi_create_function(env, bytes.as_ptr() as *const c_char, bytes.len(), Some(cb), null_mut(), &mut v), "napi_create_function")?;
    Ok(v)
}

/// An Error whose `code` property is `code`.
pub unsafe fn error(env: napi_env, code: &str, message: &str) -> JsResult<napi_value> {
    let c = string(env, code)?;
    let m = string(env, message)?;
    let mut v = null_mut();
    check(env, napi_create_error(env, c, m, &mut v), "napi_create_error")?;
    Ok(v)
}

/// Throws `err` unless an exception is already pending.
pub unsafe fn throw(env: napi_env, err: JsErr) {
    let mut pending = false;
    napi_is_exception_pending(env, &mut pending);
    if pending {
        return;
    }
    let made = match &err {
        JsErr::Invalid(m) => error(env, "INVALID", m),
        JsErr::Internal(m) => error(env, "INTERNAL", m),
        JsErr::Pending => return,
    };
    if let Ok(e) = made {
        napi_throw(env, e);
    }
}

/// Up to N arguments; missing ones read as `undefined`.
pub unsafe fn args<const N: usize>(env: napi_env, info: napi_callback_info) -> JsResult<[napi_value; N]> {
    let mut argv = [null_mut(); N];
    let mut argc = N;
    check(env, napi_get_cb_info(env, info, &mut argc, argv.as_mut_ptr(), null_mut(), null_mut()), "napi_get_cb_info")?;
    Ok(argv)
}

pub unsafe fn type_of(env: napi_env, v: napi_value) -> JsResult<i32> {
    let mut t = 0;
    check(env, napi_typeof(env, v, &mut t), "napi_typeof")?;
    Ok(t)
}

/// Largest integer a JS number holds exactly (Number.MAX_SAFE_INTEGER).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A non-negative integral JS number no larger than `max`, else `Invalid`.
pub unsafe fn uint_arg(env: napi_env, v: napi_value, name: &str, max: u64) -> JsResult<u64> {
    if type_of(env, v)? != NAPI_NUMBER {
        return Err(JsErr::Invalid(format!("{name} must be a number")));
    }
    let mut d = 0.0f64;
    check(env, napi_get_value_double(env, v, &mut d), "napi_get_value_double")?;
    if !(d.is_finite() && d.fract() == 0.0 && d >= 0.0 && d <= max as f64) {
        return Err(JsErr::Invalid(format!("{name} must be an integer in [0, {max}], got {d}")));
    }
    Ok(d as u64)
}

/// A JS boolean; anything else is `Invalid`.
pub unsafe fn bool_arg(env: napi_env, v: napi_value, name: &str) -> JsResult<bool> {
    if type_of(env, v)? != NAPI_BOOLEAN {
        return Err(JsErr::Invalid(format!("{name} must be a boolean")));
    }
    let mut b = false;
    check(env, napi_get_value_bool(env, v, &mut b), "napi_get_value_bool")?;
    Ok(b)
}

pub unsafe fn is_undefined(env: napi_env, v: napi_value) -> JsResult<bool> {
    Ok(type_of(env, v)? == NAPI_UNDEFINED)
}

/// Borrowed bytes of a Uint8Array (Buffer): (pointer, length). The pointer stays valid while
/// the object is alive and not detached; hold a reference across async work.
pub unsafe fn bytes_arg(env: napi_env, v: napi_value, name: &str) -> JsResult<(*mut u8, usize)> {
    if type_of(env, v)? != NAPI_OBJECT {
        return Err(JsErr::Invalid(format!("{name} must be a Buffer")));
    }
    let mut is_ta = false;
    check(env, napi_is_typedarray(env, v, &mut is_ta), "napi_is_typedarray")?;
    if !is_ta {
        return Err(JsErr::Invalid(format!("{name} must be a Buffer")));
    }
    let mut kind = -1;
    let mut len = 0usize;
    let mut data: *mut c_void = null_mut();
    let mut offset = 0usize;
    // Asking for `data` makes V8 move an on-heap typed array off the heap first.
    check(env, napi_get_typedarray_info(env, v, &mut kind, &mut len, &mut data, null_mut(), &mut offset), "napi_get_typedarray_info")?;
    if kind != NAPI_UINT8_ARRAY {
        return Err(JsErr::Invalid(format!("{name} must be a Buffer (Uint8Array)")));
    }
    Ok((data as *mut u8, len))
}

/// Elements of a JS array, else `Invalid`.
pub unsafe fn array_arg(env: napi_env, v: napi_value, name: &str) -> JsResult<Vec<napi_value>> {
    let mut is_array = false;
    check(env, napi_is_array(env, v, &mut is_array), "napi_is_array")?;
    if !is_array {
        return Err(JsErr::Invalid(format!("{name} must be an array")));
    }
    let mut n = 0u32;
    check(env, napi_get_array_length(env, v, &mut n), "napi_get_array_length")?;
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut e = null_mut();
        check(env, napi_get_element(env, v, i, &mut e), "napi_get_element")?;
        out.push(e);
    }
    Ok(out)
}

/// A strong reference keeping `v` alive until `unref`.
pub unsafe fn reference(env: napi_env, v: napi_value) -> JsResult<napi_ref> {
    let mut r = null_mut();
    check(env, napi_create_reference(env, v, 1, &mut r), "napi_create_reference")?;
    Ok(r)
}

pub unsafe fn unref(env: napi_env, r: napi_ref) {
    napi_delete_reference(env, r);
}

pub unsafe fn promise(env: napi_env) -> JsResult<(napi_deferred, napi_value)> {
    let mut d = null_mut();
    let mut p = null_mut();
    check(env, napi_create_promise(env, &mut d, &mut p), "napi_create_promise")?;
    Ok((d, p))
}

pub unsafe fn settle(env: napi_env, deferred: napi_deferred, outcome: Result<napi_value, napi_value>) {
    match outcome {
        Ok(v) => napi_resolve_deferred(env, deferred, v),
        Err(e) => napi_reject_deferred(env, deferred, e),
    };
}

/// Creates and queues async work: `execute` runs on a libuv pool thread (no N-API calls
/// there), `complete` on the JS thread. On failure nothing is queued.
pub unsafe fn queue_work(
    env: napi_env,
    name: &str,
    execute: unsafe extern "C" fn(napi_env, *mut c_void),
    complete: unsafe extern "C" fn(napi_env, napi_status, *mut c_void),
    data: *mut c_void,
) -> JsResult<napi_async_work> {
    let n = string(env, name)?;
    let mut w = null_mut();
    check(env, napi_create_async_work(env, null_mut(), n, Some(execute), Some(complete), data, &mut w), "napi_create_async_work")?;
    if let Err(e) = check(env, napi_queue_async_work(env, w), "napi_queue_async_work") {
        napi_delete_async_work(env, w);
        return Err(e);
    }
    Ok(w)
}

pub unsafe fn delete_work(env: napi_env, w: napi_async_work) {
    napi_delete_async_work(env, w);
}
