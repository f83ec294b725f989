//! CUDA availability probing never panics: on a machine without CUDA (CI, the development
//! machine) it reports `CudaError::Unavailable` with a reason; with a GPU it describes the
//! device. `REPTILE_REQUIRE_GPU=1` makes the absence of a usable GPU a failure.

use reptile::cuda::{self, CudaError};

fn gpu_required() -> bool {
    std::env::var("REPTILE_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

#[test]
fn probing_reports_a_device_or_a_reason() {
    // Twice: the second call answers from the per-process cache, with the same outcome.
    let first = cuda::available();
    let second = cuda::available();
    assert_eq!(first, second);
    match first {
        Ok(dev) => {
            println!("CUDA device: {dev:?}");
            assert!(!dev.name.is_empty());
            assert!(dev.major >= 5, "compute capability {}.{}", dev.major, dev.minor);
            assert!(dev.multiprocessors > 0 && dev.max_shared_per_block >= 48 * 1024 && dev.total_memory > 0);
            assert!(dev.driver_version >= cuda::REQUIRED_DRIVER_VERSION);
            assert!(cuda::device_count().unwrap() >= 1);
        }
        Err(CudaError::Unavailable { reason }) => {
            println!("no CUDA here: {reason}");
            assert!(!reason.is_empty());
            assert!(!gpu_required(), "REPTILE_REQUIRE_GPU=1 but CUDA is unavailable: {reason}");
            // Every entry point gives the same typed error instead of panicking.
            assert!(matches!(cuda::device_count(), Err(CudaError::Unavailable { .. })));
            assert!(matches!(cuda::device_info(3), Err(CudaError::Unavailable { .. })));
        }
        Err(e) => panic!("probing must report Unavailable, not {e:?}"),
    }
}

#[test]
fn a_missing_device_ordinal_is_unavailable() {
    match cuda::device_info(1 << 20) {
        Err(CudaError::Unavailable { reason }) => assert!(!reason.is_empty()),
        other => panic!("device 2^20 cannot exist, got {other:?}"),
    }
}

#[test]
fn nvrtc_probe_is_typed() {
    // NVRTC may or may not be installed (CI puts it on LD_LIBRARY_PATH); either way no panic.
    match cuda::nvrtc_version() {
        Ok((major, minor)) => assert!(major >= 12, "NVRTC {major}.{minor}"),
        Err(CudaError::Unavailable { reason }) => assert!(reason.contains("NVRTC"), "{reason}"),
        Err(e) => panic!("unexpected {e:?}"),
    }
}

#[test]
fn device_strings_parse() {
    assert_eq!(cuda::parse_device("cpu").unwrap(), None);
    assert_eq!(cuda::parse_device("cuda").unwrap(), Some(0));
    assert_eq!(cuda::parse_device("cuda:3").unwrap(), Some(3));
    for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
        assert!(matches!(cuda::parse_device(bad), Err(CudaError::InvalidArgument(_))), "{bad:?}");
    }
}
