//! Encoded image bytes → model input ([`Chw`]).
//!
//! PNG, JPEG, WebP, GIF (first frame) and BMP through the `image` crate. The
//! encoded size is checked first, then the dimensions read from the header
//! alone, and only then is the image decoded, under `image`'s own allocation
//! limits as a second fence: a small file that claims 100000×100000 pixels is
//! refused with `too_large` without allocating its pixels.
//!
//! Then: colour conversion (grayscale or RGB), a resize to the model's input
//! size (triangle filter), optional inversion, per-channel normalisation. The
//! resize either stretches to the input size (aspect ratio not kept; skipped
//! when the size already matches, so an MNIST image encoded as PNG gives
//! exactly the training tensor) or, for the `resnet18` architecture, scales
//! the shorter side to input/0.875 with the aspect ratio kept and crops the
//! centre: torchvision's ImageNet evaluation transform, `Resize(256)` +
//! `CenterCrop(224)`, which torchvision-trained weights expect.

use crate::manifest::{ChannelOrder, Channels, Manifest, ResizePolicy};
use image::imageops::FilterType;
use image::{DynamicImage, ImageBuffer, ImageError, ImageReader, Pixel};
use scorefleet_core::error::{ErrorKind, JobError};
use scorefleet_core::traits::{Chw, Preprocessor};
use std::io::Cursor;

/// Limits on untrusted images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded object accepted, in bytes.
    pub max_encoded_bytes: usize,
    /// Largest decoded image accepted, in pixels (width × height).
    pub max_pixels: u64,
}

impl Default for Limits {
    /// 20 MB encoded, 40 megapixels decoded (a 6000×6000 photo fits; RGBA8 at 40 MP is 160 MB).
    fn default() -> Self {
        Self { max_encoded_bytes: 20 << 20, max_pixels: 40_000_000 }
    }
}

/// Decodes and preprocesses images for one model.
#[derive(Debug, Clone)]
pub struct ImagePreprocessor {
    /// `[channels, height, width]` produced.
    shape: [usize; 3],
    channels: Channels,
    mean: Vec<f32>,
    std: Vec<f32>,
    invert: bool,
    /// How the image reaches the input size.
    fit: Fit,
    /// Channels in B, G, R order.
    bgr: bool,
    /// Pixels are `[0, pixel_scale]` before `mean`/`std`.
    pixel_scale: f32,
    limits: Limits,
}

/// The resize step, with its sizes worked out.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fit {
    Stretch,
    /// The shorter side to this many pixels, then the centre crop.
    ShorterSide(u32),
    /// Scaled to fit, centred on this fill.
    Letterbox(u8),
}

impl ImagePreprocessor {
    /// The preprocessing a manifest describes (the manifest was checked on load).
    pub fn from_manifest(manifest: &Manifest, limits: Limits) -> Self {
        Self {
            shape: manifest.input_shape,
            channels: manifest.channels,
            mean: manifest.mean.clone(),
            std: manifest.std.clone(),
            invert: manifest.invert,
            fit: fit_of(manifest),
            bgr: manifest.channel_order == ChannelOrder::Bgr,
            pixel_scale: manifest.pixel_scale,
            limits,
        }
    }

    /// The `[channels, height, width]` this produces.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Decodes under the limits, without any model-specific step.
    pub fn decode(&self, bytes: &[u8]) -> Result<DynamicImage, JobError> {
        decode_limited(bytes, self.limits)
    }
}

/// Decodes `bytes`, checking the encoded size and the header's dimensions before decoding.
pub fn decode_limited(bytes: &[u8], limits: Limits) -> Result<DynamicImage, JobError> {
    if bytes.len() > limits.max_encoded_bytes {
        return Err(JobError::new(
            ErrorKind::TooLarge,
            format!("{} encoded bytes, limit {}", bytes.len(), limits.max_encoded_bytes),
        ));
    }
    if bytes.is_empty() {
        return Err(JobError::new(ErrorKind::Decode, "empty object"));
    }
    let reader = || -> Result<ImageReader<Cursor<&[u8]>>, JobError> {
        let r = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| JobError::new(ErrorKind::Decode, format!("reading the header: {e}")))?;
        if r.format().is_none() {
            return Err(JobError::new(ErrorKind::Decode, "not a PNG, JPEG, WebP, GIF or BMP image"));
        }
        Ok(r)
    };
    let (w, h) = reader()?.into_dimensions().map_err(to_job_error)?;
    let pixels = w as u64 * h as u64;
    if pixels > limits.max_pixels {
        return Err(JobError::new(
            ErrorKind::TooLarge,
            format!("{w}×{h} = {pixels} pixels, limit {}", limits.max_pixels),
        ));
    }
    if pixels == 0 {
        return Err(JobError::new(ErrorKind::Decode, format!("{w}×{h} image")));
    }
    let mut r = reader()?;
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(w);
    lim.max_image_height = Some(h);
    // Room for 16-bit RGBA plus the decoder's working buffers.
    lim.max_alloc = Some(pixels.saturating_mul(8).saturating_add(64 << 20));
    r.limits(lim);
    r.decode().map_err(to_job_error)
}

fn to_job_error(e: ImageError) -> JobError {
    match e {
        ImageError::Limits(l) => JobError::new(ErrorKind::TooLarge, format!("decoder limit: {l}")),
        other => JobError::new(ErrorKind::Decode, other.to_string()),
    }
}

impl Preprocessor for ImagePreprocessor {
    fn preprocess(&self, bytes: &[u8]) -> Result<Chw, JobError> {
        let img = self.decode(bytes)?;
        Ok(self.to_chw(img))
    }
}

impl ImagePreprocessor {
    /// Colour conversion, resize and normalisation of a decoded image.
    pub fn to_chw(&self, img: DynamicImage) -> Chw {
        let [c, h, w] = self.shape;
        let (tw, th) = (w as u32, h as u32);
        let mut data = vec![0f32; c * h * w];
        let norm = |ch: usize, p: u8| {
            let v = p as f32 / 255.0;
            let v = if self.invert { 1.0 - v } else { v };
            let v = v * self.pixel_scale;
            (v - self.mean[ch]) / self.std[ch]
        };
        match self.channels {
            Channels::Grayscale => {
                let g = fit(img.to_luma8(), tw, th, self.fit);
                for (d, p) in data.iter_mut().zip(g.as_raw()) {
                    *d = norm(0, *p);
                }
            }
            Channels::Rgb => {
                let rgb = fit(img.to_rgb8(), tw, th, self.fit);
                let plane = h * w;
                for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
                    for ch in 0..3 {
                        let src = if self.bgr { 2 - ch } else { ch };
                        data[ch * plane + i] = norm(ch, px[src]);
                    }
                }
            }
        }
        Chw { shape: self.shape, data }
    }
}

/// The manifest's resize policy with its sizes: `shorter_side_crop` resizes
/// the shorter side to input / crop_fraction (torchvision's evaluation
/// transform: 256 for a 224 crop at the default 0.875).
fn fit_of(manifest: &Manifest) -> Fit {
    match manifest.resize_policy() {
        ResizePolicy::Stretch => Fit::Stretch,
        ResizePolicy::ShorterSideCrop => {
            let side = manifest.input_shape[1].max(manifest.input_shape[2]) as f64;
            Fit::ShorterSide((side / manifest.crop_fraction.unwrap_or(0.875) as f64).round() as u32)
        }
        ResizePolicy::Letterbox => Fit::Letterbox(manifest.pad_value),
    }
}

/// `img` at `tw`×`th`: stretched, or with `shorter_side` scaled (aspect kept) so
/// its shorter side is that long, then the centre cropped (torchvision's
/// `Resize` + `CenterCrop`: the long side is truncated, the crop offset rounded).
fn fit<P: Pixel<Subpixel = u8> + 'static>(
    img: ImageBuffer<P, Vec<u8>>,
    tw: u32,
    th: u32,
    fit: Fit,
) -> ImageBuffer<P, Vec<u8>> {
    let (w, h) = img.dimensions();
    let side = match fit {
        Fit::Stretch => {
            return if (w, h) == (tw, th) { img } else { image::imageops::resize(&img, tw, th, FilterType::Triangle) };
        }
        Fit::Letterbox(fill) => return letterbox(img, tw, th, fill),
        Fit::ShorterSide(side) => side,
    };
    let (rw, rh) = if w <= h {
        (side, ((side as u64 * h as u64) / w as u64).max(1) as u32)
    } else {
        (((side as u64 * w as u64) / h as u64).max(1) as u32, side)
    };
    let resized = if (rw, rh) == (w, h) { img } else { image::imageops::resize(&img, rw, rh, FilterType::Triangle) };
    // side ≥ tw, th (input/0.875), so the crop fits.
    let left = ((rw.saturating_sub(tw)) as f64 / 2.0).round() as u32;
    let top = ((rh.saturating_sub(th)) as f64 / 2.0).round() as u32;
    image::imageops::crop_imm(&resized, left, top, tw.min(rw), th.min(rh)).to_image()
}

/// `img` scaled to fit `tw`×`th` with its aspect ratio, centred on `fill`.
fn letterbox<P: Pixel<Subpixel = u8> + 'static>(
    img: ImageBuffer<P, Vec<u8>>,
    tw: u32,
    th: u32,
    fill: u8,
) -> ImageBuffer<P, Vec<u8>> {
    let (w, h) = img.dimensions();
    let s = (tw as f64 / w as f64).min(th as f64 / h as f64);
    let (rw, rh) = (((w as f64 * s).round() as u32).clamp(1, tw), ((h as f64 * s).round() as u32).clamp(1, th));
    let resized = if (rw, rh) == (w, h) { img } else { image::imageops::resize(&img, rw, rh, FilterType::Triangle) };
    let mut canvas = ImageBuffer::from_pixel(tw, th, *P::from_slice(&[fill; 4][..P::CHANNEL_COUNT as usize]));
    image::imageops::replace(&mut canvas, &resized, ((tw - rw) / 2) as i64, ((th - rh) / 2) as i64);
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, ImageFormat, Luma, Rgb, Rgba};

    fn gray28() -> ImagePreprocessor {
        ImagePreprocessor {
            shape: [1, 28, 28],
            channels: Channels::Grayscale,
            mean: vec![0.5],
            std: vec![0.5],
            invert: false,
            fit: Fit::Stretch,
            bgr: false,
            pixel_scale: 1.0,
            limits: Limits::default(),
        }
    }

    fn rgb(side: usize) -> ImagePreprocessor {
        ImagePreprocessor {
            shape: [3, side, side],
            channels: Channels::Rgb,
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
            invert: false,
            fit: Fit::Stretch,
            bgr: false,
            pixel_scale: 1.0,
            limits: Limits::default(),
        }
    }

    /// A 600×300 RGB image: red left third, green middle third, blue right third.
    fn thirds() -> DynamicImage {
        DynamicImage::ImageRgb8(ImageBuffer::from_fn(600, 300, |x, _| match x / 200 {
            0 => Rgb([255, 0, 0]),
            1 => Rgb([0, 255, 0]),
            _ => Rgb([0, 0, 255]),
        }))
    }

    #[test]
    fn shorter_side_resize_keeps_the_aspect_and_crops_the_centre() {
        // 600×300 → 512×256 → centre 224×224 is columns 144..368 of 512: the
        // green third is 170.7..341.3, so the crop is red | green | blue with
        // green in the middle and no stretching.
        let pre = ImagePreprocessor { fit: Fit::ShorterSide(256), ..rgb(224) };
        let chw = pre.preprocess(&encode(&thirds(), ImageFormat::Png)).expect("preprocess");
        assert_eq!(chw.shape, [3, 224, 224]);
        let plane = 224 * 224;
        let at = |ch: usize, x: usize| chw.data[ch * plane + 112 * 224 + x];
        // Centre column: pure green.
        assert!(at(1, 112) > 0.99 && at(0, 112) < 0.01 && at(2, 112) < 0.01);
        // 512-wide image: red ends at 170.7 → crop column 26; blue starts at 341.3 → crop column 197.
        assert!(at(0, 10) > 0.99, "left edge is red");
        assert!(at(2, 215) > 0.99, "right edge is blue");
        assert!(at(1, 40) > 0.99 && at(1, 185) > 0.99, "green spans 27..197");
        // Stretching instead would put the red/green edge at 224/3 ≈ 75.
        let stretched = rgb(224).preprocess(&encode(&thirds(), ImageFormat::Png)).expect("preprocess");
        assert!(stretched.data[112 * 224 + 40] > 0.99, "stretched: column 40 is still red");
    }

    #[test]
    fn resnet18_manifests_get_the_torchvision_transform_and_digits_stretches() {
        let manifest = |architecture: &str, shape: [usize; 3]| Manifest {
            name: "m".into(),
            architecture: architecture.into(),
            input_shape: shape,
            channels: Channels::Rgb,
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
            invert: false,
            labels: vec!["x".into()],
            labels_file: None,
            weights: "w.safetensors".into(),
            sha256: "0".repeat(64),
            notes: None,
            ..Manifest::default()
        };
        let pre = |m: Manifest| ImagePreprocessor::from_manifest(&m, Limits::default()).fit;
        assert_eq!(pre(manifest("resnet18", [3, 224, 224])), Fit::ShorterSide(256));
        assert_eq!(pre(manifest("resnet18", [3, 112, 112])), Fit::ShorterSide(128));
        assert_eq!(pre(manifest("digits", [3, 28, 28])), Fit::Stretch);
        // A stated policy wins over the architecture's; the crop fraction sets the side.
        let m = Manifest {
            resize: Some(ResizePolicy::ShorterSideCrop),
            crop_fraction: Some(0.5),
            ..manifest("x", [3, 100, 100])
        };
        assert_eq!(pre(m), Fit::ShorterSide(200));
        let m = Manifest { resize: Some(ResizePolicy::Letterbox), pad_value: 114, ..manifest("resnet18", [3, 64, 64]) };
        assert_eq!(pre(m), Fit::Letterbox(114));
    }

    #[test]
    fn letterbox_keeps_the_aspect_ratio_and_centres_the_image_on_the_fill() {
        // 600×300 into 100×100: scaled to 100×50, rows 25..75, the rest fill.
        let pre = ImagePreprocessor { fit: Fit::Letterbox(0), ..rgb(100) };
        let chw = pre.preprocess(&encode(&thirds(), ImageFormat::Png)).expect("preprocess");
        let plane = 100 * 100;
        let at = |ch: usize, x: usize, y: usize| chw.data[ch * plane + y * 100 + x];
        assert!(at(0, 10, 50) > 0.99 && at(1, 50, 50) > 0.99 && at(2, 90, 50) > 0.99, "thirds in the middle band");
        for ch in 0..3 {
            assert!(at(ch, 50, 10) < 0.01 && at(ch, 50, 90) < 0.01, "top and bottom bands are the fill");
        }
    }

    #[test]
    fn bgr_order_and_a_byte_pixel_scale_feed_caffe_style_inputs() {
        // Pure red, BGR on [0, 255] with mean 100: channel 0 (blue) = -100, channel 2 (red) = 155.
        let red = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(4, 4, Rgb([255, 0, 0])));
        let pre = ImagePreprocessor { bgr: true, pixel_scale: 255.0, mean: vec![100.0; 3], ..rgb(4) };
        let chw = pre.preprocess(&encode(&red, ImageFormat::Png)).expect("preprocess");
        assert!((chw.data[0] + 100.0).abs() < 1e-3, "blue first: {}", chw.data[0]);
        assert!((chw.data[2 * 16] - 155.0).abs() < 1e-3, "red last: {}", chw.data[2 * 16]);
    }

    #[test]
    fn shorter_side_resize_of_a_portrait_image_and_an_exact_fit() {
        // Portrait 100×300 → 256×768 → centre rows 272..496.
        let img = DynamicImage::ImageRgb8(ImageBuffer::from_fn(100, 300, |_, y| {
            if y < 150 { Rgb([255, 255, 255]) } else { Rgb([0, 0, 0]) }
        }));
        let pre = ImagePreprocessor { fit: Fit::ShorterSide(256), ..rgb(224) };
        let chw = pre.preprocess(&encode(&img, ImageFormat::Png)).expect("preprocess");
        assert_eq!(chw.shape, [3, 224, 224]);
        // The edge at 384 of 768 is row 112 of the crop: white above, black below.
        assert!(chw.data[100 * 224 + 5] > 0.99 && chw.data[124 * 224 + 5] < 0.01);
        // An image already 256 on its short side is only cropped.
        let exact = DynamicImage::ImageRgb8(ImageBuffer::from_fn(256, 256, |x, y| Rgb([x as u8, y as u8, 0])));
        let chw = pre.preprocess(&encode(&exact, ImageFormat::Png)).expect("preprocess");
        assert_eq!(chw.data[0], 16.0 / 255.0, "crop starts at column 16");
        assert_eq!(chw.data[224 * 224], 16.0 / 255.0, "and row 16");
    }

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).expect("encode");
        out.into_inner()
    }

    fn png_gray(w: u32, h: u32, v: u8) -> Vec<u8> {
        encode(&DynamicImage::ImageLuma8(ImageBuffer::from_pixel(w, h, Luma([v]))), ImageFormat::Png)
    }

    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        c.extend_from_slice(&crc.sum().to_be_bytes());
        c
    }

    /// A PNG whose IHDR claims `w`×`h` RGBA8 pixels, with one tiny IDAT and no real data.
    fn png_header_only(w: u32, h: u32) -> Vec<u8> {
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(chunk(b"IHDR", &ihdr));
        png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
        png.extend(chunk(b"IEND", &[]));
        png
    }

    #[test]
    fn a_png_of_the_right_size_is_normalised_without_resizing() {
        let chw = gray28().preprocess(&png_gray(28, 28, 255)).expect("decode");
        assert_eq!(chw.shape, [1, 28, 28]);
        assert_eq!(chw.data.len(), 784);
        assert!(chw.data.iter().all(|v| (*v - 1.0).abs() < 1e-6), "(1 - 0.5) / 0.5 = 1");
    }

    #[test]
    fn a_one_pixel_image_is_resized_to_the_input() {
        let chw = rgb(8).preprocess(&png_gray(1, 1, 0)).expect("decode");
        assert_eq!(chw.shape, [3, 8, 8]);
        assert!(chw.data.iter().all(|v| v.abs() < 1e-6));
    }

    #[test]
    fn rgb_planes_are_channel_major() {
        let img = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(4, 4, Rgb([255, 0, 51])));
        let chw = rgb(4).preprocess(&encode(&img, ImageFormat::Png)).expect("decode");
        assert!(chw.data[..16].iter().all(|v| (*v - 1.0).abs() < 1e-6));
        assert!(chw.data[16..32].iter().all(|v| v.abs() < 1e-6));
        assert!(chw.data[32..].iter().all(|v| (*v - 0.2).abs() < 1e-6));
    }

    #[test]
    fn jpeg_webp_bmp_and_gif_decode() {
        let img = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(16, 16, Rgb([200, 200, 200])));
        for format in [ImageFormat::Jpeg, ImageFormat::WebP, ImageFormat::Bmp, ImageFormat::Gif] {
            let bytes = encode(&img, format);
            let chw = rgb(16).preprocess(&bytes).unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert!(chw.data.iter().all(|v| (*v - 200.0 / 255.0).abs() < 0.05), "{format:?}");
        }
    }

    #[test]
    fn sixteen_bit_png_decodes_to_the_same_scale() {
        let img = DynamicImage::ImageLuma16(ImageBuffer::from_pixel(28, 28, Luma([65535u16])));
        let chw = gray28().preprocess(&encode(&img, ImageFormat::Png)).expect("decode");
        assert!(chw.data.iter().all(|v| (*v - 1.0).abs() < 1e-6));
    }

    #[test]
    fn an_animated_gif_gives_its_first_frame() {
        use image::Frame;
        use image::codecs::gif::GifEncoder;
        let mut bytes = Vec::new();
        {
            let mut enc = GifEncoder::new(&mut bytes);
            let red = Frame::new(ImageBuffer::from_pixel(4, 4, Rgba([255, 0, 0, 255])));
            let blue = Frame::new(ImageBuffer::from_pixel(4, 4, Rgba([0, 0, 255, 255])));
            enc.encode_frames([red, blue]).expect("gif");
        }
        let chw = rgb(4).preprocess(&bytes).expect("decode");
        assert!(chw.data[..16].iter().all(|v| *v > 0.9), "red plane of the first frame");
        assert!(chw.data[32..].iter().all(|v| *v < 0.1), "no blue from the second frame");
    }

    #[test]
    fn truncated_text_and_empty_bytes_are_decode_errors() {
        let png = png_gray(28, 28, 10);
        for bad in [&png[..png.len() / 2], b"hello, I am not an image".as_slice(), &[], &[0u8; 64]] {
            let err = gray28().preprocess(bad).expect_err("must fail");
            assert_eq!(err.kind, ErrorKind::Decode, "{err}");
        }
    }

    #[test]
    fn a_huge_header_is_too_large_before_any_decode() {
        let bomb = png_header_only(100_000, 100_000);
        assert!(bomb.len() < 100);
        let err = gray28().preprocess(&bomb).expect_err("must refuse");
        assert_eq!(err.kind, ErrorKind::TooLarge, "{err}");
        assert!(err.message.contains("100000×100000"), "{err}");
    }

    #[test]
    fn encoded_size_limit_is_checked_first() {
        let mut pre = gray28();
        pre.limits.max_encoded_bytes = 10;
        let err = pre.preprocess(&png_gray(28, 28, 0)).expect_err("too big");
        assert_eq!(err.kind, ErrorKind::TooLarge);
    }

    #[test]
    fn pixel_limit_refuses_a_real_image_just_over_it() {
        let mut pre = gray28();
        pre.limits.max_pixels = 28 * 28 - 1;
        let err = pre.preprocess(&png_gray(28, 28, 0)).expect_err("too many pixels");
        assert_eq!(err.kind, ErrorKind::TooLarge);
        pre.limits.max_pixels = 28 * 28;
        assert!(pre.preprocess(&png_gray(28, 28, 0)).is_ok());
    }
}
