"""nodule-det's box machinery: anchors, IoU, SSD encoding, matching, NMS, slice grouping and box decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from plugins.nodule_det.boxes import (
    IGNORE,
    NEGATIVE,
    POSITIVE,
    AnchorLevel,
    batched_nms,
    box_iou,
    decode,
    encode,
    grid_anchors,
    match_anchors,
    nms,
)
from plugins.nodule_det.grouping import group_detections
from plugins.nodule_det.handler import slice_detections
from plugins.nodule_det.network import LEVELS, SingleShotDetector
from plugins.nodule_det.truth import slice_boxes


def random_boxes(count: int, seed: int, extent: float = 100.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=generator) * extent
    size = torch.rand(count, 2, generator=generator) * 20 + 1
    return torch.cat([corner, corner + size], dim=1)


def reference_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Textbook greedy NMS, one pair at a time."""
    def iou(a: np.ndarray, b: np.ndarray) -> float:
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union

    kept: list[int] = []
    for i in sorted(range(len(scores)), key=lambda k: -scores[k]):
        if all(iou(boxes[i], boxes[k]) <= threshold for k in kept):
            kept.append(i)
    return kept


def test_anchors_follow_the_head_output_order() -> None:
    levels = (AnchorLevel(4, (4.0, 8.0)), AnchorLevel(8, (12.0,)))
    anchors = grid_anchors(16, 24, levels)
    assert anchors.shape == (4 * 6 * 2 + 2 * 3 * 1, 4)
    assert anchors[0].tolist() == [0.0, 0.0, 4.0, 4.0]  # first cell, first size
    assert anchors[1].tolist() == [-2.0, -2.0, 6.0, 6.0]  # first cell, second size
    assert anchors[2].tolist() == [4.0, 0.0, 8.0, 4.0]  # next cell along x
    assert anchors[48].tolist() == [-2.0, -2.0, 10.0, 10.0]  # the stride-8 level starts
    with pytest.raises(ValueError, match="multiple"):
        grid_anchors(20, 24, levels)
    with pytest.raises(ValueError):
        AnchorLevel(4, ())


def test_network_output_matches_the_anchor_count_for_any_padded_size() -> None:
    torch.manual_seed(0)
    network = SingleShotDetector().eval()
    with torch.inference_mode():
        output = network(torch.rand(2, 3, 40, 64))
    assert output.shape == (2, len(grid_anchors(40, 64, LEVELS)), 5)
    with pytest.raises(ValueError, match="multiples"):
        network(torch.rand(1, 3, 36, 64))


def test_iou_of_known_boxes() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 5.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [2.0, 2.0, 4.0, 4.0]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 4)
    assert iou[0].tolist() == pytest.approx([1.0, 1.0 / 3.0, 0.0, 0.04])
    assert iou[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # a degenerate box overlaps nothing


def test_encode_decode_round_trip() -> None:
    truth = random_boxes(500, seed=1)
    anchors = random_boxes(500, seed=2)
    deltas = encode(truth, anchors)
    assert torch.allclose(decode(deltas, anchors), truth, atol=1e-4)
    assert torch.allclose(encode(anchors, anchors), torch.zeros_like(anchors), atol=1e-6)


def test_encoding_uses_ssd_variances() -> None:
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    truth = torch.tensor([[1.0, -2.0, 21.0, 8.0]])  # centre (11, 3), size (20, 10)
    dx, dy, dw, dh = encode(truth, anchor)[0].tolist()
    assert (dx, dy) == pytest.approx((6 / (10 * 0.1), -2 / (10 * 0.1)))
    assert (dw, dh) == pytest.approx((math.log(2.0) / 0.2, 0.0), abs=1e-6)
    huge = decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), anchor)
    assert torch.isfinite(huge).all()


def test_matching_labels_positives_negatives_and_ignored() -> None:
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0], [6.0, 0.0, 16.0, 10.0],
                            [40.0, 40.0, 50.0, 50.0], [80.0, 80.0, 90.0, 90.0]])
    truth = torch.tensor([[0.0, 0.0, 10.0, 10.0], [44.0, 44.0, 46.0, 46.0]])  # the second is tiny
    ignored = torch.tensor([[80.0, 80.0, 89.0, 89.0]])
    labels, index = match_anchors(anchors, truth, ignored)
    # IoU with the first box: 1.0, 8/12, 4/16 (between the thresholds? no: 0.25 is the negative bound).
    assert labels.tolist() == [POSITIVE, POSITIVE, IGNORE, POSITIVE, IGNORE]
    assert index.tolist() == [0, 0, -1, 1, -1]  # the tiny box still claims its best anchor
    labels, index = match_anchors(anchors, torch.zeros((0, 4)))
    assert labels.tolist() == [NEGATIVE] * 5 and index.tolist() == [-1] * 5


def test_nms_matches_the_textbook_greedy_algorithm() -> None:
    boxes = random_boxes(300, seed=3, extent=60.0)
    scores = torch.rand(300, generator=torch.Generator().manual_seed(4))
    for threshold in (0.1, 0.3, 0.5):
        kept = nms(boxes, scores, threshold)
        assert kept.tolist() == reference_nms(boxes.numpy(), scores.numpy(), threshold)
    assert nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).tolist() == []


def test_nms_keeps_the_best_of_duplicates_and_separate_boxes() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [30.0, 30.0, 40.0, 40.0]])
    scores = torch.tensor([0.6, 0.9, 0.7])
    assert nms(boxes, scores, 0.3).tolist() == [1, 2]


def test_batched_nms_never_suppresses_across_groups() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [1.0, 1.0, 11.0, 11.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert sorted(batched_nms(boxes, scores, torch.tensor([0, 0, 1]), 0.3).tolist()) == [0, 2]
    many = random_boxes(200, seed=5)
    groups = torch.arange(200) % 7
    scores = torch.rand(200, generator=torch.Generator().manual_seed(6))
    expected = sorted(int(torch.nonzero(groups == g)[k]) for g in range(7)
                      for k in nms(many[groups == g], scores[groups == g], 0.2).tolist())
    assert sorted(batched_nms(many, scores, groups, 0.2).tolist()) == expected


def test_grouping_joins_overlapping_boxes_on_consecutive_slices() -> None:
    slices = torch.tensor([3, 4, 5, 5, 9, 4])
    boxes = torch.tensor([[10.0, 10.0, 20.0, 20.0], [11.0, 11.0, 21.0, 21.0], [12.0, 10.0, 22.0, 20.0],
                          [13.0, 10.0, 21.0, 19.0], [12.0, 10.0, 22.0, 20.0], [60.0, 60.0, 66.0, 66.0]])
    scores = torch.tensor([0.6, 0.9, 0.5, 0.7, 0.95, 0.4])
    groups = group_detections(slices, boxes, scores)
    assert [[b.slice_index for b in g] for g in groups] == [[9], [3, 4, 5], [4]]  # by best score
    middle = groups[1]
    assert middle[2].score == pytest.approx(0.7) and middle[2].box == (13.0, 10.0, 21.0, 19.0)  # best of slice 5
    assert group_detections(torch.zeros(0), torch.zeros((0, 4)), torch.zeros(0)) == []
    gap = group_detections(torch.tensor([3, 5]), boxes[:2], scores[:2])
    assert len(gap) == 2 and len(group_detections(torch.tensor([3, 5]), boxes[:2], scores[:2], max_gap=2)) == 1


def test_slice_boxes_are_the_in_plane_components_of_a_mask() -> None:
    mask = np.zeros((3, 20, 20), dtype=bool)
    mask[0, 2:5, 3:9] = True
    mask[0, 10:12, 10:11] = True
    mask[1, 2:5, 3:9] = True  # touches slice 0's component through the plane: still its own box
    boxes = slice_boxes(mask)
    assert boxes[0].tolist() == [[3.0, 2.0, 9.0, 5.0], [10.0, 10.0, 11.0, 12.0]]
    assert boxes[1].tolist() == [[3.0, 2.0, 9.0, 5.0]] and boxes[2].shape == (0, 4)


def test_slice_detections_decode_suppress_and_drop_the_padding() -> None:
    height, width = 20, 28  # padded to 24 x 32
    anchors = grid_anchors(24, 32, LEVELS)
    output = torch.full((2, len(anchors), 5), -10.0)
    output[..., 1:] = 0.0
    target = torch.tensor([6.5, 6.5, 13.5, 13.5])  # a stride-4 anchor of size 7, centred at (10, 10)
    k = int(torch.nonzero((anchors == target).all(dim=1))[0])
    neighbour = int(torch.nonzero((anchors == target + torch.tensor([4.0, 0.0, 4.0, 0.0])).all(dim=1))[0])
    padding = int(torch.nonzero((anchors[:, 1] + anchors[:, 3]) / 2 > height).flatten()[0])
    output[1, k, 0], output[1, neighbour, 0], output[1, padding, 0] = 3.0, 2.0, 5.0
    output[1, neighbour, 1] = -40 / 7  # decoded onto the first box: a duplicate NMS removes
    slices, boxes, scores = slice_detections(output, height, width, score_threshold=0.5)
    assert slices.tolist() == [1]
    assert boxes.tolist() == [target.tolist()]
    assert scores.tolist() == pytest.approx([1 / (1 + math.exp(-3.0))])
    with pytest.raises(ValueError, match="expected output"):
        slice_detections(output[:, :10], height, width)
