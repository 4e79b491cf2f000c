"""bigseg against the plain in-memory recipe on the same images, side by side in one run.

    python scripts/bench.py --input ../shared/data/MetalDAM/images --n-images 12 --repeats 3

Measured, each as the median of ``--repeats`` runs, and printed as ratios:

* end to end on one core: decode -> label PNG per image, the plain recipe
  (PIL, skimage resize to 512x512, CLAHE, six scipy.ndimage features,
  scikit-learn ``NMF.transform``, argmax, PNG) against ``bigseg segment`` with a
  saved model (one dask thread, one BLAS thread);
* the compute core (features + W solve + argmax on decoded pixels), both ways;
* the fixed-H solve's argmax against scipy's reference NNLS, pixel by pixel;
* two worker processes against one on the same ``bigseg segment`` work;
* peak RSS of ``bigseg run`` on ``--memory-images`` images and on 32 times as
  many (copies under new names), each in a fresh process;
* the fit: full-batch ``cd`` against the streamed ``minibatch`` solver on the
  same pixel sample (objective and time of each).

The model both sides use is fitted once up front on the same images.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

# one core for the single-core comparisons: set before numpy loads BLAS
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
from measure import run_measured  # noqa: E402


def plain_recipe(paths, nmf, lo, span, settings, out_dir, crop):
    """The hand-written script: per image, in memory."""
    from PIL import Image
    from scipy import ndimage as ndi
    from skimage.exposure import equalize_adapthist
    from skimage.transform import resize

    out_dir.mkdir(parents=True, exist_ok=True)
    core = 0.0
    for p in paths:
        grey = np.asarray(Image.open(p).convert("L"), dtype=np.float32)
        grey = grey[: grey.shape[0] - crop]
        t = time.perf_counter()
        img = resize(grey, (512, 512), anti_aliasing=True, preserve_range=True)
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
        img = equalize_adapthist(img, clip_limit=settings["clahe_clip_limit"])
        f = np.stack([img, ndi.gaussian_gradient_magnitude(img, settings["gradient_sigma"]),
                      ndi.gaussian_laplace(img, settings["laplacian_sigma"]),
                      np.maximum(ndi.uniform_filter(img * img, settings["variance_size"])
                                 - ndi.uniform_filter(img, settings["variance_size"]) ** 2, 0)]
                     + [ndi.gaussian_filter(img, s) for s in settings["blur_sigmas"]], axis=-1)
        X = np.clip((f.reshape(-1, f.shape[-1]) - lo) / span, 0, None)
        labels = nmf.transform(X).argmax(axis=1).reshape(512, 512).astype(np.uint8)
        core += time.perf_counter() - t
        Image.fromarray(labels).save(out_dir / f"{p.stem}.png")
    return core


def bigseg_core(paths, model, settings, crop):
    """bigseg's compute core on decoded pixels: preprocess, features, spatial W solve, argmax."""
    from bigseg import features, io, preprocess
    from bigseg.model import regularisation
    from bigseg.segment import spatial_block

    l1, l2 = regularisation(model.settings, model.H.shape[1])
    decoded = [io.crop_rows(io.read_image(p).data, crop)[0] for p in paths]
    t = time.perf_counter()
    for grey in decoded:
        pre = preprocess.preprocess_image(grey, settings)
        f = features.feature_block(pre, features.feature_params(settings))
        spatial_block(f, model.H, model.scale_lo, model.scale_hi, l1, l2,
                      settings["spatial_weight"], settings["spatial_sweeps"]).argmax(-1)
    return time.perf_counter() - t


def run_cli(args, threads=None):
    """Wall time of one ``bigseg`` command; ``threads`` caps dask's threaded scheduler."""
    env = dict(os.environ)
    if threads:
        env["DASK_NUM_WORKERS"] = str(threads)
    return run_measured(args, env=env)[0]


def memory_growth(paths, n, factor, work, crop):
    """Peak RSS of ``bigseg run`` on ``n`` images and on ``factor * n`` (copies under new names)."""
    peaks = []
    for count in (n, n * factor):
        folder = work / f"mem{count}"
        folder.mkdir()
        for i in range(count):
            src = paths[i % n]
            shutil.copyfile(src, folder / f"{src.stem}_{i:05d}{src.suffix}")
        peaks.append(run_measured(["run", "--input", str(folder), "--out", str(work / f"memout{count}"),
                                   "--set", f"crop_bottom={crop}", "--quiet"])[1])
        shutil.rmtree(folder)
    return peaks


def fit_comparison(fit_dir, ids, settings):
    """Full-batch cd against the streamed minibatch solver on one pixel sample: (error, seconds) each."""
    import dask

    from bigseg import config, model, pipeline

    compute = lambda objs: list(dask.compute(*objs, scheduler="threads"))  # noqa: E731
    sources = pipeline.FeatureSources(fit_dir, ids, settings)
    X, lo, hi = model.scaled_sample(sources, settings, compute)
    out = {}
    for solver in ("cd", "minibatch"):
        s = config.validate(dict(settings, solver=solver, init="auto"))
        t = time.perf_counter()
        H = model.fit_cd(X, s)[0] if solver == "cd" else model.fit_minibatch(sources, lo, hi, s, X, compute)[0]
        seconds = time.perf_counter() - t
        out[solver] = (model.reconstruction(X, model.normalise_rows(H), s)["reconstruction_error"], seconds)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--n-images", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--crop", type=int, default=65)
    ap.add_argument("--memory-images", type=int, default=6,
                    help="images of the small run in the memory check (the large one has 32 times as many)")
    args = ap.parse_args()

    from scipy.optimize import nnls as scipy_nnls
    from sklearn.decomposition import NMF

    from bigseg import config, features, io, preprocess
    from bigseg.model import Model, apply_scaling

    paths = io.find_images(args.input)[: args.n_images]
    work = Path(tempfile.mkdtemp(prefix="bigseg-bench-"))
    try:
        common = ["--set", f"crop_bottom={args.crop}", "--quiet"]
        inputs = sum((["--input", str(p)] for p in paths), [])
        run_cli(["run"] + inputs + ["--out", str(work / "fit")] + common)
        model = Model.load(work / "fit" / "model")
        settings = config.validate({**{k: v for k, v in model.settings.items() if k in config.OPTIONS}})

        # the plain recipe's own NMF, fitted on the same kind of pixel sample
        rng = np.random.default_rng(0)
        sample = []
        for p in paths:
            grey = io.crop_rows(io.read_image(p).data, args.crop)[0]
            f = features.feature_block(preprocess.preprocess_image(grey, settings),
                                       features.feature_params(settings))
            pix = f.reshape(-1, f.shape[-1])
            sample.append(pix[rng.choice(len(pix), 4000, replace=False)])
        sample = np.concatenate(sample)
        lo, span = sample.min(0), np.maximum(sample.max(0) - sample.min(0), 1e-12)
        nmf = NMF(model.n_components, solver="cd", init="nndsvd", max_iter=400, random_state=0)
        nmf.fit(np.clip((sample - lo) / span, 0, None))

        plain_e2e, plain_core, big_e2e, big_core, one_w, two_w = [], [], [], [], [], []
        for r in range(args.repeats):
            t = time.perf_counter()
            plain_core.append(plain_recipe(paths, nmf, lo, span, settings, work / f"plain{r}", args.crop))
            plain_e2e.append(time.perf_counter() - t)
            big_e2e.append(run_cli(["segment", str(work / "fit" / "model")] + inputs
                                   + ["--out", str(work / f"seg{r}"), "--quiet"], threads=1))
            big_core.append(bigseg_core(paths, model, settings, args.crop))
            one_w.append(run_cli(["segment", str(work / "fit" / "model")] + inputs
                                 + ["--out", str(work / f"w1_{r}"), "--workers", "1", "--quiet"]))
            two_w.append(run_cli(["segment", str(work / "fit" / "model")] + inputs
                                 + ["--out", str(work / f"w2_{r}"), "--workers", "2", "--quiet"]))

        # fixed-H solve against scipy's NNLS on real pixels
        grey = io.crop_rows(io.read_image(paths[0]).data, args.crop)[0]
        f = features.feature_block(preprocess.preprocess_image(grey, settings), features.feature_params(settings))
        X = apply_scaling(f.reshape(-1, f.shape[-1])[::7], model.scale_lo, model.scale_hi)
        from bigseg import nnls

        ours = nnls.solve(X, model.H).argmax(1)
        ref = np.array([scipy_nnls(model.H.T, x.astype(np.float64))[0] for x in X]).argmax(1)

        # the fit: store the features once, then both solvers on the same sample
        run_measured(["features", "--out", str(work / "fit"), "--quiet", "--set", f"crop_bottom={args.crop}"])
        fits = fit_comparison(work / "fit", sorted(p.stem for p in (work / "fit" / "records" / "features").glob("*.json")),
                              settings)
        peaks = memory_growth(paths, min(args.memory_images, len(paths)), 32, work, args.crop)

        med = statistics.median
        n = len(paths)
        print(f"{n} images from {args.input}, {args.repeats} repeats, medians; k={model.n_components}, "
              f"spatial sweeps {settings['spatial_sweeps']}")
        print(f"end to end, one core:  plain {n / med(plain_e2e):6.2f} img/s   bigseg segment "
              f"{n / med(big_e2e):6.2f} img/s   ratio {med(plain_e2e) / med(big_e2e):5.2f}x  (target >= 5x; "
              f"bigseg includes interpreter start-up and the Zarr store)")
        print(f"compute core:          plain {n / med(plain_core):6.2f} img/s   bigseg          "
              f"{n / med(big_core):6.2f} img/s   ratio {med(plain_core) / med(big_core):5.2f}x  (target >= 20x)")
        print(f"fixed-H argmax equal to scipy NNLS on {np.mean(ours == ref):.4%} of {len(X)} pixels "
              f"(target >= 99.9%)")
        print(f"workers: 1 -> {med(one_w):.1f} s, 2 -> {med(two_w):.1f} s, ratio {med(one_w) / med(two_w):.2f}x "
              f"(target >= 1.7x)")
        (e_cd, t_cd), (e_mb, t_mb) = fits["cd"], fits["minibatch"]
        print(f"fit on one {settings['sample_size']}-pixel sample: cd error {e_cd:.5g} in {t_cd:.1f} s, "
              f"streamed minibatch {e_mb:.5g} ({100 * (e_mb / e_cd - 1):+.2f}%) in {t_mb:.1f} s, time ratio "
              f"{t_mb / t_cd:.2f} (target: within 1% in <= 0.2)")
        n_mem = min(args.memory_images, len(paths))
        print(f"peak RSS of bigseg run: {n_mem} images {peaks[0]:.0f} MiB, {32 * n_mem} images {peaks[1]:.0f} MiB, "
              f"change {100 * (peaks[1] / peaks[0] - 1):+.1f}% (target <= +20%)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
