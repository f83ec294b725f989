//! Task samplers for the papers' workloads.

pub mod sine;
