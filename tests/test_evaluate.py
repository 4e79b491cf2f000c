import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from bigseg import evaluate


def test_hand_computed_example():
    truth = np.array([[0, 0, 0, 1], [1, 1, 2, 2]])
    pred = np.array([[2, 2, 1, 0], [0, 0, 1, 1]])
    cm = evaluate.confusion(truth, pred, 3, 3)
    # class 0 -> cluster 2 (2 px), class 1 -> cluster 0 (3 px), class 2 -> cluster 1 (2 px)
    assert cm.tolist() == [[0, 1, 2], [3, 0, 0], [0, 2, 0]]
    r = evaluate.scores(cm)
    # IoU: class0: 2 / (3 + 2 - 2) = 2/3; class1: 3 / (3 + 3 - 3) = 1; class2: 2 / (2 + 3 - 2) = 2/3
    assert r["per_class_iou"] == pytest.approx({"0": 2 / 3, "1": 1.0, "2": 2 / 3})
    assert r["mean_iou"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert r["majority_accuracy"] == pytest.approx(7 / 8)
    assert r["matched_accuracy"] == pytest.approx(7 / 8)
    assert r["adjusted_rand"] == pytest.approx(adjusted_rand_score(truth.ravel(), pred.ravel()))


def test_unmatched_class_scores_zero_and_perfect_is_one():
    cm = evaluate.confusion(np.array([0, 0, 1, 2]), np.array([1, 1, 0, 0]), 3, 2)
    r = evaluate.scores(cm)
    assert min(r["per_class_iou"].values()) == 0.0
    perfect = evaluate.scores(evaluate.confusion(np.array([0, 1, 1]), np.array([1, 0, 0]), 2, 2))
    assert perfect["mean_iou"] == 1.0 and perfect["adjusted_rand"] == 1.0


def test_prediction_of_other_size_is_resized_nearest(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "m").mkdir()
    mask = np.zeros((6, 8), np.uint8)
    mask[:, 4:] = 1
    pred = np.repeat(np.repeat(1 - mask, 2, 0), 2, 1)   # twice the size, swapped ids
    Image.fromarray(mask).save(tmp_path / "m" / "a.png")
    Image.fromarray(pred.astype(np.uint8)).save(tmp_path / "p" / "a.png")
    r = evaluate.evaluate_dirs(tmp_path / "p", tmp_path / "m")
    assert r["mean_iou"] == 1.0 and r["images"] == 1
