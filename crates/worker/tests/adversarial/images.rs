//! Image bytes: broken, bombs, odd formats and colour types, and the
//! builders that make them.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    use ErrorKind::*;
    let mut c = vec![
        case("zero bytes", img(vec![]), Fails(Decode)),
        case("PNG signature only", img(b"\x89PNG\r\n\x1a\n".to_vec()), Fails(Decode)),
        case(
            "PNG cut in half",
            img({
                let p = png(16, 16);
                p[..p.len() / 2].to_vec()
            }),
            Fails(Decode),
        ),
        case(
            "PNG with a bad CRC",
            img({
                let mut p = png(4, 4);
                p[30] ^= 0xff;
                p
            }),
            Fails(Decode),
        ),
        case(
            "JPEG cut after the header",
            img({
                let j = encode(&rgb8(16, 16, [1, 2, 3]), image::ImageFormat::Jpeg);
                j[..j.len() / 3].to_vec()
            }),
            Fails(Decode),
        ),
        case(
            "GIF cut in half",
            img({
                let g = gif_frames(&[[1, 2, 3, 255]]);
                g[..g.len() / 2].to_vec()
            }),
            Fails(Decode),
        ),
        case("1×1 PNG", img(png(1, 1)), Scored),
        case("0×0 PNG", img(png_claiming(0, 0)), Fails(Decode)),
        case("PNG claiming 100000×100000", img(png_claiming(100_000, 100_000)), Fails(TooLarge)),
        case("PNG claiming 1×40000001 (just over 40 MP)", img(png_claiming(1, 40_000_001)), Fails(TooLarge)),
        case(
            "GIF claiming 65535×65535",
            img(gif_claiming((u16::MAX, u16::MAX), (u16::MAX, u16::MAX))),
            Fails(TooLarge),
        ),
        case("GIF: 4×4 screen, 60000×60000 first frame", img(gif_claiming((4, 4), (60_000, 60_000))), Fails(TooLarge)),
        case("JPEG claiming 65500×65500", img(jpeg_claiming(65_500, 65_500)), Fails(TooLarge)),
        case("BMP claiming 60000×60000", img(bmp_claiming(60_000, 60_000)), Fails(TooLarge)),
        case("BMP claiming 100000×100000 (past BMP's own limit)", img(bmp_claiming(100_000, 100_000)), Fails(Decode)),
        case("BMP claiming negative width", img(bmp_claiming(-4, 4)), Fails(Decode)),
        case("WebP claiming 10000×10000", img(webp_claiming(10_000, 10_000)), Fails(TooLarge)),
        case("21 MB object (over 20 MiB)", img(vec![0u8; (20 << 20) + 1]), Fails(TooLarge)),
        case("non-image bytes", img(b"%PDF-1.7\n1 0 obj <<>> endobj\n".to_vec()), Fails(Decode)),
        case(
            "invalid UTF-8 bytes",
            img(vec![0xff, 0xfe, 0xc3, 0x28, 0xa0, 0xa1, 0xf0, 0x28, 0x8c, 0x28]),
            Fails(Decode),
        ),
        case(
            "SVG (not a raster format)",
            img(br#"<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>"#.to_vec()),
            Fails(Decode),
        ),
        case("TIFF (not built in)", img(b"II*\0\x08\0\0\0\0\0\0\0".to_vec()), Fails(Decode)),
    ];
    c.extend([
        Case {
            name: "animated GIF: the first frame is used",
            input: img(gif_frames(&[[255, 0, 0, 255], [0, 0, 255, 255]])),
            want: Scored,
            check: Some(("red (first frame), no blue (second)", |x| {
                all_near(plane(x, 0), 1.0) && all_near(plane(x, 2), 0.0)
            })),
        },
        Case {
            name: "CMYK JPEG (Adobe, inverted) decodes to its colour",
            input: img(include_bytes!("../fixtures/cmyk.jpg").to_vec()),
            want: Scored,
            check: Some(("cyan: no red, full green and blue", |x| {
                all_near(plane(x, 0), 0.0) && all_near(plane(x, 1), 1.0) && all_near(plane(x, 2), 1.0)
            })),
        },
        Case {
            name: "16-bit RGB PNG keeps its scale",
            input: img(sixteen_bit_png()),
            want: Scored,
            check: Some(("65535 → 1, 0 → 0, 32768 → ½", |x| {
                all_near(plane(x, 0), 1.0) && all_near(plane(x, 1), 0.0) && all_near(plane(x, 2), 0.5)
            })),
        },
        Case {
            name: "progressive JPEG",
            input: img(include_bytes!("../fixtures/progressive.jpg").to_vec()),
            want: Scored,
            check: Some(("reddish (200, 30, 30)", |x| {
                all_near(plane(x, 0), 200.0 / 255.0) && all_near(plane(x, 1), 30.0 / 255.0)
            })),
        },
    ]);
    c
}

pub(super) fn encode(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

pub(super) fn rgb8(w: u32, h: u32, px: [u8; 3]) -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(image::ImageBuffer::from_pixel(w, h, image::Rgb(px)))
}

pub(super) fn png(w: u32, h: u32) -> Vec<u8> {
    encode(&rgb8(w, h, [10, 200, 30]), image::ImageFormat::Png)
}

pub(super) fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = flate2::Crc::new();
    for p in parts {
        crc.update(p);
    }
    crc.sum()
}

/// A real PNG whose IHDR is rewritten to claim `w`×`h` (CRC fixed up, so only
/// the size is a lie).
pub(super) fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut p = png(4, 4);
    // Signature (8), length (4), "IHDR" (4), then width and height.
    p[16..20].copy_from_slice(&w.to_be_bytes());
    p[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&[&p[12..29]]);
    p[29..33].copy_from_slice(&crc.to_be_bytes());
    p
}

pub(super) fn gif_frames(frames: &[[u8; 4]]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut out);
        let frames = frames.iter().map(|c| image::Frame::new(image::ImageBuffer::from_pixel(4, 4, image::Rgba(*c))));
        enc.encode_frames(frames).expect("gif");
    }
    out
}

/// A real GIF whose logical screen claims `screen` and whose first frame
/// claims `frame` (width, height).
pub(super) fn gif_claiming(screen: (u16, u16), frame: (u16, u16)) -> Vec<u8> {
    let mut g = gif_frames(&[[0, 0, 0, 255]]);
    g[6..8].copy_from_slice(&screen.0.to_le_bytes());
    g[8..10].copy_from_slice(&screen.1.to_le_bytes());
    let d = g.iter().position(|b| *b == b',').expect("image descriptor");
    g[d + 5..d + 7].copy_from_slice(&frame.0.to_le_bytes());
    g[d + 7..d + 9].copy_from_slice(&frame.1.to_le_bytes());
    g
}

/// A real baseline JPEG whose SOF0 claims `w`×`h`.
pub(super) fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
    let mut j = encode(&rgb8(8, 8, [1, 2, 3]), image::ImageFormat::Jpeg);
    let sof = j.windows(2).position(|m| m == [0xff, 0xc0]).expect("SOF0");
    // Marker (2), length (2), precision (1), height (2), width (2).
    j[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    j[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    j
}

/// A real BMP whose header claims `w`×`h`.
pub(super) fn bmp_claiming(w: i32, h: i32) -> Vec<u8> {
    let mut b = encode(&rgb8(4, 4, [9, 9, 9]), image::ImageFormat::Bmp);
    b[18..22].copy_from_slice(&w.to_le_bytes());
    b[22..26].copy_from_slice(&h.to_le_bytes());
    b
}

/// A real lossless WebP whose VP8L header claims `w`×`h` (at most 16384 each).
pub(super) fn webp_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut p = encode(&rgb8(4, 4, [9, 9, 9]), image::ImageFormat::WebP);
    let at = p.windows(4).position(|c| c == b"VP8L").expect("VP8L") + 9;
    let bits = u32::from_le_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]);
    // 14 bits width-1, 14 bits height-1, then alpha and version: keep those.
    let bits = (bits & !((1 << 28) - 1)) | (w - 1) | ((h - 1) << 14);
    p[at..at + 4].copy_from_slice(&bits.to_le_bytes());
    p
}

pub(super) fn sixteen_bit_png() -> Vec<u8> {
    let buf = image::ImageBuffer::from_pixel(8, 8, image::Rgb([65535u16, 0, 32768]));
    encode(&image::DynamicImage::ImageRgb16(buf), image::ImageFormat::Png)
}

pub(super) fn plane(chw: &[f32], ch: usize) -> &[f32] {
    &chw[ch * 64..(ch + 1) * 64]
}

pub(super) fn all_near(v: &[f32], want: f32) -> bool {
    v.iter().all(|x| (x - want).abs() < 0.1)
}
