"""Synthetic SEM-like micrographs of a multi-phase steel, with ground-truth masks.

Everything is generated in code from a seed, so the demo and the tests need no
download. Each micrograph has:

* class 0, matrix: mid grey, smooth, faint fine texture;
* class 1, grains: bright, smooth, with the bright rims SEM secondary-electron
  images show at phase boundaries;
* class 2, lamellar islands: dark with strong stripes (martensite-like);
* class 3, precipitates: small very bright discs;

then detector noise, a slight blur and an SEM data bar (white panel, black
frame, "text" blocks) at the bottom, which the ingest stage must crop.
Files come in several formats (8-bit PNG, 16-bit TIFF, RGB JPEG) and sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

CLASS_NAMES = ("matrix", "grains", "lamellae", "precipitates")
BAR_ROWS = 28


def _phase_map(shape, rng) -> np.ndarray:
    field_a = ndi.gaussian_filter(rng.standard_normal(shape), 14)
    field_b = ndi.gaussian_filter(rng.standard_normal(shape), 10)
    labels = np.zeros(shape, np.uint8)
    labels[field_a > np.quantile(field_a, 0.62)] = 1
    labels[(field_b > np.quantile(field_b, 0.78)) & (labels == 0)] = 2
    # precipitates: small discs scattered in the matrix
    n = int(shape[0] * shape[1] / 2500)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for cy, cx, r in zip(rng.integers(0, shape[0], n), rng.integers(0, shape[1], n), rng.uniform(2.0, 3.5, n)):
        y0, y1, x0, x1 = max(cy - 5, 0), cy + 6, max(cx - 5, 0), cx + 6
        disc = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= r * r
        sub = labels[y0:y1, x0:x1]
        sub[disc & (sub == 0)] = 3
    return labels


def synth_micrograph(shape=(320, 384), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One micrograph in [0, 1] (without data bar) and its class mask."""
    rng = np.random.default_rng(seed)
    labels = _phase_map(shape, rng)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    theta = rng.uniform(0, np.pi)
    stripes = 0.5 + 0.5 * np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / 5.0)
    fine = ndi.gaussian_filter(rng.standard_normal(shape), 1.0)
    base = np.choose(labels, [0.42 + 0.03 * fine, np.full(shape, 0.70), 0.18 + 0.30 * stripes, np.full(shape, 0.95)])
    edges = ndi.morphological_gradient(labels, size=3) > 0
    rim = ndi.gaussian_filter(edges.astype(float), 1.0)
    img = base + 0.25 * rim * (labels != 2)
    img = ndi.gaussian_filter(img, 0.7) + rng.normal(0, 0.035, shape)
    img += 0.06 * (yy / shape[0] - 0.5)          # slow detector shading
    return np.clip(img, 0, 1), labels


def add_data_bar(img01: np.ndarray, rows: int = BAR_ROWS, seed: int = 0) -> np.ndarray:
    """Append an SEM information band: black frame line, white panel, black text blocks."""
    rng = np.random.default_rng(seed + 7)
    bar = np.ones((rows, img01.shape[1]))
    bar[0:2] = 0.0
    x = 6
    while x < img01.shape[1] - 30:
        w = int(rng.integers(8, 40))
        bar[8: rows - 8, x: x + w] = 0.0
        x += w + int(rng.integers(6, 20))
    return np.concatenate([img01, bar], axis=0)


def make_dataset(out_dir, n_images: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """Write ``images/`` (mixed formats) and ``labels/`` (class PNGs); return both folders."""
    from PIL import Image
    import tifffile

    out_dir = Path(out_dir)
    img_dir, lab_dir = out_dir / "images", out_dir / "labels"
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        shape = (320, 384) if i % 3 else (352, 416)
        img, labels = synth_micrograph(shape, seed * 1000 + i)
        framed = add_data_bar(img, seed=seed * 1000 + i)
        name = f"synth{i:02d}"
        if i % 4 == 1:
            tifffile.imwrite(img_dir / f"{name}.tif", (framed * 65535).round().astype(np.uint16))
        elif i % 4 == 2:
            rgb = np.repeat((framed * 255).round().astype(np.uint8)[..., None], 3, axis=2)
            Image.fromarray(rgb).save(img_dir / f"{name}.jpg", quality=95)
        else:
            Image.fromarray((framed * 255).round().astype(np.uint8)).save(img_dir / f"{name}.png")
        Image.fromarray(labels).save(lab_dir / f"{name}.png")
    return img_dir, lab_dir
