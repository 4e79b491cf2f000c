"""Peak memory and time of segmenting one very large image at native resolution.

    python scripts/bench_large.py --input ../shared/data/MetalDAM/images --side 20000

Builds a ``side`` x ``side`` 8-bit tiled TIFF montage from the input micrographs
(written a tile at a time, so this script never holds it either), fits a model
at native resolution on a few of the micrographs, then runs ``bigseg segment``
on the montage in a fresh process and reports its wall time and peak resident
memory (target: <= 2 GiB at 20,000 x 20,000). ``--zarr`` feeds the same
montage as a Zarr array instead.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from measure import run_measured


def montage_tiles(sources, side: int, tile: int, crop: int):
    """Row-major tiles of a montage that repeats the (cropped) sources left to right, top to bottom."""
    from bigseg import io

    frames = [io.read_image(p).data[:-crop or None] for p in sources]
    fh, fw = min(f.shape[0] for f in frames), min(f.shape[1] for f in frames)
    frames = [f[:fh, :fw] for f in frames]
    cols = -(-side // fw)

    def pixel_block(y0, y1, x0, x1):
        out = np.empty((y1 - y0, x1 - x0), np.uint8)
        for fy in range(y0 // fh, (y1 - 1) // fh + 1):
            for fx in range(x0 // fw, (x1 - 1) // fw + 1):
                f = frames[(fy * cols + fx) % len(frames)]
                ys, ye = max(y0, fy * fh), min(y1, (fy + 1) * fh)
                xs, xe = max(x0, fx * fw), min(x1, (fx + 1) * fw)
                out[ys - y0:ye - y0, xs - x0:xe - x0] = f[ys - fy * fh:ye - fy * fh, xs - fx * fw:xe - fx * fw]
        return out

    for y in range(0, side, tile):
        for x in range(0, side, tile):
            yield pixel_block(y, min(y + tile, side), x, min(x + tile, side))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--side", type=int, default=20000)
    ap.add_argument("--crop", type=int, default=65)
    ap.add_argument("--fit-images", type=int, default=4)
    ap.add_argument("--zarr", action="store_true", help="give the montage as a Zarr array, not a tiled TIFF")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    from bigseg import io

    paths = io.find_images(args.input)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bigseg-large-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        tile = 256
        t = time.perf_counter()
        if args.zarr:
            import zarr

            big = work / "montage.zarr"
            arr = zarr.create_array(str(big), shape=(args.side, args.side), dtype="uint8", chunks=(tile, tile),
                                    overwrite=True)
            tiles = montage_tiles(paths[: args.fit_images * 4], args.side, tile, args.crop)
            for y in range(0, args.side, tile):
                for x in range(0, args.side, tile):
                    t_ = next(tiles)
                    arr[y:y + t_.shape[0], x:x + t_.shape[1]] = t_
        else:
            big = work / "montage.tif"
            io.write_tiled_tiff(big, montage_tiles(paths[: args.fit_images * 4], args.side, tile, args.crop),
                                (args.side, args.side), np.uint8, tile)
        print(f"montage {args.side}x{args.side} written in {time.perf_counter() - t:.1f} s: {big}", flush=True)

        fit_in = sum((["--input", str(p)] for p in paths[: args.fit_images]), [])
        common = ["--set", "resize=native", "--quiet"]
        wall, peak = run_measured(["run"] + fit_in + ["--out", str(work / "fit"), "--set", f"crop_bottom={args.crop}"]
                              + common)
        print(f"model fitted at native resolution on {args.fit_images} images: {wall:.1f} s, {peak:.0f} MiB")
        wall, peak = run_measured(["segment", str(work / "fit" / "model"), "--input", str(big), "--out",
                               str(work / "seg"), "--set", "crop_bottom=0", "--quiet"])
        mpx = args.side * args.side / 1e6
        print(f"segment {args.side}x{args.side} ({mpx:.0f} Mpx) at native resolution: {wall:.1f} s "
              f"({mpx / wall:.2f} Mpx/s), peak RSS {peak:.0f} MiB (target <= 2048 MiB)")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
