//! Task samplers for the papers' workloads.

pub mod omniglot;
pub mod sine;
