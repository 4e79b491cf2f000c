"""Score unsupervised label maps against human phase masks.

Clusters have no names, so they are matched to classes once over the whole
collection (one model, one matching): a pooled confusion matrix, then the
Hungarian algorithm picks the one-to-one cluster-to-class map that keeps the
most pixels. Reported: per-class and mean IoU under that map, pixel accuracy
with each cluster mapped to its majority class, and the adjusted Rand index.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .io import IMAGE_SUFFIXES, ImageReadError, read_label_mask

log = logging.getLogger("bigseg")


def confusion(truth: np.ndarray, pred: np.ndarray, n_classes: int, n_clusters: int) -> np.ndarray:
    """Counts[c, k] of pixels with true class c and predicted cluster k."""
    t = np.asarray(truth).ravel().astype(np.int64)
    p = np.asarray(pred).ravel().astype(np.int64)
    if t.size and (t.max() >= n_classes or p.max() >= n_clusters or t.min() < 0 or p.min() < 0):
        raise ValueError("label values outside the confusion matrix")
    return np.bincount(t * n_clusters + p, minlength=n_classes * n_clusters).reshape(n_classes, n_clusters)


def _comb2(x):
    x = np.asarray(x, dtype=np.float64)
    return x * (x - 1) / 2


def adjusted_rand(cm: np.ndarray) -> float:
    """Adjusted Rand index from a contingency table (Hubert & Arabie)."""
    n = cm.sum()
    if n < 2:
        return 1.0
    sum_ij = _comb2(cm).sum()
    a = _comb2(cm.sum(axis=1)).sum()
    b = _comb2(cm.sum(axis=0)).sum()
    expected = a * b / _comb2(n)
    max_index = (a + b) / 2
    if max_index == expected:
        return 1.0
    return float((sum_ij - expected) / (max_index - expected))


def scores(cm: np.ndarray, class_names=None) -> dict:
    """All metrics of a pooled confusion matrix (rows: classes, columns: clusters)."""
    from scipy.optimize import linear_sum_assignment

    cm = np.asarray(cm, dtype=np.int64)
    n_classes, n_clusters = cm.shape
    rows, cols = linear_sum_assignment(-cm)
    match = {int(c): int(k) for c, k in zip(rows, cols)}
    iou = []
    for c in range(n_classes):
        if c in match:
            k = match[c]
            tp = cm[c, k]
            union = cm[c, :].sum() + cm[:, k].sum() - tp
            iou.append(float(tp / union) if union else 0.0)
        else:
            iou.append(0.0)
    total = cm.sum()
    names = list(class_names) if class_names else [str(c) for c in range(n_classes)]
    return {
        "mean_iou": float(np.mean(iou)),
        "per_class_iou": {names[c]: iou[c] for c in range(n_classes)},
        "matched_accuracy": float(cm[rows, cols].sum() / total) if total else 0.0,
        "majority_accuracy": float(cm.max(axis=0).sum() / total) if total else 0.0,
        "adjusted_rand": adjusted_rand(cm),
        "cluster_to_class": {int(k): names[c] for c, k in match.items()},
        "pixels": int(total),
    }


def resize_nearest(pred: np.ndarray, shape) -> np.ndarray:
    """Nearest-neighbour resize of a label map (pixel centres sampled)."""
    if pred.shape == tuple(shape):
        return pred
    ry = ((np.arange(shape[0]) + 0.5) * pred.shape[0] / shape[0]).astype(int)
    rx = ((np.arange(shape[1]) + 0.5) * pred.shape[1] / shape[1]).astype(int)
    return pred[np.minimum(ry, pred.shape[0] - 1)][:, np.minimum(rx, pred.shape[1] - 1)]


def prediction_dir(pred_dir) -> Path:
    """The folder of label maps: ``pred_dir`` itself, or its ``labels/`` when it is a run's output folder."""
    pred_dir = Path(pred_dir)
    labels = pred_dir / "labels"
    if labels.is_dir() and not labels.is_symlink() and not any(_images_in(pred_dir)):
        return labels
    return pred_dir


def _images_in(folder) -> list[Path]:
    return [p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]


def pair_files(pred_dir, label_dir) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """(stem, prediction, mask) for every stem in both folders, and stems only in the masks."""
    preds = {p.stem: p for p in _images_in(prediction_dir(pred_dir))}
    masks = {p.stem: p for p in _images_in(label_dir)}
    pairs = [(s, preds[s], masks[s]) for s in sorted(masks) if s in preds]
    return pairs, sorted(set(masks) - set(preds))


#: more distinct values than this in one mask or label map means it is a picture, not class indices; also
#: the largest class index either may hold (a class count beyond it allocates a confusion matrix of GiB)
MAX_CLASSES = 64
#: the smallest side a prediction of another size than its mask may have to be compared after a resize
MIN_RESIZED_SIDE = 8


def _label_map(path, what: str, n_classes: int | None = None) -> np.ndarray:
    """A mask (``what="mask"``) or prediction read and checked to be class indices; one line naming the file
    otherwise: colour pictures (an overlay, coloured masks), grey micrographs, or indices beyond the bound."""
    try:
        arr = read_label_mask(path)
    except ValueError:
        raise
    except ImageReadError as exc:     # not a regular file, too large: already one line naming it
        raise ValueError(str(exc)) from None
    except Exception as exc:   # one line naming the file, whatever the reader raised
        raise ValueError(f"{path}: unreadable {what} ({type(exc).__name__}: {' '.join(str(exc).split())})") \
            from None
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.ndim != 2 or arr.dtype.kind not in "ui":
        raise ValueError(f"{path}: a {arr.dtype} image of shape {arr.shape} is no {what} of class indices "
                         f"(a label map is one integer channel: 0, 1, ... per class)")
    if arr.size == 0:
        raise ValueError(f"{path}: empty {what}")
    top, bottom = int(arr.max()), int(arr.min())
    if n_classes is not None and top >= n_classes:
        raise ValueError(f"{path}: holds class {top}, but --n-classes is {n_classes}")
    distinct = np.unique(arr).size
    if distinct > max(MAX_CLASSES, n_classes or 0):
        raise ValueError(f"{path}: holds {distinct} distinct values, not class indices (a {what} stores 0, 1, "
                         f"... per class); a micrograph or a picture? check the folder")
    if bottom < 0 or (n_classes is None and top >= MAX_CLASSES):
        raise ValueError(f"{path}: holds the value {bottom if bottom < 0 else top}, no class index (they run "
                         f"0 to {MAX_CLASSES - 1} here; give --n-classes for more)")
    return arr


#: a prediction and its mask of one width whose heights differ by at most this share are one frame with
#: another crop of the SEM data bar at the bottom (MetalDAM's masks: 65 rows cropped, 66 for two of them)
MAX_CROP_SHARE = 0.1


def _matched(pred: np.ndarray, truth: np.ndarray, pred_path, mask_path) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``truth`` on one grid: as they are when the shapes agree; their common top rows when
    only the bottom crop differs (a warning names the file); ``pred`` resized (nearest) when it is the same
    picture at another scale; refused naming both files otherwise (transposed, another aspect, tiny)."""
    if pred.shape == truth.shape:
        return pred, truth
    (ph, pw), (th, tw) = pred.shape, truth.shape
    if pw == tw and abs(ph - th) <= MAX_CROP_SHARE * th:
        rows = min(ph, th)
        log.warning("%s: %d rows against %d in the mask %s (another crop of the data bar?); the top %d rows are "
                    "compared", pred_path, ph, th, mask_path, rows)
        return pred[:rows], truth[:rows]
    if ph * tw != pw * th or min(ph, pw) < MIN_RESIZED_SIDE:
        why = "transposed" if (ph, pw) == (tw, th) else "another aspect ratio" if ph * tw != pw * th else "too small"
        raise ValueError(f"{pred_path}: {ph} x {pw} pixels (rows x columns) against {th} x {tw} in the mask "
                         f"{mask_path} ({why}): they do not show the same pixels; segment with the crop the masks "
                         f"were drawn on (crop_bottom) or check the pairing")
    log.warning("%s: %d x %d pixels resized (nearest) to the mask's %d x %d", pred_path, ph, pw, th, tw)
    return resize_nearest(pred, truth.shape), truth


def evaluate_dirs(pred_dir, label_dir, n_classes: int | None = None, class_names=None) -> dict:
    """Pooled scores of every label map in ``pred_dir`` (or in its ``labels/``, for a run's output folder)
    that has a mask of the same stem.

    Raises ``ValueError`` in one line naming the file for a mask or
    prediction that is no map of class indices (colour, more than
    ``MAX_CLASSES`` values or indices) or one that shows other pixels than its
    mask (transposed, another aspect ratio).
    """
    if n_classes is not None and n_classes > MAX_CLASSES ** 2:
        raise ValueError(f"--n-classes {n_classes}: at most {MAX_CLASSES ** 2} classes")
    pairs, missing = pair_files(pred_dir, label_dir)
    if not pairs:
        raise FileNotFoundError(f"no prediction in {prediction_dir(pred_dir)} has a mask of the same name in "
                                f"{label_dir}")
    loaded = []
    for _, p, m in pairs:
        pred, truth = _matched(_label_map(p, "prediction"), _label_map(m, "mask", n_classes), p, m)
        loaded.append((truth, pred))
    n_cls = n_classes or int(max(t.max() for t, _ in loaded)) + 1
    n_clu = int(max(p.max() for _, p in loaded)) + 1
    cm = np.zeros((n_cls, n_clu), np.int64)
    for truth, pred in loaded:
        cm += confusion(truth, pred, n_cls, n_clu)
    out = scores(cm, class_names)
    out.update({"images": len(pairs), "missing_predictions": missing, "confusion": cm.tolist()})
    return out


def format_report(res: dict) -> str:
    lines = [f"images: {res.get('images', '?')}   pixels: {res['pixels']}",
             f"mean IoU:          {res['mean_iou']:.4f}",
             f"majority accuracy: {res['majority_accuracy']:.4f}",
             f"matched accuracy:  {res['matched_accuracy']:.4f}",
             f"adjusted Rand:     {res['adjusted_rand']:.4f}",
             "per-class IoU:     " + "  ".join(f"{k}={v:.3f}" for k, v in res["per_class_iou"].items())]
    if res.get("missing_predictions"):
        lines.append(f"masks without prediction: {len(res['missing_predictions'])}")
    return "\n".join(lines)
