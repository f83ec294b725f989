//! Status codes, their names, and the thread-local message of the last failure.

use super::boundary::{arg_slice_mut, boundary, out_ptr};
use std::cell::RefCell;
use std::ffi::{c_char, c_int};

/// What a fallible `reptile_*` function did: `REPTILE_STATUS_OK` (0) on success, otherwise the
/// cause of the failure. After a failure, `reptile_last_error_message` gives the details.
/// Codes keep their values across versions; new codes are added at the end.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum reptile_status {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL (the message names it).
    NullArgument = 1,
    /// An argument is out of its valid range, or an enumeration value is unknown.
    InvalidArgument = 2,
    /// Buffer lengths or dimensions disagree with the model or with each other.
    ShapeMismatch = 3,
    /// Input data or a hyperparameter holds NaN or ±Inf.
    NonFinite = 4,
    /// Training produced NaN/Inf; the parameters were kept at their last finite value.
    Diverged = 5,
    /// A file could not be read or written.
    Io = 6,
    /// A file was read but is damaged, foreign, or of another shape.
    Format = 7,
    /// The call is not possible in the handle's current state (e.g. no step has run yet).
    InvalidState = 8,
    /// The CUDA back end was requested but is not available in this build or on this machine.
    CudaUnavailable = 9,
    /// The CUDA back end reported an error.
    Cuda = 10,
    /// A bug: a Rust panic was caught at the C boundary. The handles involved may hold
    /// partial results; free them.
    Panic = 11,
}

/// Every status, in code order.
const ALL_STATUSES: [reptile_status; 12] = [
    reptile_status::Ok,
    reptile_status::NullArgument,
    reptile_status::InvalidArgument,
    reptile_status::ShapeMismatch,
    reptile_status::NonFinite,
    reptile_status::Diverged,
    reptile_status::Io,
    reptile_status::Format,
    reptile_status::InvalidState,
    reptile_status::CudaUnavailable,
    reptile_status::Cuda,
    reptile_status::Panic,
];

impl reptile_status {
    /// The C name of the code, e.g. `"REPTILE_STATUS_OK"`, NUL-terminated.
    fn name(self) -> &'static std::ffi::CStr {
        match self {
            reptile_status::Ok => c"REPTILE_STATUS_OK",
            reptile_status::NullArgument => c"REPTILE_STATUS_NULL_ARGUMENT",
            reptile_status::InvalidArgument => c"REPTILE_STATUS_INVALID_ARGUMENT",
            reptile_status::ShapeMismatch => c"REPTILE_STATUS_SHAPE_MISMATCH",
            reptile_status::NonFinite => c"REPTILE_STATUS_NON_FINITE",
            reptile_status::Diverged => c"REPTILE_STATUS_DIVERGED",
            reptile_status::Io => c"REPTILE_STATUS_IO",
            reptile_status::Format => c"REPTILE_STATUS_FORMAT",
            reptile_status::InvalidState => c"REPTILE_STATUS_INVALID_STATE",
            reptile_status::CudaUnavailable => c"REPTILE_STATUS_CUDA_UNAVAILABLE",
            reptile_status::Cuda => c"REPTILE_STATUS_CUDA",
            reptile_status::Panic => c"REPTILE_STATUS_PANIC",
        }
    }
}

/// The name of a status code, e.g. `"REPTILE_STATUS_SHAPE_MISMATCH"`, as a static
/// NUL-terminated string (never NULL, never to be freed); `"REPTILE_STATUS_UNKNOWN"` for a
/// value that is not a code. Takes an `int` so that any value is safe to pass.
#[unsafe(no_mangle)]
pub extern "C" fn reptile_status_str(status: c_int) -> *const c_char {
    ALL_STATUSES.iter().find(|s| **s as c_int == status).map_or(c"REPTILE_STATUS_UNKNOWN", |s| s.name()).as_ptr()
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records `message` as this thread's last error.
pub(crate) fn set_last_error(message: &str) {
    // `try_with`: during thread teardown the slot may be gone; the message is then dropped.
    let _ = LAST_ERROR.try_with(|m| {
        let mut m = m.borrow_mut();
        m.clear();
        m.push_str(message);
    });
}

/// This thread's last error message (empty if none).
pub(crate) fn last_error() -> String {
    LAST_ERROR.try_with(|m| m.borrow().clone()).unwrap_or_default()
}

/// Copies the calling thread's message about the last failed `reptile_*` call into `buf`.
///
/// The message is UTF-8 without interior NULs. It is kept until the next failure on the same
/// thread (successful calls do not clear it), so read it right after a failure. Like
/// `snprintf`: at most `len - 1` bytes are copied, cut at a UTF-8 character boundary, then a
/// NUL; `*written` receives the full message length in bytes (without the NUL), so the message
/// was truncated exactly when `*written >= len`. With `len == 0` nothing is copied and `buf`
/// may be NULL: call it that way to learn the size to allocate (`*written + 1`).
///
/// Fails with `REPTILE_STATUS_NULL_ARGUMENT` if `written` is NULL, or `buf` is NULL while
/// `len > 0` (this too replaces the stored message).
///
/// # Safety
/// `buf` must be NULL or point to `len` writable bytes; `written` must be NULL or point to a
/// writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_last_error_message(
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract for `written`.
        let written = unsafe { out_ptr(written, "written") }?;
        let message = last_error();
        if len > 0 {
            // SAFETY: the caller's contract: `buf` holds `len` writable bytes (NULL refused).
            let buf = unsafe { arg_slice_mut(buf.cast::<u8>(), len, "buf") }?;
            let mut n = message.len().min(len - 1);
            while !message.is_char_boundary(n) {
                n -= 1;
            }
            buf[..n].copy_from_slice(&message.as_bytes()[..n]);
            buf[n] = 0;
        }
        written.write(message.len());
        Ok(())
    })
}
