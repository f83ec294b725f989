//! The panic boundary and the checked conversions of raw C arguments. Nothing here is
//! exported; every unsafe conversion of a pointer the host passed happens in this file.

use super::status::{reptile_status, set_last_error};
use crate::error::Error;
use std::ffi::{CStr, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

/// A failure on its way to the host: a status code and the message for
/// `reptile_last_error_message`.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub status: reptile_status,
    pub message: String,
}

pub(crate) type FfiResult<T> = Result<T, FfiError>;

impl FfiError {
    pub fn new(status: reptile_status, message: impl Into<String>) -> Self {
        FfiError { status, message: message.into() }
    }
    /// `name` was NULL.
    pub fn null(name: &str) -> Self {
        Self::new(reptile_status::NullArgument, format!("null argument: {name} is NULL"))
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(reptile_status::InvalidArgument, format!("invalid argument: {}", message.into()))
    }
    pub fn shape(message: impl Into<String>) -> Self {
        Self::new(reptile_status::ShapeMismatch, format!("shape mismatch: {}", message.into()))
    }
    pub fn state(message: impl Into<String>) -> Self {
        Self::new(reptile_status::InvalidState, format!("invalid state: {}", message.into()))
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::InvalidArgument(_) => reptile_status::InvalidArgument,
            Error::ShapeMismatch(_) => reptile_status::ShapeMismatch,
            Error::NonFinite(_) => reptile_status::NonFinite,
            Error::Diverged { .. } => reptile_status::Diverged,
            Error::Io { .. } => reptile_status::Io,
            Error::Format { .. } => reptile_status::Format,
            // Figures are not part of the C API; a rendering failure is an output failure.
            Error::Plot(_) => reptile_status::Io,
            Error::Cuda(crate::cuda::CudaError::Unavailable { .. }) => reptile_status::CudaUnavailable,
            Error::Cuda(_) => reptile_status::Cuda,
        };
        FfiError::new(status, e.to_string())
    }
}

/// Runs `body` behind the panic boundary: `Ok` becomes `REPTILE_STATUS_OK`, an error its
/// status (with the message stored for `reptile_last_error_message`), a panic
/// `REPTILE_STATUS_PANIC`.
pub(crate) fn boundary(body: impl FnOnce() -> FfiResult<()>) -> reptile_status {
    // AssertUnwindSafe: after a panic the host is told (REPTILE_STATUS_PANIC) that the
    // handles involved may hold partial state; nothing is used again behind its back.
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => reptile_status::Ok,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.status
        }
        Err(payload) => {
            set_last_error(&format!(
                "internal error (a bug in reptile, please report it): a panic was caught at the C boundary: {}",
                panic_text(payload.as_ref())
            ));
            reptile_status::Panic
        }
    }
}

/// Runs a `void` body (the `_free` functions) behind the panic boundary; a panic is recorded
/// as the last error and otherwise swallowed.
pub(crate) fn boundary_void(body: impl FnOnce()) {
    let _ = boundary(|| {
        body();
        Ok(())
    });
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Checks that `p` is non-NULL and aligned for `T`.
fn check_ptr<T>(p: *const T, name: &str) -> FfiResult<()> {
    if p.is_null() {
        return Err(FfiError::null(name));
    }
    if !p.is_aligned() {
        return Err(FfiError::invalid(format!("{name} is not aligned to {} bytes", std::mem::align_of::<T>())));
    }
    Ok(())
}

/// A shared reference to the host's object at `p`.
///
/// # Safety
/// `p` must be NULL or point to a live, initialized `T` that nothing mutates while the
/// reference is used.
pub(crate) unsafe fn arg_ref<'a, T>(p: *const T, name: &str) -> FfiResult<&'a T> {
    check_ptr(p, name)?;
    // SAFETY: non-NULL and aligned (checked); validity is the caller's contract.
    Ok(unsafe { &*p })
}

/// An exclusive reference to the host's object at `p`.
///
/// # Safety
/// `p` must be NULL or point to a live, initialized `T` that nothing else accesses while
/// the reference is used.
pub(crate) unsafe fn arg_mut<'a, T>(p: *mut T, name: &str) -> FfiResult<&'a mut T> {
    check_ptr(p, name)?;
    // SAFETY: non-NULL and aligned (checked); validity and exclusivity are the caller's
    // contract.
    Ok(unsafe { &mut *p })
}

fn check_len<T>(len: usize, name: &str) -> FfiResult<()> {
    if len.checked_mul(std::mem::size_of::<T>()).is_none_or(|b| b > isize::MAX as usize) {
        return Err(FfiError::invalid(format!("{name}: {len} elements is more than any buffer can hold")));
    }
    Ok(())
}

/// The host's buffer `p[0..len]`. NULL is refused even when `len` is 0.
///
/// # Safety
/// `p` must be NULL or point to `len` initialized `T`s that nothing mutates while the slice
/// is used.
pub(crate) unsafe fn arg_slice<'a, T>(p: *const T, len: usize, name: &str) -> FfiResult<&'a [T]> {
    check_ptr(p, name)?;
    check_len::<T>(len, name)?;
    // SAFETY: non-NULL, aligned, `len·size_of::<T>() <= isize::MAX` (checked); validity of
    // the `len` elements is the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// The host's writable buffer `p[0..len]`. NULL is refused even when `len` is 0.
///
/// # Safety
/// `p` must be NULL or point to `len` writable `T`s (any bit pattern of `T` is valid) that
/// nothing else accesses while the slice is used.
pub(crate) unsafe fn arg_slice_mut<'a, T>(p: *mut T, len: usize, name: &str) -> FfiResult<&'a mut [T]> {
    check_ptr(p, name)?;
    check_len::<T>(len, name)?;
    // SAFETY: as in `arg_slice`, plus exclusivity, which is the caller's contract (and is
    // checked against the other buffers of a call with `check_disjoint`).
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

/// Refuses output buffers that overlap each other or an input buffer (`(pointer, bytes,
/// name)` each), which would alias an exclusive reference. Inputs may overlap each other.
pub(crate) fn check_disjoint(outputs: &[(usize, usize, &str)], inputs: &[(usize, usize, &str)]) -> FfiResult<()> {
    let overlap = |a: &(usize, usize, &str), b: &(usize, usize, &str)| {
        a.1 > 0 && b.1 > 0 && a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
    };
    for (i, a) in outputs.iter().enumerate() {
        for b in outputs[i + 1..].iter().chain(inputs) {
            if overlap(a, b) {
                return Err(FfiError::invalid(format!("buffers {} and {} overlap", a.2, b.2)));
            }
        }
    }
    Ok(())
}

/// `(address, bytes, name)` of a buffer, for [`check_disjoint`].
pub(crate) fn span<T>(p: *const T, len: usize, name: &str) -> (usize, usize, &str) {
    (p as usize, len.saturating_mul(std::mem::size_of::<T>()), name)
}

/// An output location, checked non-NULL and aligned; written once, on success.
pub(crate) struct Out<T>(*mut T);

impl<T> Out<T> {
    /// Writes the result (the previous content is not read or dropped).
    pub fn write(self, value: T) {
        // SAFETY: `out_ptr` checked non-NULL and alignment; its caller guaranteed that the
        // location is writable.
        unsafe { self.0.write(value) }
    }

    /// Writes the first `bytes` bytes of `value` (for versioned structs, whose older hosts
    /// hold a prefix of the current layout).
    ///
    /// # Safety
    /// `bytes ≤ size_of::<T>()`, and the location holds at least `bytes` writable bytes.
    pub unsafe fn write_prefix(self, value: &T, bytes: usize)
    where
        T: Copy,
    {
        debug_assert!(bytes <= std::mem::size_of::<T>());
        // SAFETY: `out_ptr` checked non-NULL; the caller guarantees `bytes` writable bytes
        // there and at most the size of `value`, which is read in full.
        unsafe { std::ptr::copy_nonoverlapping(std::ptr::from_ref(value).cast::<u8>(), self.0.cast::<u8>(), bytes) }
    }
}

/// Checks an output pointer before any work is done.
///
/// # Safety
/// `p` must be NULL or point to writable memory for one `T`.
pub(crate) unsafe fn out_ptr<T>(p: *mut T, name: &str) -> FfiResult<Out<T>> {
    check_ptr(p, name)?;
    Ok(Out(p))
}

/// A file path from a NUL-terminated C string (any bytes on Unix, UTF-8 elsewhere).
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string.
pub(crate) unsafe fn arg_path(p: *const c_char, name: &str) -> FfiResult<PathBuf> {
    if p.is_null() {
        return Err(FfiError::null(name));
    }
    // SAFETY: non-NULL; NUL termination is the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    if s.is_empty() {
        return Err(FfiError::invalid(format!("{name} is an empty path")));
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(s.to_bytes())))
    }
    #[cfg(not(unix))]
    {
        s.to_str().map(PathBuf::from).map_err(|_| FfiError::invalid(format!("{name} is not valid UTF-8")))
    }
}

/// Moves `value` to the heap for the host; `free_handle` takes it back.
pub(crate) fn into_handle<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Frees a handle made by [`into_handle`]; NULL is a no-op.
///
/// # Safety
/// `p` must be NULL or a pointer returned by `into_handle::<T>` and not freed since.
pub(crate) unsafe fn free_handle<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: the caller's contract: `p` came from `Box::into_raw` and is freed once.
        drop(unsafe { Box::from_raw(p) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::status::last_error;

    #[test]
    fn a_panic_becomes_reptile_status_panic_with_a_message() {
        let s = boundary(|| panic!("boom {}", 42));
        assert_eq!(s, reptile_status::Panic);
        let m = last_error();
        assert!(m.contains("boom 42") && m.contains("panic"), "{m}");
        let s = boundary(|| std::panic::panic_any(7u8));
        assert_eq!(s, reptile_status::Panic);
        assert!(last_error().contains("(no message)"));
        // A panic in a void body is caught too (and recorded).
        boundary_void(|| panic!("in free"));
        assert!(last_error().contains("in free"));
    }

    #[test]
    fn every_error_variant_maps_to_its_status() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let cases = [
            (Error::InvalidArgument("a".into()), reptile_status::InvalidArgument),
            (Error::ShapeMismatch("b".into()), reptile_status::ShapeMismatch),
            (Error::NonFinite("c".into()), reptile_status::NonFinite),
            (Error::Diverged { iteration: 3, reason: "d".into() }, reptile_status::Diverged),
            (Error::Io { path: "/x".into(), source: io() }, reptile_status::Io),
            (Error::Format { path: None, reason: "e".into() }, reptile_status::Format),
            (Error::Plot("f".into()), reptile_status::Io),
        ];
        for (e, want) in cases {
            let text = e.to_string();
            let f = FfiError::from(e);
            assert_eq!(f.status, want);
            assert_eq!(f.message, text);
            assert_eq!(boundary(|| Err(f)), want);
            assert_eq!(last_error(), text);
        }
    }

    #[test]
    fn overlap_checks_outputs_only() {
        let a = (100usize, 16usize, "a");
        let b = (108usize, 16usize, "b");
        let c = (116usize, 4usize, "c");
        assert!(check_disjoint(&[a], &[b]).is_err());
        assert!(check_disjoint(&[a, b], &[]).is_err());
        assert!(check_disjoint(&[a], &[c]).is_ok(), "adjacent buffers do not overlap");
        assert!(check_disjoint(&[c], &[a, b]).is_err());
        assert!(check_disjoint(&[], &[a, b]).is_ok(), "inputs may overlap");
        assert!(check_disjoint(&[(100, 0, "empty")], &[a]).is_ok());
    }
}
