#!/usr/bin/env python3
"""Builds the demo's sample archive from the bundled MNIST test set and uploads it.

Writes N test digits as 28x28 grayscale PNGs plus a handful of broken files
(a truncated PNG, a text file, a decompression bomb whose header claims
100,000 x 100,000 pixels, an oversized object), uploads them to
s3://BUCKET/PREFIX/ through boto3 (AWS_ENDPOINT_URL and credentials come from
the environment, as for every scorefleet command), and writes a CSV manifest
with a `label` column (the true digit) that `scorefleet-producer enqueue`
reads and `report` scores against. One manifest line points at a key that
does not exist, so the run also shows `fetch_not_found`.

Usage: demo_archive.py --bucket B --prefix P --count N --manifest OUT.csv
"""
import argparse
import concurrent.futures
import gzip
import os
import struct
import sys
import zlib

import boto3
from botocore.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    dims = magic & 0xFF
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return shape, data[4 + 4 * dims:]


def png(width, height, rows):
    """A grayscale 8-bit PNG from a list of row byte strings."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + r for r in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def bomb():
    """A valid PNG header claiming 100,000 x 100,000 pixels with almost no data."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    # One compressed row of zeros: a decoder that trusted the header would
    # allocate 10 GB before finding out.
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100_001)) + chunk(b"IEND", b"")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--prefix", default="mnist")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--oversized-mb", type=int, default=24, help="size of the object meant to exceed the byte cap")
    args = ap.parse_args()

    (n, h, w), pixels = read_idx(os.path.join(ROOT, "data/mnist/t10k-images.idx3-ubyte.gz"))
    _, labels = read_idx(os.path.join(ROOT, "data/mnist/t10k-labels.idx1-ubyte.gz"))
    count = min(args.count, n)
    objects = []  # (key, bytes, label or "")
    for i in range(count):
        img = pixels[i * h * w:(i + 1) * h * w]
        rows = [img[r * w:(r + 1) * w] for r in range(h)]
        objects.append((f"{args.prefix}/digits/{i:05d}.png", png(w, h, rows), str(labels[i])))
    good = objects[0][1]
    objects.append((f"{args.prefix}/broken/truncated.png", good[: len(good) // 2], ""))
    objects.append((f"{args.prefix}/broken/notes.txt", b"this is not an image\n", ""))
    objects.append((f"{args.prefix}/broken/bomb.png", bomb(), ""))
    objects.append((f"{args.prefix}/broken/oversized.png", good + b"\x00" * (args.oversized_mb << 20), ""))

    s3 = boto3.client("s3", region_name=os.environ.get("AWS_REGION", "us-east-1"), config=Config(s3={"addressing_style": "path"}, max_pool_connections=32))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda o: s3.put_object(Bucket=args.bucket, Key=o[0], Body=o[1]), objects))

    with open(args.manifest, "w") as f:
        f.write("url,label\n")
        for key, _, label in objects:
            f.write(f"s3://{args.bucket}/{key},{label}\n")
        f.write(f"s3://{args.bucket}/{args.prefix}/broken/missing.png,\n")
    print(f"uploaded {len(objects)} objects ({count} digits, {len(objects) - count} broken) to s3://{args.bucket}/{args.prefix}/; "
          f"manifest {args.manifest}", file=sys.stderr)


if __name__ == "__main__":
    main()
