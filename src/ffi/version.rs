//! The library version (`REPTILE_VERSION_MAJOR`/`MINOR`/`PATCH` in the header are written from
//! the same Cargo.toml version when the header is generated).

use std::ffi::{CStr, c_char};

const VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
    Ok(v) => v,
    Err(_) => panic!("the package version contains a NUL"),
};

const fn parse_u32(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v = 0u32;
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "version component is not a number");
        v = v * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    v
}

const MAJOR: u32 = parse_u32(env!("CARGO_PKG_VERSION_MAJOR"));
const MINOR: u32 = parse_u32(env!("CARGO_PKG_VERSION_MINOR"));
const PATCH: u32 = parse_u32(env!("CARGO_PKG_VERSION_PATCH"));

/// The library's version as `"MAJOR.MINOR.PATCH"` (a static NUL-terminated string, never
/// NULL, never to be freed). Compare it with the header's `REPTILE_VERSION_STRING` to detect
/// a host built against another version's header.
#[unsafe(no_mangle)]
pub extern "C" fn reptile_version() -> *const c_char {
    VERSION.as_ptr()
}

/// The library's version as one number, `MAJOR·1000000 + MINOR·1000 + PATCH`, the same
/// encoding as the header's `REPTILE_VERSION_NUMBER`.
#[unsafe(no_mangle)]
pub extern "C" fn reptile_version_number() -> u32 {
    MAJOR * 1_000_000 + MINOR * 1_000 + PATCH
}
