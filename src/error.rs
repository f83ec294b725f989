//! The crate's error type. Library code returns these instead of panicking on user input.

use std::path::PathBuf;

/// Everything that can go wrong in `reptile`, by cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument is out of its valid range (zero width, negative step size, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Buffer lengths or dimensions disagree with the model spec or with each other.
    #[error("shape mismatch: {0}")]
    ShapeMismatch(String),

    /// Input data or a hyperparameter holds NaN or ±Inf.
    #[error("non-finite value: {0}")]
    NonFinite(String),

    /// Training produced NaN/Inf; the parameters were left at their last finite value.
    #[error("training diverged at iteration {iteration}: {reason}; parameters kept at their last finite value")]
    Diverged {
        /// Outer iteration (0-based) whose update was rejected.
        iteration: u64,
        /// What was non-finite.
        reason: String,
    },

    /// A file could not be read or written.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file was read but its content is damaged, foreign or of another shape.
    #[error("bad file format{}: {reason}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Format {
        /// The file, when known.
        path: Option<PathBuf>,
        /// What is wrong with it.
        reason: String,
    },

    /// Rendering a figure failed.
    #[error("plotting failed: {0}")]
    Plot(String),

    /// The CUDA back end failed or is unavailable (no driver, library or device; an NVRTC
    /// compile error with its log; a driver call's error).
    #[error(transparent)]
    Cuda(#[from] crate::cuda::CudaError),
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub(crate) fn format(path: Option<&std::path::Path>, reason: impl Into<String>) -> Self {
        Error::Format { path: path.map(|p| p.to_path_buf()), reason: reason.into() }
    }
}

/// Checks that every value of `xs` is finite; `what` names the buffer in the error.
pub(crate) fn check_finite(xs: &[f32], what: &str) -> Result<()> {
    if crate::cpu::simd::all_finite(xs) {
        return Ok(());
    }
    match xs.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::NonFinite(format!("{what}[{i}] = {}", xs[i]))),
    }
}

/// Checks that a scalar hyperparameter is finite.
pub(crate) fn check_finite_scalar(x: f32, what: &str) -> Result<()> {
    if x.is_finite() { Ok(()) } else { Err(Error::NonFinite(format!("{what} = {x}"))) }
}
