//! Portable random streams. Every random draw in the crate comes from ChaCha8 (`rand_chacha`),
//! whose output is specified bit for bit, so a seed gives the same numbers on every platform
//! and with any number of threads: each use (initialization, a task's minibatch order, task
//! sampling) gets its own stream keyed by `(seed, purpose, index)`.

use rand::SeedableRng;
pub use rand_chacha::ChaCha8Rng as Rng;

/// What a stream is for; keeps streams of different uses apart under one seed.
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
pub enum Purpose {
    /// Parameter initialization.
    Init = 1,
    /// Minibatch order of a training task; index = `iteration · 2^24 + offset + task`.
    InnerShuffle = 2,
    /// Minibatch order during adaptation/evaluation; index = task.
    EvalShuffle = 3,
    /// Task sampling by a workload; index chosen by the sampler.
    Tasks = 4,
}

/// The stream for `(seed, purpose, index)`.
pub fn stream(seed: u64, purpose: Purpose, index: u64) -> Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(purpose as u64).to_le_bytes());
    key[16..24].copy_from_slice(b"reptile\0");
    let mut rng = Rng::from_seed(key);
    rng.set_stream(index);
    rng
}
