"""Images per second from the shard cache versus decoding the DICOMs each time.

Writes a synthetic VinDr-CXR root of ``--images`` radiographs of ``--size`` pixels (the
synthetic writer mixes uncompressed, RLE and JPEG-LS encodings, MONOCHROME1 and 2, as the
real export does), ingests it, then reads every image ``--epochs`` times both ways:

- decode: ``vindr_cxr.preprocess`` per image (pydicom decode, LUTs, resize to 512,
  histogram equalisation), what a loader without a cache does every step;
- cache: ``ShardCache`` lookups of the same preprocessed 512x512 arrays (memory-mapped
  float16 shards beside the manifest), built once beforehand (its build time is printed).

    .venv/bin/python benchmarks/loader.py [--images 64] [--size 512] [--epochs 3]

Prints both rates and their ratio (aim: cache >= 10x decode).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from raysuite.data import manifest
from raysuite.data.cache import ShardCache
from raysuite.data.datasets import run_ingest
from raysuite.data.formats import vindr_cxr
from raysuite.data.synth.vindr_cxr import synth as synth_vindr_cxr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=512, help="stored radiograph side in pixels")
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "vindr", Path(tmp) / "m.parquet"
        synth_vindr_cxr(root, cases=args.images, seed=0, size=(args.size, args.size))
        counts = run_ingest("vindr_cxr", root, out)
        df, meta = manifest.read(out)
        rows = {r["sample_id"]: r for r in df.to_dict("records")}
        prep = vindr_cxr.Preprocessing()
        print(f"{counts['ingested']} images of {args.size}x{args.size} -> {prep.size}x{prep.size}, {args.epochs} epochs")

        def load(sample_id: str):
            return vindr_cxr.preprocess(root, rows[sample_id], prep)

        cache = ShardCache(out, meta["hash"], prep.key(), list(rows), load)
        t0 = time.perf_counter()
        cache.build()
        build = time.perf_counter() - t0

        t0 = time.perf_counter()
        for _ in range(args.epochs):
            for sample_id in rows:
                load(sample_id)
        decode_rate = args.epochs * len(rows) / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        for _ in range(args.epochs):
            for sample_id in rows:
                cache[sample_id]
        cache_rate = args.epochs * len(rows) / (time.perf_counter() - t0)

    print(f"cache build (once): {build:.2f} s")
    print(f"decode: {decode_rate:8.1f} images/s")
    print(f"cache:  {cache_rate:8.1f} images/s")
    print(f"ratio cache/decode: {cache_rate / decode_rate:.1f}x")


if __name__ == "__main__":
    main()
