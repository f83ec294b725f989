//! Tail averaging of θ (Polyak–Ruppert averaging over the end of a run, as in stochastic
//! weight averaging): the model kept after `total` outer iterations is the mean of θ after
//! each of the last `window` of them, summed in f64 so the mean of 40,000 iterates keeps
//! f32 precision.

use crate::error::{Error, Result};

/// The running mean of θ over the last `window` of `total` outer iterations.
#[derive(Clone, Debug)]
pub struct TailMean {
    sum: Vec<f64>,
    count: u64,
    first: u64,
    total: u64,
}

impl TailMean {
    /// Averages θ (`num_params` values) after iterations `total − window + 1 ..= total`
    /// (1-based; a window longer than the run covers all of it). `window = 0` averages
    /// nothing and allocates nothing.
    pub fn new(num_params: usize, total: u64, window: u64) -> Self {
        let window = window.min(total);
        let n = if window > 0 { num_params } else { 0 };
        TailMean { sum: vec![0.0; n], count: 0, first: total - window + 1, total }
    }

    /// Whether θ after 1-based iteration `iteration` enters the mean.
    pub fn covers(&self, iteration: u64) -> bool {
        !self.sum.is_empty() && (self.first..=self.total).contains(&iteration)
    }

    /// Adds θ after 1-based iteration `iteration` if it is in the window (else does nothing).
    pub fn observe(&mut self, iteration: u64, theta: &[f32]) -> Result<()> {
        self.observe_with(iteration, |sum| {
            if theta.len() != sum.len() {
                return Err(Error::InvalidArgument(format!(
                    "tail mean over {} parameters got θ of {}",
                    sum.len(),
                    theta.len()
                )));
            }
            for (s, &p) in sum.iter_mut().zip(theta) {
                *s += p as f64;
            }
            Ok(())
        })
    }

    /// [`Self::observe`] where `add` adds θ to the f64 running sum itself (e.g.
    /// [`crate::Trainer::accumulate_params`], which reads the trainer's state in place); called
    /// only for iterations in the window.
    pub fn observe_with(&mut self, iteration: u64, add: impl FnOnce(&mut [f64]) -> Result<()>) -> Result<()> {
        if !self.covers(iteration) {
            return Ok(());
        }
        add(&mut self.sum)?;
        self.count += 1;
        Ok(())
    }

    /// Iterates averaged so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The mean of the iterates seen, or `None` before the first.
    pub fn mean(&self) -> Option<Vec<f32>> {
        (self.count > 0).then(|| self.sum.iter().map(|&s| (s / self.count as f64) as f32).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn mean_of_the_last_window_iterates_only() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let (p, total, window) = (37, 50u64, 12u64);
        let thetas: Vec<Vec<f32>> =
            (0..total).map(|_| (0..p).map(|_| rng.random_range(-3.0f32..3.0)).collect()).collect();
        let mut m = TailMean::new(p, total, window);
        assert_eq!(m.mean(), None);
        for (i, t) in thetas.iter().enumerate() {
            m.observe(i as u64 + 1, t).unwrap();
        }
        assert_eq!(m.count(), window);
        let got = m.mean().unwrap();
        for j in 0..p {
            let want: f64 =
                thetas[(total - window) as usize..].iter().map(|t| t[j] as f64).sum::<f64>() / window as f64;
            assert!((got[j] as f64 - want).abs() <= 1e-7 + 1e-7 * want.abs(), "param {j}: {} vs {want}", got[j]);
        }
        // The last iterate alone is not the mean (the window matters).
        assert_ne!(&got, thetas.last().unwrap());
    }

    #[test]
    fn window_zero_and_window_beyond_the_run() {
        let mut off = TailMean::new(4, 10, 0);
        off.observe(10, &[1.0; 4]).unwrap();
        assert_eq!((off.count(), off.mean()), (0, None));
        let mut all = TailMean::new(2, 3, 100);
        for (i, v) in [1.0f32, 2.0, 6.0].iter().enumerate() {
            all.observe(i as u64 + 1, &[*v, -*v]).unwrap();
        }
        assert_eq!(all.mean().unwrap(), vec![3.0, -3.0]);
        assert!(all.observe(3, &[1.0; 3]).is_err(), "wrong length");
    }
}
