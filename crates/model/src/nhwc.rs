//! The inference path: channels-last activations, every convolution as
//! im2col + one GEMM (the `gemm` crate, which burn-flex's own matmul runs on)
//! per chunk of output rows, with bias, residual, ReLU and 2×2 max-pooling
//! fused around it; 3×3 stride-1 convolutions, most of a ResNet's
//! multiply-adds, optionally as a Winograd F(4×4, 3×3) or F(2×2, 3×3)
//! instead ([`WinogradConv`]: 4× or 2.25× fewer multiplies, in t² GEMMs of
//! transformed tiles), chosen per convolution at load ([`Conv::from_conv`]).
//!
//! Why: burn-flex's `conv2d` converts its input to NHWC, re-lays out the
//! weights, allocates an im2col tile per (image, tile) and scatters the result
//! back to NCHW on every call, then bias, ReLU, residual add and pooling each
//! take another pass over memory. Here activations stay NHWC between layers,
//! so a convolution's output `[batch·h·w, c_out]` is already the next layer's
//! input; the weights are laid out once at load (`[kh·kw·c_in, c_out]`); the
//! GEMM writes straight into the layer's output, which already holds the bias
//! and the shortcut (`dst = dst + patches × weights`), so only ReLU is a
//! separate (in-cache) pass. Chunks of output rows run in parallel (rayon,
//! one single-threaded GEMM each); each chunk's im2col buffer is reused per
//! thread and stays in cache. Layers too small to split into a chunk per
//! thread let the GEMM split its columns instead.
//!
//! The burn modules ([`crate::digits::DigitsNet`], [`crate::resnet::ResNet18`])
//! remain the reference: tests assert this path gives the same logits.

use crate::error::ModelError;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::prelude::*;
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;

/// im2col floats per chunk (512 KB): a chunk's im2col buffer and GEMM
/// output stay in L2 (2 MB per core here). Measured on digits (batch 32 and
/// 128, CPU time per image): 128 KB to 2 MB all within noise of each other.
const CHUNK_FLOATS: usize = 1 << 17;
/// Fewest output rows per chunk (unless the layer has fewer): every GEMM
/// packs the whole weight matrix, so a chunk must be long enough to amortise
/// that (ResNet's last stage has 4608×512 weights).
const MIN_ROWS: usize = 512;

thread_local! {
    /// Per-thread im2col and pre-pooling buffers, reused across chunks and
    /// calls: a fresh 512 KB `Vec` per chunk is a fresh `mmap` whose pages
    /// fault in on first touch.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    /// Activation buffers of dropped [`Activations`], reused by the next
    /// layers and batches on this thread: an activation of a large model is
    /// tens of MB, which the allocator maps fresh (and the kernel zero-fills
    /// page by page) every time otherwise.
    static BUFFERS: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// Buffers [`BUFFERS`] keeps per thread (a ResNet block's live activations,
/// with room for the next batch's first layers).
const KEPT_BUFFERS: usize = 8;

/// A buffer of `len` floats, recycled when one is large enough. Its contents
/// are left over from earlier use: callers write every element.
fn buffer(len: usize) -> Vec<f32> {
    let recycled = BUFFERS.with_borrow_mut(|pool| {
        let best = pool.iter().enumerate().filter(|(_, b)| b.capacity() >= len).min_by_key(|(_, b)| b.capacity());
        best.map(|(i, _)| i).map(|i| pool.swap_remove(i))
    });
    match recycled {
        Some(mut b) => {
            b.truncate(len);
            b.resize(len, 0.0);
            b
        }
        None => vec![0.0; len],
    }
}

/// `dst[m, n] = lhs[m, k] × rhs[k, n]` (`accumulate`: `dst += …`), all row-major
/// and contiguous. `parallel`: let the GEMM use the rayon pool (callers already
/// running one GEMM per thread pass `false`).
#[allow(unsafe_code)]
pub fn sgemm(lhs: &[f32], rhs: &[f32], dst: &mut [f32], [m, k, n]: [usize; 3], accumulate: bool, parallel: bool) {
    assert!(
        lhs.len() >= m * k && rhs.len() >= k * n && dst.len() >= m * n,
        "sgemm: slices shorter than [{m}, {k}, {n}]"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let parallelism = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the assert above bounds every element gemm reads or writes:
    // lhs m×k (row stride k), rhs k×n (row stride n), dst m×n (row stride n),
    // unit column strides. `dst` is a unique borrow, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A batch of activations, channels last.
#[derive(Debug, Clone, PartialEq)]
pub struct Activations {
    /// `[batch, height, width, channels]`, row-major.
    pub data: Vec<f32>,
    /// Images.
    pub batch: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Channels (innermost).
    pub channels: usize,
}

impl Drop for Activations {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        if data.capacity() >= 1 << 16 {
            BUFFERS.with_borrow_mut(|pool| {
                pool.push(data);
                if pool.len() > KEPT_BUFFERS {
                    // The smallest goes.
                    let smallest = pool.iter().enumerate().min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i);
                    smallest.map(|i| pool.swap_remove(i));
                }
            });
        }
    }
}

impl Activations {
    /// Converts an NCHW tensor: images: [batch, channels, height, width] → NHWC.
    pub fn from_nchw(images: Tensor<4>) -> Result<Self, ModelError> {
        let dims = images.dims();
        let data = images.into_data();
        let src = data.as_slice::<f32>().map_err(|e| ModelError::Inference(format!("input: {e:?}")))?;
        Ok(Self::from_nchw_slice(src, dims))
    }

    /// images: [batch, channels, height, width], row-major → NHWC.
    pub fn from_nchw_slice(src: &[f32], [batch, channels, height, width]: [usize; 4]) -> Self {
        let plane = height * width;
        let data = if channels == 1 {
            src.to_vec()
        } else {
            let mut out = buffer(src.len());
            // Pixel by pixel: one read stream per channel, one sequential write
            // stream (a plane at a time would scatter every write).
            for (img_out, img_in) in out.chunks_exact_mut(channels * plane).zip(src.chunks_exact(channels * plane)) {
                for (p, px) in img_out.chunks_exact_mut(channels).enumerate() {
                    for (c, v) in px.iter_mut().enumerate() {
                        *v = img_in[c * plane + p];
                    }
                }
            }
            out
        };
        Self { data, batch, height, width, channels }
    }

    /// `[batch, height, width, channels]`.
    pub fn dims(&self) -> [usize; 4] {
        [self.batch, self.height, self.width, self.channels]
    }

    /// Pixels per image.
    fn plane(&self) -> usize {
        self.height * self.width
    }

    /// Mean over height and width: [batch, h, w, c] → [batch, c] (global average pooling).
    pub fn global_mean(&self) -> Vec<f32> {
        let c = self.channels;
        let scale = 1.0 / self.plane() as f32;
        let mut out = vec![0.0; self.batch * c];
        for (img, acc) in self.data.chunks_exact(self.plane() * c).zip(out.chunks_exact_mut(c)) {
            for px in img.chunks_exact(c) {
                acc.iter_mut().zip(px).for_each(|(a, v)| *a += v);
            }
            acc.iter_mut().for_each(|a| *a *= scale);
        }
        out
    }

    /// Max pooling, `k`×`k` window, stride `s`, `p` implicit -∞ padding on every side
    /// (floor mode): [batch, h, w, c] → [batch, h', w', c]. Rows in parallel if `parallel`.
    pub fn max_pool(&self, k: usize, s: usize, p: usize, parallel: bool) -> Result<Activations, ModelError> {
        let pool = Pool { kernel: [k, k], stride: [s, s], pad: [p; 4], dilation: [1, 1], ceil_mode: false };
        self.max_pool2d(&pool, parallel)
    }

    /// Max pooling as ONNX `MaxPool` defines it (padding is −∞, a window
    /// never starts in the bottom or right padding in ceil mode).
    pub fn max_pool2d(&self, pool: &Pool, parallel: bool) -> Result<Activations, ModelError> {
        let (c, h, w) = (self.channels, self.height, self.width);
        let (oh, ow) = pool.out_hw(h, w)?;
        let ([kh, kw], [sh, sw], [dh, dw]) = (pool.kernel, pool.stride, pool.dilation);
        let mut out = buffer(self.batch * oh * ow * c);
        let pool_row = |(row, dst): (usize, &mut [f32])| {
            dst.fill(f32::NEG_INFINITY);
            let (b, oy) = (row / oh, row % oh);
            let img = &self.data[b * h * w * c..(b + 1) * h * w * c];
            for ky in 0..kh {
                let Some(iy) = (oy * sh + ky * dh).checked_sub(pool.pad[0]).filter(|&y| y < h) else { continue };
                for (ox, px) in dst.chunks_exact_mut(c).enumerate() {
                    for kx in 0..kw {
                        let Some(ix) = (ox * sw + kx * dw).checked_sub(pool.pad[1]).filter(|&x| x < w) else {
                            continue;
                        };
                        let src = &img[(iy * w + ix) * c..(iy * w + ix + 1) * c];
                        px.iter_mut().zip(src).for_each(|(m, v)| *m = max(*m, *v));
                    }
                }
            }
        };
        if ow * c > 0 {
            if parallel {
                out.par_chunks_mut(ow * c).enumerate().for_each(pool_row);
            } else {
                out.chunks_mut(ow * c).enumerate().for_each(pool_row);
            }
        }
        Ok(Activations { data: out, batch: self.batch, height: oh, width: ow, channels: c })
    }

    /// The same values channels first: [batch, channels, height, width], row-major.
    pub fn to_nchw(&self) -> Vec<f32> {
        let (c, plane) = (self.channels, self.plane());
        if c == 1 || plane == 1 {
            return self.data.clone();
        }
        let mut out = buffer(self.data.len());
        for (img_out, img_in) in out.chunks_exact_mut(c * plane).zip(self.data.chunks_exact(c * plane)) {
            for (p, px) in img_in.chunks_exact(c).enumerate() {
                for (ch, v) in px.iter().enumerate() {
                    img_out[ch * plane + p] = *v;
                }
            }
        }
        out
    }

    /// `parts` side by side along the channels (ONNX `Concat` on axis 1);
    /// `None` unless they agree on batch, height and width.
    pub fn concat_channels(parts: &[&Activations]) -> Option<Activations> {
        let first = parts.first()?;
        if parts.iter().any(|p| (p.batch, p.height, p.width) != (first.batch, first.height, first.width)) {
            return None;
        }
        let channels: usize = parts.iter().map(|p| p.channels).sum();
        let mut data = buffer(first.batch * first.plane() * channels);
        for (px, dst) in data.chunks_exact_mut(channels.max(1)).enumerate() {
            let mut at = 0;
            for p in parts {
                dst[at..at + p.channels].copy_from_slice(&p.data[px * p.channels..(px + 1) * p.channels]);
                at += p.channels;
            }
        }
        Some(Activations { data, batch: first.batch, height: first.height, width: first.width, channels })
    }
}

/// A 2-D pooling window as ONNX describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Steps between windows.
    pub stride: [usize; 2],
    /// [top, left, bottom, right].
    pub pad: [usize; 4],
    /// Spacing of a window's taps.
    pub dilation: [usize; 2],
    /// Round the output size up (a last, partial window).
    pub ceil_mode: bool,
}

impl Pool {
    /// Output height and width for an `h`×`w` input.
    pub fn out_hw(&self, h: usize, w: usize) -> Result<(usize, usize), ModelError> {
        let axis = |n: usize, i: usize| {
            let span = (n + self.pad[i] + self.pad[i + 2]).checked_sub(self.dilation[i] * (self.kernel[i] - 1) + 1)?;
            let s = self.stride[i];
            let mut o = if self.ceil_mode { span.div_ceil(s) + 1 } else { span / s + 1 };
            // In ceil mode the last window must start inside the input or its top/left padding.
            if self.ceil_mode && (o - 1) * s >= n + self.pad[i] {
                o -= 1;
            }
            Some(o)
        };
        if self.kernel.contains(&0) || self.stride.contains(&0) || self.dilation.contains(&0) {
            return Err(ModelError::Inference("pooling with a zero kernel, stride or dilation".into()));
        }
        axis(h, 0).zip(axis(w, 1)).ok_or_else(|| {
            ModelError::Inference(format!("pooling window {:?} larger than its {h}×{w} input", self.kernel))
        })
    }
}

/// Runs `net` (NHWC activations of some images, `parallel` → their logits,
/// row-major) on images: [batch, channels, height, width] → logits: [batch, classes].
///
/// With at least two images per thread, the batch is cut into parts of at
/// most `max_part` images that go through the whole network in parallel, each
/// on one thread: no synchronisation between layers, each part's activations
/// stay in its core's cache, and rayon balances the parts when another
/// process takes a core. Smaller batches run as one part with every layer
/// split over the pool instead.
pub fn run_batched(
    images: Tensor<4>,
    classes: usize,
    max_part: usize,
    net: impl Fn(Activations, bool) -> Result<Vec<f32>, ModelError> + Sync,
) -> Result<Tensor<2>, ModelError> {
    let device = images.device();
    let dims = images.dims();
    let [batch, c, h, w] = dims;
    let data = images.into_data();
    let src = data.as_slice::<f32>().map_err(|e| ModelError::Inference(format!("input: {e:?}")))?;
    let threads = rayon::current_num_threads().max(1);
    let per_image = c * h * w;
    let logits = if batch >= 2 * threads && per_image > 0 {
        let part = max_part.clamp(1, batch.div_ceil(threads));
        let parts: Vec<Vec<f32>> = src
            .par_chunks(part * per_image)
            .map(|images| net(Activations::from_nchw_slice(images, [images.len() / per_image, c, h, w]), false))
            .collect::<Result<_, _>>()?;
        parts.concat()
    } else {
        net(Activations::from_nchw_slice(src, dims), true)?
    };
    if logits.len() != batch * classes {
        return Err(ModelError::Inference(format!("{} logits for {batch} images of {classes} classes", logits.len())));
    }
    Ok(Tensor::<2>::from_data(TensorData::new(logits, [batch, classes]), &device))
}

/// The activation an epilogue applies last.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Act {
    /// None: the identity.
    #[default]
    Identity,
    /// `max(0, ·)`.
    Relu,
    /// `min(max(·, lo), hi)` (ONNX `Clip`; ReLU6 is `Clip(0, 6)`).
    Clip(f32, f32),
}

impl Act {
    /// Applies the activation to every element of `v`.
    #[inline]
    pub fn apply(self, v: &mut [f32]) {
        match self {
            Act::Identity => {}
            Act::Relu => v.iter_mut().for_each(|o| *o = relu(*o)),
            Act::Clip(lo, hi) => v.iter_mut().for_each(|o| *o = clip(*o, lo, hi)),
        }
    }

    #[inline(always)]
    fn one(self, v: f32) -> f32 {
        match self {
            Act::Identity => v,
            Act::Relu => relu(v),
            Act::Clip(lo, hi) => clip(v, lo, hi),
        }
    }
}

/// What happens to a convolution's output before it is stored.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Added after the bias (the ResNet shortcut), same shape as the output.
    pub residual: Option<&'a Activations>,
    /// Applied last.
    pub act: Act,
    /// 2×2 stride-2 max-pooling (floor mode) of the result.
    pub pool2: bool,
}

/// A convolution prepared for im2col + GEMM on NHWC activations.
#[derive(Debug, Clone)]
pub struct GemmConv {
    /// [kh·kw·c_in, c_out], rows ordered (ky, kx, c_in) like an NHWC patch.
    weight: Vec<f32>,
    /// [c_out]
    bias: Vec<f32>,
    c_in: usize,
    c_out: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    /// [top, left, bottom, right], used by [`GemmConv::forward`].
    pad: [usize; 4],
}

/// A tensor's values as `f32`s (weights at load).
fn floats<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<f32>, ModelError> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| ModelError::Invalid(format!("{what}: {e:?}")))
}

/// Refuses a zero kernel size, stride or dilation (a division by zero or an
/// empty window later).
fn check_geometry(kernel: [usize; 2], stride: [usize; 2], dilation: [usize; 2]) -> Result<(), ModelError> {
    if kernel.contains(&0) || stride.contains(&0) || dilation.contains(&0) {
        return Err(ModelError::Invalid("convolution with a zero stride, dilation or kernel".into()));
    }
    Ok(())
}

/// Output height and width of a convolution of `kernel` taps (`stride`,
/// `dilation`) over an `h`×`w` input padded by `pad` ([top, left, bottom, right]).
fn conv_out_hw(
    (h, w): (usize, usize),
    pad: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
) -> Result<(usize, usize), ModelError> {
    let o = |n, i: usize| out_len(n, (pad[i], pad[i + 2]), kernel[i], stride[i], dilation[i]);
    o(h, 0).zip(o(w, 1)).ok_or_else(|| {
        ModelError::Inference(format!("convolution kernel {kernel:?} larger than its padded {h}×{w} input"))
    })
}

/// A burn convolution's padding as [top, left, bottom, right]; `Same` is refused.
fn explicit_pad(padding: &PaddingConfig2d) -> Result<[usize; 4], ModelError> {
    match *padding {
        PaddingConfig2d::Valid => Ok([0; 4]),
        PaddingConfig2d::Explicit(top, left, bottom, right) => Ok([top, left, bottom, right]),
        _ => Err(ModelError::Invalid("NHWC convolution: `Same` padding is not supported".into())),
    }
}

/// Refuses a fused shortcut whose shape is not the output's (`dims`, NHWC).
fn check_residual(residual: Option<&Activations>, dims: [usize; 4]) -> Result<(), ModelError> {
    match residual {
        Some(r) if r.dims() != dims => {
            Err(ModelError::Inference("residual shape differs from the convolution output".into()))
        }
        _ => Ok(()),
    }
}

/// Output length of one spatial axis: `n` inputs, pads `lo` + `hi`, a kernel
/// of `k` taps `d` apart, stride `s` (floor mode); `None` when the dilated
/// kernel is longer than the padded input.
fn out_len(n: usize, (lo, hi): (usize, usize), k: usize, s: usize, d: usize) -> Option<usize> {
    (n + lo + hi).checked_sub(d * (k - 1) + 1).map(|span| span / s + 1)
}

impl GemmConv {
    /// From ONNX/PyTorch-layout weights `[c_out, c_in, kh, kw]` (row-major)
    /// and an optional bias; `pad` is [top, left, bottom, right].
    pub fn new(
        weight: &[f32],
        [c_out, c_in, kh, kw]: [usize; 4],
        bias: Option<&[f32]>,
        stride: [usize; 2],
        dilation: [usize; 2],
        pad: [usize; 4],
    ) -> Result<Self, ModelError> {
        if weight.len() != c_out * c_in * kh * kw || bias.is_some_and(|b| b.len() != c_out) {
            return Err(ModelError::Invalid(format!("convolution weights do not match [{c_out}, {c_in}, {kh}, {kw}]")));
        }
        check_geometry([kh, kw], stride, dilation)?;
        // [c_out, c_in, kh, kw] → [kh, kw, c_in, c_out]
        let mut laid = vec![0.0; weight.len()];
        for (o, filter) in weight.chunks_exact(c_in * kh * kw).enumerate() {
            for (i, plane) in filter.chunks_exact(kh * kw).enumerate() {
                for (tap, v) in plane.iter().enumerate() {
                    laid[(tap * c_in + i) * c_out + o] = *v;
                }
            }
        }
        Ok(Self {
            weight: laid,
            bias: bias.map_or_else(|| vec![0.0; c_out], <[f32]>::to_vec),
            c_in,
            c_out,
            kernel: [kh, kw],
            stride,
            dilation,
            pad,
        })
    }

    /// Lays out a burn convolution's weights for this path. Refuses what it does
    /// not implement (groups, `Same` padding).
    pub fn from_conv(conv: &Conv2d) -> Result<Self, ModelError> {
        let unsupported = |what: &str| ModelError::Invalid(format!("NHWC convolution: {what} is not supported"));
        if conv.groups != 1 {
            return Err(unsupported("groups"));
        }
        let pad = explicit_pad(&conv.padding)?;
        let w = conv.weight.val();
        let dims = w.dims();
        let bias = conv.bias.as_ref().map(|b| floats(b.val(), "convolution bias")).transpose()?;
        Self::new(&floats(w, "convolution weight")?, dims, bias.as_deref(), conv.stride, conv.dilation, pad)
    }

    /// `[batch, h', w', c_out]` of the output for `x` with `pad`.
    pub fn out_dims(&self, x: &Activations, pad: [usize; 4]) -> Result<[usize; 4], ModelError> {
        let (oh, ow) = conv_out_hw((x.height, x.width), pad, self.kernel, self.stride, self.dilation)?;
        Ok([x.batch, oh, ow, self.c_out])
    }

    /// A 1×1, stride-1, unpadded convolution: its im2col is its input.
    fn pointwise(&self, pad: [usize; 4]) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && pad == [0; 4]
    }

    /// x: [batch, h, w, c_in] → [batch, h', w', c_out] (h'/2, w'/2 with `pool2`),
    /// `epilogue(conv(x) + bias)`. `parallel`: use the rayon pool (else this
    /// thread only, for callers that already run one part of a batch per thread).
    pub fn forward(&self, x: &Activations, epilogue: Epilogue<'_>, parallel: bool) -> Result<Activations, ModelError> {
        self.forward_padded(x, self.pad, epilogue, parallel)
    }

    /// [`GemmConv::forward`] with `pad` ([top, left, bottom, right]) instead
    /// of the padding given at construction (ONNX `auto_pad`, which depends
    /// on the input's size).
    pub fn forward_padded(
        &self,
        x: &Activations,
        pad: [usize; 4],
        epilogue: Epilogue<'_>,
        parallel: bool,
    ) -> Result<Activations, ModelError> {
        if x.channels != self.c_in {
            return Err(ModelError::Inference(format!("convolution takes {} channels, got {}", self.c_in, x.channels)));
        }
        let [_, oh, ow, _] = self.out_dims(x, pad)?;
        let k = self.kernel[0] * self.kernel[1] * self.c_in;
        let rows = x.batch * oh * ow;
        let (ph, pw) = if epilogue.pool2 { (oh / 2, ow / 2) } else { (oh, ow) };
        check_residual(epilogue.residual, [x.batch, ph, pw, self.c_out])?;
        let pointwise = self.pointwise(pad);
        // Rows per chunk: a whole number of images when pooling (a window never
        // straddles two chunks), else a share of the rows bounded by CHUNK_FLOATS;
        // at least one chunk per thread.
        let threads = if parallel { rayon::current_num_threads().max(1) } else { 1 };
        let (chunk_rows, out_per_chunk) = if epilogue.pool2 {
            let imgs = (CHUNK_FLOATS / (oh * ow * k).max(1)).min(x.batch.div_ceil(threads)).max(1);
            (imgs * oh * ow, imgs * ph * pw)
        } else {
            let r = (CHUNK_FLOATS / k).max(MIN_ROWS).min(rows.div_ceil(threads)).max(1);
            (r, r)
        };
        // Every element is written below (bias, pooled maxima).
        let mut out = buffer(x.batch * ph * pw * self.c_out);
        if out.is_empty() {
            return Ok(Activations { data: out, batch: x.batch, height: ph, width: pw, channels: self.c_out });
        }
        let run_chunk = |i: usize, dst: &mut [f32], parallel: bool| {
            let start = i * chunk_rows;
            let range = start..(start + chunk_rows).min(rows);
            let n = range.len();
            // Taken out, not borrowed: a thread that waits in a parallel GEMM
            // may run other rayon work meanwhile (another caller's chunk), which
            // then finds empty buffers instead of a RefCell already borrowed.
            let (mut col, mut tmp) = SCRATCH.take();
            {
                let patches: &[f32] = if pointwise {
                    &x.data[range.start * k..range.end * k]
                } else {
                    self.im2col(x, range, (oh, ow), pad, &mut col);
                    &col
                };
                if epilogue.pool2 {
                    tmp.resize(n * self.c_out, 0.0);
                    sgemm(patches, &self.weight, &mut tmp, [n, k, self.c_out], false, parallel);
                    self.pool_bias(&tmp, dst, (oh, ow), epilogue.act);
                } else {
                    // dst = bias (+ shortcut), then dst += patches × weights.
                    for o in dst.chunks_exact_mut(self.c_out) {
                        o.copy_from_slice(&self.bias);
                    }
                    if let Some(res) = epilogue.residual {
                        let res = &res.data[start * self.c_out..start * self.c_out + dst.len()];
                        dst.iter_mut().zip(res).for_each(|(o, r)| *o += r);
                    }
                    sgemm(patches, &self.weight, dst, [n, k, self.c_out], true, parallel);
                    epilogue.act.apply(dst);
                }
            }
            SCRATCH.set((col, tmp));
        };
        let chunk_len = out_per_chunk * self.c_out;
        if !parallel {
            out.chunks_mut(chunk_len).enumerate().for_each(|(i, dst)| run_chunk(i, dst, false));
        } else if rows.div_ceil(chunk_rows) < threads {
            // Fewer chunks than threads (small layers, batch 1): chunks in turn,
            // each GEMM splitting its columns over the pool.
            out.chunks_mut(chunk_len).enumerate().for_each(|(i, dst)| run_chunk(i, dst, true));
        } else {
            out.par_chunks_mut(chunk_len).enumerate().for_each(|(i, dst)| run_chunk(i, dst, false));
        }
        Ok(Activations { data: out, batch: x.batch, height: ph, width: pw, channels: self.c_out })
    }

    /// im2col of output rows `range` (flattened `(image, y, x)`) into `col`:
    /// [range.len(), kh·kw·c_in].
    fn im2col(
        &self,
        x: &Activations,
        range: Range<usize>,
        (oh, ow): (usize, usize),
        pad: [usize; 4],
        col: &mut Vec<f32>,
    ) {
        let [kh, kw] = self.kernel;
        let [dh, dw] = self.dilation;
        let c = x.channels;
        // Without dilation a kernel row is kw·c consecutive floats of one input row (NHWC).
        let seg = kw * c;
        let k = kh * seg;
        // Every element is written below (copies or padding zeros), so the
        // reused buffer is only grown, never cleared.
        col.resize(range.len() * k, 0.0);
        let image = x.plane() * c;
        let (mut b, mut oy, mut ox) = (range.start / (oh * ow), (range.start / ow) % oh, range.start % ow);
        for dst in col.chunks_exact_mut(k) {
            let img = &x.data[b * image..(b + 1) * image];
            let x0 = (ox * self.stride[1]) as isize - pad[1] as isize;
            let y0 = (oy * self.stride[0]) as isize - pad[0] as isize;
            for (ky, d) in dst.chunks_exact_mut(seg).enumerate() {
                let iy = y0 + (ky * dh) as isize;
                if iy < 0 || iy >= x.height as isize {
                    d.fill(0.0);
                    continue;
                }
                let row = iy as usize * x.width;
                if dw == 1 {
                    // Columns of the window inside the image: kx_lo..kx_hi.
                    let kx_lo = (-x0).clamp(0, kw as isize) as usize;
                    let kx_hi = (x.width as isize - x0).clamp(0, kw as isize) as usize;
                    if kx_lo >= kx_hi {
                        d.fill(0.0);
                        continue;
                    }
                    let src0 = (row as isize + x0 + kx_lo as isize) as usize * c;
                    d[..kx_lo * c].fill(0.0);
                    d[kx_lo * c..kx_hi * c].copy_from_slice(&img[src0..src0 + (kx_hi - kx_lo) * c]);
                    d[kx_hi * c..].fill(0.0);
                } else {
                    for (kx, t) in d.chunks_exact_mut(c).enumerate() {
                        let ix = x0 + (kx * dw) as isize;
                        if ix < 0 || ix >= x.width as isize {
                            t.fill(0.0);
                        } else {
                            let at = (row + ix as usize) * c;
                            t.copy_from_slice(&img[at..at + c]);
                        }
                    }
                }
            }
            ox += 1;
            if ox == ow {
                ox = 0;
                oy += 1;
                if oy == oh {
                    oy = 0;
                    b += 1;
                }
            }
        }
    }

    /// `dst = act(pool2(y) + bias)`: y holds whole images [n, oh, ow, c_out];
    /// dst [n, oh/2, ow/2, c_out]. (Max-pooling commutes with adding a
    /// per-channel constant.)
    fn pool_bias(&self, y: &[f32], dst: &mut [f32], (oh, ow): (usize, usize), act: Act) {
        let c = self.c_out;
        let (ph, pw) = (oh / 2, ow / 2);
        for (j, px) in dst.chunks_exact_mut(c).enumerate() {
            let (img, py, qx) = (j / (ph * pw), (j / pw) % ph, j % pw);
            let at = |dy: usize, dx: usize| {
                let r = img * oh * ow + (2 * py + dy) * ow + 2 * qx + dx;
                &y[r * c..(r + 1) * c]
            };
            let (a, b, cc, d) = (at(0, 0), at(0, 1), at(1, 0), at(1, 1));
            for (i, o) in px.iter_mut().enumerate() {
                *o = act.one(max(max(a[i], b[i]), max(cc[i], d[i])) + self.bias[i]);
            }
        }
    }
}

/// Output tile size of the Winograd kernels [`WinogradConv`] implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WinogradTile {
    /// F(2×2, 3×3): 4×4 input tiles, 16 products per 4 outputs (2.25× fewer
    /// multiplies than direct), rounding close to a direct convolution's.
    F2,
    /// F(4×4, 3×3): 6×6 input tiles, 36 products per 16 outputs (4× fewer),
    /// with larger transform coefficients and so larger rounding error.
    F4,
}

/// The three transform matrices of one Winograd F(m×m, 3×3), row-major:
/// `Bᵀ` [t, t], `G` [t, 3], `Aᵀ` [m, t], t = m + 2 (Lavin & Gray, 2015).
/// `G` transforms the weights at load; the kernels apply `Bᵀ` and `Aᵀ` as
/// the written-out [`Tile`] transforms, which tests check against these.
struct Transforms {
    m: usize,
    #[cfg(test)]
    bt: &'static [f32],
    g: &'static [f32],
    #[cfg(test)]
    at: &'static [f32],
}

#[rustfmt::skip]
const F2: Transforms = Transforms {
    m: 2,
    #[cfg(test)]
    bt: &[
        1.0, 0.0, -1.0, 0.0,
        0.0, 1.0, 1.0, 0.0,
        0.0, -1.0, 1.0, 0.0,
        0.0, 1.0, 0.0, -1.0,
    ],
    g: &[
        1.0, 0.0, 0.0,
        0.5, 0.5, 0.5,
        0.5, -0.5, 0.5,
        0.0, 0.0, 1.0,
    ],
    #[cfg(test)]
    at: &[
        1.0, 1.0, 1.0, 0.0,
        0.0, 1.0, -1.0, -1.0,
    ],
};

#[rustfmt::skip]
const F4: Transforms = Transforms {
    m: 4,
    #[cfg(test)]
    bt: &[
        4.0, 0.0, -5.0, 0.0, 1.0, 0.0,
        0.0, -4.0, -4.0, 1.0, 1.0, 0.0,
        0.0, 4.0, -4.0, -1.0, 1.0, 0.0,
        0.0, -2.0, -1.0, 2.0, 1.0, 0.0,
        0.0, 2.0, -1.0, -2.0, 1.0, 0.0,
        0.0, 4.0, 0.0, -5.0, 0.0, 1.0,
    ],
    g: &[
        1.0 / 4.0, 0.0, 0.0,
        -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0,
        -1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0,
        1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0,
        1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0,
        0.0, 0.0, 1.0,
    ],
    #[cfg(test)]
    at: &[
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0,
        0.0, 1.0, -1.0, 2.0, -2.0, 0.0,
        0.0, 1.0, 1.0, 4.0, 4.0, 0.0,
        0.0, 1.0, -1.0, 8.0, -8.0, 1.0,
    ],
};

impl WinogradTile {
    /// The tile served by default (the built-in ResNet-18, the ONNX runner's
    /// CPU kernels).
    pub const SERVED: WinogradTile = WinogradTile::F4;

    fn transforms(self) -> &'static Transforms {
        match self {
            WinogradTile::F2 => &F2,
            WinogradTile::F4 => &F4,
        }
    }

    /// Outputs per tile side.
    pub fn m(self) -> usize {
        self.transforms().m
    }

    /// `F(2×2,3×3)` or `F(4×4,3×3)`.
    pub fn name(self) -> &'static str {
        match self {
            WinogradTile::F2 => "F(2×2,3×3)",
            WinogradTile::F4 => "F(4×4,3×3)",
        }
    }
}

/// Transformed floats (input and GEMM output) per chunk of tiles (1 MB):
/// a chunk's transforms and GEMMs stay in L2.
const WINOGRAD_FLOATS: usize = 1 << 18;
/// Fewest tiles per chunk (unless the layer has fewer): each of the t² GEMMs
/// of a chunk packs a `[c_in, c_out]` weight matrix, so a chunk must be long
/// enough to amortise that.
const MIN_TILES: usize = 32;

/// A 3×3, stride-1, undilated, ungrouped convolution as a Winograd
/// F(m×m, 3×3) on NHWC activations: each m×m block of outputs is computed
/// from its (m+2)×(m+2) input tile as `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`. The
/// filters are transformed once at load into t² = (m+2)² matrices
/// `[c_in, c_out]`; per chunk of tiles the input tiles are transformed into
/// t² matrices `[tiles, c_in]`, multiplied by the filters' (t² GEMMs, the
/// products summed over input channels inside each GEMM), and transformed back
/// into the output with bias, shortcut, activation and optionally 2×2
/// max-pooling fused. Chunks are whole rows of tiles, so each writes one
/// contiguous range of output rows.
#[derive(Debug, Clone)]
pub struct WinogradConv {
    /// [t², c_in', c_out'] (channels rounded up to whole blocks of
    /// [`LANES`], zero past c_in and c_out): `G g Gᵀ` per (input, output)
    /// channel pair, one GEMM right-hand side per tile position.
    weight: Vec<f32>,
    /// [c_out]
    bias: Vec<f32>,
    c_in: usize,
    c_out: usize,
    tile: WinogradTile,
    /// [top, left, bottom, right], used by [`WinogradConv::forward`].
    pad: [usize; 4],
    /// The same convolution on im2col + GEMM, for layers of few tiles (see
    /// [`MIN_LAYER_TILES`]).
    im2col: GemmConv,
}

/// Fewest tiles (images × tiles per image) a layer runs on Winograd with.
/// Below, its GEMMs have a handful of rows each, so reading the t²
/// transformed weight matrices (4× the size of the 3×3 filters for
/// F(4×4)) costs more than the multiplies saved. ResNet-18 at batch 1 on 2
/// threads (its last stage has 4 tiles per image) with every 3×3 stride-1
/// layer on Winograd: 42 images per CPU second, im2col alone 42, with this
/// bound 57; at batch 8 (parts of 4 images, 16 tiles) within noise of
/// every layer on Winograd, and a bound of 32 (that stage on im2col) no
/// better.
const MIN_LAYER_TILES: usize = 16;

impl WinogradConv {
    /// Whether this kernel computes a convolution of this geometry: 3×3,
    /// stride 1, dilation 1 (groups are the caller's to check).
    pub fn applies(kernel: [usize; 2], stride: [usize; 2], dilation: [usize; 2]) -> bool {
        kernel == [3, 3] && stride == [1, 1] && dilation == [1, 1]
    }

    /// From ONNX/PyTorch-layout weights `[c_out, c_in, 3, 3]` (row-major) and
    /// an optional bias; `pad` is [top, left, bottom, right].
    pub fn new(
        weight: &[f32],
        [c_out, c_in, kh, kw]: [usize; 4],
        bias: Option<&[f32]>,
        pad: [usize; 4],
        tile: WinogradTile,
    ) -> Result<Self, ModelError> {
        if [kh, kw] != [3, 3] {
            return Err(ModelError::Invalid(format!("Winograd convolution of a {kh}×{kw} kernel (3×3 only)")));
        }
        if weight.len() != c_out * c_in * 9 || bias.is_some_and(|b| b.len() != c_out) {
            return Err(ModelError::Invalid(format!("convolution weights do not match [{c_out}, {c_in}, 3, 3]")));
        }
        let tr = tile.transforms();
        let t = tr.m + 2;
        // Rows and columns past c_in, c_out stay zero (see `padded`).
        let (ci_pad, co_pad) = (padded(c_in), padded(c_out));
        let mut laid = vec![0.0; t * t * ci_pad * co_pad];
        // U[r·t + s] = Σ_{k,c} G[r][k] G[s][c] g[k·3 + c]: per input channel,
        // its 9 taps of every filter gathered into rows of c_out, then each
        // of the t² rows of U a sum of those rows (this runs at every worker start).
        let coef: Vec<[f32; 9]> = (0..t * t)
            .map(|xi| {
                let (r, s) = (xi / t, xi % t);
                std::array::from_fn(|kc| (tr.g[r * 3 + kc / 3] as f64 * tr.g[s * 3 + kc % 3] as f64) as f32)
            })
            .collect();
        let mut taps = vec![0.0f32; 9 * c_out];
        for i in 0..c_in {
            for (o, filter) in weight.chunks_exact(c_in * 9).enumerate() {
                for (kc, w) in filter[i * 9..(i + 1) * 9].iter().enumerate() {
                    taps[kc * c_out + o] = *w;
                }
            }
            for (xi, coef) in coef.iter().enumerate() {
                let row = &mut laid[(xi * ci_pad + i) * co_pad..][..c_out];
                for (kc, &a) in coef.iter().enumerate() {
                    if a != 0.0 {
                        row.iter_mut().zip(&taps[kc * c_out..(kc + 1) * c_out]).for_each(|(u, w)| *u += a * w);
                    }
                }
            }
        }
        let im2col = GemmConv::new(weight, [c_out, c_in, 3, 3], bias, [1, 1], [1, 1], pad)?;
        Ok(Self {
            weight: laid,
            bias: bias.map_or_else(|| vec![0.0; c_out], <[f32]>::to_vec),
            c_in,
            c_out,
            tile,
            pad,
            im2col,
        })
    }

    /// Lays out a burn convolution's weights for this kernel; refuses what it
    /// does not compute (see [`WinogradConv::applies`]; groups, `Same` padding).
    pub fn from_conv(conv: &Conv2d, tile: WinogradTile) -> Result<Self, ModelError> {
        let [_, _, kh, kw] = conv.weight.dims();
        if conv.groups != 1 || !Self::applies([kh, kw], conv.stride, conv.dilation) {
            return Err(ModelError::Invalid("Winograd convolution: only 3×3, stride 1, dilation 1, group 1".into()));
        }
        let pad = explicit_pad(&conv.padding)?;
        let w = conv.weight.val();
        let dims = w.dims();
        let bias = conv.bias.as_ref().map(|b| floats(b.val(), "convolution bias")).transpose()?;
        Self::new(&floats(w, "convolution weight")?, dims, bias.as_deref(), pad, tile)
    }

    /// The tile this convolution runs with.
    pub fn tile(&self) -> WinogradTile {
        self.tile
    }

    /// `[batch, h', w', c_out]` of the output for `x` with `pad`.
    pub fn out_dims(&self, x: &Activations, pad: [usize; 4]) -> Result<[usize; 4], ModelError> {
        let (oh, ow) = conv_out_hw((x.height, x.width), pad, [3, 3], [1, 1], [1, 1])?;
        Ok([x.batch, oh, ow, self.c_out])
    }

    /// x: [batch, h, w, c_in] → [batch, h', w', c_out] (h'/2, w'/2 with `pool2`),
    /// `epilogue(conv(x) + bias)`. `parallel`: use the rayon pool.
    pub fn forward(&self, x: &Activations, epilogue: Epilogue<'_>, parallel: bool) -> Result<Activations, ModelError> {
        self.forward_padded(x, self.pad, epilogue, parallel)
    }

    /// [`WinogradConv::forward`] with `pad` ([top, left, bottom, right])
    /// instead of the padding given at construction. A layer of fewer than
    /// [`MIN_LAYER_TILES`] tiles runs on im2col + GEMM instead.
    pub fn forward_padded(
        &self,
        x: &Activations,
        pad: [usize; 4],
        epilogue: Epilogue<'_>,
        parallel: bool,
    ) -> Result<Activations, ModelError> {
        let [_, oh, ow, _] = self.out_dims(x, pad)?;
        let m = self.tile.m();
        if x.batch * oh.div_ceil(m) * ow.div_ceil(m) < MIN_LAYER_TILES {
            return self.im2col.forward_padded(x, pad, epilogue, parallel);
        }
        self.winograd_padded(x, pad, epilogue, parallel)
    }

    /// [`WinogradConv::forward_padded`], always on Winograd.
    fn winograd_padded(
        &self,
        x: &Activations,
        pad: [usize; 4],
        epilogue: Epilogue<'_>,
        parallel: bool,
    ) -> Result<Activations, ModelError> {
        if x.channels != self.c_in {
            return Err(ModelError::Inference(format!("convolution takes {} channels, got {}", self.c_in, x.channels)));
        }
        if epilogue.pool2 && epilogue.residual.is_some() {
            return Err(ModelError::Inference("a shortcut and 2×2 pooling together are not fused".into()));
        }
        let [_, oh, ow, _] = self.out_dims(x, pad)?;
        let (ph, pw) = if epilogue.pool2 { (oh / 2, ow / 2) } else { (oh, ow) };
        check_residual(epilogue.residual, [x.batch, ph, pw, self.c_out])?;
        let m = self.tile.m();
        let t = m + 2;
        // Tiles per column and per row of an image; a tile row of an image
        // writes output rows [ty·m', (ty+1)·m') ∩ [0, ph), m' = m (m/2 pooled).
        let (th, tw) = (oh.div_ceil(m), ow.div_ceil(m));
        let m_out = if epilogue.pool2 { m / 2 } else { m };
        let tile_rows = x.batch * th;
        let threads = if parallel { rayon::current_num_threads().max(1) } else { 1 };
        let per_tile = t * t * (padded(self.c_in) + padded(self.c_out));
        let rows_per_chunk = (WINOGRAD_FLOATS / (per_tile * tw).max(1))
            .max(MIN_TILES.div_ceil(tw.max(1)))
            .min(tile_rows.div_ceil(threads))
            .max(1);
        let mut out = buffer(x.batch * ph * pw * self.c_out);
        if out.is_empty() || tile_rows == 0 {
            return Ok(Activations { data: out, batch: x.batch, height: ph, width: pw, channels: self.c_out });
        }
        // First output row (flattened over images) of tile row `r`.
        let row_of = |r: usize| (r / th) * ph + ((r % th) * m_out).min(ph);
        let mut chunks = Vec::with_capacity(tile_rows.div_ceil(rows_per_chunk));
        let mut rest: &mut [f32] = &mut out;
        for start in (0..tile_rows).step_by(rows_per_chunk) {
            let end = (start + rows_per_chunk).min(tile_rows);
            let len = (row_of(end) - row_of(start)) * pw * self.c_out;
            let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(len);
            chunks.push((start..end, chunk));
            rest = tail;
        }
        let geometry = Geometry { oh, ow, ph, pw, th, tw, pad, m_out };
        let n_chunks = chunks.len();
        if !parallel {
            chunks.into_iter().for_each(|(r, dst)| self.chunk(x, r, dst, &geometry, epilogue, false));
        } else if n_chunks < threads {
            chunks.into_iter().for_each(|(r, dst)| self.chunk(x, r, dst, &geometry, epilogue, true));
        } else {
            chunks.into_par_iter().for_each(|(r, dst)| self.chunk(x, r, dst, &geometry, epilogue, false));
        }
        Ok(Activations { data: out, batch: x.batch, height: ph, width: pw, channels: self.c_out })
    }

    /// Tile rows `rows` (flattened `(image, tile row)`) into `dst`, their
    /// output rows: input transform, t² GEMMs, output transform + epilogue.
    fn chunk(
        &self,
        x: &Activations,
        rows: Range<usize>,
        dst: &mut [f32],
        g: &Geometry,
        epilogue: Epilogue<'_>,
        parallel: bool,
    ) {
        match self.tile {
            WinogradTile::F2 => self.dispatch::<TileF2, 4, 2>(x, rows, dst, g, epilogue, parallel),
            WinogradTile::F4 => self.dispatch::<TileF4, 6, 4>(x, rows, dst, g, epilogue, parallel),
        }
    }

    /// [`WinogradConv::chunk_with`] compiled for the widest vector
    /// instructions this CPU has: the crate is built for baseline x86-64
    /// (SSE2), which would leave the transforms at 4 lanes while the GEMMs
    /// (the `gemm` crate dispatches the same way) use 16.
    #[allow(unsafe_code)]
    fn dispatch<K: Tile<T, M>, const T: usize, const M: usize>(
        &self,
        x: &Activations,
        rows: Range<usize>,
        dst: &mut [f32],
        g: &Geometry,
        epilogue: Epilogue<'_>,
        parallel: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F, checked just above.
                return unsafe { self.chunk_avx512::<K, T, M>(x, rows, dst, g, epilogue, parallel) };
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA, checked just above.
                return unsafe { self.chunk_avx2::<K, T, M>(x, rows, dst, g, epilogue, parallel) };
            }
        }
        self.chunk_with::<K, T, M>(x, rows, dst, g, epilogue, parallel)
    }

    /// [`WinogradConv::chunk_with`] with AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn chunk_avx512<K: Tile<T, M>, const T: usize, const M: usize>(
        &self,
        x: &Activations,
        rows: Range<usize>,
        dst: &mut [f32],
        g: &Geometry,
        epilogue: Epilogue<'_>,
        parallel: bool,
    ) {
        self.chunk_with::<K, T, M>(x, rows, dst, g, epilogue, parallel)
    }

    /// [`WinogradConv::chunk_with`] with AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn chunk_avx2<K: Tile<T, M>, const T: usize, const M: usize>(
        &self,
        x: &Activations,
        rows: Range<usize>,
        dst: &mut [f32],
        g: &Geometry,
        epilogue: Epilogue<'_>,
        parallel: bool,
    ) {
        self.chunk_with::<K, T, M>(x, rows, dst, g, epilogue, parallel)
    }

    /// [`WinogradConv::chunk`] for tile `K`: `T`×`T` input tiles, `M`×`M` outputs.
    #[inline(always)]
    fn chunk_with<K: Tile<T, M>, const T: usize, const M: usize>(
        &self,
        x: &Activations,
        rows: Range<usize>,
        dst: &mut [f32],
        g: &Geometry,
        epilogue: Epilogue<'_>,
        parallel: bool,
    ) {
        let (ci, co) = (self.c_in, self.c_out);
        let (ci_pad, co_pad) = (padded(ci), padded(co));
        let tiles = rows.len() * g.tw;
        // Taken out, not borrowed (see GemmConv::forward_padded). Every
        // element of both is written before it is read.
        let (mut v, mut prod) = SCRATCH.take();
        v.resize(T * T * tiles * ci_pad, 0.0);
        prod.resize(T * T * tiles * co_pad, 0.0);
        let image = x.plane() * ci;
        let tiles_of = || rows.clone().flat_map(|r| (0..g.tw).map(move |tx| (r / g.th, r % g.th, tx))).enumerate();
        // Input transform: v[ξ][j] = (Bᵀ d B)[ξ] for tile j, d its input tile
        // (zero outside the image and beyond the last channel), LANES channels at a time.
        let mut stage = [[[0.0f32; LANES]; T]; T];
        for (j, (b, ty, tx)) in tiles_of() {
            let img = &x.data[b * image..(b + 1) * image];
            let y0 = (ty * M) as isize - g.pad[0] as isize;
            let x0 = (tx * M) as isize - g.pad[1] as isize;
            // Offsets in `img` of the tile's pixels, `None` outside the image.
            let at: [[Option<usize>; T]; T] = std::array::from_fn(|r| {
                let iy = y0 + r as isize;
                std::array::from_fn(|s| {
                    let ix = x0 + s as isize;
                    let inside = iy >= 0 && iy < x.height as isize && ix >= 0 && ix < x.width as isize;
                    inside.then(|| (iy as usize * x.width + ix as usize) * ci)
                })
            });
            for c0 in (0..ci).step_by(LANES) {
                let lanes = LANES.min(ci - c0);
                // The last block of channels, when partial, is copied out zero-padded.
                if lanes < LANES {
                    for (r, row) in stage.iter_mut().enumerate() {
                        for (s, px) in row.iter_mut().enumerate() {
                            *px = [0.0; LANES];
                            if let Some(a) = at[r][s] {
                                px[..lanes].copy_from_slice(&img[a + c0..a + c0 + lanes]);
                            }
                        }
                    }
                }
                let d: [[&Lanes; T]; T] = std::array::from_fn(|r| {
                    std::array::from_fn(|s| match at[r][s] {
                        _ if lanes < LANES => &stage[r][s],
                        Some(a) => img[a + c0..].first_chunk::<LANES>().unwrap_or(&ZERO_LANES),
                        None => &ZERO_LANES,
                    })
                });
                // Per lane: columns, then rows (Bᵀ d, then (Bᵀ d) B); the
                // loop over lanes is the vector loop.
                let mut out = [[[0.0f32; LANES]; T]; T];
                for l in 0..LANES {
                    let mut tmp = [[0.0f32; T]; T];
                    for s in 0..T {
                        let col = K::input(std::array::from_fn(|r| d[r][s][l]));
                        (0..T).for_each(|i| tmp[i][s] = col[i]);
                    }
                    for i in 0..T {
                        let row = K::input(tmp[i]);
                        (0..T).for_each(|k| out[i][k][l] = row[k]);
                    }
                }
                for (i, row) in out.iter().enumerate() {
                    for (k, val) in row.iter().enumerate() {
                        let at = ((i * T + k) * tiles + j) * ci_pad + c0;
                        if let Some(dst) = v[at..].first_chunk_mut::<LANES>() {
                            *dst = *val;
                        }
                    }
                }
            }
        }
        // prod[ξ] = v[ξ] [tiles, ci_pad] × weight[ξ] [ci_pad, co_pad]
        for xi in 0..T * T {
            let lhs = &v[xi * tiles * ci_pad..(xi + 1) * tiles * ci_pad];
            let rhs = &self.weight[xi * ci_pad * co_pad..(xi + 1) * ci_pad * co_pad];
            let out = &mut prod[xi * tiles * co_pad..(xi + 1) * tiles * co_pad];
            sgemm(lhs, rhs, out, [tiles, ci_pad, co_pad], false, parallel);
        }
        // Output transform: y = Aᵀ prod A per tile, then the epilogue.
        let first_row = (rows.start / g.th) * g.ph + ((rows.start % g.th) * g.m_out).min(g.ph);
        for (j, (b, ty, tx)) in tiles_of() {
            // Output rows and columns of this tile inside the (pooled) output.
            let (oy0, ox0) = (ty * g.m_out, tx * g.m_out);
            for c0 in (0..co).step_by(LANES) {
                let lanes = LANES.min(co - c0);
                let p: [[&Lanes; T]; T] = std::array::from_fn(|i| {
                    std::array::from_fn(|k| {
                        let at = ((i * T + k) * tiles + j) * co_pad + c0;
                        prod[at..].first_chunk::<LANES>().unwrap_or(&ZERO_LANES)
                    })
                });
                // Per lane: columns, then rows (Aᵀ p, then (Aᵀ p) A).
                let mut y = [[[0.0f32; LANES]; M]; M];
                for l in 0..LANES {
                    let mut tmp = [[0.0f32; T]; M];
                    for k in 0..T {
                        let col = K::output(std::array::from_fn(|i| p[i][k][l]));
                        (0..M).for_each(|a| tmp[a][k] = col[a]);
                    }
                    for a in 0..M {
                        let row = K::output(tmp[a]);
                        (0..M).for_each(|e| y[a][e][l] = row[e]);
                    }
                }
                let bias = &self.bias[c0..c0 + lanes];
                for a in 0..g.m_out {
                    let oy = oy0 + a;
                    if oy >= g.ph {
                        break;
                    }
                    for e in 0..g.m_out {
                        let ox = ox0 + e;
                        if ox >= g.pw {
                            break;
                        }
                        let at = ((b * g.ph + oy - first_row) * g.pw + ox) * co + c0;
                        let o = &mut dst[at..at + lanes];
                        if epilogue.pool2 {
                            let (q, r) = (2 * a, 2 * e);
                            for (l, o) in o.iter_mut().enumerate() {
                                let m = max(max(y[q][r][l], y[q][r + 1][l]), max(y[q + 1][r][l], y[q + 1][r + 1][l]));
                                *o = epilogue.act.one(m + bias[l]);
                            }
                        } else {
                            // One pass over the stored output (the layer's largest stream).
                            let act = epilogue.act;
                            let ys = o.iter_mut().zip(&y[a][e]).zip(bias);
                            if let Some(res) = epilogue.residual {
                                let at = ((b * g.oh + oy) * g.ow + ox) * co + c0;
                                let res = &res.data[at..at + lanes];
                                ys.zip(res).for_each(|(((o, v), bias), r)| *o = act.one(v + bias + r));
                            } else {
                                ys.for_each(|((o, v), bias)| *o = act.one(v + bias));
                            }
                        }
                    }
                }
            }
        }
        SCRATCH.set((v, prod));
    }
}

/// Channels a Winograd transform handles at once (one AVX-512 register).
const LANES: usize = 16;

/// `LANES` channels of one tile element.
type Lanes = [f32; LANES];

/// A block of zero channels (padding, the channels past the last).
const ZERO_LANES: Lanes = [0.0; LANES];

/// `c` rounded up to whole blocks of `LANES` channels: the row stride of the
/// transformed tiles, so that every block is loaded and stored whole.
fn padded(c: usize) -> usize {
    c.next_multiple_of(LANES)
}

/// One Winograd tile's 1-D transforms, written out: `Bᵀ` on `T` values and
/// `Aᵀ` from `T` to `M` (the 2-D transforms apply them to columns, then
/// rows, one channel at a time). Tests check them against the matrices of
/// Lavin & Gray.
trait Tile<const T: usize, const M: usize> {
    /// `Bᵀ d`.
    fn input(d: [f32; T]) -> [f32; T];
    /// `Aᵀ m`.
    fn output(m: [f32; T]) -> [f32; M];
}

/// F(2×2, 3×3).
struct TileF2;
/// F(4×4, 3×3).
struct TileF4;

impl Tile<4, 2> for TileF2 {
    #[inline(always)]
    fn input(d: [f32; 4]) -> [f32; 4] {
        [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
    }

    #[inline(always)]
    fn output(m: [f32; 4]) -> [f32; 2] {
        [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]
    }
}

impl Tile<6, 4> for TileF4 {
    #[inline(always)]
    fn input(d: [f32; 6]) -> [f32; 6] {
        [
            4.0 * d[0] - 5.0 * d[2] + d[4],
            -4.0 * (d[1] + d[2]) + d[3] + d[4],
            4.0 * (d[1] - d[2]) - d[3] + d[4],
            2.0 * (d[3] - d[1]) - d[2] + d[4],
            2.0 * (d[1] - d[3]) - d[2] + d[4],
            4.0 * d[1] - 5.0 * d[3] + d[5],
        ]
    }

    #[inline(always)]
    fn output(m: [f32; 6]) -> [f32; 4] {
        let (a, b, c, d) = (m[1] + m[2], m[1] - m[2], m[3] + m[4], m[3] - m[4]);
        [m[0] + a + c, b + 2.0 * d, a + 4.0 * c, b + 8.0 * d + m[5]]
    }
}

/// Sizes a [`WinogradConv`] call shares with its chunks.
struct Geometry {
    /// Output height and width before pooling.
    oh: usize,
    ow: usize,
    /// Stored output height and width (halved by `pool2`).
    ph: usize,
    pw: usize,
    /// Tiles per column and per row of an image.
    th: usize,
    tw: usize,
    /// [top, left, bottom, right]
    pad: [usize; 4],
    /// Stored output rows (and columns) per tile.
    m_out: usize,
}

/// A group-1 convolution on the kernel chosen for it at load: Winograd where
/// it applies and is asked for, else im2col + GEMM.
#[derive(Debug, Clone)]
pub enum Conv {
    /// im2col + GEMM.
    Gemm(GemmConv),
    /// Winograd F(m×m, 3×3).
    Winograd(WinogradConv),
}

impl Conv {
    /// Lays out a burn convolution for the kernel that computes it:
    /// [`WinogradConv`] with `winograd`'s tile when it applies, else [`GemmConv`].
    pub fn from_conv(conv: &Conv2d, winograd: Option<WinogradTile>) -> Result<Self, ModelError> {
        let [_, _, kh, kw] = conv.weight.dims();
        match winograd {
            Some(tile) if conv.groups == 1 && WinogradConv::applies([kh, kw], conv.stride, conv.dilation) => {
                Ok(Conv::Winograd(WinogradConv::from_conv(conv, tile)?))
            }
            _ => Ok(Conv::Gemm(GemmConv::from_conv(conv)?)),
        }
    }

    /// x: [batch, h, w, c_in] → [batch, h', w', c_out], `epilogue(conv(x) + bias)`.
    pub fn forward(&self, x: &Activations, epilogue: Epilogue<'_>, parallel: bool) -> Result<Activations, ModelError> {
        match self {
            Conv::Gemm(c) => c.forward(x, epilogue, parallel),
            Conv::Winograd(c) => c.forward(x, epilogue, parallel),
        }
    }
}

/// A depthwise convolution (one filter per channel, ONNX `group` = channels,
/// as in MobileNet and EfficientNet) on NHWC activations: each output pixel
/// sums its kh·kw taps, every tap a vector multiply-add across the channels.
#[derive(Debug, Clone)]
pub struct DepthwiseConv {
    /// [kh·kw, channels]
    weight: Vec<f32>,
    /// [channels]
    bias: Vec<f32>,
    channels: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
}

impl DepthwiseConv {
    /// From ONNX-layout weights `[channels, 1, kh, kw]` and an optional bias.
    pub fn new(
        weight: &[f32],
        [channels, one, kh, kw]: [usize; 4],
        bias: Option<&[f32]>,
        stride: [usize; 2],
        dilation: [usize; 2],
    ) -> Result<Self, ModelError> {
        if one != 1 || weight.len() != channels * kh * kw || bias.is_some_and(|b| b.len() != channels) {
            return Err(ModelError::Invalid(format!("depthwise weights do not match [{channels}, 1, {kh}, {kw}]")));
        }
        check_geometry([kh, kw], stride, dilation)?;
        let mut laid = vec![0.0; weight.len()];
        for (c, plane) in weight.chunks_exact(kh * kw).enumerate() {
            for (tap, v) in plane.iter().enumerate() {
                laid[tap * channels + c] = *v;
            }
        }
        Ok(Self {
            weight: laid,
            bias: bias.map_or_else(|| vec![0.0; channels], <[f32]>::to_vec),
            channels,
            kernel: [kh, kw],
            stride,
            dilation,
        })
    }

    /// `[batch, h', w', channels]` of the output for `x` with `pad`.
    pub fn out_dims(&self, x: &Activations, pad: [usize; 4]) -> Result<[usize; 4], ModelError> {
        let (oh, ow) = conv_out_hw((x.height, x.width), pad, self.kernel, self.stride, self.dilation)?;
        Ok([x.batch, oh, ow, self.channels])
    }

    /// x: [batch, h, w, c] → [batch, h', w', c], `epilogue(conv(x) + bias)`
    /// (`pool2` is not supported); `pad` is [top, left, bottom, right].
    pub fn forward_padded(
        &self,
        x: &Activations,
        pad: [usize; 4],
        epilogue: Epilogue<'_>,
        parallel: bool,
    ) -> Result<Activations, ModelError> {
        let c = self.channels;
        if x.channels != c || epilogue.pool2 {
            return Err(ModelError::Inference(format!("depthwise convolution of {c} channels, got {}", x.channels)));
        }
        let dims @ [_, oh, ow, _] = self.out_dims(x, pad)?;
        check_residual(epilogue.residual, dims)?;
        // Every row starts from the bias (and shortcut), so all is written.
        let mut out = buffer(x.batch * oh * ow * c);
        let [kh, kw] = self.kernel;
        let (h, w) = (x.height, x.width);
        let row = |(r, dst): (usize, &mut [f32])| {
            let (b, oy) = (r / oh, r % oh);
            let img = &x.data[b * h * w * c..(b + 1) * h * w * c];
            if let Some(res) = epilogue.residual {
                dst.copy_from_slice(&res.data[r * ow * c..(r + 1) * ow * c]);
                for px in dst.chunks_exact_mut(c) {
                    px.iter_mut().zip(&self.bias).for_each(|(o, b)| *o += b);
                }
            } else {
                for px in dst.chunks_exact_mut(c) {
                    px.copy_from_slice(&self.bias);
                }
            }
            for ky in 0..kh {
                let Some(iy) = (oy * self.stride[0] + ky * self.dilation[0]).checked_sub(pad[0]).filter(|&y| y < h)
                else {
                    continue;
                };
                for kx in 0..kw {
                    let taps = &self.weight[(ky * kw + kx) * c..(ky * kw + kx + 1) * c];
                    for (ox, px) in dst.chunks_exact_mut(c).enumerate() {
                        let Some(ix) =
                            (ox * self.stride[1] + kx * self.dilation[1]).checked_sub(pad[1]).filter(|&v| v < w)
                        else {
                            continue;
                        };
                        let src = &img[(iy * w + ix) * c..(iy * w + ix + 1) * c];
                        for ((o, s), t) in px.iter_mut().zip(src).zip(taps) {
                            *o += s * t;
                        }
                    }
                }
            }
            epilogue.act.apply(dst);
        };
        if parallel {
            out.par_chunks_mut(ow * c).enumerate().for_each(row);
        } else {
            out.chunks_mut(ow * c).enumerate().for_each(row);
        }
        Ok(Activations { data: out, batch: x.batch, height: oh, width: ow, channels: c })
    }
}

/// `max` without `f32::max`'s NaN handling (one `maxps`; a NaN activation is
/// a bug upstream either way).
#[inline(always)]
fn max(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

/// `max(0, v)`.
#[inline(always)]
fn relu(v: f32) -> f32 {
    if v > 0.0 { v } else { 0.0 }
}

/// `v` clamped to `[lo, hi]`.
#[inline(always)]
fn clip(v: f32, lo: f32, hi: f32) -> f32 {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

/// A fully connected layer for this path: `y = x × W + b`.
#[derive(Debug, Clone)]
pub struct Dense {
    /// [inputs, outputs] (burn's `Linear` layout).
    weight: Vec<f32>,
    /// [outputs]
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Dense {
    /// From a burn `Linear`.
    pub fn from_linear(linear: &Linear) -> Result<Self, ModelError> {
        let [inputs, outputs] = linear.weight.dims();
        let weight = floats(linear.weight.val(), "linear weight")?;
        let bias = match &linear.bias {
            Some(b) => floats(b.val(), "linear bias")?,
            None => vec![0.0; outputs],
        };
        Ok(Self { weight, bias, inputs, outputs })
    }

    /// x: [batch, inputs] row-major → [batch, outputs], ReLU'd if `relu`;
    /// `parallel`: the GEMM may use the rayon pool.
    pub fn forward(&self, x: &[f32], relu: bool, parallel: bool) -> Result<Vec<f32>, ModelError> {
        if !x.len().is_multiple_of(self.inputs.max(1)) {
            return Err(ModelError::Inference(format!("linear layer takes {} inputs per row", self.inputs)));
        }
        let batch = x.len() / self.inputs.max(1);
        let mut out: Vec<f32> = self.bias.iter().copied().cycle().take(batch * self.outputs).collect();
        sgemm(x, &self.weight, &mut out, [batch, self.inputs, self.outputs], true, parallel);
        if relu {
            out.iter_mut().for_each(|o| *o = self::relu(*o));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;
    use burn::nn::LinearConfig;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::pool::MaxPool2dConfig;
    use burn::tensor::Distribution;

    fn nhwc_to_nchw(a: &Activations, device: &Device) -> Tensor<4> {
        let t =
            Tensor::<4>::from_data(TensorData::new(a.data.clone(), [a.batch, a.height, a.width, a.channels]), device);
        t.permute([0, 3, 1, 2])
    }

    fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let a = a.into_data().try_to_vec::<f32>().expect("f32");
        let b = b.into_data().try_to_vec::<f32>().expect("f32");
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// Every geometry the networks use, plus odd sizes: (c_in, c_out, k, stride, pad, h, w).
    const CASES: [(usize, usize, usize, usize, usize, usize, usize); 6] = [
        (1, 32, 5, 1, 0, 28, 28),
        (3, 16, 7, 2, 3, 23, 19),
        (8, 16, 3, 1, 1, 9, 7),
        (8, 16, 3, 2, 1, 9, 10),
        (8, 16, 1, 2, 0, 9, 10),
        (5, 4, 3, 1, 0, 4, 5),
    ];

    #[test]
    fn convolution_matches_burn_conv2d_with_bias_residual_relu_and_pooling() {
        for backend in BackendKind::all() {
            let device = backend.device();
            // Batch 3 and a batch large enough to split into several chunks per thread.
            for batch in [3, 40] {
                for (c_in, c_out, k, stride, pad, h, w) in CASES {
                    let conv = Conv2dConfig::new([c_in, c_out], [k, k])
                        .with_stride([stride, stride])
                        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                        .init(&device);
                    let x = Tensor::<4>::random([batch, c_in, h, w], Distribution::Normal(0.0, 1.0), &device);
                    let fast = GemmConv::from_conv(&conv).expect("supported");
                    let xa = Activations::from_nchw(x.clone()).expect("nhwc");
                    let reference = conv.forward(x);

                    let plain = fast.forward(&xa, Epilogue::default(), true).expect("forward");
                    assert!(max_diff(nhwc_to_nchw(&plain, &device), reference.clone()) < 1e-4, "{backend} plain");

                    let residual =
                        Activations { data: plain.data.iter().map(|v| v * 0.5 - 0.1).collect(), ..plain.clone() };
                    let fused = fast
                        .forward(&xa, Epilogue { residual: Some(&residual), act: Act::Relu, pool2: false }, false)
                        .expect("forward");
                    let expected = burn::tensor::activation::relu(reference.clone() + nhwc_to_nchw(&residual, &device));
                    assert!(max_diff(nhwc_to_nchw(&fused, &device), expected) < 1e-4, "{backend} residual + relu");

                    let pooled = fast
                        .forward(&xa, Epilogue { act: Act::Relu, pool2: true, ..Epilogue::default() }, true)
                        .expect("pool");
                    let pool = MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init();
                    let expected = pool.forward(burn::tensor::activation::relu(reference));
                    assert!(max_diff(nhwc_to_nchw(&pooled, &device), expected) < 1e-4, "{backend} relu + pool2");
                }
            }
        }
    }

    #[test]
    fn dense_matches_burn_linear() {
        for backend in BackendKind::all() {
            let device = backend.device();
            let linear = LinearConfig::new(37, 11).init(&device);
            let x = Tensor::<2>::random([5, 37], Distribution::Normal(0.0, 1.0), &device);
            let dense = Dense::from_linear(&linear).expect("dense");
            let got =
                dense.forward(&x.clone().into_data().try_to_vec::<f32>().expect("f32"), true, true).expect("forward");
            let got = Tensor::<2>::from_data(TensorData::new(got, [5, 11]), &device);
            let expected = burn::tensor::activation::relu(linear.forward(x));
            assert!(max_diff(got, expected) < 1e-5, "{backend}");
            assert!(dense.forward(&[0.0; 36], false, false).is_err(), "a ragged input is refused");
        }
    }

    #[test]
    fn max_pool_and_global_mean_match_burn() {
        for backend in BackendKind::all() {
            let device = backend.device();
            let x = Tensor::<4>::random([2, 5, 11, 8], Distribution::Normal(0.0, 1.0), &device);
            let xa = Activations::from_nchw(x.clone()).expect("nhwc");
            let pool = MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init();
            for parallel in [false, true] {
                let got = nhwc_to_nchw(&xa.max_pool(3, 2, 1, parallel).expect("pool"), &device);
                assert!(max_diff(got, pool.forward(x.clone())) < 1e-6);
            }
            let mean = x.mean_dim(3).mean_dim(2).reshape([2, 5]).into_data().try_to_vec::<f32>().expect("f32");
            let got = xa.global_mean();
            assert!(mean.iter().zip(&got).all(|(a, b)| (a - b).abs() < 1e-5), "{mean:?} vs {got:?}");
        }
    }

    #[test]
    fn unsupported_convolutions_are_refused() {
        let device = BackendKind::all()[0].device();
        let grouped = Conv2dConfig::new([4, 4], [3, 3]).with_groups(2).init(&device);
        assert!(GemmConv::from_conv(&grouped).is_err());
        let same = Conv2dConfig::new([4, 4], [3, 3]).with_padding(PaddingConfig2d::Same).init(&device);
        assert!(GemmConv::from_conv(&same).is_err());
    }

    fn random(dims: [usize; 4], device: &Device) -> Tensor<4> {
        Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), device)
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().expect("f32")
    }

    /// burn's `conv2d` with ONNX-style settings: (c_in, c_out, groups, k, stride, dilation, pads [t, l, b, r], h, w).
    type Geometry = (usize, usize, usize, [usize; 2], [usize; 2], [usize; 2], [usize; 4], usize, usize);

    const GENERAL: [Geometry; 6] = [
        (3, 8, 1, [3, 3], [1, 1], [2, 2], [2, 2, 2, 2], 11, 9),
        (4, 6, 1, [3, 2], [2, 1], [1, 1], [0, 1, 1, 0], 10, 7),
        (5, 7, 1, [1, 1], [1, 1], [1, 1], [0, 0, 0, 0], 6, 5),
        (2, 3, 1, [5, 3], [1, 3], [1, 2], [2, 1, 0, 3], 9, 12),
        (6, 6, 6, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1], 8, 9),
        (8, 8, 8, [3, 5], [2, 2], [2, 1], [0, 2, 1, 2], 13, 11),
    ];

    #[test]
    fn general_and_depthwise_convolutions_equal_burn_conv2d() {
        use burn::tensor::module::conv2d;
        use burn::tensor::ops::ConvOptions;
        for backend in BackendKind::all() {
            let device = backend.device();
            for (c_in, c_out, groups, k, stride, dilation, pad, h, w) in GENERAL {
                let x = random([3, c_in, h, w], &device);
                let wt = random([c_out, c_in / groups, k[0], k[1]], &device);
                let bias = Tensor::<1>::random([c_out], Distribution::Normal(0.0, 1.0), &device);
                let opts =
                    ConvOptions::new_with_padding(stride, [(pad[0], pad[2]), (pad[1], pad[3])], dilation, groups);
                let reference = conv2d(x.clone(), wt.clone(), Some(bias.clone()), opts);
                let shortcut = random(reference.dims(), &device);
                let expected = (reference + shortcut.clone()).clamp(-0.5, 1.0);
                let (wv, bv) = (values(wt.clone()), values(bias));
                let xa = Activations::from_nchw(x).expect("nhwc");
                let residual = Activations::from_nchw(shortcut).expect("nhwc");
                let epilogue = Epilogue { residual: Some(&residual), act: Act::Clip(-0.5, 1.0), pool2: false };
                for parallel in [false, true] {
                    let got = if groups == 1 {
                        GemmConv::new(&wv, wt.dims(), Some(&bv), stride, dilation, [0; 4])
                            .expect("conv")
                            .forward_padded(&xa, pad, epilogue, parallel)
                    } else {
                        DepthwiseConv::new(&wv, wt.dims(), Some(&bv), stride, dilation)
                            .expect("depthwise")
                            .forward_padded(&xa, pad, epilogue, parallel)
                    }
                    .expect("forward");
                    let diff = max_diff(nhwc_to_nchw(&got, &device), expected.clone());
                    assert!(diff < 1e-4, "{backend} {groups} {k:?} {stride:?} {dilation:?} {pad:?}: {diff}");
                }
            }
        }
    }

    /// 3×3 stride-1 convolutions for the Winograd kernels: (c_in, c_out, pads [t, l, b, r], h, w),
    /// sizes that are and are not multiples of the tiles, asymmetric and no padding, one pixel.
    const WINOGRAD: [(usize, usize, [usize; 4], usize, usize); 6] = [
        (8, 16, [1, 1, 1, 1], 8, 8),
        (5, 7, [1, 1, 1, 1], 9, 7),
        (3, 4, [0, 0, 0, 0], 11, 6),
        (6, 5, [2, 0, 1, 2], 5, 10),
        (16, 8, [1, 1, 1, 1], 1, 1),
        (64, 32, [1, 1, 1, 1], 14, 14),
    ];

    /// Winograd rounds differently from a direct sum (its transforms scale
    /// and cancel terms): F(2×2) stays within 1e-4 of burn's `conv2d`, F(4×4)
    /// (coefficients up to 8 and 1/24) within 1e-3, on O(1) inputs and outputs.
    fn winograd_tolerance(tile: WinogradTile) -> f32 {
        match tile {
            WinogradTile::F2 => 1e-4,
            WinogradTile::F4 => 1e-3,
        }
    }

    #[test]
    fn winograd_convolution_equals_burn_conv2d_with_shortcut_activation_and_pooling() {
        use burn::tensor::module::{conv2d, max_pool2d};
        use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
        for backend in BackendKind::all() {
            let device = backend.device();
            for tile in [WinogradTile::F2, WinogradTile::F4] {
                let tol = winograd_tolerance(tile);
                // Batch 3 and a batch that splits into several chunks per thread.
                for batch in [3, 40] {
                    for (c_in, c_out, pad, h, w) in WINOGRAD {
                        let x = random([batch, c_in, h, w], &device);
                        let wt = random([c_out, c_in, 3, 3], &device) / (3.0 * (c_in as f32).sqrt());
                        let bias = Tensor::<1>::random([c_out], Distribution::Normal(0.0, 1.0), &device);
                        let opts =
                            ConvOptions::new_with_padding([1, 1], [(pad[0], pad[2]), (pad[1], pad[3])], [1, 1], 1);
                        let reference = conv2d(x.clone(), wt.clone(), Some(bias.clone()), opts);
                        let shortcut = random(reference.dims(), &device);
                        let (wv, bv) = (values(wt.clone()), values(bias));
                        let fast = WinogradConv::new(&wv, wt.dims(), Some(&bv), pad, tile).expect("winograd");
                        let xa = Activations::from_nchw(x).expect("nhwc");
                        let residual = Activations::from_nchw(shortcut.clone()).expect("nhwc");
                        let case = format!("{backend} {tile:?} batch {batch} {c_in}→{c_out} {pad:?} {h}×{w}");
                        let case = &case;
                        // Always on Winograd, and as chosen (small layers on im2col + GEMM).
                        for (parallel, always) in [(false, true), (true, true), (true, false)] {
                            let forward = |x: &Activations, e: Epilogue<'_>, parallel: bool| {
                                if always {
                                    fast.winograd_padded(x, pad, e, parallel)
                                } else {
                                    fast.forward(x, e, parallel)
                                }
                            };
                            let plain = forward(&xa, Epilogue::default(), parallel).expect("forward");
                            let diff = max_diff(nhwc_to_nchw(&plain, &device), reference.clone());
                            assert!(diff < tol, "{case} {parallel} {always} plain: {diff}");

                            let epilogue = Epilogue { residual: Some(&residual), act: Act::Relu, pool2: false };
                            let got = forward(&xa, epilogue, parallel).expect("forward");
                            let expected = burn::tensor::activation::relu(reference.clone() + shortcut.clone());
                            let diff = max_diff(nhwc_to_nchw(&got, &device), expected);
                            assert!(diff < tol, "{case} {parallel} {always} shortcut + relu: {diff}");

                            let epilogue = Epilogue { residual: None, act: Act::Clip(-0.5, 1.0), pool2: true };
                            let got = forward(&xa, epilogue, parallel).expect("forward");
                            let [_, _, oh, ow] = reference.dims();
                            if oh >= 2 && ow >= 2 {
                                let expected =
                                    max_pool2d(reference.clone(), MaxPoolOptions::new([2, 2]).with_stride([2, 2]))
                                        .clamp(-0.5, 1.0);
                                let diff = max_diff(nhwc_to_nchw(&got, &device), expected);
                                assert!(diff < tol, "{case} {parallel} {always} clip + pool2: {diff}");
                            } else {
                                assert!(got.data.is_empty(), "{case}: pooling a 1-pixel output leaves nothing");
                            }
                        }
                    }
                }
            }
        }
    }

    /// `K`'s written-out 1-D transforms on unit vectors give the columns of `tr`'s matrices.
    fn check_tile<K: Tile<T, M>, const T: usize, const M: usize>(tr: &Transforms) {
        for n in 0..T {
            let unit: [f32; T] = std::array::from_fn(|r| if r == n { 1.0 } else { 0.0 });
            let (input, output) = (K::input(unit), K::output(unit));
            (0..T).for_each(|i| assert_eq!(input[i], tr.bt[i * T + n], "Bᵀ[{i}][{n}]"));
            (0..M).for_each(|a| assert_eq!(output[a], tr.at[a * T + n], "Aᵀ[{a}][{n}]"));
        }
    }

    #[test]
    fn written_out_winograd_transforms_equal_their_matrices() {
        check_tile::<TileF2, 4, 2>(&F2);
        check_tile::<TileF4, 6, 4>(&F4);
    }

    #[test]
    fn winograd_is_chosen_only_where_it_applies() {
        let device = BackendKind::all()[0].device();
        let conv = |k: usize, stride: usize, groups: usize| {
            Conv2dConfig::new([4, 4], [k, k])
                .with_stride([stride, stride])
                .with_groups(groups)
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(&device)
        };
        let tile = Some(WinogradTile::F4);
        assert!(matches!(Conv::from_conv(&conv(3, 1, 1), tile), Ok(Conv::Winograd(_))));
        assert!(matches!(Conv::from_conv(&conv(3, 1, 1), None), Ok(Conv::Gemm(_))), "switched off");
        assert!(matches!(Conv::from_conv(&conv(3, 2, 1), tile), Ok(Conv::Gemm(_))), "stride 2");
        assert!(matches!(Conv::from_conv(&conv(5, 1, 1), tile), Ok(Conv::Gemm(_))), "5×5");
        assert!(Conv::from_conv(&conv(3, 1, 2), tile).is_err(), "grouped: neither kernel");
        assert!(WinogradConv::new(&[0.0; 4 * 4 * 25], [4, 4, 5, 5], None, [0; 4], WinogradTile::F2).is_err());
    }

    #[test]
    fn max_pool2d_equals_burn_max_pool2d_in_floor_and_ceil_mode() {
        use burn::tensor::module::max_pool2d;
        use burn::tensor::ops::MaxPoolOptions;
        for backend in BackendKind::all() {
            let device = backend.device();
            let x = random([2, 5, 14, 13], &device);
            let xa = Activations::from_nchw(x.clone()).expect("nhwc");
            for (kernel, stride, pad, dilation) in [
                ([3, 3], [2, 2], [0, 0, 0, 0], [1, 1]),
                ([3, 3], [2, 2], [1, 1, 1, 1], [1, 1]),
                ([2, 3], [1, 2], [0, 1, 1, 0], [2, 1]),
            ] {
                for ceil_mode in [false, true] {
                    let pool = Pool { kernel, stride, pad, dilation, ceil_mode };
                    let opts = MaxPoolOptions::new(kernel)
                        .with_stride(stride)
                        .with_padding_pairs([(pad[0], pad[2]), (pad[1], pad[3])])
                        .with_dilation(dilation)
                        .with_ceil_mode(ceil_mode);
                    let expected = max_pool2d(x.clone(), opts);
                    let got = nhwc_to_nchw(&xa.max_pool2d(&pool, true).expect("pool"), &device);
                    assert!(max_diff(got, expected) < 1e-6, "{backend} {pool:?}");
                }
            }
        }
    }

    #[test]
    fn layouts_round_trip_and_channel_concat_equals_burn_cat() {
        for backend in BackendKind::all() {
            let device = backend.device();
            let (a, b) = (random([2, 3, 4, 5], &device), random([2, 6, 4, 5], &device));
            let (xa, xb) =
                (Activations::from_nchw(a.clone()).expect("a"), Activations::from_nchw(b.clone()).expect("b"));
            assert_eq!(xa.to_nchw(), values(a.clone()));
            let cat = Activations::concat_channels(&[&xa, &xb]).expect("same batch and size");
            assert_eq!(cat.to_nchw(), values(Tensor::cat(vec![a, b], 1)));
            let other = Activations::from_nchw(random([2, 3, 4, 6], &device)).expect("c");
            assert!(Activations::concat_channels(&[&xa, &other]).is_none(), "different widths are refused");
        }
    }
}
