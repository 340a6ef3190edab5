"""train.metrics against hand-computed values."""

import math

import pytest

from sleepedge.contract import IGNORE
from train.metrics import auroc, binary_metrics, cohen_kappa, confusion_matrix, staging_metrics


def test_staging_metrics_hand_computed():
    # IGNORE epochs are dropped before anything is counted
    y_true = [0, 0, 1, 1, 2, 2, IGNORE, IGNORE]
    y_pred = [0, 1, 1, 1, 2, 0, 4, 3]
    m = staging_metrics(y_true, y_pred)
    assert m["n"] == 6
    assert m["confusion"][:3] == [[1, 1, 0, 0, 0], [0, 2, 0, 0, 0], [1, 0, 1, 0, 0]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    # F1: W 2*1/(2+1+1)=0.5, N1 4/5, N2 2/3; macro over the 3 classes that occur
    assert m["per_class_f1"]["W"] == pytest.approx(0.5)
    assert m["per_class_f1"]["N1"] == pytest.approx(0.8)
    assert m["per_class_f1"]["N2"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # po = 4/6, pe = (2*2 + 2*3 + 2*1)/36 = 1/3 -> kappa = (2/3 - 1/3)/(2/3) = 0.5
    assert m["kappa"] == pytest.approx(0.5)


def test_kappa_perfect_and_chance():
    assert cohen_kappa(confusion_matrix([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])) == pytest.approx(1.0)
    # always predicting the majority class: po = pe -> kappa 0
    assert cohen_kappa(confusion_matrix([0, 0, 1, 2], [0, 0, 0, 0])) == pytest.approx(0.0)


def test_auroc_rank_based_with_ties():
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.8]) == pytest.approx(0.875)  # tie counts 1/2
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))


def test_binary_metrics_hand_computed():
    m = binary_metrics([1, 1, 0, 0, 0], [1.0, -1.0, -1.0, -1.0, 1.0])
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["f1"] == pytest.approx(0.5)  # tp 1, fp 1, fn 1
    masked = binary_metrics([1, 1, 0, 0, 0], [1.0, -1.0, -1.0, -1.0, 1.0], mask=[1, 0, 1, 1, 0])
    assert masked["balanced_accuracy"] == pytest.approx(1.0)
    assert masked["n"] == 3


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="one prediction per epoch"):
        staging_metrics([0, 1], [0])
