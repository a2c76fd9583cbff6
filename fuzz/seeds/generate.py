#!/usr/bin/env python3
"""Writes the committed seed corpus of the fuzz targets (fuzz/seeds/<target>/).

Seeds are small, valid-and-nearly-valid inputs that give libFuzzer a head
start into each format. Re-run after changing a format (needs Pillow, e.g. in
a throwaway venv: `python3 -m venv /tmp/v && /tmp/v/bin/pip install pillow &&
/tmp/v/bin/python fuzz/seeds/generate.py`); the output is deterministic.
"""
import io
import json
import os
import struct
import zlib

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def job(**fields):
    base = {"v": 1, "job_id": "j-1", "url": "s3://my-bucket/a/b.png", "run_id": "r1"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}, separators=(",", ":"))


def job_messages():
    seeds = {
        "valid-s3": job(),
        "valid-attrs": job(attrs={"label": "7", "n": 3, "f": 0.5, "nested": {"a": [1, None, True]}}),
        "valid-https": job(url="https://images.example.com/x/y.jpg?sig=abc&x=1"),
        "valid-http-port": job(url="http://example.com:8080/a%20b.png"),
        "valid-ipv6": job(url="http://[2606:4700::1111]/a.png"),
        "valid-max-id": job(job_id="x" * 128, run_id="~" * 128),
        "valid-pretty": json.dumps({"v": 1, "job_id": "a", "url": "s3://bkt/k", "run_id": "r"}, indent=2),
        "valid-unicode-key": job(url="s3://bkt/ünïcødé/\u2028.png"),
        "attrs-null": job(attrs=None) [:-1] + ',"attrs":null}',
        "bad-version": job(v=2),
        "bad-version-string": job(v="1"),
        "bad-version-float": job(v=1.0),
        "missing-url": job(url=None),
        "missing-v": job(v=None),
        "bad-id-space": job(job_id="a b"),
        "bad-id-empty": job(job_id=""),
        "bad-id-number": job(job_id=7),
        "bad-scheme-ftp": job(url="ftp://h/k"),
        "bad-scheme-file": job(url="file:///etc/passwd"),
        "bad-credentials": job(url="https://u:p@h/k"),
        "bad-bucket": job(url="s3://Bad_Bucket/k"),
        "bad-s3-no-key": job(url="s3://bkt/"),
        "bad-ip-decimal": job(url="http://2130706433/x"),
        "unknown-field": job(extra=1),
        "duplicate-key": '{"v":1,"job_id":"a","job_id":"b","url":"s3://bkt/k","run_id":"r"}',
        "escapes": '{"v":1,"job_id":"a\\u0041","url":"s3://bkt/\\ud83d\\ude00","run_id":"r\\/1"}',
        "lone-surrogate": '{"v":1,"job_id":"a","url":"s3://bkt/\\ud800","run_id":"r"}',
        "deep-attrs": job(attrs={"a": json.loads("[" * 60 + "]" * 60)}),
        "big-attrs": job(attrs={"x": "y" * 4100}),
        "not-object": "[1,2,3]",
        "truncated": job()[:40],
        "empty": "",
    }
    for name, body in seeds.items():
        write("job_message", name + ".json", body)


def manifests():
    # First byte: 0 plain lines, 1 CSV, 2 JSONL.
    lines = {
        "lines-basic": "s3://bkt/a.png\nhttps://x.org/b.jpg\n",
        "lines-comments-blank-crlf": "# header\n\n  s3://bkt/a.png  \r\n#x\r\nhttp://h/c.png",
        "lines-bad-urls": "ftp://x/y\ns3://Bad/k\nhttps://u:p@h/k\nnot a url\n",
        "lines-long": "s3://bkt/" + "k" * 3000 + "\n",
    }
    csvs = {
        "csv-basic": "url,job_id,label\ns3://bkt/a.png,id-1,7\ns3://bkt/b.png,,3\n",
        "csv-quoted": 'url,label\n"s3://bkt/a,b.png","multi\nline"\n"s3://bkt/c.png","say ""hi"""\n',
        "csv-upper-header": "URL,Job_Id\n s3://bkt/a.png , j \n",
        "csv-no-url": "path,label\na,1\n",
        "csv-ragged": "url,a,b\ns3://bkt/a.png\ns3://bkt/b.png,1,2,3,4\n,,\n",
        "csv-bad-id": "url,job_id\ns3://bkt/a.png,bad id\n",
        "csv-bom": "\ufeffurl\ns3://bkt/a.png\n",
        "csv-empty": "",
    }
    jsonl = {
        "jsonl-basic": '{"url":"s3://bkt/a","job_id":"j1","attrs":{"label":"7"}}\n{"url":"s3://bkt/b"}\n',
        "jsonl-bad-lines": 'not json\n{"url":5}\n[1]\n{"url":"s3://bkt/b","extra":1}\n\n{"url":"s3://bkt/c","job_id":null,"attrs":null}\n',
        "jsonl-deep": '{"url":"s3://bkt/a","attrs":{"a":' + "[" * 100 + "]" * 100 + "}}\n",
        "jsonl-big-attrs": json.dumps({"url": "s3://bkt/a", "attrs": {"x": "y" * 5000}}) + "\n",
        "jsonl-dup": '{"url":"s3://bkt/a","url":"s3://bkt/b"}\n',
    }
    for sel, group in ((0, lines), (1, csvs), (2, jsonl)):
        for name, text in group.items():
            write("manifest", name, bytes([sel]) + text.encode())
    write("manifest", "lines-invalid-utf8", b"\x00s3://bkt/a\n\xff\xfe\ns3://bkt/c\n")
    write("manifest", "csv-invalid-utf8", b"\x01url,label\ns3://bkt/a,\xc3\x28\n")


def image_bytes(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def png_header(w, h):
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def images():
    rgb = Image.new("RGB", (5, 3), (200, 30, 30))
    for x in range(5):
        rgb.putpixel((x, 1), (x * 50, 255 - x * 50, 7))
    gray = rgb.convert("L")
    seeds = {
        "rgb.png": image_bytes(rgb, "PNG"),
        "gray.png": image_bytes(gray, "PNG"),
        "rgba.png": image_bytes(rgb.convert("RGBA"), "PNG"),
        "palette-trns.png": image_bytes(rgb.convert("P"), "PNG", transparency=0),
        "gray16.png": image_bytes(Image.new("I;16", (4, 4), 40000), "PNG"),
        "one-pixel.png": image_bytes(Image.new("L", (1, 1), 255), "PNG"),
        "baseline.jpg": image_bytes(rgb, "JPEG", quality=75),
        "progressive.jpg": image_bytes(rgb, "JPEG", quality=75, progressive=True),
        "gray.jpg": image_bytes(gray, "JPEG"),
        "cmyk.jpg": image_bytes(Image.new("CMYK", (4, 4), (255, 0, 0, 0)), "JPEG"),
        "static.gif": image_bytes(rgb, "GIF"),
        "animated.gif": image_bytes(
            rgb, "GIF", save_all=True, append_images=[gray.convert("RGB")], duration=10, loop=0
        ),
        "lossless.webp": image_bytes(rgb, "WEBP", lossless=True),
        "lossy.webp": image_bytes(rgb, "WEBP", quality=50),
        "rgb.bmp": image_bytes(rgb, "BMP"),
        "rgba.bmp": image_bytes(rgb.convert("RGBA"), "BMP"),
        "header-100000x100000.png": png_header(100_000, 100_000),
        "header-0x0.png": png_header(0, 0),
    }
    for name, data in list(seeds.items()):
        write("image_decode", name, data)
    for name in ("rgb.png", "baseline.jpg", "static.gif", "lossless.webp", "rgb.bmp"):
        data = seeds[name]
        stem, ext = name.rsplit(".", 1)
        write("image_decode", f"{stem}-truncated.{ext}", data[: len(data) * 2 // 3])
    write("image_decode", "not-an-image.txt", b"hello, I am not an image\n")
    write("image_decode", "empty", b"")


if __name__ == "__main__":
    job_messages()
    manifests()
    images()
