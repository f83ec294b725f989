//! The C ABI of `reptile`, declared in `include/reptile.h` (generated from this module by
//! cbindgen; `BLESS=1 cargo test --release --test ffi_header` regenerates it).
//!
//! Conventions (modelled on rustls-ffi):
//!
//! - Opaque handles come from `reptile_*_new(..., T **out)` (or a function that makes one) and
//!   go back with `reptile_*_free(T *)`; freeing NULL does nothing.
//! - Every fallible function returns a [`reptile_status`]: [`reptile_status::Ok`] (0) or the
//!   cause of the failure. Outputs come last and are written only on success.
//!   [`reptile_last_error_message`] then gives a human-readable, thread-local message, and
//!   [`reptile_status_str`] names a code.
//! - Every buffer is a pointer followed by its element count; counts are checked against the
//!   shapes (exactly: a buffer that is too long is an error too). Every pointer is checked for
//!   NULL.
//! - No panic crosses the ABI: every body runs behind a panic boundary, and a caught panic
//!   becomes [`reptile_status::Panic`].
//! - Configuration travels in a `#[repr(C)]` struct whose first field is its own size
//!   ([`reptile_trainer_config`]), so fields can be added without breaking compiled hosts.
//! - Enumerations that the host passes in are `uint32_t` typedefs with `REPTILE_*` constants,
//!   so an unknown value is an error, never undefined behaviour.
//!
//! Every function is also callable from Rust (the tests do), but the Rust API is the one to
//! use from Rust.

#![allow(non_camel_case_types)]

// The order of these modules is the order of the header's sections.
mod version;

mod status;

mod backend;

mod model;

mod tasks;

mod trainer;

mod eval;

mod sine;

mod boundary;

pub use backend::*;
pub use eval::*;
pub use model::*;
pub use sine::*;
pub use status::*;
pub use tasks::*;
pub use trainer::*;
pub use version::*;
