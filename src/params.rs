//! Parameters: the flat θ buffer, its seeded initialization, and the [`Model`] that pairs it
//! with an [`MlpSpec`].

use crate::cpu::aligned::AlignedVec;
use crate::cpu::mlp::{self, Workspace};
use crate::error::{Error, Result, check_finite};
use crate::rng::Rng;
use crate::spec::MlpSpec;
use rand::Rng as _;

/// Fills θ with PyTorch's default `nn.Linear` initialization: every `W_l` and `b_l` entry
/// drawn from `U(−1/√in_l, 1/√in_l)`, layer by layer, weights (row-major) before biases.
///
/// The generator is ChaCha8 ([`crate::rng`]), so a seed gives the same θ on every platform.
pub fn init_params(spec: &MlpSpec, seed: u64) -> Vec<f32> {
    let mut rng = crate::rng::stream(seed, crate::rng::Purpose::Init, 0);
    let mut theta = vec![0.0f32; spec.num_params()];
    for l in 0..spec.num_layers() {
        let (fan_in, out) = (spec.widths()[l], spec.widths()[l + 1]);
        let bound = 1.0 / (fan_in as f32).sqrt();
        let start = spec.weight_offset(l);
        for v in &mut theta[start..start + (fan_in + 1) * out] {
            *v = uniform(&mut rng, bound);
        }
    }
    theta
}

fn uniform(rng: &mut Rng, bound: f32) -> f32 {
    // U(-bound, bound) from a 24-bit uniform in [0, 1): exact in f32 and platform independent.
    let u = (rng.random::<u32>() >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
    (2.0 * u - 1.0) * bound
}

/// A network: its spec and its parameters θ in the flat layout of [`crate::spec`].
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    spec: MlpSpec,
    /// 64-byte aligned, like the workers' buffers (see [`crate::cpu::aligned`]).
    theta: AlignedVec,
}

impl Model {
    /// A freshly initialized model ([`init_params`]).
    pub fn new(spec: MlpSpec, seed: u64) -> Self {
        let theta = AlignedVec::from_slice(&init_params(&spec, seed));
        Model { spec, theta }
    }

    /// Wraps existing parameters; `theta.len()` must equal `spec.num_params()` and every
    /// value must be finite.
    pub fn from_params(spec: MlpSpec, theta: Vec<f32>) -> Result<Self> {
        Self::from_slice(spec, &theta)
    }

    /// [`Self::from_params`] from a borrowed θ (copied once into the model's aligned buffer).
    pub(crate) fn from_slice(spec: MlpSpec, theta: &[f32]) -> Result<Self> {
        if theta.len() != spec.num_params() {
            return Err(Error::ShapeMismatch(format!(
                "θ has {} values, spec {:?} needs {}",
                theta.len(),
                spec.widths(),
                spec.num_params()
            )));
        }
        check_finite(theta, "θ")?;
        Ok(Model { spec, theta: AlignedVec::from_slice(theta) })
    }

    /// The spec.
    pub fn spec(&self) -> &MlpSpec {
        &self.spec
    }
    /// θ, flat.
    pub fn params(&self) -> &[f32] {
        &self.theta
    }
    /// Mutable θ. Callers keep it finite; the trainer checks before every use.
    pub fn params_mut(&mut self) -> &mut [f32] {
        &mut self.theta
    }
    pub(crate) fn params_vec_mut(&mut self) -> &mut AlignedVec {
        &mut self.theta
    }
    /// Consumes the model, returning θ.
    pub fn into_params(self) -> Vec<f32> {
        self.theta.to_vec()
    }

    /// Network outputs for `x`: `[points × in]` row-major in, `[points × out]` row-major out.
    pub fn predict(&self, x: &[f32]) -> Result<Vec<f32>> {
        let points = points_of(&self.spec, x)?;
        check_finite(x, "x")?;
        let mut ws = Workspace::new(&self.spec, points);
        Ok(mlp::forward(&self.spec, &self.theta, x, points, &mut ws).to_vec())
    }
}

/// Number of points in an `x` buffer, or a shape error.
pub(crate) fn points_of(spec: &MlpSpec, x: &[f32]) -> Result<usize> {
    let d = spec.in_dim();
    if x.is_empty() || !x.len().is_multiple_of(d) {
        return Err(Error::ShapeMismatch(format!(
            "x has {} values, not a non-zero multiple of the input width {d}",
            x.len()
        )));
    }
    Ok(x.len() / d)
}
