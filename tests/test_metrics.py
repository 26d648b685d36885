"""Metrics on hand-made cases whose right answers can be counted on paper."""

from __future__ import annotations

import pytest

from tlsync.errors import TlsyncError
from tlsync.format import Box, ImageRef, Item
from tlsync.trainer.evaluation.metrics import evaluate

CATS = ["cat", "dog"]


def item(id: str, *boxes: Box) -> Item:
    return Item(id, ImageRef(f"{id}.jpg", width=200, height=200), list(boxes))


def box(label: str, x: float, y: float, w: float = 40, h: float = 40, conf: float | None = None) -> Box:
    return Box(label, x, y, w, h, confidence=conf)


def ground_truth() -> list[Item]:
    return [
        item("a", box("cat", 10, 10), box("dog", 100, 100)),
        item("b", box("cat", 20, 120), box("dog", 120, 20), box("dog", 60, 60)),
    ]


def test_perfect_predictions_score_one() -> None:
    gt = ground_truth()
    preds = [Item(i.id, i.image, [Box(b.label, b.x, b.y, b.width, b.height, confidence=0.9) for b in i.annotations])
             for i in gt]
    m = evaluate(gt, preds, CATS)
    assert m["map50_95"] == pytest.approx(1.0)
    assert m["map50"] == pytest.approx(1.0)
    assert m["per_class_ap"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    assert (m["precision"], m["recall"], m["f1"]) == (1.0, 1.0, 1.0)
    assert m["best_conf"] == pytest.approx(0.9)


@pytest.mark.parametrize("predictions", [[], [item("a"), item("b")]], ids=["empty list", "items without boxes"])
def test_no_predictions_score_zero(predictions: list[Item]) -> None:
    m = evaluate(ground_truth(), predictions, CATS)
    assert m["map50_95"] == 0.0 and m["map50"] == 0.0
    assert m["per_class_ap"] == {"cat": 0.0, "dog": 0.0}
    assert (m["precision"], m["recall"], m["f1"], m["best_conf"]) == (0.0, 0.0, 0.0, None)
    assert m["fn"] == 5
    assert m["confusion_matrix"] == [[0, 0, 2], [0, 0, 3], [0, 0, 0]]  # every true box missed


def test_known_counts_give_exact_precision_recall_f1() -> None:
    preds = [
        item("a", box("cat", 12, 12, conf=0.9),      # TP (IoU 0.82)
             box("dog", 100, 100, conf=0.8),        # TP
             box("dog", 150, 150, conf=0.7)),       # FP: nothing there
        item("b", box("dog", 120, 20, conf=0.9),     # TP; cat at (20,120) and dog at (60,60) are missed
             box("cat", 120, 20, conf=0.6)),         # FP: right place, wrong class
    ]
    m = evaluate(ground_truth(), preds, CATS, conf=0.0)
    # Everything kept: TP 3, FP 2, FN 2.
    assert (m["at_conf"]["tp"], m["at_conf"]["fp"], m["at_conf"]["fn"]) == (3, 2, 2)
    assert m["at_conf"]["precision"] == pytest.approx(3 / 5)
    assert m["at_conf"]["recall"] == pytest.approx(3 / 5)
    assert m["at_conf"]["f1"] == pytest.approx(3 / 5)
    # Dropping the two FPs (threshold 0.8) gives the best F1: P 1, R 3/5, F1 3/4.
    assert m["best_conf"] == pytest.approx(0.8)
    assert (m["tp"], m["fp"], m["fn"]) == (3, 0, 2)
    assert (m["precision"], m["recall"], m["f1"]) == (pytest.approx(1.0), pytest.approx(0.6), pytest.approx(0.75))


def test_per_class_precision_recall_at_the_chosen_confidence() -> None:
    preds = [
        item("a", box("cat", 12, 12, conf=0.9), box("dog", 100, 100, conf=0.8), box("dog", 150, 150, conf=0.7)),
        item("b", box("dog", 120, 20, conf=0.9), box("cat", 120, 20, conf=0.6)),
    ]
    m = evaluate(ground_truth(), preds, CATS + ["bird"], conf=0.0)
    cat, dog, bird = m["per_class"]["cat"], m["per_class"]["dog"], m["per_class"]["bird"]
    assert (cat["boxes"], cat["tp"], cat["fp"], cat["fn"]) == (2, 1, 1, 1)  # one cat found, one wrong "cat"
    assert (cat["precision"], cat["recall"]) == (pytest.approx(0.5), pytest.approx(0.5))
    assert (dog["boxes"], dog["tp"], dog["fp"], dog["fn"]) == (3, 2, 1, 1)
    assert (dog["precision"], dog["recall"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert (bird["boxes"], bird["tp"], bird["ap50"], bird["ap50_95"]) == (0, 0, None, None)
    assert (cat["ap50"] + dog["ap50"]) / 2 == pytest.approx(m["map50"])
    assert cat["ap50_95"] == m["per_class_ap"]["cat"]
    # Without --conf the rows use the best-F1 threshold (0.8): the cat FP at 0.6 is gone.
    assert evaluate(ground_truth(), preds, CATS)["per_class"]["cat"]["precision"] == pytest.approx(1.0)


def test_duplicate_detection_of_one_object_is_a_false_positive() -> None:
    gt = [item("a", box("cat", 10, 10))]
    preds = [item("a", box("cat", 10, 10, conf=0.9), box("cat", 11, 11, conf=0.8))]
    m = evaluate(gt, preds, CATS, conf=0.5)
    assert (m["at_conf"]["tp"], m["at_conf"]["fp"], m["at_conf"]["fn"]) == (1, 1, 0)


def test_per_class_ap_separates_classes_and_marks_absent_ones() -> None:
    gt = [item("a", box("cat", 10, 10), box("dog", 100, 100))]
    preds = [item("a", box("cat", 10, 10, conf=0.9))]  # the dog is never found
    m = evaluate(gt, preds, ["cat", "dog", "bird"])
    assert m["per_class_ap"]["cat"] == pytest.approx(1.0)
    assert m["per_class_ap"]["dog"] == 0.0
    assert m["per_class_ap"]["bird"] is None  # no bird in the ground truth: no AP, not a zero
    assert m["map50_95"] == pytest.approx(0.5)  # mean over the classes that have ground truth
    assert set(m["pr_curve"]["per_class"]) == {"cat", "dog"}
    assert len(m["pr_curve"]["recall"]) == len(m["pr_curve"]["precision"]) == 101


def test_loose_boxes_count_at_iou_50_but_lower_map50_95() -> None:
    gt = [item("a", box("cat", 0, 0, 100, 100))]
    preds = [item("a", box("cat", 0, 0, 100, 70, conf=0.9))]  # IoU 0.7
    m = evaluate(gt, preds, CATS)
    assert m["map50"] == pytest.approx(1.0)
    assert m["map50_95"] == pytest.approx(0.5)  # hits at IoU .50-.70: 5 of the 10 thresholds


def test_confusion_matrix_counts_confusions_misses_and_false_alarms() -> None:
    preds = [
        item("a", box("cat", 10, 10, conf=0.9),     # cat -> cat
             box("cat", 100, 100, conf=0.9)),      # dog predicted as cat
        item("b", box("dog", 20, 120, conf=0.9),     # cat predicted as dog
             box("dog", 170, 170, w=20, h=20, conf=0.9),  # false alarm
             box("dog", 60, 60, conf=0.1)),         # below the threshold: the dog there counts as missed
    ]
    m = evaluate(ground_truth(), preds, CATS, conf=0.5)
    assert m["confusion_labels"] == ["cat", "dog", "background"]
    # rows: true cat, true dog, background; columns: predicted cat, dog, background
    assert m["confusion_matrix"] == [
        [1, 1, 0],
        [1, 0, 2],
        [0, 1, 0],
    ]


def test_unknown_label_and_unknown_item_are_named() -> None:
    with pytest.raises(TlsyncError, match=r"item 'a': label 'fox'"):
        evaluate([item("a", box("fox", 1, 1))], [], CATS)
    with pytest.raises(TlsyncError, match=r"item 'zzz'"):
        evaluate(ground_truth(), [item("zzz", box("cat", 1, 1, conf=0.5))], CATS)
    with pytest.raises(TlsyncError, match="no items"):
        evaluate([], [], CATS)
