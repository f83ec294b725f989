//! Files: safetensors checkpoints and PNG figures.

pub mod checkpoint;
pub mod plot;
