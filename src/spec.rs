//! The model description: layer widths, activation, loss, and the flat parameter layout.
//!
//! # Parameter layout
//!
//! All parameters live in ONE flat `f32` buffer θ, layer by layer. For layer `l` mapping
//! `in_l = widths[l]` inputs to `out_l = widths[l+1]` outputs:
//!
//! ```text
//! θ = [ W_0 (out_0 × in_0, row-major) | b_0 (out_0) | W_1 | b_1 | ... | W_{L-1} | b_{L-1} ]
//! ```
//!
//! `W_l[o, i]` sits at `weight_offset(l) + o·in_l + i`, `b_l[o]` at `bias_offset(l) + o`. This
//! is PyTorch's `nn.Linear` convention (`weight` is `[out, in]`), so a checkpoint maps onto an
//! `nn.Sequential` of `Linear` layers. Layer `l` computes `z = x·W_lᵀ + b_l`; hidden layers
//! apply the activation, the last layer is linear.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Hidden-layer nonlinearity. The output layer is always linear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `tanh(z)`.
    Tanh,
    /// `max(z, 0)`.
    Relu,
}

/// Training loss on the network's (linear) outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Mean squared error, mean over points *and* outputs (PyTorch `MSELoss` default).
    Mse,
    /// Softmax cross-entropy with integer labels, mean over points (PyTorch `CrossEntropyLoss`).
    SoftmaxCrossEntropy,
}

/// An MLP: widths `[in, h1, ..., out]` (at least one layer), hidden activation and loss.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlpSpec {
    widths: Vec<usize>,
    activation: Activation,
    loss: Loss,
}

/// Largest width accepted; keeps every offset and workspace size far from overflow.
pub const MAX_WIDTH: usize = 1 << 20;

impl MlpSpec {
    /// Validates and builds a spec. `widths = [in, h1, ..., out]` needs at least two entries,
    /// all non-zero; softmax cross-entropy needs at least two outputs.
    pub fn new(widths: &[usize], activation: Activation, loss: Loss) -> Result<Self> {
        if widths.len() < 2 {
            return Err(Error::InvalidArgument(format!("an MLP needs at least [in, out] widths, got {widths:?}")));
        }
        if let Some(i) = widths.iter().position(|&w| w == 0 || w > MAX_WIDTH) {
            return Err(Error::InvalidArgument(format!(
                "width {i} is {} (must be in 1..={MAX_WIDTH}) in {widths:?}",
                widths[i]
            )));
        }
        if loss == Loss::SoftmaxCrossEntropy && *widths.last().unwrap() < 2 {
            return Err(Error::InvalidArgument("softmax cross-entropy needs at least 2 outputs".into()));
        }
        let spec = MlpSpec { widths: widths.to_vec(), activation, loss };
        let n = (0..spec.num_layers())
            .try_fold(0usize, |acc, l| {
                (spec.widths[l] + 1).checked_mul(spec.widths[l + 1]).and_then(|p| acc.checked_add(p))
            })
            .filter(|&n| n <= i32::MAX as usize);
        if n.is_none() {
            return Err(Error::InvalidArgument(format!("too many parameters for {widths:?}")));
        }
        Ok(spec)
    }

    /// `[in, h1, ..., out]`.
    pub fn widths(&self) -> &[usize] {
        &self.widths
    }
    /// Hidden-layer activation.
    pub fn activation(&self) -> Activation {
        self.activation
    }
    /// Training loss.
    pub fn loss(&self) -> Loss {
        self.loss
    }
    /// Number of linear layers `L` (= `widths.len() - 1`).
    pub fn num_layers(&self) -> usize {
        self.widths.len() - 1
    }
    /// Input dimension.
    pub fn in_dim(&self) -> usize {
        self.widths[0]
    }
    /// Output dimension (number of classes for cross-entropy).
    pub fn out_dim(&self) -> usize {
        *self.widths.last().unwrap()
    }
    /// Widest layer, input included.
    pub fn max_width(&self) -> usize {
        *self.widths.iter().max().unwrap()
    }
    /// Total number of parameters `Σ_l (in_l + 1)·out_l`.
    pub fn num_params(&self) -> usize {
        (0..self.num_layers()).map(|l| (self.widths[l] + 1) * self.widths[l + 1]).sum()
    }
    /// Offset of `W_l` in θ.
    pub fn weight_offset(&self, l: usize) -> usize {
        (0..l).map(|j| (self.widths[j] + 1) * self.widths[j + 1]).sum()
    }
    /// Offset of `b_l` in θ.
    pub fn bias_offset(&self, l: usize) -> usize {
        self.weight_offset(l) + self.widths[l] * self.widths[l + 1]
    }
    /// Sum of hidden and output widths: floats of activations kept per point.
    pub(crate) fn act_floats_per_point(&self) -> usize {
        self.widths[1..].iter().sum()
    }

    /// FLOPs of one forward pass over `points` points: `2·points·in·out` per layer for the
    /// product plus one per output element for the bias and one for the activation.
    pub fn forward_flops(&self, points: usize) -> u64 {
        (0..self.num_layers())
            .map(|l| {
                let (i, o) = (self.widths[l] as u64, self.widths[l + 1] as u64);
                2 * points as u64 * i * o + 2 * points as u64 * o
            })
            .sum()
    }

    /// FLOPs of one inner SGD step on a minibatch of `points`: forward, backward (weight
    /// gradients for every layer, input gradients for all but the first, activation
    /// derivatives) and the update `θ -= α·g` (2 per parameter). For the sine shape
    /// (1-64-64-1, 10 points) this is 267,296.
    pub fn step_flops(&self, points: usize) -> u64 {
        let p = points as u64;
        let mut f = self.forward_flops(points);
        for l in 0..self.num_layers() {
            let (i, o) = (self.widths[l] as u64, self.widths[l + 1] as u64);
            f += 2 * p * i * o + p * o; // dW_l = dZᵀ·A, db_l = Σ dZ
            if l > 0 {
                f += 2 * p * i * o + 2 * p * i; // dA_{l-1} = dZ·W_l, then ⊙ act'
            }
        }
        f + 2 * self.num_params() as u64
    }
}
