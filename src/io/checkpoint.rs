//! Safetensors checkpoints.
//!
//! Tensors `layers.{i}.weight` (`[out, in]`, f32) and `layers.{i}.bias` (`[out]`, f32) — the
//! names and shapes of PyTorch's `nn.Linear` — plus string metadata: `format`
//! (`reptile-checkpoint-v1`), `spec` (JSON of the [`MlpSpec`]), `iteration`, and `config`
//! (JSON of the [`ReptileConfig`]) when saved from a trainer. Optionally Adam's carried
//! second moments: tensor `adam.v` (`[num_params]`, f32, θ's layout) with metadata `adam_t`
//! (Adam steps taken). Loading checks every name, dtype and shape against the spec (and the
//! moments for being finite and non-negative) and rejects anything else with [`Error::Format`].

use crate::error::{Error, Result};
use crate::meta::ReptileConfig;
use crate::params::Model;
use crate::spec::MlpSpec;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

const FORMAT: &str = "reptile-checkpoint-v1";
/// Name of the optional tensor of Adam's carried second moments.
const MOMENTS: &str = "adam.v";

/// What a checkpoint holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Spec and θ.
    pub model: Model,
    /// The Reptile configuration, if saved from a trainer.
    pub config: Option<ReptileConfig>,
    /// Completed outer iterations.
    pub iteration: u64,
    /// Adam's carried second moments `v` (θ's layout) and step count `t`, if saved.
    pub adam_moments: Option<(Vec<f32>, u64)>,
}

/// Serializes a checkpoint to bytes.
pub fn to_bytes(model: &Model, config: Option<&ReptileConfig>, iteration: u64) -> Result<Vec<u8>> {
    to_bytes_with_moments(model, config, iteration, None)
}

/// Serializes a checkpoint with Adam's carried second moments `(v, t)` (`v` in θ's layout,
/// as [`crate::Trainer::adam_moments`] returns them) when given.
pub fn to_bytes_with_moments(
    model: &Model,
    config: Option<&ReptileConfig>,
    iteration: u64,
    moments: Option<(&[f32], u64)>,
) -> Result<Vec<u8>> {
    let spec = model.spec();
    if let Some((v, _)) = moments
        && v.len() != spec.num_params()
    {
        return Err(Error::InvalidArgument(format!(
            "Adam moments hold {} values, the model {} parameters",
            v.len(),
            spec.num_params()
        )));
    }
    let vbytes: Vec<u8> = moments.map(|(v, _)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).unwrap_or_default();
    let bytes: Vec<u8> = model.params().iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut tensors = Vec::new();
    for l in 0..spec.num_layers() {
        let (i, o) = (spec.widths()[l], spec.widths()[l + 1]);
        let (wo, bo) = (spec.weight_offset(l) * 4, spec.bias_offset(l) * 4);
        let w = TensorView::new(Dtype::F32, vec![o, i], &bytes[wo..wo + 4 * o * i]);
        let b = TensorView::new(Dtype::F32, vec![o], &bytes[bo..bo + 4 * o]);
        let fail = |e| Error::format(None, format!("cannot serialize layer {l}: {e}"));
        tensors.push((format!("layers.{l}.weight"), w.map_err(fail)?));
        tensors.push((format!("layers.{l}.bias"), b.map_err(fail)?));
    }
    if let Some((v, _)) = moments {
        let t = TensorView::new(Dtype::F32, vec![v.len()], &vbytes)
            .map_err(|e| Error::format(None, format!("cannot serialize the Adam moments: {e}")))?;
        tensors.push((MOMENTS.to_string(), t));
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    if let Some((_, t)) = moments {
        meta.insert("adam_t".to_string(), t.to_string());
    }
    meta.insert("spec".to_string(), serde_json::to_string(spec).expect("spec serializes"));
    meta.insert("iteration".to_string(), iteration.to_string());
    if let Some(c) = config {
        meta.insert("config".to_string(), serde_json::to_string(c).expect("config serializes"));
    }
    safetensors::serialize(tensors, Some(meta)).map_err(|e| Error::format(None, e.to_string()))
}

/// Writes a checkpoint atomically (to a temporary file beside `path`, then renamed).
pub fn save(path: &Path, model: &Model, config: Option<&ReptileConfig>, iteration: u64) -> Result<()> {
    save_with_moments(path, model, config, iteration, None)
}

/// [`save`] with Adam's carried second moments (see [`to_bytes_with_moments`]).
pub fn save_with_moments(
    path: &Path,
    model: &Model,
    config: Option<&ReptileConfig>,
    iteration: u64,
    moments: Option<(&[f32], u64)>,
) -> Result<()> {
    let bytes = to_bytes_with_moments(model, config, iteration, moments)?;
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Reads a checkpoint file.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(&bytes).map_err(|e| match e {
        Error::Format { path: None, reason } => Error::Format { path: Some(path.to_path_buf()), reason },
        e => e,
    })
}

/// Reads a checkpoint and checks that its spec is `expected`.
pub fn load_expecting(path: &Path, expected: &MlpSpec) -> Result<Checkpoint> {
    let c = load(path)?;
    if c.model.spec() != expected {
        return Err(Error::format(
            Some(path),
            format!("checkpoint holds spec {:?}, expected {:?}", c.model.spec(), expected),
        ));
    }
    Ok(c)
}

/// Parses checkpoint bytes.
pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint> {
    let bad = |r: String| Error::format(None, r);
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    match meta.get("format").map(String::as_str) {
        Some(FORMAT) => {}
        other => return Err(bad(format!("metadata format is {other:?}, expected {FORMAT:?}"))),
    }
    let spec: MlpSpec = meta
        .get("spec")
        .ok_or_else(|| bad("metadata has no spec".into()))
        .and_then(|s| serde_json::from_str(s).map_err(|e| bad(format!("bad spec metadata: {e}"))))?;
    // Re-validate: the JSON may describe an impossible spec.
    let spec =
        MlpSpec::new(spec.widths(), spec.activation(), spec.loss()).map_err(|e| bad(format!("bad spec: {e}")))?;
    let iteration = meta
        .get("iteration")
        .map(|s| s.parse::<u64>().map_err(|e| bad(format!("bad iteration {s:?}: {e}"))))
        .transpose()?
        .unwrap_or(0);
    let config = meta
        .get("config")
        .map(|s| serde_json::from_str::<ReptileConfig>(s).map_err(|e| bad(format!("bad config metadata: {e}"))))
        .transpose()?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("damaged tensor data: {e}")))?;
    let has_moments = st.names().contains(&MOMENTS);
    let want = 2 * spec.num_layers() + has_moments as usize;
    if st.len() != want {
        return Err(bad(format!("{} tensors, spec {:?} needs {want}", st.len(), spec.widths())));
    }
    let mut theta = vec![0.0f32; spec.num_params()];
    for l in 0..spec.num_layers() {
        let (i, o) = (spec.widths()[l], spec.widths()[l + 1]);
        for (name, shape, off) in [
            (format!("layers.{l}.weight"), vec![o, i], spec.weight_offset(l)),
            (format!("layers.{l}.bias"), vec![o], spec.bias_offset(l)),
        ] {
            let t = st.tensor(&name).map_err(|e| bad(format!("tensor {name}: {e}")))?;
            if t.dtype() != Dtype::F32 || t.shape() != shape.as_slice() {
                return Err(bad(format!("tensor {name} is {:?} {:?}, expected F32 {shape:?}", t.dtype(), t.shape())));
            }
            let n: usize = shape.iter().product();
            for (dst, src) in theta[off..off + n].iter_mut().zip(t.data().chunks_exact(4)) {
                *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
            }
        }
    }
    let adam_moments = if has_moments {
        let t = st.tensor(MOMENTS).map_err(|e| bad(format!("tensor {MOMENTS}: {e}")))?;
        if t.dtype() != Dtype::F32 || t.shape() != [spec.num_params()] {
            return Err(bad(format!(
                "tensor {MOMENTS} is {:?} {:?}, expected F32 [{}]",
                t.dtype(),
                t.shape(),
                spec.num_params()
            )));
        }
        let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if let Some(why) = crate::meta::bad_moment(&v) {
            return Err(bad(why));
        }
        let steps = meta
            .get("adam_t")
            .ok_or_else(|| bad(format!("tensor {MOMENTS} without adam_t metadata")))?
            .parse::<u64>()
            .map_err(|e| bad(format!("bad adam_t: {e}")))?;
        Some((v, steps))
    } else {
        None
    };
    let model = Model::from_params(spec, theta).map_err(|e| bad(format!("parameters: {e}")))?;
    Ok(Checkpoint { model, config, iteration, adam_moments })
}
