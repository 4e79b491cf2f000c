"""Phase order and phase names: what makes label ``i`` mean the same thing in every run.

NMF finds its components in an order that depends on the seed, the
initialisation and the order of the images, so label 2 of one run may be
label 0 of the next. :func:`order` sorts the phases by the mean intensity of
the pixels each one wins, darkest first: two runs that find the same phases
give them the same labels.

:func:`describe` names each phase from its pixels, relative to the other
phases, in a metallurgist's words (``features.FeatureKind.word``): how bright,
how textured, and the one property it shows most clearly above the others
("blobs/curvature", "size of dark regions"). The fingerprint chart
(:func:`fingerprint_values`) shows exactly what the name reads: each phase's
pixel profile against the phases' mean, feature by feature. An H row alone
says what a component *weighs*, which after the scaling is not what its pixels
*are*: a flat region sits mid-range on the Laplacian, so a dark, smooth matrix
can be 90 % Laplacian in H while its pixels are no more curved than any other.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

from .safety import excerpt

#: two phases whose pixels differ by less than this in mean scaled intensity (or texture) share the word
SAME_LEVEL = 0.04
#: a fingerprint's largest feature is "dominant" when it carries at least this share of the row (L1)
DOMINANT_SHARE = 0.5
#: longest phase name accepted (settings, ``bigseg rename``, model.json): names go into legends and headers
MAX_NAME_LENGTH = 100
#: brightness words by the number of distinct intensity levels among the phases
_LEVEL_WORDS = {1: ["mid"], 2: ["dark", "bright"], 3: ["dark", "mid", "bright"],
                4: ["darkest", "dark", "bright", "brightest"], 5: ["darkest", "dark", "mid", "bright", "brightest"]}


def _kinds_saying(says: str) -> tuple[str, ...]:
    """Names of the feature kinds whose weight says ``says`` ("texture": rough; "brightness": bright).

    A channel's name starts with its kind's, so these are prefixes of channel
    names. Brightness kinds are already in the brightness word, so never
    appended as the dominant feature.
    """
    # here, not at the top: naming phases is the only use, and rename need not import scipy
    from .features import FEATURES

    return tuple(k.name for k in FEATURES.values() if k.says == says)


def brightness_column(feature_names) -> int:
    """Index of the ``intensity`` feature, else of the first feature."""
    names = list(feature_names)
    return names.index("intensity") if "intensity" in names else 0


def _profile(X: np.ndarray, weights: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    total = float(weights.sum())
    return (weights @ X) / total if total > 0 else np.asarray(fallback, np.float64)


def pixel_profiles(X: np.ndarray, W: np.ndarray, H: np.ndarray, phases) -> tuple[np.ndarray, np.ndarray]:
    """Mean scaled features of the pixels each phase wins, and the share of pixels it wins.

    A pixel goes to the phase with the largest activation among ``phases``
    (boundary rows label no pixel, as in ``export.export_image``). A phase
    that wins no pixel of ``X`` is described by its activation-weighted mean,
    and failing that by its H row, so it still gets a place and a name.
    """
    X = np.asarray(X, np.float64)
    Wp = np.asarray(W, np.float64)[:, list(phases)]
    win = Wp.argmax(axis=1) if len(X) else np.empty(0, int)
    profiles, shares = [], []
    for j, row in enumerate(phases):
        mask = (win == j).astype(np.float64)
        weights = mask if mask.any() else Wp[:, j]
        profiles.append(_profile(X, weights, H[row]))
        shares.append(float(mask.mean()) if len(X) else 0.0)
    return np.array(profiles).reshape(len(phases), X.shape[1]), np.array(shares)


def order(X: np.ndarray, W: np.ndarray, H: np.ndarray, transitions, feature_names):
    """The rows of H in their stable order: phases darkest first, then the boundary rows.

    Parameters
    ----------
    X : ndarray, shape (pixels, features)
        The scaled pixel sample the model was fitted on.
    W : ndarray, shape (pixels, components)
        Its activations for ``H`` (``nnls.solve(X, H, l1, l2)``).
    H : ndarray, shape (components, features)
    transitions : list of int
        The boundary rows of ``H``.
    feature_names : list of str

    Returns
    -------
    rows : list of int
        The new order of H's rows: ``H[rows]`` has the phases first, sorted by
        the mean scaled intensity of the pixels each wins, then the boundary
        rows (sorted by their intensity weight), so the new boundary indices
        are ``range(n_phases, n_components)``.
    profiles : ndarray, shape (phases, features)
        The phases' pixel profiles (:func:`pixel_profiles`), in the new order.
    shares : ndarray
        Share of the sample's pixels each phase wins, in the new order.
    """
    col = brightness_column(feature_names)
    phases = [j for j in range(len(H)) if j not in set(transitions)]
    profiles, shares = pixel_profiles(X, W, H, phases)
    # ties are as good as impossible in floating point; the fingerprint breaks any that remain
    by_level = sorted(range(len(phases)), key=lambda j: (profiles[j, col], tuple(H[phases[j]])))
    boundaries = sorted(transitions, key=lambda j: (H[j, col], tuple(H[j])))
    return [phases[j] for j in by_level] + list(boundaries), profiles[by_level], shares[by_level]


def _levels(values: np.ndarray) -> np.ndarray:
    """Level (0 = lowest) of each value: sorted values closer than ``SAME_LEVEL`` share a level."""
    idx = np.argsort(values, kind="stable")
    level = np.zeros(len(values), int)
    current = 0
    for a, b in zip(idx[:-1], idx[1:]):
        if values[b] - values[a] >= SAME_LEVEL:
            current += 1
        level[b] = current
    return level


def _brightness_words(values: np.ndarray) -> list[str]:
    level = _levels(values)
    n = int(level.max()) + 1 if len(level) else 0
    if n in _LEVEL_WORDS:
        return [_LEVEL_WORDS[n][v] for v in level]
    words = []
    for v in level:   # more levels than words: the ends keep their superlatives, numbers tell the rest apart
        p = v / (n - 1)
        words.append("darkest" if v == 0 else "brightest" if v == n - 1
                     else "dark" if p < 0.4 else "bright" if p > 0.6 else "mid")
    return words


def _texture_words(profiles: np.ndarray, names: list) -> list[str | None]:
    texture = _kinds_saying("texture")
    cols = [i for i, n in enumerate(names) if n.startswith(texture)]
    if not cols:
        return [None] * len(profiles)
    t = profiles[:, cols].mean(axis=1)
    lo, hi = float(t.min()), float(t.max())
    if hi - lo < SAME_LEVEL:
        return [None] * len(profiles)   # the phases are alike in texture: saying so tells them apart by nothing
    return ["textured" if v >= lo + (hi - lo) / 2 else "smooth" for v in t]


def contrast(profiles: np.ndarray) -> np.ndarray:
    """Each phase's profile minus the phases' mean, feature by feature: what sets it apart, the fingerprint
    chart's bars and what the names read."""
    profiles = np.asarray(profiles, np.float64)
    return profiles - profiles.mean(axis=0) if len(profiles) else profiles


def _standout(i: int, profiles: np.ndarray, names: list) -> str | None:
    """The plain word of the feature on which phase ``i`` stands out most clearly above every other phase,
    or None.

    Brightness and texture kinds are left out (the brightness and texture words
    say them). A feature counts where this phase's pixels score highest, by at
    least ``SAME_LEVEL`` over every other phase's; of those, the one furthest
    above the phases' mean names it.
    """
    from .features import feature_kind

    worded = _kinds_saying("brightness") + _kinds_saying("texture")
    lift = contrast(profiles)[i]
    best, word = 0.0, None
    for f, name in enumerate(names):
        kind = feature_kind(name)
        if kind is None or kind.name in worded:
            continue
        others = np.delete(profiles[:, f], i)
        if profiles[i, f] >= others.max() + SAME_LEVEL and lift[f] > best:
            best, word = lift[f], kind.word
    return word


def describe(profiles: np.ndarray, feature_names) -> list[str]:
    """A descriptive name for each phase, such as ``"dark, smooth"`` or ``"mid, textured, high blobs/curvature"``.

    Parameters
    ----------
    profiles : ndarray, shape (phases, features)
        Mean scaled features of each phase's pixels (:func:`pixel_profiles`).
    feature_names : list of str

    Returns
    -------
    list of str
        Unique names, each word read off :func:`contrast` of ``profiles`` (the
        fingerprint chart): the brightness word from the rank of the phase's
        mean intensity among the phases (darkest, dark, mid, bright, brightest;
        phases within ``SAME_LEVEL`` share one); "smooth" or "textured" from its
        texture features (edge strength, local variance) against the other
        phases' (omitted when all phases are alike); and "high" with the plain
        word of the one other feature on which it stands clearly above every
        other phase (:func:`_standout`). Phases that would share a name are
        numbered.
    """
    names = list(feature_names)
    profiles = np.asarray(profiles, np.float64)
    if len(profiles) == 1:
        return ["all pixels"]
    bright = _brightness_words(profiles[:, brightness_column(names)])
    texture = _texture_words(profiles, names)
    out = []
    for i in range(len(profiles)):
        words = [bright[i]] + ([texture[i]] if texture[i] else [])
        feature = _standout(i, profiles, names)
        if feature:
            words.append(f"high {feature}")
        out.append(", ".join(words))
    return _numbered(out)


def _numbered(names: list[str]) -> list[str]:
    counts = {n: names.count(n) for n in names}
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if counts[n] > 1:
            seen[n] = seen.get(n, 0) + 1
            n = f"{n} ({seen[n]})"
        out.append(n)
    return out


def fingerprint_names(H: np.ndarray, feature_names) -> list[str]:
    """Names from the fingerprints alone, for models saved before names were kept.

    The H rows stand in for the pixel profiles (and the chart shows them), so
    these are only as right as the fingerprints are (see the module's note).
    """
    return describe(np.asarray(H, np.float64), feature_names)


def profiles_of(model) -> np.ndarray:
    """The phases' pixel profiles the fit kept (``report["phases"][i]["pixel_means"]``), in label order;
    the H rows of the phases for a model that kept none."""
    kept = (model.report or {}).get("phases") or []
    names = list(model.feature_names)
    if len(kept) == model.n_phases and all(set(names) <= set(p.get("pixel_means", {})) for p in kept):
        return np.array([[p["pixel_means"][n] for n in names] for p in kept], np.float64)
    return np.asarray(model.phase_H, np.float64)


def fingerprint_values(model) -> np.ndarray:
    """What the fingerprint chart shows, ``(phases, features)``: each phase's pixel profile against the mean of
    the phases its names were read among (:func:`contrast`; a void phase, named apart, is shown against the
    others' mean)."""
    profiles = profiles_of(model)
    named = slice(1, None) if model.void_below is not None and len(profiles) > 1 else slice(None)
    return profiles - profiles[named].mean(axis=0)


# --- names given by people -------------------------------------------------------------------

def name_problem(name) -> str | None:
    """Why ``name`` cannot name a phase (None if it can): a one-line string of printable characters."""
    if not isinstance(name, str) or not name.strip():
        return "must be a non-empty string"
    if len(name) > MAX_NAME_LENGTH:
        return f"is longer than {MAX_NAME_LENGTH} characters"
    if any(unicodedata.category(c).startswith("C") for c in name):
        return "holds a control character (names are one line of text)"
    return None


def check_names(names, n_phases: int, what: str = "phase_names") -> list[str]:
    """``names`` checked as the names of ``n_phases`` phases; raises ``ValueError`` in one line naming ``what``."""
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"{what}: expected a list of names, one per phase, got {excerpt(names)}")
    if len(names) != n_phases:
        raise ValueError(f"{what}: {len(names)} name(s) for {n_phases} phase(s); give one name per phase")
    for i, name in enumerate(names):
        problem = name_problem(name)
        if problem:
            raise ValueError(f"{what}: name of phase {i} ({excerpt(name)}) {problem}")
    clash = _first_duplicate(names)
    if clash:
        raise ValueError(f"{what}: phases {clash[0]} and {clash[1]} are both named {excerpt(names[clash[1]])}; "
                         f"names must differ")
    return [str(n).strip() for n in names]


def _first_duplicate(names) -> tuple[int, int] | None:
    # names that differ only in case, spacing or Unicode form (a ligature, a full-width letter: NFKC) would
    # look alike in a legend and be one column to a spreadsheet
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        key = " ".join(unicodedata.normalize("NFKC", str(n)).split()).casefold()
        if key in seen:
            return seen[key], i
        seen[key] = i
    return None


def parse_assignments(pairs, current: list[str]) -> list[str]:
    """``current`` with ``INDEX=NAME`` assignments applied; raises ``ValueError`` in one line.

    An index outside the phases, an index named twice, a bad name or two
    phases left with one name is refused.
    """
    names = list(current)
    given: set[int] = set()
    for text in pairs:
        index, sep, name = str(text).partition("=")
        if not sep or not re.fullmatch(r"\s*\d+\s*", index):
            raise ValueError(f"{excerpt(text)}: expected INDEX=NAME, such as 0=matrix")
        i = int(index)
        if i >= len(names):
            raise ValueError(f"{excerpt(text)}: no phase {i}; the phases are 0 to {len(names) - 1}")
        if i in given:
            raise ValueError(f"{excerpt(text)}: phase {i} is renamed twice")
        given.add(i)
        names[i] = name.strip()
    return check_names(names, len(names), "rename")


def csv_names(names) -> list[str]:
    """Column names for ``phase_fractions.csv``: one token each, unique, never ``image``.

    Commas, quotes and whitespace become ``_`` so the header splits on commas
    with any tool, and a leading ``= + - @`` gets a ``_`` before it so a
    spreadsheet never reads a name as a formula.
    """
    out, taken = [], {"image"}
    for name in names:
        col = re.sub(r"[\s,;\"']+", "_", str(name).strip()).strip("_") or "phase"
        if col[0] in "=+-@":
            col = "_" + col
        base, n = col, 1
        while col.casefold() in taken:
            n += 1
            col = f"{base}_{n}"
        taken.add(col.casefold())
        out.append(col)
    return out
