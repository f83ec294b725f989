//! 64-byte aligned `f32` buffers for the kernels' hot operands.
//!
//! A `Vec<f32>` is only 4-byte aligned by contract, and glibc hands large blocks out at
//! 16 bytes past a page boundary, so every 16-float vector load of such a buffer straddles two
//! cache lines. The forward product of Omniglot's 256 × 784 layer runs at 67 GFLOP/s from
//! such buffers and at 122 GFLOP/s from 64-byte aligned ones (10 points, one thread,
//! 2026-11-29). [`AlignedVec`] is the workers' θ', moments, minibatch and workspace storage:
//! whole cache lines underneath, a `[f32]` on top. The kernels' results never depend on
//! alignment (only their speed does).

use std::ops::{Deref, DerefMut};

/// One cache line of floats.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

const ZERO: Line = Line([0.0; 16]);

/// A growable `f32` buffer whose first element is 64-byte aligned; dereferences to `[f32]`.
#[derive(Clone, Default)]
pub struct AlignedVec {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedVec {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// `n` zeros.
    pub fn zeros(n: usize) -> Self {
        AlignedVec { lines: vec![ZERO; n.div_ceil(16)], len: n }
    }

    /// A copy of `s`.
    pub fn from_slice(s: &[f32]) -> Self {
        let mut v = Self::zeros(s.len());
        v.copy_from_slice(s);
        v
    }

    /// Sets the length to `n`; new elements are `value`.
    pub fn resize(&mut self, n: usize, value: f32) {
        let old = self.len;
        self.lines.resize(n.div_ceil(16), ZERO);
        self.len = n;
        if n > old {
            self[old..n].fill(value);
        }
    }

    /// Length zero (keeps the allocation).
    pub fn clear(&mut self) {
        self.resize(0, 0.0);
    }

    /// Appends `s`.
    pub fn extend_from_slice(&mut self, s: &[f32]) {
        let old = self.len;
        self.resize(old + s.len(), 0.0);
        self[old..].copy_from_slice(s);
    }
}

impl Deref for AlignedVec {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `Line` is `repr(C)` around `[f32; 16]` (64 bytes, no padding), so `lines`
        // is `16·lines.len() ≥ len` contiguous initialised floats.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }
}

impl DerefMut for AlignedVec {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`, through the unique borrow of `lines`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

impl std::fmt::Debug for AlignedVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for AlignedVec {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_resizable() {
        let mut v = AlignedVec::zeros(37);
        assert_eq!(v.as_ptr() as usize % 64, 0);
        assert_eq!(v.len(), 37);
        v[36] = 2.5;
        v.resize(100, 1.5);
        assert_eq!(v.as_ptr() as usize % 64, 0);
        assert_eq!((v[36], v[37], v[99], v.len()), (2.5, 1.5, 1.5, 100));
        v.resize(3, 9.0);
        assert_eq!(&v[..], &[0.0, 0.0, 0.0]);
        v.extend_from_slice(&[4.0, 5.0]);
        assert_eq!(&v[..], &[0.0, 0.0, 0.0, 4.0, 5.0]);
        v.clear();
        assert!(v.is_empty());
        assert_eq!(&AlignedVec::from_slice(&[1.0, 2.0])[..], &[1.0, 2.0]);
    }
}
