//! A bounds-checked f32 GEMM into a caller's buffer, on the `gemm` crate candle itself uses.
//!
//! candle's `matmul` always allocates a fresh, contiguous output. The CPU kernels here need to
//! write a product straight into part of a larger buffer (a band of a convolution's output, a
//! tile of an attention output) and to accumulate onto what is there (the bias, the running
//! attention sum), which the `gemm` crate does through strides and its `read_dst` flag. The
//! products are bit-for-bit what candle computes: the same crate, the same kernel, the same
//! summation order. This is the crate's one `unsafe` kernel call (the others are the target-feature calls of
//! [`crate::exp::simd`], `mallopt` in [`crate::memory`] and, in the `cudnn` build, the cuDNN
//! call of `crate::cudnn`), made after checking every index the
//! call can reach lies inside the slices it was given.
#![allow(unsafe_code)]

/// A row-major matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A matrix whose rows are `rs` apart and whose columns are adjacent.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        Self { data, rows, cols, rs, cs: 1 }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }
}

/// The largest index a `rows × cols` matrix with strides `rs`, `cs` touches, plus one.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 { 0 } else { (rows - 1) * rs + (cols - 1) * cs + 1 }
}

/// `dst = lhs · rhs` (or `dst += lhs · rhs` when `accumulate`), where `dst` is `lhs.rows ×
/// rhs.cols` with rows `dst_rs` apart. `threads > 1` splits the product over rayon's pool.
///
/// # Panics
/// When the shapes disagree or a matrix reaches past its slice.
pub fn gemm(dst: &mut [f32], dst_rs: usize, lhs: View, rhs: View, accumulate: bool, threads: usize) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "gemm: inner dimensions differ");
    assert!(extent(m, n, dst_rs, 1) <= dst.len(), "gemm: output out of bounds");
    assert!(extent(m, k, lhs.rs, lhs.cs) <= lhs.data.len(), "gemm: lhs out of bounds");
    assert!(extent(k, n, rhs.rs, rhs.cs) <= rhs.data.len(), "gemm: rhs out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_rs.max(1)).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let parallelism = if threads > 1 { ::gemm::Parallelism::Rayon(threads) } else { ::gemm::Parallelism::None };
    // SAFETY: the asserts above bound every element the call reads or writes (indices up to
    // `extent(..)` of each matrix) inside the slices; `dst` is borrowed mutably, so it aliases
    // neither input; all strides are non-negative and fit an isize because the extents fit the
    // slices.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j])).sum();
            }
        }
        out
    }

    #[test]
    fn strided_products_match_a_plain_loop() {
        let (m, k, n) = (7, 13, 29);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 89) as f32 - 44.0) / 13.0).collect();
        let want = reference(&a, &b, m, k, n);
        // Output rows 40 apart, with a bias already there to accumulate onto.
        let mut dst = vec![0.5f32; m * 40];
        gemm(&mut dst, 40, View::rows(&a, m, k, k), View::rows(&b, k, n, n), true, 2);
        // The transposed view of bᵀ is b again.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut plain = vec![f32::NAN; m * n];
        gemm(&mut plain, n, View::rows(&a, m, k, k), View::rows(&bt, n, k, k).t(), false, 1);
        for i in 0..m {
            for j in 0..n {
                let w = want[i * n + j];
                assert!((f64::from(dst[i * 40 + j]) - 0.5 - w).abs() < 1e-4, "({i}, {j})");
                assert!((f64::from(plain[i * n + j]) - w).abs() < 1e-4, "({i}, {j})");
            }
        }
        // Untouched gaps stay untouched.
        assert!(dst[n..40].iter().all(|&v| v == 0.5));
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_short_output_is_refused() {
        let a = vec![1f32; 4];
        let mut dst = vec![0f32; 3];
        gemm(&mut dst, 2, View::rows(&a, 2, 2, 2), View::rows(&a, 2, 2, 2), false, 1);
    }
}
