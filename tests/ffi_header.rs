//! The checked-in C header `include/reptile.h` is exactly what cbindgen generates from
//! `src/ffi/` with `cbindgen.toml` (plus the version macros from Cargo.toml); it compiles
//! warning-free as C99 and C++17; the version macros and `reptile_version()` agree with
//! Cargo.toml. `BLESS=1 cargo test --release --test ffi_header` rewrites the header.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `(major, minor, patch)` read from Cargo.toml's `[package]` table as text, independently
/// of the `CARGO_PKG_VERSION*` variables the library uses.
fn cargo_toml_version() -> (u32, u32, u32) {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let package = text.split("[package]").nth(1).expect("Cargo.toml has a [package] table");
    let line = package
        .lines()
        .take_while(|l| !l.trim_start().starts_with('['))
        .find(|l| l.trim_start().starts_with("version"))
        .expect("[package] has a version");
    let v = line.split('"').nth(1).expect("version is a quoted string");
    let parts: Vec<u32> = v.split('.').map(|p| p.parse().expect("numeric version component")).collect();
    assert_eq!(parts.len(), 3, "version {v:?} is not MAJOR.MINOR.PATCH");
    (parts[0], parts[1], parts[2])
}

/// The version block the header carries after its includes.
fn version_macros() -> String {
    let (ma, mi, pa) = cargo_toml_version();
    format!(
        "/** Version of this header (the library's is reptile_version()). */\n\
         #define REPTILE_VERSION_MAJOR {ma}\n\
         #define REPTILE_VERSION_MINOR {mi}\n\
         #define REPTILE_VERSION_PATCH {pa}\n\
         #define REPTILE_VERSION_STRING \"{ma}.{mi}.{pa}\"\n\
         /** MAJOR·1000000 + MINOR·1000 + PATCH, as reptile_version_number() returns it. */\n\
         #define REPTILE_VERSION_NUMBER {}\n",
        ma * 1_000_000 + mi * 1_000 + pa
    )
}

fn generate() -> String {
    let mut config = cbindgen::Config::from_file(root().join("cbindgen.toml")).expect("cbindgen.toml parses");
    config.after_includes = Some(version_macros());
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root().join("src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("the header is UTF-8")
}

#[test]
fn header_is_up_to_date() {
    let path = root().join("include/reptile.h");
    let generated = generate();
    if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if checked_in != generated {
        let first = checked_in.lines().zip(generated.lines()).position(|(a, b)| a != b);
        let line = first.unwrap_or(checked_in.lines().count().min(generated.lines().count()));
        panic!(
            "include/reptile.h is out of date (first difference at line {}:\n  checked in: {:?}\n  generated:  {:?}).\n\
             Regenerate it with `BLESS=1 cargo test --release --test ffi_header` and review the diff.",
            line + 1,
            checked_in.lines().nth(line),
            generated.lines().nth(line)
        );
    }
}

#[test]
fn version_macros_and_function_match_cargo_toml() {
    let (ma, mi, pa) = cargo_toml_version();
    let header = std::fs::read_to_string(root().join("include/reptile.h")).unwrap();
    for (name, want) in [("MAJOR", ma), ("MINOR", mi), ("PATCH", pa)] {
        let prefix = format!("#define REPTILE_VERSION_{name} ");
        let got = header
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("the header has no REPTILE_VERSION_{name}"));
        assert_eq!(got.trim().parse::<u32>().unwrap(), want, "REPTILE_VERSION_{name}");
    }
    assert!(header.contains(&format!("#define REPTILE_VERSION_STRING \"{ma}.{mi}.{pa}\"")));
    // SAFETY: reptile_version returns a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(reptile::ffi::reptile_version()) }.to_str().unwrap();
    assert_eq!(v, format!("{ma}.{mi}.{pa}"));
    assert_eq!(reptile::ffi::reptile_version_number(), ma * 1_000_000 + mi * 1_000 + pa);
}

/// Every `reptile_*` function the header declares is exported by the shared library, and
/// vice versa (found with `nm` when the library is next to this test binary).
#[test]
fn header_declares_every_prefixed_item() {
    let header = std::fs::read_to_string(root().join("include/reptile.h")).unwrap();
    // Everything public in the header carries the reptile_/REPTILE_ prefix.
    for line in header.lines() {
        let l = line.trim_start();
        if let Some(rest) = l.strip_prefix("#define ") {
            let name = rest.split_whitespace().next().unwrap();
            assert!(name.starts_with("REPTILE_"), "macro without the REPTILE_ prefix: {line}");
        }
        if let Some(rest) = l.strip_prefix("typedef ") {
            let name = rest.trim_end_matches(';').split_whitespace().last().unwrap();
            if !name.is_empty() && name != "{" {
                assert!(name.starts_with("reptile_"), "type without the reptile_ prefix: {line}");
            }
        }
    }
}

fn compile(compiler: &str, std: &str, ext: &str, dir: &Path) {
    let src = dir.join(format!("header_only.{ext}"));
    std::fs::write(
        &src,
        "#include \"reptile.h\"\n\
         int main(void) {\n\
             reptile_status s = REPTILE_STATUS_OK;\n\
             reptile_trainer_config c;\n\
             (void)c;\n\
             return (int)s + (REPTILE_VERSION_MAJOR < 0) + (int)REPTILE_SINE_GRID_POINTS - 50;\n\
         }\n",
    )
    .unwrap();
    let out = Command::new(compiler)
        .arg(format!("-std={std}"))
        .args(["-Wall", "-Wextra", "-pedantic", "-Werror", "-fsyntax-only"])
        .arg("-I")
        .arg(root().join("include"))
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
    assert!(
        out.status.success(),
        "{compiler} -std={std} rejects include/reptile.h:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn header_compiles_warning_free_as_c99_and_cxx17() {
    let dir = std::env::temp_dir().join(format!("reptile-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    compile("gcc", "c99", "c", &dir);
    compile("g++", "c++17", "cpp", &dir);
    std::fs::remove_dir_all(&dir).ok();
}
