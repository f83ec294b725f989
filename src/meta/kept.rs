//! Meta-batches on the transposed first layer ([`crate::cpu::sparse`]), summed after the
//! fact: every task of the batch runs in a worker of its own and keeps its final state (θ'
//! past `W_0`, `v`, and its rows of `W_0ᵀ`), then one pass sums the tasks in task order,
//! block by block of parameters.
//!
//! Why: Omniglot's net has 247k parameters and carries Adam moments, so each task's sums are
//! 2 MB. Fused into each task's last step and added along the trainer's chunk tree, every task
//! writes a 2 MB partial and the tree reads and rewrites one per addition, about 30 MB of
//! traffic per meta-batch of 5 by count. Here each task's state is read once and each sum
//! written once.
//!
//! The sums are `((δ_0 + δ_1) + δ_2) + …` element by element in task order (a different order
//! from the tree's, which is set by `n` alone as well), so θ does not depend on the thread
//! count. Blocks of parameters run in parallel halves (`rayon::join`) on the trainer's pool.

use super::inner::TaskWorker;
use crate::cpu::mlp::{self, Accumulate};
use crate::cpu::sparse::Src;

/// Largest meta-batch run this way (each task needs a worker of its own, about 4 MB for
/// Omniglot's net); larger ones take the chunk tree.
pub(crate) const MAX_TASKS: usize = 16;

/// Rows of `W_0ᵀ` per block (16 × 256 floats: a block of the delta sums and of the moments
/// sums together fill 32 KB of L1 while the tasks are added into them).
const ROWS: usize = 16;

/// Parameters per block past `W_0`.
const DENSE: usize = 4096;

/// The sums of finished tasks: `workers[i]` holds task `i`'s final state after a
/// [`TaskWorker::run`] on the transposed path without sums. `theta` is θ (its `W_0` range
/// unused), `src` the transposed source the tasks started from, `n0 = in·out` the size of
/// `W_0`. Writes `sum` (`Σ θ'_i − θ`, `W_0`'s range transposed) and, with carried moments,
/// `msum` (`Σ v_i`, likewise).
#[allow(clippy::too_many_arguments)]
pub(crate) fn reduce(
    theta: &[f32],
    src: Src<'_>,
    n0: usize,
    out0: usize,
    beta2: f32,
    workers: &[&TaskWorker],
    sum: &mut [f32],
    msum: Option<&mut [f32]>,
    par: bool,
) {
    let p = theta.len();
    assert!(sum.len() == p && msum.as_ref().is_none_or(|m| m.len() == p), "sums length");
    assert!(n0.is_multiple_of(out0) && n0 <= p && !workers.is_empty(), "W_0 shape");
    // Block boundaries: ROWS rows of W_0ᵀ at a time, then DENSE parameters at a time.
    let mut bounds: Vec<usize> = (0..n0).step_by(ROWS * out0).collect();
    bounds.extend((n0..p).step_by(DENSE));
    bounds.push(p);
    let job = Job { theta, src, n0, out0, beta2, workers, par };
    job.node(&bounds, sum, msum);
}

#[derive(Clone, Copy)]
struct Job<'a> {
    theta: &'a [f32],
    src: Src<'a>,
    n0: usize,
    out0: usize,
    beta2: f32,
    workers: &'a [&'a TaskWorker],
    par: bool,
}

impl Job<'_> {
    /// Blocks `bounds[0]..bounds[last]` into `sum`/`msum` (exactly that range).
    fn node(&self, bounds: &[usize], sum: &mut [f32], msum: Option<&mut [f32]>) {
        let blocks = bounds.len() - 1;
        if blocks > 1 {
            let mid = blocks / 2;
            let k = bounds[mid] - bounds[0];
            let (s1, s2) = sum.split_at_mut(k);
            let (m1, m2) = match msum {
                Some(m) => {
                    let (a, b) = m.split_at_mut(k);
                    (Some(a), Some(b))
                }
                None => (None, None),
            };
            if self.par {
                rayon::join(|| self.node(&bounds[..=mid], s1, m1), || self.node(&bounds[mid..], s2, m2));
            } else {
                self.node(&bounds[..=mid], s1, m1);
                self.node(&bounds[mid..], s2, m2);
            }
            return;
        }
        let (a, b) = (bounds[0], bounds[1]);
        let mut msum = msum;
        for (i, w) in self.workers.iter().enumerate() {
            let first = i == 0;
            let m = msum.as_deref_mut();
            if b <= self.n0 {
                let state = w.sparse_state().expect("a task on the transposed path");
                state.add_sums(self.src, a / self.out0..b / self.out0, self.beta2, sum, m, first);
            } else {
                let mut acc = Accumulate { base: &self.theta[a..b], delta: sum, moments: m, first };
                mlp::accumulate(&mut acc, &w.theta_p[a..b], &w.adam_v[a..b]);
            }
        }
    }
}
