"""Dense image tasks' shared pieces: letterboxing and its inverse mapping, segmentation and detection
post-processing (serving/processing/), and the defect-scene generator and readers (training/data/)."""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest

from serving.processing.letterbox import Letterbox, to_original_grid
from serving.processing.regions import box_iou, detect, mask_png, nms, segment

pytestmark = pytest.mark.fast


@pytest.mark.parametrize("shape", [(300, 200), (120, 480), (64, 64), (1000, 700)])
def test_letterbox_places_the_image_top_left_and_maps_points_back(shape):
    h, w = shape
    rgb = np.full((h, w, 3), 200, np.uint8)
    chw, placement = Letterbox(size=96)(rgb)
    assert chw.shape == (3, 96, 96) and chw.dtype == np.float32
    ch, cw = placement.content
    assert max(ch, cw) == 96
    # the image's part is the image's value, the rest is the mean (0 once normalised)
    assert np.allclose(chw[:, :ch, :cw], (200 - 127) / 128)
    assert np.allclose(chw[:, ch:, :], 0) and np.allclose(chw[:, :, cw:], 0)
    box = np.array([[w * 0.1, h * 0.2, w * 0.7, h * 0.9]])
    assert np.allclose(placement.to_original(placement.to_input(box)), box)
    # outside the image: clipped to it
    assert placement.to_original(np.array([[-5.0, -5.0, 500.0, 500.0]])).tolist() == [[0, 0, w, h]]


def one_hot_maps(mask: np.ndarray, classes: int, letterbox: Letterbox, stride: int) -> tuple:
    """What a perfect model would answer for `mask`: each class's share of each cell, as logits."""
    placement = letterbox.place(*mask.shape)
    boxed = letterbox.resize_mask(mask, placement, 0)
    cells = letterbox.size // stride
    shares = np.stack(
        [
            cv2.resize((boxed == c).astype(np.float32), (cells, cells), interpolation=cv2.INTER_AREA)
            for c in range(classes)
        ]
    )
    return np.log(shares + 1e-3) * 4, placement


def test_segmentation_maps_back_onto_the_original_pixels():
    mask = np.zeros((210, 330), np.uint8)
    mask[40:120, 60:180] = 1  # a large region of class 1
    mask[150:190, 250:300] = 2  # and one of class 2
    letterbox = Letterbox(size=128)
    logits, placement = one_hot_maps(mask, 3, letterbox, stride=4)
    seg = segment(logits, placement, letterbox.size)
    full = seg.full_mask()
    assert full.shape == mask.shape
    for c in (1, 2):
        inter = np.logical_and(full == c, mask == c).sum()
        union = np.logical_or(full == c, mask == c).sum()
        assert inter / union > 0.85, c
    labels = ["background", "a", "b"]
    areas = seg.areas(labels)
    assert abs(sum(areas.values()) - 1) < 1e-6 and areas["a"] == pytest.approx((mask == 1).mean(), rel=0.15)
    instances = seg.instances(labels)
    assert sorted(i["label"] for i in instances) == ["a", "b"]
    a = next(i for i in instances if i["label"] == "a")
    assert box_iou(np.array(a["box"]), np.array([[60, 40, 180, 120]]))[0] > 0.85
    xs, ys = zip(*a["polygon"])
    assert (
        a["box"][0] <= min(xs)
        and max(xs) <= a["box"][2]
        and a["box"][1] <= min(ys)
        and max(ys) <= a["box"][3]
    )
    assert 0.5 < a["score"] <= 1
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(mask_png(full)), np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == mask.shape and np.array_equal(decoded, full)


def test_a_large_image_is_segmented_at_the_work_size_and_answered_in_its_own_pixels():
    mask = np.zeros((1500, 2400), np.uint8)
    mask[300:900, 600:1500] = 1
    letterbox = Letterbox(size=64)
    logits, placement = one_hot_maps(mask, 2, letterbox, stride=4)
    seg = segment(logits, placement, letterbox.size)
    assert max(seg.mask.shape) == 1024 and seg.full_mask().shape == mask.shape
    (inst,) = seg.instances(["background", "a"])
    assert box_iou(np.array(inst["box"]), np.array([[600, 300, 1500, 900]]))[0] > 0.8


def test_to_original_grid_has_no_half_cell_shift():
    """A map that is each cell's centre x (in input pixels) reads back as each pixel's x."""
    letterbox = Letterbox(size=64)
    placement = letterbox.place(100, 100)  # scale 0.64
    cells = 16
    centre_x = np.tile((np.arange(cells) + 0.5) * 4, (cells, 1))[None].astype(np.float32)
    back = to_original_grid(centre_x, placement, letterbox.size)[0]
    expected = (np.arange(100) + 0.5) * placement.scale
    assert np.abs(back[50, 10:90] - expected[10:90]).max() < 1e-3


def detection_maps(classes: int, cells: int) -> np.ndarray:
    return np.zeros((classes + 4, cells, cells), np.float32)


def test_detect_decodes_a_peak_into_a_box_in_original_pixels():
    letterbox = Letterbox(size=64)
    placement = letterbox.place(200, 100)  # scale 0.32; the image fills 32 x 64 input pixels
    maps = detection_maps(2, 16)
    maps[1, 5, 3] = 0.9  # class 1 at cell (row 5, column 3): centre (14, 22) in input pixels
    maps[2:, 5, 3] = [4, 6, 2, 8]  # left, top, right, bottom edges
    found = detect(maps, placement, letterbox.size, 0.3, 10)
    assert found.classes.tolist() == [1] and found.scores.tolist() == pytest.approx([0.9])
    assert found.boxes[0] == pytest.approx(np.array([10, 16, 16, 30]) / 0.32)
    assert found.answer(["a", "b"]) == [{"label": "b", "score": 0.9, "box": [31.2, 50.0, 50.0, 93.8]}]


def test_detect_keeps_peaks_only_above_threshold_inside_the_image_and_suppresses_overlaps():
    letterbox = Letterbox(size=64)
    placement = letterbox.place(100, 200)  # the image fills the top half: rows 0-7 of 16
    maps = detection_maps(2, 16)
    maps[2:] = 6.0  # every cell: a 12 x 12 box around its centre
    maps[0, 2, 2] = 0.8
    maps[0, 2, 4] = 0.7  # same class, 8 px away: its box overlaps the first by IoU 0.2 (kept)
    maps[0, 6, 6], maps[0, 6, 7] = 0.9, 0.85  # touching peaks are not both maxima: one box
    maps[1, 6, 6] = 0.6  # another class at the same place: kept
    maps[0, 12, 12] = 0.95  # in the padding below the image: ignored
    maps[1, 1, 12] = 0.2  # under the threshold
    found = detect(maps, placement, letterbox.size, 0.3, 10)
    assert found.scores.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert found.classes.tolist() == [0, 0, 0, 1]
    assert len(detect(maps, placement, letterbox.size, 0.3, 2).scores) == 2
    assert len(detect(maps, placement, letterbox.size, 0.75, 10).scores) == 2


def test_nms_matches_a_brute_force_greedy_suppression():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 100, (60, 2))
    boxes = np.hstack([xy, xy + rng.uniform(5, 40, (60, 2))])
    scores, classes = rng.random(60), rng.integers(0, 3, 60)
    expected: list[int] = []
    for i in np.argsort(-scores):
        if all(classes[j] != classes[i] or box_iou(boxes[j], boxes[i : i + 1])[0] <= 0.5 for j in expected):
            expected.append(int(i))
    assert nms(boxes, scores, classes).tolist() == expected


# --- the scene generator and the readers of users' data ---------------------------------------------


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from training.data.defect_scenes import generate_defect_scenes

    return generate_defect_scenes(tmp_path_factory.mktemp("scenes"), count=12, seed=5)


def test_scenes_are_deterministic_with_exact_labels(scenes, tmp_path):
    from training.data.defect_scenes import DEFECT_LABELS, generate_defect_scenes

    again = generate_defect_scenes(tmp_path, count=3, seed=5)
    for name in ("scene_0000.png", "scene_0002.png"):
        assert (again / "images" / name).read_bytes() == (scenes / "images" / name).read_bytes()
        assert (again / "masks" / name).read_bytes() == (scenes / "masks" / name).read_bytes()
    coco = json.loads((scenes / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(DEFECT_LABELS)
    sizes = {(im["height"], im["width"]) for im in coco["images"]}
    assert len(sizes) > 6 and all(176 <= min(s) and max(s) <= 430 for s in sizes)  # not all 224²
    per_image = [sum(a["image_id"] == im["id"] for a in coco["annotations"]) for im in coco["images"]]
    assert min(per_image) == 0 and max(per_image) >= 2  # zero to several defects
    for im in coco["images"]:
        mask = cv2.imread(str(scenes / "masks" / im["file_name"]), cv2.IMREAD_UNCHANGED)
        image = cv2.imread(str(scenes / "images" / im["file_name"]))
        assert mask.shape == image.shape[:2] == (im["height"], im["width"])
        boxes = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        covered = np.zeros_like(mask, bool)
        for a in boxes:
            x, y, w, h = map(int, a["bbox"])
            covered[y : y + h, x : x + w] = True
            assert (mask[y : y + h, x : x + w] == a["category_id"]).any()
        assert not (mask[~covered] > 0).any()  # every labelled pixel lies in a box of the image
        assert set(np.unique(mask)) <= {0, 1, 2, 3}


def test_readers_split_masks_and_coco_boxes(scenes):
    from training.data.defect_scenes import load_scene_splits, read_coco

    train, val, test = load_scene_splits(str(scenes), "masks", [], 0.2, 0.25, seed=1)
    assert len(train) + len(val) + len(test) == 12 and all(s.mask is not None for s in train + val + test)
    with_boxes = read_coco(scenes, ["crack", "spot", "scratch"])  # matched by name, not category id
    coco = json.loads((scenes / "annotations.json").read_text())
    first = next(a for a in coco["annotations"])
    scene = with_boxes[first["image_id"]]
    x, y, w, h = first["bbox"]
    assert [x, y, x + w, y + h] in scene.boxes.tolist()
    name = coco["categories"][first["category_id"] - 1]["name"]
    assert ["crack", "spot", "scratch"][
        scene.classes[scene.boxes.tolist().index([x, y, x + w, y + h])]
    ] == name
    with pytest.raises(ValueError, match=r"categories .* are not among the labels"):
        read_coco(scenes, ["scratch"])


@pytest.mark.parametrize("flips", [(x, y, t) for x in (0, 1) for y in (0, 1) for t in (0, 1)])
def test_training_geometry_moves_boxes_with_the_pixels_and_keeps_the_padding_bottom_right(flips):
    from training.tasks.dense_image import Geometry

    geometry = Geometry(*map(bool, flips))
    size, content, fill = 64, (40, 56), 9  # h != w, so a transposition shows
    canvas = np.full((size, size), fill, np.uint8)
    canvas[: content[0], : content[1]] = 0
    x1, y1, x2, y2 = 5, 3, 17, 30  # a box's pixels: columns 5..16, rows 3..29
    canvas[y1:y2, x1:x2] = 1
    moved = geometry.apply(canvas, content)
    rows, cols = np.nonzero(moved == 1)
    box = geometry.boxes(np.array([[x1, y1, x2, y2]], np.float32), content)[0]
    assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    h, w = content[::-1] if geometry.transpose else content
    assert (moved[h:] == fill).all() and (moved[:, w:] == fill).all()
    assert (moved[:h, :w] != fill).all()
    assert moved.shape == canvas.shape and (canvas == moved).all() == (flips == (0, 0, 0))


def test_argmax_classes_matches_numpy_argmax_ties_included():
    from serving.processing.regions import argmax_classes

    rng = np.random.default_rng(0)
    grid = rng.integers(0, 3, (5, 40, 30)).astype(np.float32)  # many ties
    assert (argmax_classes(grid) == grid.argmax(0)).all()
    assert argmax_classes(grid).dtype == np.uint8
