"""The peer's model: scorefleet's manifest (shape, colour, normalisation,
labels, version) with an ONNX export of the same weights, run by onnxruntime;
preprocessing with Pillow + numpy.

Preprocessing follows the manifest exactly as crates/model/src/preprocess.rs
reads it: encoded size checked first, then the header's dimensions
(decompression bombs are refused before any pixel is allocated), then decode,
colour conversion (L with the image crate's Rec. 709 integer luma, or RGB),
the resize policy (`stretch`: to the input size, skipped when it already
matches; `shorter_side_crop`, the default of the `resnet18` architecture: the
shorter side to input / crop_fraction with the aspect kept, then the centre
crop; `letterbox`: scaled to fit, centred on `pad_value`), all with a
triangle (bilinear, antialiased) filter; channel order (RGB or BGR), optional
inversion, `pixel_scale`, per-channel normalisation, CHW float32. Sizes and
crop offsets are rounded as the Rust code rounds them (half away from zero),
so the two fleets feed the model the same pixels up to the filters' rounding.
"""
import io
import json
import math

import numpy as np
import onnxruntime as ort
from PIL import Image, UnidentifiedImageError

# The header check below is ours; Pillow's own bomb guard stays as a second fence.
Image.MAX_IMAGE_PIXELS = None


class JobFailure(Exception):
    """A typed failure of one job (`kind` is one of scorefleet's error kinds)."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def round_half_away(v):
    """Rust's f64::round (Python's round() rounds half to even)."""
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))


def fit_of(m):
    """The manifest's resize policy with its sizes, as ImagePreprocessor::from_manifest works them out:
    ("stretch",), ("shorter_side", side) or ("letterbox", fill)."""
    policy = m.get("resize") or ("shorter_side_crop" if m.get("architecture") == "resnet18" else "stretch")
    if policy == "stretch":
        return ("stretch",)
    if policy == "shorter_side_crop":
        # Rust divides in f64 the f32 crop fraction: 0.875 is exact in both.
        frac = float(np.float32(m.get("crop_fraction") or 0.875))
        return ("shorter_side", round_half_away(max(m["input_shape"][1], m["input_shape"][2]) / frac))
    if policy == "letterbox":
        return ("letterbox", int(m.get("pad_value", 0)))
    raise SystemExit(f"unknown resize policy {policy!r} in the manifest")


def to_mode(img, mode):
    """Colour conversion as the image crate does it: RGB → L is its Rec. 709 integer luma
    ((2126 R + 7152 G + 722 B) / 10000, truncated), not Pillow's Rec. 601."""
    if mode == "RGB" or img.mode in ("L", "1"):
        return img.convert(mode)
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint32)
    luma = (2126 * rgb[..., 0] + 7152 * rgb[..., 1] + 722 * rgb[..., 2]) // 10000
    return Image.fromarray(luma.astype(np.uint8), "L")


def fit(img, tw, th, how):
    """`img` at tw×th by the manifest's policy (see fit_of); the resize is Pillow's BILINEAR, a
    triangle filter widened when downscaling, as the image crate's FilterType::Triangle is."""
    w, h = img.size
    if how[0] == "stretch":
        return img if (w, h) == (tw, th) else img.resize((tw, th), Image.BILINEAR)
    if how[0] == "letterbox":
        s = min(tw / w, th / h)
        rw, rh = min(max(round_half_away(w * s), 1), tw), min(max(round_half_away(h * s), 1), th)
        resized = img if (rw, rh) == (w, h) else img.resize((rw, rh), Image.BILINEAR)
        canvas = Image.new(img.mode, (tw, th), how[1] if img.mode == "L" else (how[1],) * 3)
        canvas.paste(resized, ((tw - rw) // 2, (th - rh) // 2))
        return canvas
    side = how[1]
    rw, rh = (side, max(1, side * h // w)) if w <= h else (max(1, side * w // h), side)
    resized = img if (rw, rh) == (w, h) else img.resize((rw, rh), Image.BILINEAR)
    left = round_half_away(max(rw - tw, 0) / 2)
    top = round_half_away(max(rh - th, 0) / 2)
    return resized.crop((left, top, left + min(tw, rw), top + min(th, rh)))


class Model:
    def __init__(self, manifest_path, onnx_path, threads, max_bytes=20 << 20, max_pixels=40_000_000):
        with open(manifest_path) as f:
            m = json.load(f)
        self.name = m["name"]
        self.ref = {"name": m["name"], "version": "sha256:" + m["sha256"].lower()}
        self.shape = tuple(m["input_shape"])
        self.mode = "L" if m["channels"] == "grayscale" else "RGB"
        self.mean = np.array(m["mean"], dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.array(m["std"], dtype=np.float32).reshape(-1, 1, 1)
        self.invert = bool(m.get("invert", False))
        self.bgr = m.get("channel_order", "rgb") == "bgr"
        self.pixel_scale = np.float32(m.get("pixel_scale", 1.0))
        self.fit = fit_of(m)
        self.labels = m["labels"]
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def preprocess(self, data):
        """Encoded bytes → [C, H, W] float32, or JobFailure(decode | too_large)."""
        if len(data) > self.max_bytes:
            raise JobFailure("too_large", f"{len(data)} encoded bytes, limit {self.max_bytes}")
        if not data:
            raise JobFailure("decode", "empty object")
        try:
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > self.max_pixels:
                raise JobFailure("too_large", f"{w}×{h} = {w * h} pixels, limit {self.max_pixels}")
            if w * h == 0:
                raise JobFailure("decode", f"{w}×{h} image")
            img = to_mode(img, self.mode)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise JobFailure("decode", str(e) or type(e).__name__) from None
        _, th, tw = self.shape
        img = fit(img, tw, th, self.fit)
        x = np.asarray(img, dtype=np.float32) / np.float32(255)
        x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
        if self.bgr:
            x = x[::-1]
        if self.invert:
            x = 1.0 - x
        if self.pixel_scale != 1:
            x = x * self.pixel_scale
        return np.ascontiguousarray((x - self.mean) / self.std, dtype=np.float32)

    def predict(self, batch, k):
        """batch: [N, C, H, W] float32 → N lists of the top-k {label, score}."""
        logits = self.session.run(None, {self.input_name: batch})[0]
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        k = min(k, p.shape[1])
        top = np.argpartition(-p, k - 1, axis=1)[:, :k]
        out = []
        for row, idx in zip(p, top):
            idx = idx[np.argsort(-row[idx])]
            out.append([{"label": self.labels[i], "score": float(row[i])} for i in idx])
        return out
