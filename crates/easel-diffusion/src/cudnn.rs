//! Convolutions on CUDA through cuDNN (feature `cudnn`), in place of candle's im2col and GEMM.
//!
//! On an H200 (BENCHMARKS.md, "Local diffusion on a GPU") candle's CUDA convolution was most of
//! why Easel's VAE decode took 7× diffusers' time and its 1024² steps 2.5–9×, and its im2col
//! matrices most of the extra device memory: candle writes the whole `(b·ho·wo, cin·k·k)` matrix,
//! multiplies it, then copies the product into NCHW order. diffusers runs cuDNN, which needs no
//! such matrix. candle has a `cudnn` feature of its own, but it is not used here because of its
//! numerics: it asks cuDNN to *accumulate* f16 convolutions in f16 (cuDNN's "true half"
//! configuration) and leaves f32 convolutions on cuDNN's default math, which may use TF32 tensor
//! cores (10 mantissa bits). PyTorch, and so diffusers, accumulates f16 and bf16 in f32 on tensor
//! cores and keeps f32 in f32 unless TF32 is allowed; this does the same, so the GPU parity of
//! `scripts/parity/gpu.py` keeps holding.
//!
//! The algorithm is cuDNN's heuristic first choice (what PyTorch uses unless
//! `cudnn.benchmark` is set), asked once per shape and remembered. When that choice needs more
//! than [`MAX_WORKSPACE`] or fails to run, the precomputed implicit GEMM (a small workspace,
//! tensor cores) and then the implicit GEMM (none) are tried, as PyTorch walks down its list.
//! cuDNN's legacy API counts elements in 32 bits, so a batch whose input or output passes 2³¹
//! elements runs in parts. Handles and choices are per thread (cuDNN handles are not
//! thread-safe), and a model runs on its worker thread.
//!
//! `unsafe` here: two device allocations left unwritten (the output, which the convolution
//! writes whole, and cuDNN's scratch space) and the cuDNN call itself, on descriptors made from
//! the very buffers it is given.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda::{CudaDType, DeviceId};
use candle_core::{CpuStorage, CudaStorage, CustomOp2, DType, Layout, Shape, Tensor, WithDType};
use cudarc::cudnn::sys::{
    cudnnConvolutionFwdAlgo_t as Algo, cudnnConvolutionMode_t, cudnnMathType_t as Math, cudnnTensorFormat_t,
};
use cudarc::cudnn::{ConvForward, Cudnn, CudnnDataType};
use cudarc::driver::{CudaSlice, DeviceRepr};

/// The largest workspace a convolution may take, in bytes.
const MAX_WORKSPACE: usize = 1 << 30;

/// The most elements a tensor may have in cuDNN's legacy API.
const MAX_ELEMENTS: usize = i32::MAX as usize;

/// What is tried when the heuristic's choice cannot run, in order.
const FALLBACKS: [Algo; 2] =
    [Algo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, Algo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM];

/// What cuDNN is asked for one convolution shape.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    device: DeviceId,
    dtype: DType,
    x: [usize; 4],
    w: [usize; 4],
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
}

thread_local! {
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
    /// The algorithm that ran for each shape, and its workspace in bytes.
    static CHOICES: RefCell<HashMap<Key, (Algo, usize)>> = RefCell::new(HashMap::new());
}

/// `conv`'s convolution of `x` (NCHW, on a CUDA device), bias included, as candle_nn's
/// `Conv2d::forward` computes it.
pub fn conv2d(x: &Tensor, conv: &candle_nn::Conv2d) -> candle_core::Result<Tensor> {
    conv2d_within(x, conv, MAX_ELEMENTS)
}

/// [`conv2d`] with the batch run in parts whose input and output stay within `limit` elements.
fn conv2d_within(x: &Tensor, conv: &candle_nn::Conv2d, limit: usize) -> candle_core::Result<Tensor> {
    let cfg = conv.config();
    let op = Op { stride: cfg.stride, padding: cfg.padding, dilation: cfg.dilation, groups: cfg.groups };
    let (w, x) = (conv.weight().contiguous()?, x.contiguous()?);
    let (b, _, h, wd) = x.dims4()?;
    let cout = w.dim(0)?;
    // Elements per image in the input and in the output (the output at most as large as it
    // would be without the stride).
    let per_image = (x.elem_count() / b.max(1)).max(cout * (h + 2 * cfg.padding) * (wd + 2 * cfg.padding));
    let part = (limit / per_image.max(1)).max(1);
    let y = if b <= part {
        x.apply_op2_no_bwd(&w, &op)?
    } else {
        let parts = (0..b)
            .step_by(part)
            .map(|i| x.narrow(0, i, part.min(b - i))?.apply_op2_no_bwd(&w, &op))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)?
    };
    match conv.bias() {
        Some(bias) => y.broadcast_add(&bias.reshape((1, bias.dims1()?, 1, 1))?),
        None => Ok(y),
    }
}

struct Op {
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
}

impl CustomOp2 for Op {
    fn name(&self) -> &'static str {
        "cudnn-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the cuDNN convolution runs on CUDA devices only")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        // f16 and bf16 on tensor cores with f32 sums; f32 without TF32 (see the module docs).
        match x.dtype() {
            DType::F32 => self.run::<f32>(x, xl, w, wl, Math::CUDNN_FMA_MATH),
            DType::F16 => self.run::<half::f16>(x, xl, w, wl, Math::CUDNN_TENSOR_OP_MATH),
            DType::BF16 => self.run::<half::bf16>(x, xl, w, wl, Math::CUDNN_TENSOR_OP_MATH),
            other => candle_core::bail!("no cuDNN convolution in {other:?}"),
        }
    }
}

impl Op {
    fn run<T>(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
        math: Math,
    ) -> candle_core::Result<(CudaStorage, Shape)>
    where
        T: WithDType + CudaDType + CudnnDataType + DeviceRepr,
    {
        let xs = xl.shape().dims4()?;
        let ws = wl.shape().dims4()?;
        let reach = self.dilation * ws.2.max(ws.3).saturating_sub(1) + 1;
        if !xl.is_contiguous()
            || !wl.is_contiguous()
            || self.stride == 0
            || self.groups == 0
            || xs.1 != ws.1 * self.groups
            || ws.0 % self.groups != 0
            || xs.2.min(xs.3) + 2 * self.padding < reach
        {
            candle_core::bail!(
                "cuDNN convolution: input {xs:?} and weight {ws:?} (stride {}, padding {}, groups {}) do not fit",
                self.stride,
                self.padding,
                self.groups
            );
        }
        let out = |len: usize, k: usize| (len + 2 * self.padding - self.dilation * (k - 1) - 1) / self.stride + 1;
        let ys = (xs.0, ws.0, out(xs.2, ws.2), out(xs.3, ws.3));
        let dev = x.device().clone();
        let cudnn = handle(&dev)?;
        let int = |v: usize| i32::try_from(v).map_err(candle_core::Error::wrap);
        let dims = |(a, b, c, d): (usize, usize, usize, usize)| {
            Ok::<_, candle_core::Error>([int(a)?, int(b)?, int(c)?, int(d)?])
        };
        let nchw = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let (p, s, d) = (int(self.padding)?, int(self.stride)?, int(self.dilation)?);
        let mut conv = cudnn
            .create_conv2d::<f32>([p, p], [s, s], [d, d], cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION)
            .map_err(candle_core::Error::wrap)?;
        conv.set_math_type(math).map_err(candle_core::Error::wrap)?;
        conv.set_group_count(int(self.groups)?).map_err(candle_core::Error::wrap)?;
        let xd = cudnn.create_4d_tensor::<T>(nchw, dims(xs)?).map_err(candle_core::Error::wrap)?;
        let wd = cudnn.create_4d_filter::<T>(nchw, dims(ws)?).map_err(candle_core::Error::wrap)?;
        let yd = cudnn.create_4d_tensor::<T>(nchw, dims(ys)?).map_err(candle_core::Error::wrap)?;
        let op = ConvForward { conv: &conv, x: &xd, w: &wd, y: &yd };
        let key = Key {
            device: dev.id(),
            dtype: T::DTYPE,
            x: [xs.0, xs.1, xs.2, xs.3],
            w: [ws.0, ws.1, ws.2, ws.3],
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
        };
        let input = T::as_cuda_slice(x)?.slice(xl.start_offset()..);
        let weight = T::as_cuda_slice(w)?.slice(wl.start_offset()..);
        // SAFETY: every element of `y` is written by the convolution.
        let mut y = unsafe { dev.alloc::<T>(ys.0 * ys.1 * ys.2 * ys.3)? };
        let launch = |algo: Algo, bytes: usize, y: &mut CudaSlice<T>| -> candle_core::Result<()> {
            // SAFETY: scratch space for cuDNN only.
            let mut scratch: Option<CudaSlice<u8>> = match bytes {
                0 => None,
                n => Some(unsafe { dev.alloc::<u8>(n)? }),
            };
            let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
            // SAFETY: the descriptors were made from these buffers' shapes and dtype, all
            // contiguous, and the workspace is the size cuDNN asked for this algorithm.
            unsafe { op.launch(algo, scratch.as_mut(), (one, zero), &input, &weight, y) }
                .map_err(candle_core::Error::wrap)
        };
        let workspace = |algo: Algo| op.get_workspace_size(algo).ok().filter(|&b| b <= MAX_WORKSPACE);
        let remembered = CHOICES.with(|c| c.borrow().get(&key).copied());
        let first = match remembered {
            Some(choice) => Some(choice),
            None => {
                let algo = op.pick_algorithm().map_err(candle_core::Error::wrap)?;
                workspace(algo).map(|bytes| (algo, bytes))
            }
        };
        let mut failure = None;
        if let Some((algo, bytes)) = first {
            match launch(algo, bytes, &mut y) {
                Ok(()) => {
                    CHOICES.with(|c| c.borrow_mut().insert(key, (algo, bytes)));
                    return Ok((T::wrap_cuda_slice(y, dev.clone()), Shape::from(ys)));
                }
                Err(e) => failure = Some(e),
            }
        }
        for algo in FALLBACKS.into_iter().filter(|&a| Some(a) != first.map(|f| f.0)) {
            let Some(bytes) = workspace(algo) else { continue };
            if launch(algo, bytes, &mut y).is_ok() {
                tracing::debug!(?algo, "cuDNN convolution: fell back from the heuristic's choice");
                CHOICES.with(|c| c.borrow_mut().insert(key, (algo, bytes)));
                return Ok((T::wrap_cuda_slice(y, dev.clone()), Shape::from(ys)));
            }
        }
        Err(failure.unwrap_or_else(|| {
            candle_core::Error::Msg(format!("cuDNN has no algorithm for a convolution of {xs:?} by {ws:?}"))
        }))
    }
}

/// This thread's cuDNN handle for `dev`, on the device's stream (made once).
fn handle(dev: &candle_core::CudaDevice) -> candle_core::Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream()).map_err(candle_core::Error::wrap)?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

/// These run only where a CUDA device is (the GPU host runs this test binary, built by
/// `scripts/build-cuda.sh`, before its benchmarks: `scripts/gpu/run.sh`); elsewhere they say so
/// and pass.
#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{Conv2d, Conv2dConfig};

    fn cuda() -> Option<Device> {
        match Device::new_cuda(0) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("no CUDA device ({e}): the cuDNN convolution is not checked here");
                None
            }
        }
    }

    /// Max |a - b| / max |b| over two tensors of the same shape.
    fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) = (a.to_dtype(DType::F32).unwrap().flatten_all().unwrap(), b.flatten_all().unwrap());
        let (a, b) = (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// Each shape the networks use (3×3 same, stride 2, 1×1, plus groups and dilation), with and
    /// without bias, in f32 / f16 / bf16 on the GPU against candle's f32 convolution on the CPU,
    /// and a batch run in parts.
    #[test]
    fn cudnn_convolutions_match_candles_on_the_cpu() {
        let Some(gpu) = cuda() else { return };
        let cases = [
            // (batch, cin, h, w, cout, k, stride, padding, dilation, groups)
            (1, 16, 17, 19, 8, 3, 1, 1, 1, 1),
            (2, 32, 16, 16, 32, 3, 2, 1, 1, 1),
            (3, 24, 9, 7, 40, 1, 1, 0, 1, 1),
            (1, 16, 12, 12, 16, 3, 1, 2, 2, 1),
            (2, 16, 10, 10, 8, 3, 1, 1, 1, 2),
        ];
        for (i, &(b, cin, h, w, cout, k, stride, padding, dilation, groups)) in cases.iter().enumerate() {
            let cfg = Conv2dConfig { stride, padding, dilation, groups, ..Default::default() };
            let x = Tensor::randn(0f32, 1.0, (b, cin, h, w), &Device::Cpu).unwrap();
            let wt = Tensor::randn(0f32, 0.2, (cout, cin / groups, k, k), &Device::Cpu).unwrap();
            let bias = (i % 2 == 0).then(|| Tensor::randn(0f32, 1.0, cout, &Device::Cpu).unwrap());
            let expected = candle_core::Module::forward(&Conv2d::new(wt.clone(), bias.clone(), cfg), &x).unwrap();
            for (dtype, bound) in [(DType::F32, 1e-5), (DType::F16, 4e-3), (DType::BF16, 3e-2)] {
                let to = |t: &Tensor| t.to_device(&gpu).unwrap().to_dtype(dtype).unwrap();
                let layer = Conv2d::new(to(&wt), bias.as_ref().map(to), cfg);
                let xg = to(&x);
                for limit in [super::MAX_ELEMENTS, cin * h * w + 1] {
                    let got = super::conv2d_within(&xg, &layer, limit).unwrap().to_device(&Device::Cpu).unwrap();
                    assert_eq!(got.dims(), expected.dims(), "case {i} {dtype:?}");
                    let err = relative_error(&got, &expected);
                    assert!(err < bound, "case {i} {dtype:?} limit {limit}: relative error {err:e} (bound {bound:e})");
                }
            }
        }
    }
}
