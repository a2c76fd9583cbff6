"""The peer's model: scorefleet's manifest (shape, colour, normalisation,
labels, version) with an ONNX export of the same weights, run by onnxruntime;
preprocessing with Pillow + numpy.

Preprocessing matches crates/model/src/preprocess.rs: encoded size checked
first, then the header's dimensions (decompression bombs are refused before
any pixel is allocated), then decode, colour conversion (L or RGB), a
bilinear resize only when the size differs, optional inversion, per-channel
normalisation, CHW float32.
"""
import io
import json

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
            img = img.convert(self.mode)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise JobFailure("decode", str(e) or type(e).__name__) from None
        c, th, tw = self.shape
        if img.size != (tw, th):
            img = img.resize((tw, th), Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)
        x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
        if self.invert:
            x = 1.0 - x
        return (x - self.mean) / self.std

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
