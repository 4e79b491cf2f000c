"""Score unsupervised label maps against human phase masks.

Clusters have no names, so they are matched to classes once over the whole
collection (one model, one matching): a pooled confusion matrix, then the
Hungarian algorithm picks the one-to-one cluster-to-class map that keeps the
most pixels. Reported: per-class and mean IoU under that map, pixel accuracy
with each cluster mapped to its majority class, and the adjusted Rand index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import IMAGE_SUFFIXES, read_label_mask


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


def pair_files(pred_dir, label_dir) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """(stem, prediction, mask) for every stem in both folders, and stems only in the masks."""
    preds = {p.stem: p for p in Path(pred_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in Path(label_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs = [(s, preds[s], masks[s]) for s in sorted(masks) if s in preds]
    return pairs, sorted(set(masks) - set(preds))


#: more distinct values than this in one mask means it is an image, not a class-index mask
MAX_CLASSES = 64


def _mask(path) -> np.ndarray:
    try:
        return read_label_mask(path)
    except Exception as exc:   # one line naming the file, whatever the reader raised
        raise ValueError(f"{path}: unreadable mask ({type(exc).__name__}: {exc})") from None


def evaluate_dirs(pred_dir, label_dir, n_classes: int | None = None, class_names=None) -> dict:
    """Pooled scores of every label PNG in ``pred_dir`` that has a mask of the same stem."""
    pairs, missing = pair_files(pred_dir, label_dir)
    if not pairs:
        raise FileNotFoundError(f"no prediction in {pred_dir} has a mask of the same name in {label_dir}")
    loaded = [(_mask(m), _mask(p)) for _, p, m in pairs]
    for (_, _, m), (truth, _) in zip(pairs, loaded):
        if n_classes is not None and truth.max() >= n_classes:
            raise ValueError(f"{m}: holds class {int(truth.max())}, but --n-classes is {n_classes}")
        distinct = np.unique(truth).size
        if n_classes is None and distinct > MAX_CLASSES:
            raise ValueError(f"{m}: holds {distinct} distinct values, not class indices (a mask stores 0, 1, "
                             f"... per class); check --labels, or give --n-classes")
    n_cls = n_classes or int(max(t.max() for t, _ in loaded)) + 1
    n_clu = int(max(p.max() for _, p in loaded)) + 1
    cm = np.zeros((n_cls, n_clu), np.int64)
    for truth, pred in loaded:
        cm += confusion(truth, resize_nearest(pred, truth.shape), n_cls, n_clu)
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
