//! The inference path: channels-last activations, every convolution as
//! im2col + one GEMM (the `gemm` crate, which burn-flex's own matmul runs on)
//! per chunk of output rows, with bias, residual, ReLU and 2×2 max-pooling
//! fused around it.
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
            let mut out = vec![0.0; src.len()];
            for (img_out, img_in) in out.chunks_exact_mut(channels * plane).zip(src.chunks_exact(channels * plane)) {
                for (c, ch) in img_in.chunks_exact(plane).enumerate() {
                    for (p, v) in ch.iter().enumerate() {
                        img_out[p * channels + c] = *v;
                    }
                }
            }
            out
        };
        Self { data, batch, height, width, channels }
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
    pub fn max_pool(&self, k: usize, s: usize, p: usize, parallel: bool) -> Activations {
        let (c, h, w) = (self.channels, self.height, self.width);
        let oh = (h + 2 * p - k) / s + 1;
        let ow = (w + 2 * p - k) / s + 1;
        let mut out = vec![f32::NEG_INFINITY; self.batch * oh * ow * c];
        let pool_row = |(row, dst): (usize, &mut [f32])| {
            let (b, oy) = (row / oh, row % oh);
            let img = &self.data[b * h * w * c..(b + 1) * h * w * c];
            for ky in 0..k {
                let Some(iy) = (oy * s + ky).checked_sub(p).filter(|&y| y < h) else { continue };
                for (ox, px) in dst.chunks_exact_mut(c).enumerate() {
                    for kx in 0..k {
                        let Some(ix) = (ox * s + kx).checked_sub(p).filter(|&x| x < w) else { continue };
                        let src = &img[(iy * w + ix) * c..(iy * w + ix + 1) * c];
                        px.iter_mut().zip(src).for_each(|(m, v)| *m = max(*m, *v));
                    }
                }
            }
        };
        if parallel {
            out.par_chunks_mut(ow * c).enumerate().for_each(pool_row);
        } else {
            out.chunks_mut(ow * c).enumerate().for_each(pool_row);
        }
        Activations { data: out, batch: self.batch, height: oh, width: ow, channels: c }
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

/// What happens to a convolution's output before it is stored.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Added after the bias (the ResNet shortcut), same shape as the output.
    pub residual: Option<&'a Activations>,
    /// `max(0, ·)` last.
    pub relu: bool,
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
    /// (top, left); bottom and right equal them (checked at load).
    pad: [usize; 2],
}

/// A tensor's values as `f32`s (weights at load).
fn floats<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<f32>, ModelError> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| ModelError::Invalid(format!("{what}: {e:?}")))
}

impl GemmConv {
    /// Lays out a burn convolution's weights for this path. Refuses what it does
    /// not implement (groups, dilation, asymmetric or `Same` padding).
    pub fn from_conv(conv: &Conv2d) -> Result<Self, ModelError> {
        let unsupported = |what: &str| ModelError::Invalid(format!("NHWC convolution: {what} is not supported"));
        if conv.groups != 1 {
            return Err(unsupported("groups"));
        }
        if conv.dilation != [1, 1] {
            return Err(unsupported("dilation"));
        }
        let pad = match conv.padding {
            PaddingConfig2d::Valid => [0, 0],
            PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => [top, left],
            _ => return Err(unsupported("asymmetric or `Same` padding")),
        };
        let w = conv.weight.val();
        let [c_out, c_in, kh, kw] = w.dims();
        // [c_out, c_in, kh, kw] → [kh, kw, c_in, c_out] → [kh·kw·c_in, c_out]
        let weight = floats(w.permute([2, 3, 1, 0]).reshape([kh * kw * c_in, c_out]), "convolution weight")?;
        let bias = match &conv.bias {
            Some(b) => floats(b.val(), "convolution bias")?,
            None => vec![0.0; c_out],
        };
        Ok(Self { weight, bias, c_in, c_out, kernel: [kh, kw], stride: conv.stride, pad })
    }

    /// Output height and width for an input of `h`×`w`.
    fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let o = |n: usize, i: usize| (n + 2 * self.pad[i]).saturating_sub(self.kernel[i]) / self.stride[i] + 1;
        (o(h, 0), o(w, 1))
    }

    /// x: [batch, h, w, c_in] → [batch, h', w', c_out] (h'/2, w'/2 with `pool2`),
    /// `epilogue(conv(x) + bias)`. `parallel`: use the rayon pool (else this
    /// thread only, for callers that already run one part of a batch per thread).
    pub fn forward(&self, x: &Activations, epilogue: Epilogue<'_>, parallel: bool) -> Result<Activations, ModelError> {
        if x.channels != self.c_in {
            return Err(ModelError::Inference(format!("convolution takes {} channels, got {}", self.c_in, x.channels)));
        }
        let (oh, ow) = self.out_hw(x.height, x.width);
        let k = self.kernel[0] * self.kernel[1] * self.c_in;
        let rows = x.batch * oh * ow;
        let (ph, pw) = if epilogue.pool2 { (oh / 2, ow / 2) } else { (oh, ow) };
        if let Some(r) = epilogue.residual
            && (r.batch, r.height, r.width, r.channels) != (x.batch, ph, pw, self.c_out)
        {
            return Err(ModelError::Inference("residual shape differs from the convolution output".into()));
        }
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
        let mut out = vec![0.0f32; x.batch * ph * pw * self.c_out];
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
                self.im2col(x, range, (oh, ow), &mut col);
                if epilogue.pool2 {
                    tmp.resize(n * self.c_out, 0.0);
                    sgemm(&col, &self.weight, &mut tmp, [n, k, self.c_out], false, parallel);
                    self.pool_bias(&tmp, dst, (oh, ow), epilogue.relu);
                } else {
                    // dst = bias (+ shortcut), then dst += patches × weights.
                    for o in dst.chunks_exact_mut(self.c_out) {
                        o.copy_from_slice(&self.bias);
                    }
                    if let Some(res) = epilogue.residual {
                        let res = &res.data[start * self.c_out..start * self.c_out + dst.len()];
                        dst.iter_mut().zip(res).for_each(|(o, r)| *o += r);
                    }
                    sgemm(&col, &self.weight, dst, [n, k, self.c_out], true, parallel);
                    if epilogue.relu {
                        dst.iter_mut().for_each(|o| *o = relu(*o));
                    }
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
    fn im2col(&self, x: &Activations, range: Range<usize>, (oh, ow): (usize, usize), col: &mut Vec<f32>) {
        let [kh, kw] = self.kernel;
        let c = x.channels;
        // A kernel row is kw·c consecutive floats of one input row (NHWC).
        let seg = kw * c;
        let k = kh * seg;
        // Every element is written below (copies or padding zeros), so the
        // reused buffer is only grown, never cleared.
        col.resize(range.len() * k, 0.0);
        let image = x.plane() * c;
        let (mut b, mut oy, mut ox) = (range.start / (oh * ow), (range.start / ow) % oh, range.start % ow);
        for dst in col.chunks_exact_mut(k) {
            let img = &x.data[b * image..(b + 1) * image];
            // Columns of the window inside the image: kx_lo..kx_hi.
            let x0 = (ox * self.stride[1]) as isize - self.pad[1] as isize;
            let kx_lo = (-x0).clamp(0, kw as isize) as usize;
            let kx_hi = (x.width as isize - x0).clamp(0, kw as isize) as usize;
            let y0 = (oy * self.stride[0]) as isize - self.pad[0] as isize;
            for (ky, d) in dst.chunks_exact_mut(seg).enumerate() {
                let iy = y0 + ky as isize;
                if iy < 0 || iy >= x.height as isize || kx_lo >= kx_hi {
                    d.fill(0.0);
                    continue;
                }
                let src0 = ((iy as usize * x.width) as isize + x0 + kx_lo as isize) as usize * c;
                d[..kx_lo * c].fill(0.0);
                d[kx_lo * c..kx_hi * c].copy_from_slice(&img[src0..src0 + (kx_hi - kx_lo) * c]);
                d[kx_hi * c..].fill(0.0);
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

    /// `dst = pool2(y) + bias` (then ReLU if `relu`): y holds whole images
    /// [n, oh, ow, c_out]; dst [n, oh/2, ow/2, c_out]. (Max-pooling commutes
    /// with adding a per-channel constant.)
    fn pool_bias(&self, y: &[f32], dst: &mut [f32], (oh, ow): (usize, usize), relu_after: bool) {
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
                let v = max(max(a[i], b[i]), max(cc[i], d[i])) + self.bias[i];
                *o = if relu_after { relu(v) } else { v };
            }
        }
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
                        .forward(&xa, Epilogue { residual: Some(&residual), relu: true, pool2: false }, false)
                        .expect("forward");
                    let expected = burn::tensor::activation::relu(reference.clone() + nhwc_to_nchw(&residual, &device));
                    assert!(max_diff(nhwc_to_nchw(&fused, &device), expected) < 1e-4, "{backend} residual + relu");

                    let pooled = fast
                        .forward(&xa, Epilogue { relu: true, pool2: true, ..Epilogue::default() }, true)
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
                let got = nhwc_to_nchw(&xa.max_pool(3, 2, 1, parallel), &device);
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
        let dilated = Conv2dConfig::new([4, 4], [3, 3]).with_dilation([2, 2]).init(&device);
        assert!(GemmConv::from_conv(&dilated).is_err());
        let same = Conv2dConfig::new([4, 4], [3, 3]).with_padding(PaddingConfig2d::Same).init(&device);
        assert!(GemmConv::from_conv(&same).is_err());
    }
}
