//! `reptile_model`: a network (widths, activation, loss) and its parameters θ.

use super::boundary::{
    FfiError, FfiResult, arg_mut, arg_path, arg_ref, arg_slice, arg_slice_mut, boundary, boundary_void, check_disjoint,
    free_handle, into_handle, out_ptr, span,
};
use super::status::reptile_status;
use super::tasks::{reptile_tasks, task_batch};
use crate::io::checkpoint;
use crate::meta::ReptileConfig;
use crate::params::Model;
use crate::spec::{Activation, Loss, MlpSpec};
use std::ffi::c_char;

/// Hidden-layer nonlinearity (a `REPTILE_ACTIVATION_*` value). The output layer is linear.
pub type reptile_activation = u32;
/// `tanh(z)`.
pub const REPTILE_ACTIVATION_TANH: reptile_activation = 0;
/// `max(z, 0)`.
pub const REPTILE_ACTIVATION_RELU: reptile_activation = 1;

/// Training loss (a `REPTILE_LOSS_*` value).
pub type reptile_loss = u32;
/// Mean squared error over points and outputs; tasks carry real-valued targets `y`.
pub const REPTILE_LOSS_MSE: reptile_loss = 0;
/// Softmax cross-entropy, mean over points; tasks carry integer `labels` in `0..out`.
pub const REPTILE_LOSS_SOFTMAX_CROSS_ENTROPY: reptile_loss = 1;

/// A multilayer perceptron: widths `[in, h1, ..., out]`, a hidden activation, a loss, and
/// its parameters θ in one flat float buffer, layer by layer: `W_l` (`out_l × in_l`,
/// row-major, PyTorch's `nn.Linear` layout) then `b_l` (`out_l`).
///
/// Thread safety: a model is only changed by `reptile_model_set_params`. Any number of
/// threads may call the other functions (predict, get_params, adapt, save, ...) on the same
/// model at once; `reptile_model_set_params` and `reptile_model_free` need exclusive access
/// (no other call on that model in flight). A model may be passed between threads.
pub struct reptile_model {
    pub(crate) model: Model,
}

fn activation_of(a: reptile_activation) -> FfiResult<Activation> {
    match a {
        REPTILE_ACTIVATION_TANH => Ok(Activation::Tanh),
        REPTILE_ACTIVATION_RELU => Ok(Activation::Relu),
        other => Err(FfiError::invalid(format!(
            "activation = {other} is not a reptile_activation (REPTILE_ACTIVATION_TANH = 0, REPTILE_ACTIVATION_RELU = 1)"
        ))),
    }
}

fn loss_of(l: reptile_loss) -> FfiResult<Loss> {
    match l {
        REPTILE_LOSS_MSE => Ok(Loss::Mse),
        REPTILE_LOSS_SOFTMAX_CROSS_ENTROPY => Ok(Loss::SoftmaxCrossEntropy),
        other => Err(FfiError::invalid(format!(
            "loss = {other} is not a reptile_loss (REPTILE_LOSS_MSE = 0, REPTILE_LOSS_SOFTMAX_CROSS_ENTROPY = 1)"
        ))),
    }
}

/// # Safety
/// `widths` must be NULL or point to `n_widths` values.
unsafe fn spec_of(
    widths: *const usize,
    n_widths: usize,
    activation: reptile_activation,
    loss: reptile_loss,
) -> FfiResult<MlpSpec> {
    // SAFETY: the caller's contract.
    let widths = unsafe { arg_slice(widths, n_widths, "widths") }?;
    Ok(MlpSpec::new(widths, activation_of(activation)?, loss_of(loss)?)?)
}

/// Checks that a buffer of `got` elements has the `want` its shape needs.
pub(crate) fn check_count(name: &str, got: usize, want: usize, what: &str) -> FfiResult<()> {
    if got != want {
        return Err(FfiError::shape(format!("{name} has {got} elements, {what} needs {want}")));
    }
    Ok(())
}

/// Creates a freshly initialized model: PyTorch's default `nn.Linear` initialization from the
/// portable random stream of `seed` (the same θ on every platform).
///
/// `widths` = `[in, h1, ..., out]`, `n_widths >= 2`, every width in `1..=2^20`; cross-entropy
/// needs `out >= 2`. On success `*out` receives a new model to release with
/// `reptile_model_free`.
///
/// # Safety
/// `widths` must point to `n_widths` values; `out` must point to writable storage for a
/// pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_model_new(
    widths: *const usize,
    n_widths: usize,
    activation: reptile_activation,
    loss: reptile_loss,
    seed: u64,
    out: *mut *mut reptile_model,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract for `out`.
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: the caller's contract for `widths`.
        let spec = unsafe { spec_of(widths, n_widths, activation, loss) }?;
        out.write(into_handle(reptile_model { model: Model::new(spec, seed) }));
        Ok(())
    })
}

/// Creates a model with the given parameters `params` (`n_params` = the spec's parameter
/// count, every value finite), in the layout described at `reptile_model`.
///
/// # Safety
/// `widths` must point to `n_widths` values, `params` to `n_params` floats; `out` must point
/// to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_model_from_params(
    widths: *const usize,
    n_widths: usize,
    activation: reptile_activation,
    loss: reptile_loss,
    params: *const f32,
    n_params: usize,
    out: *mut *mut reptile_model,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract for `out`.
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: the caller's contract for `widths`.
        let spec = unsafe { spec_of(widths, n_widths, activation, loss) }?;
        // SAFETY: the caller's contract for `params`.
        let params = unsafe { arg_slice(params, n_params, "params") }?;
        check_count("params", params.len(), spec.num_params(), "the model's parameter count")?;
        let model = Model::from_params(spec, params.to_vec())?;
        out.write(into_handle(reptile_model { model }));
        Ok(())
    })
}

/// Creates an independent copy of `model` in `*out`.
///
/// # Safety
/// `model` must be a live model handle; `out` must point to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_model_clone(
    model: *const reptile_model,
    out: *mut *mut reptile_model,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (model, out) = unsafe { (arg_ref(model, "model")?, out_ptr(out, "out")?) };
        out.write(into_handle(reptile_model { model: model.model.clone() }));
        Ok(())
    })
}

/// Releases a model. NULL is a no-op. The handle must not be used afterwards (set your
/// pointer to NULL).
///
/// # Safety
/// `model` must be NULL or a live handle from a `reptile_*` function, not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_model_free(model: *mut reptile_model) {
    // SAFETY: the caller's contract.
    boundary_void(|| unsafe { free_handle(model) })
}

/// Writes the number of parameters `Σ_l (in_l + 1)·out_l` to `*out`.
///
/// # Safety
/// `model` must be a live model handle; `out` must point to a writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_model_num_params(model: *const reptile_model, out: *mut usize) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (model, out) = unsafe { (arg_ref(model, "model")?, out_ptr(out, "out")?) };
        out.write(model.model.spec().num_params());
        Ok(())
    })
}

/// Writes the number of widths `[in, h1, ..., out]` (layers + 1) to `*out`: the count
/// `reptile_model_widths` needs.
///
/// # Safety
/// `model` must be a live model handle; `out` must point to a writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_model_num_widths(model: *const reptile_model, out: *mut usize) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (model, out) = unsafe { (arg_ref(model, "model")?, out_ptr(out, "out")?) };
        out.write(model.model.spec().widths().len());
        Ok(())
    })
}

/// Copies the widths `[in, h1, ..., out]` to `widths` (`n_widths` must equal
/// `reptile_model_num_widths`).
///
/// # Safety
/// `model` must be a live model handle; `widths` must point to `n_widths` writable values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_model_widths(
    model: *const reptile_model,
    widths: *mut usize,
    n_widths: usize,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (model, dst) = unsafe { (arg_ref(model, "model")?, arg_slice_mut(widths, n_widths, "widths")?) };
        let w = model.model.spec().widths();
        check_count("widths", dst.len(), w.len(), "the model's width count")?;
        dst.copy_from_slice(w);
        Ok(())
    })
}

/// Writes the hidden activation (`REPTILE_ACTIVATION_*`) to `*out`.
///
/// # Safety
/// `model` must be a live model handle; `out` must point to a writable `reptile_activation`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_model_activation(
    model: *const reptile_model,
    out: *mut reptile_activation,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (model, out) = unsafe { (arg_ref(model, "model")?, out_ptr(out, "out")?) };
        out.write(match model.model.spec().activation() {
            Activation::Tanh => REPTILE_ACTIVATION_TANH,
            Activation::Relu => REPTILE_ACTIVATION_RELU,
        });
        Ok(())
    })
}

/// Writes the loss (`REPTILE_LOSS_*`) to `*out`.
///
/// # Safety
/// `model` must be a live model handle; `out` must point to a writable `reptile_loss`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_model_loss(model: *const reptile_model, out: *mut reptile_loss) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (model, out) = unsafe { (arg_ref(model, "model")?, out_ptr(out, "out")?) };
        out.write(match model.model.spec().loss() {
            Loss::Mse => REPTILE_LOSS_MSE,
            Loss::SoftmaxCrossEntropy => REPTILE_LOSS_SOFTMAX_CROSS_ENTROPY,
        });
        Ok(())
    })
}

/// Copies θ to `params` (`n_params` must equal `reptile_model_num_params`).
///
/// # Safety
/// `model` must be a live model handle; `params` must point to `n_params` writable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_model_get_params(
    model: *const reptile_model,
    params: *mut f32,
    n_params: usize,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (model, dst) = unsafe { (arg_ref(model, "model")?, arg_slice_mut(params, n_params, "params")?) };
        let theta = model.model.params();
        check_count("params", dst.len(), theta.len(), "the model's parameter count")?;
        dst.copy_from_slice(theta);
        Ok(())
    })
}

/// Replaces θ with `params` (`n_params` = the parameter count, every value finite). On
/// failure the model is unchanged.
///
/// # Safety
/// `model` must be a live model handle not used by any other thread during the call;
/// `params` must point to `n_params` floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_model_set_params(
    model: *mut reptile_model,
    params: *const f32,
    n_params: usize,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (model, src) = unsafe { (arg_mut(model, "model")?, arg_slice(params, n_params, "params")?) };
        check_count("params", src.len(), model.model.spec().num_params(), "the model's parameter count")?;
        model.model = Model::from_params(model.model.spec().clone(), src.to_vec())?;
        Ok(())
    })
}

/// Evaluates the network on a batch of points: `x` is `[points × in]` row-major
/// (`n_x` a non-zero multiple of `in`), `y` receives `[points × out]` (`n_y = points·out`).
/// Outputs are raw (linear) values: predictions for MSE, logits for cross-entropy. `x` and
/// `y` must not overlap.
///
/// # Safety
/// `model` must be a live model handle; `x` must point to `n_x` floats and `y` to `n_y`
/// writable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_model_predict(
    model: *const reptile_model,
    x: *const f32,
    n_x: usize,
    y: *mut f32,
    n_y: usize,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let model = unsafe { arg_ref(model, "model") }?;
        check_disjoint(&[span(y, n_y, "y")], &[span(x, n_x, "x")])?;
        // SAFETY: the caller's contract; the buffers are disjoint (checked).
        let (x, y) = unsafe { (arg_slice(x, n_x, "x")?, arg_slice_mut(y, n_y, "y")?) };
        predict_into(&model.model, x, y)
    })
}

/// Checks `x`/`y` against the model, predicts, and copies the result into `y`.
pub(crate) fn predict_into(model: &Model, x: &[f32], y: &mut [f32]) -> FfiResult<()> {
    let spec = model.spec();
    let (d_in, d_out) = (spec.in_dim(), spec.out_dim());
    if x.is_empty() || !x.len().is_multiple_of(d_in) {
        return Err(FfiError::shape(format!(
            "x has {} values, not a non-zero multiple of the input width {d_in}",
            x.len()
        )));
    }
    let points = x.len() / d_in;
    check_count("y", y.len(), points * d_out, &format!("{points} points × {d_out} outputs"))?;
    y.copy_from_slice(&model.predict(x)?);
    Ok(())
}

/// Adapts a copy of `model` to one task: `steps` steps of plain SGD (for Adam, adapt through a
/// trainer) with step size `lr` on
/// minibatches of `batch_size` points of `support` (0 = the whole support set; a one-task
/// batch, see `reptile_tasks`), minibatch order from `seed`. `*out` receives the adapted
/// model; `model` is unchanged.
///
/// # Safety
/// `model` must be a live model handle; `support` must point to a valid `reptile_tasks`;
/// `out` must point to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_model_adapt(
    model: *const reptile_model,
    support: *const reptile_tasks,
    lr: f32,
    steps: usize,
    batch_size: usize,
    seed: u64,
    out: *mut *mut reptile_model,
) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (model, out) = unsafe { (arg_ref(model, "model")?, out_ptr(out, "out")?) };
        // SAFETY: the caller's contract.
        let support = unsafe { task_batch(model.model.spec(), support, "support") }?;
        let mut inner = ReptileConfig::sine().eval;
        (inner.lr, inner.steps, inner.batch_size) = (lr, steps, batch_size);
        let adapted = crate::meta::adapt(&model.model, &support, &inner, seed)?;
        out.write(into_handle(reptile_model { model: adapted }));
        Ok(())
    })
}

/// Saves the model to a safetensors checkpoint at `path` (NUL-terminated; written to a
/// temporary file beside it, then renamed). Tensors `layers.{i}.weight` / `layers.{i}.bias`
/// load into PyTorch `nn.Linear` layers.
///
/// # Safety
/// `model` must be a live model handle; `path` must be a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_model_save(model: *const reptile_model, path: *const c_char) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (model, path) = unsafe { (arg_ref(model, "model")?, arg_path(path, "path")?) };
        checkpoint::save(&path, &model.model, None, 0)?;
        Ok(())
    })
}

/// Loads a model from a safetensors checkpoint written by `reptile_model_save`,
/// `reptile_trainer_save` or the `reptile` command. Fails with `REPTILE_STATUS_IO` when the
/// file cannot be read and `REPTILE_STATUS_FORMAT` when it is not a valid checkpoint.
///
/// # Safety
/// `path` must be a NUL-terminated string; `out` must point to writable storage for a
/// pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reptile_model_load(path: *const c_char, out: *mut *mut reptile_model) -> reptile_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (path, out) = unsafe { (arg_path(path, "path")?, out_ptr(out, "out")?) };
        let c = checkpoint::load(&path)?;
        out.write(into_handle(reptile_model { model: c.model }));
        Ok(())
    })
}
