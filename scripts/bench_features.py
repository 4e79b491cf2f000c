"""Fused feature kernel (one halo exchange) against one dask-image filter per feature.

Both build the same six features lazily over the same chunked image and compute
them once; we report the median of repeated runs and the ratio.

    python scripts/bench_features.py [--size 1024] [--chunk 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import dask
import dask.array as da
import numpy as np

from bigseg import config, features


def dask_image_stack(img, s):
    import dask_image.ndfilters as ndf

    t = s["truncate"]
    size = s["variance_size"]
    mean = ndf.uniform_filter(img, size, mode="reflect")
    var = da.maximum(ndf.uniform_filter(img * img, size, mode="reflect") - mean * mean, 0)
    parts = [img,
             ndf.gaussian_gradient_magnitude(img, s["gradient_sigma"], mode="reflect", truncate=t),
             ndf.gaussian_laplace(img, s["laplacian_sigma"], mode="reflect", truncate=t),
             var] + [ndf.gaussian_filter(img, sig, mode="reflect", truncate=t) for sig in s["blur_sigmas"]]
    return da.stack(parts, axis=-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    s = config.defaults()
    img_np = np.random.default_rng(0).random((args.size, args.size)).astype(np.float32)
    img = da.from_array(img_np, chunks=args.chunk)
    timings = {"fused map_overlap": [], "dask-image per filter": []}
    results = {}
    for _ in range(args.repeats):
        for name, build in (("fused map_overlap", lambda: features.compute_features(img, s)),
                            ("dask-image per filter", lambda: dask_image_stack(img, s))):
            t0 = time.perf_counter()
            results[name] = dask.compute(build(), scheduler="threads")[0]
            timings[name].append(time.perf_counter() - t0)
    diff = float(np.abs(results["fused map_overlap"] - results["dask-image per filter"]).max())
    med = {k: statistics.median(v) for k, v in timings.items()}
    print(f"image {args.size}x{args.size}, chunk {args.chunk}, {args.repeats} repeats, max |difference| {diff:.2e}")
    for k, v in med.items():
        print(f"  {k:24s} median {v * 1000:8.1f} ms")
    print(f"  ratio (dask-image / fused): {med['dask-image per filter'] / med['fused map_overlap']:.2f}x")


if __name__ == "__main__":
    main()
