"""Synthetic SEM micrograph families with ground-truth phase masks, for the quality harness.

Each family is a microstructure that trips a different part of the method; all
are generated in code from a seed (deterministic), with uneven illumination
(a slow multiplicative shading and a vignette) and detector noise (Gaussian
plus scan-line jitter), and a slight blur like the probe's:

* ``islands``: islands of one phase in a matrix, each island ringed by a bright
  rim (the edge effect of secondary-electron images), fine bright precipitates
  between them. Classes: matrix, island, precipitate. The rim belongs to the
  island in the truth; it is not a class of its own.
* ``textured``: the same islands, nearly as bright as the matrix and told apart
  by their own fine texture, so a pixel-wise decision breaks them into speckle.
* ``lamellar``: ferrite grains and lamellar (pearlite-like) colonies, with a thin
  bright film along the boundaries between ferrite grains (a grain-boundary
  network). Classes: ferrite, lamellar, network. The network is a real phase
  that is thin, so a rim remover must keep it (it lies between two grains of
  the same phase, not between two phases).
* ``pores``: a matrix with a second phase, pores and cracks whose edges are
  bright. Classes: matrix, second phase, defect (pores and cracks); the bright
  pore edges belong to the matrix.
* ``constituents``: two phases arranged as four microconstituents: grains of
  smooth dark matrix, grains of smooth bright phase, grains of fine bright
  particles in the dark matrix (spheroidite-like), and a bright film along the
  boundaries between matrix grains (a carbide network). Classes are the
  constituents, not the phases: a pixel method splits the particle grains into
  their particles and their matrix (:mod:`bigseg.constituents`).
* ``spheroidite``: the four microconstituents of an ultrahigh-carbon steel in two
  phases: spheroidite (fine particles in the matrix), a grain-boundary carbide
  network, the particle-free zone beside it, and lamellar (Widmanstatten-like)
  grains. Classes are constituents.
* ``twoscale``: one dual-phase material (matrix, islands with a fine internal
  texture, small carbides) imaged at two magnifications (half of the images at
  twice the scale). Classes: matrix, island, carbide.

The demo generator (:mod:`bigseg.demo`) stays as it is; ``demo`` here names its
micrographs, so the harness can score it alongside.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .demo import synth_micrograph as demo_micrograph

#: the default image size (rows, columns): the longer side is 512, so a longer-side-512 grid keeps it as is
SHAPE = (384, 512)

FAMILIES = {
    "islands": ("matrix", "island", "precipitate"),
    "textured": ("matrix", "island", "precipitate"),
    "lamellar": ("ferrite", "lamellar", "network"),
    "pores": ("matrix", "second", "defect"),
    "twoscale": ("matrix", "island", "carbide"),
    "demo": ("matrix", "grains", "lamellae", "precipitates"),
}


#: families whose truth is microconstituents (regions of several phases), not phases: scored on a run's
#: ``constituents/`` (:mod:`bigseg.constituents`), kept apart from the phase families above
CONSTITUENT_FAMILIES = {
    "constituents": ("matrix", "bright", "particles in matrix", "network"),
    "spheroidite": ("spheroidite", "network", "particle-free zone", "lamellar"),
}


def _smooth_field(shape, sigma, rng):
    f = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    return (f - f.mean()) / (f.std() + 1e-12)


def _discs(shape, centres, radii) -> np.ndarray:
    """Boolean mask of discs."""
    out = np.zeros(shape, bool)
    for (cy, cx), r in zip(centres, radii):
        rr = int(np.ceil(r)) + 1
        y0, y1, x0, x1 = max(cy - rr, 0), min(cy + rr + 1, shape[0]), max(cx - rr, 0), min(cx + rr + 1, shape[1])
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        out[y0:y1, x0:x1] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return out


def _inner_rim(mask: np.ndarray, width: int) -> np.ndarray:
    return mask & ~ndi.binary_erosion(mask, iterations=width, border_value=1)


def _outer_rim(mask: np.ndarray, width: int) -> np.ndarray:
    return ndi.binary_dilation(mask, iterations=width) & ~mask


def acquire(clean: np.ndarray, rng, shading: float = 0.25, noise: float = 0.04, blur: float = 0.8) -> np.ndarray:
    """What the microscope makes of an ideal intensity map: probe blur, uneven illumination, detector noise.

    Illumination is a random linear ramp plus a vignette (multiplicative, up to
    about ``shading`` peak to peak); noise is Gaussian with sigma ``noise`` plus
    a per-row offset (scan-line jitter) of half that.
    """
    h, w = clean.shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    yy, xx = yy / h - 0.5, xx / w - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(theta) * xx + np.sin(theta) * yy
    vignette = -(xx ** 2 + yy ** 2)
    light = 1.0 + shading * (0.7 * ramp + 0.6 * (vignette - vignette.mean()))
    img = ndi.gaussian_filter(clean, blur) * light
    img = img + rng.normal(0, noise, clean.shape) + rng.normal(0, noise / 2, (h, 1))
    return np.clip(img, 0, 1)


def islands(shape=SHAPE, seed: int = 0, scale: float = 1.0, island_level: float = 0.33, texture: float = 0.0):
    """Islands with bright rims and fine precipitates between them in a matrix (superalloy-like).

    ``island_level`` is the islands' mean brightness (the matrix is at 0.50) and
    ``texture`` the amplitude of their own fine texture (a smooth field at 1.5 px).

    Returns ``(image in [0, 1], labels)`` with 0 matrix, 1 island, 2 precipitate.
    """
    rng = np.random.default_rng(seed)
    field = _smooth_field(shape, 9 * scale, rng)
    island = field > np.quantile(field, 0.62)
    island = ndi.binary_opening(island, iterations=2)
    labels = island.astype(np.uint8)
    # fine precipitates: radius 1-2 px, only in the matrix, away from the islands
    free = ~ndi.binary_dilation(island, iterations=int(4 * scale))
    n = int(shape[0] * shape[1] / (110 * scale * scale))
    cy, cx = rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)
    keep = free[cy, cx]
    prec = _discs(shape, zip(cy[keep], cx[keep]), rng.uniform(1.0, 2.0, keep.sum()) * scale) & free
    labels[prec] = 2
    fine = _smooth_field(shape, 1.0, rng)
    inside = island_level + texture * _smooth_field(shape, 1.5, rng) if texture else np.full(shape, island_level)
    clean = np.choose(labels, [0.50 + 0.03 * fine, inside, np.full(shape, 0.80)])
    rim = _inner_rim(island, max(1, int(round(2 * scale))))
    clean = np.where(rim, 0.85, clean)
    return acquire(clean, rng), labels


def textured(shape=SHAPE, seed: int = 0):
    """:func:`islands` whose islands differ from the matrix less by brightness (0.45 against 0.50) than
    by their own fine texture: a phase told apart by texture at region scale, as in many superalloys.

    Returns ``(image, labels)`` with 0 matrix, 1 island, 2 precipitate.
    """
    return islands(shape, seed, island_level=0.45, texture=0.08)


def lamellar(shape=SHAPE, seed: int = 0, scale: float = 1.0):
    """Ferrite grains and lamellar colonies (Voronoi grains), with a bright film between ferrite grains.

    Returns ``(image, labels)`` with 0 ferrite, 1 lamellar, 2 network.
    """
    rng = np.random.default_rng(seed)
    n = max(4, int(shape[0] * shape[1] / (3500 * scale * scale)))
    grain = _grains(shape, n, rng, 4 * scale)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    pearlite = rng.random(n) < 0.45
    labels = pearlite[grain].astype(np.uint8)
    boundary = ndi.morphological_gradient(grain, size=3) > 0
    both_ferrite = ndi.minimum_filter(labels, size=3) == 0   # no lamellar grain next to it
    network = ndi.binary_dilation(boundary, iterations=max(1, int(round(scale)))) & both_ferrite & (labels == 0)
    labels[network] = 2
    theta = rng.uniform(0, np.pi, n)[grain]
    period = 7.0 * scale
    stripes = 0.5 + 0.5 * np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period)
    fine = _smooth_field(shape, 1.0, rng)
    clean = np.choose(labels, [0.38 + 0.02 * fine, 0.25 + 0.40 * stripes, np.full(shape, 0.85)])
    return acquire(clean, rng), labels


def _crack(shape, rng, length, width):
    y, x = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
    ang = rng.uniform(0, 2 * np.pi)
    pts = []
    for _ in range(int(length)):
        ang += rng.normal(0, 0.15)
        y, x = y + np.sin(ang), x + np.cos(ang)
        pts.append((int(round(y)), int(round(x))))
    mask = np.zeros(shape, bool)
    for py, px in pts:
        if 0 <= py < shape[0] and 0 <= px < shape[1]:
            mask[py, px] = True
    return ndi.binary_dilation(mask, iterations=max(1, int(width // 2)))


def pores(shape=SHAPE, seed: int = 0, scale: float = 1.0):
    """A matrix with a second phase, and pores and cracks whose edges are bright.

    Returns ``(image, labels)`` with 0 matrix, 1 second phase, 2 defect.
    """
    rng = np.random.default_rng(seed)
    field = _smooth_field(shape, 7 * scale, rng)
    second = field > np.quantile(field, 0.72)
    labels = second.astype(np.uint8)
    n = int(shape[0] * shape[1] / (9000 * scale * scale))
    radii = np.exp(rng.uniform(np.log(3), np.log(16), n)) * scale
    defect = _discs(shape, zip(rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)), radii)
    for _ in range(rng.integers(1, 3)):
        defect |= _crack(shape, rng, rng.uniform(0.3, 0.7) * max(shape), 3 * scale)
    labels[defect] = 2
    fine = _smooth_field(shape, 1.2, rng)
    mottle = _smooth_field(shape, 3.0, rng)
    clean = np.choose(labels, [0.55 + 0.03 * fine, 0.40 + 0.05 * mottle, np.full(shape, 0.08)])
    edge = _outer_rim(defect, max(1, int(round(2 * scale))))
    clean = np.where(edge, 0.90, clean)
    return acquire(clean, rng), labels


def twoscale(shape=SHAPE, seed: int = 0):
    """One dual-phase material at two magnifications: odd seeds are imaged at twice the scale.

    Returns ``(image, labels)`` with 0 matrix, 1 island, 2 carbide.
    """
    scale = 2.0 if seed % 2 else 1.0
    rng = np.random.default_rng(seed)
    field = _smooth_field(shape, 6 * scale, rng)
    island = ndi.binary_opening(field > np.quantile(field, 0.68), iterations=1)
    labels = island.astype(np.uint8)
    n = int(shape[0] * shape[1] / (600 * scale * scale))
    cy, cx = rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)
    carb = _discs(shape, zip(cy, cx), rng.uniform(1.5, 3.0, n) * scale) & ~ndi.binary_dilation(island, iterations=2)
    labels[carb] = 2
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    texture = 0.5 + 0.5 * np.sin((xx + 0.5 * yy) * 2 * np.pi / (4.0 * scale)) * np.sin(yy * 2 * np.pi / (5.0 * scale))
    fine = _smooth_field(shape, 1.0, rng)
    clean = np.choose(labels, [0.35 + 0.02 * fine, 0.58 + 0.20 * texture, np.full(shape, 0.88)])
    return acquire(clean, rng), labels


def _grains(shape, n, rng, warp: float):
    """A slightly wavy Voronoi tessellation of ``n`` grains: the grain index of every pixel (distances on
    a grid warped by up to about ``warp`` pixels)."""
    seeds = np.stack([rng.uniform(0, shape[0], n), rng.uniform(0, shape[1], n)], axis=1)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    wy, wx = (warp * _smooth_field(shape, 3 * warp, rng) for _ in range(2))
    grain = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf)
    for i, (sy, sx) in enumerate(seeds):
        d = (yy + wy - sy) ** 2 + (xx + wx - sx) ** 2
        closer = d < best
        grain[closer], best[closer] = i, d[closer]
    return grain


def constituents(shape=SHAPE, seed: int = 0, particles: bool = True):
    """Two phases as four microconstituents: smooth matrix, smooth bright phase, fine bright particles in
    the matrix, and a bright network between matrix grains.

    The particles (radius 1.5-2.5 px, about 7 px apart) and the network are the
    bright phase, so the pixel phases are two; the truth is the constituents.
    With ``particles=False`` the particle grains are smooth matrix: a
    collection without mixed regions.

    Returns ``(image, labels)`` with 0 matrix, 1 bright, 2 particles in matrix, 3 network.
    """
    rng = np.random.default_rng(seed)
    n = max(4, int(shape[0] * shape[1] / 6000))
    grain = _grains(shape, n, rng, 4.0)
    # every kind in fixed proportions (two fifths matrix, two fifths particles, one fifth bright), shuffled
    kind = rng.permutation(np.resize(np.array([0, 2, 1, 0, 2] if particles else [0, 1, 0, 0, 1]), n))
    labels = kind[grain].astype(np.uint8)
    boundary = ndi.morphological_gradient(grain, size=3) > 0
    between_matrix = (ndi.minimum_filter(labels, size=3) == 0) & (ndi.maximum_filter(labels, size=3) == 0)
    network = ndi.binary_dilation(boundary, iterations=2) & between_matrix
    labels[network] = 3
    bright = (labels == 1) | network
    if particles:
        region = labels == 2
        m = int(region.sum() / 45)
        cy, cx = rng.integers(0, shape[0], m * 3), rng.integers(0, shape[1], m * 3)
        keep = region[cy, cx]
        bright |= _discs(shape, zip(cy[keep][:m], cx[keep][:m]), rng.uniform(1.5, 2.5, m)) & region
    fine = _smooth_field(shape, 1.0, rng)
    clean = np.where(bright, 0.78 + 0.02 * fine, 0.32 + 0.02 * fine)
    return acquire(clean, rng), labels


def spheroidite(shape=SHAPE, seed: int = 0):
    """An ultrahigh-carbon-steel-like arrangement of two phases in four microconstituents: grains of fine
    bright particles in a dark matrix (spheroidite), a bright network about 7 px wide along the grain
    boundaries, a particle-free band of matrix about 8 px wide on both sides of it, and a quarter of the
    grains made of bright lamellae (Widmanstatten-like, period 9 px, each grain its own direction).

    Returns ``(image, labels)`` with 0 spheroidite, 1 network, 2 particle-free zone, 3 lamellar.
    """
    rng = np.random.default_rng(seed)
    n = max(4, int(shape[0] * shape[1] / 9000))
    grain = _grains(shape, n, rng, 4.0)
    network = ndi.binary_dilation(ndi.morphological_gradient(grain, size=3) > 0, iterations=3)
    free = ndi.binary_dilation(network, iterations=8) & ~network
    lamellar = (rng.permutation(np.resize(np.array([0, 0, 0, 1]), n))[grain] == 1) & ~network & ~free
    particles = ~network & ~free & ~lamellar
    labels = np.zeros(shape, np.uint8)
    labels[network], labels[free], labels[lamellar] = 1, 2, 3
    m = int(particles.sum() / 40)
    cy, cx = rng.integers(0, shape[0], 3 * m), rng.integers(0, shape[1], 3 * m)
    keep = particles[cy, cx]
    bright = network | (_discs(shape, zip(cy[keep][:m], cx[keep][:m]), rng.uniform(1.2, 2.5, m)) & particles)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    theta = rng.uniform(0, np.pi, n)[grain]
    bright |= lamellar & (np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / 9.0) > 0.55)
    fine = _smooth_field(shape, 1.0, rng)
    return acquire(np.where(bright, 0.75 + 0.03 * fine, 0.35 + 0.03 * fine), rng, noise=0.06), labels


def demo(shape=SHAPE, seed: int = 0):
    """The built-in demo's micrograph (:func:`bigseg.demo.synth_micrograph`), without its data bar."""
    return demo_micrograph(shape, seed)


GENERATORS = {"islands": islands, "textured": textured, "lamellar": lamellar, "pores": pores, "twoscale": twoscale,
              "constituents": constituents, "spheroidite": spheroidite, "demo": demo}


def family(name: str, n_images: int = 4, seed: int = 0, shape=SHAPE) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_images`` (image, labels) pairs of one family, deterministic from ``seed``.

    The demo family uses the demo's own sizes (alternating 320x384 and 352x416, as
    ``bigseg demo`` writes them) unless ``shape`` is given explicitly.
    """
    if name not in GENERATORS:
        raise ValueError(f"unknown family {name!r}; one of {sorted(GENERATORS)}")
    out = []
    for i in range(n_images):
        s = seed * 1000 + i
        out.append(GENERATORS[name](shape, s))
    return out


def write_family(out_dir, name: str, n_images: int = 4, seed: int = 0, shape=SHAPE) -> tuple[Path, Path]:
    """Write ``<out_dir>/images/*.png`` (8-bit) and ``<out_dir>/labels/*.png``; return both folders."""
    from PIL import Image

    out_dir = Path(out_dir)
    img_dir, lab_dir = out_dir / "images", out_dir / "labels"
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    for i, (img, lab) in enumerate(family(name, n_images, seed, shape)):
        Image.fromarray((img * 255).round().astype(np.uint8)).save(img_dir / f"{name}{i:02d}.png")
        Image.fromarray(lab.astype(np.uint8)).save(lab_dir / f"{name}{i:02d}.png")
    return img_dir, lab_dir
