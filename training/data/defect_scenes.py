"""Surface-inspection scenes with every defect's pixels and box, for segmentation and detection.

Each scene is one of the surface generator's surfaces (training/data/surface_defects.py) with zero
to three defects (``scratch``, ``spot``, ``crack``; a spot call may leave up to three blobs, each an
instance), drawn by the same code, under the same lighting, colour and noise; then resized to a
random size (shorter side 176-320 px, aspect 3:4 to 4:3). The generator knows each defect's
coverage, so labels are exact: a spot's pixels are where its coverage exceeds 0.3; a scratch or
crack, 1-3 px wide, is labelled with a 1 px margin (its coverage above 0.25, dilated by 3 x 3), as
an annotator would outline it. Where defects overlap, the later one's class wins in the mask.

Written as (the formats users' own data come in, ``--data`` / ``data.source``)::

    <dir>/images/scene_0000.png      RGB images (any format OpenCV reads)
    <dir>/masks/scene_0000.png       segmentation: 8-bit PNG of class indices, same stem and size
                                     (0 = background, i = the recipe's i-th label)
    <dir>/annotations.json           detection: COCO JSON (images, annotations with bbox [x, y, w, h],
                                     categories named as the recipe's labels)

A folder with ``masks/`` serves segmentation, one with ``annotations.json`` detection (the
generator writes both). Deterministic: scene ``i`` draws from ``default_rng([seed, 11, i])``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from training.data.images import IMAGE_SUFFIXES, data_cache
from training.data.surface_defects import DEFECTS, SURFACES, apply_imaging

DEFECT_LABELS = ("scratch", "spot", "crack")
SEGMENTATION_LABELS = ("background", *DEFECT_LABELS)
LINE_DEFECTS = {"scratch", "crack"}


@dataclass
class Scene:
    """One image and its labels: the mask file (segmentation) and the boxes in original pixels."""

    image: Path
    mask: Path | None = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # x1, y1, x2, y2
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # index into the labels


def _coverage_to_region(alpha: np.ndarray, label: str) -> np.ndarray:
    if label in LINE_DEFECTS:
        return cv2.dilate((alpha > 0.25).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return alpha > 0.3


def make_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[tuple[int, np.ndarray]]]:
    """One BGR uint8 scene, its class-index mask, and its instances (class index 1.., bool region)."""
    side = int(rng.integers(176, 321))
    img = SURFACES[rng.integers(len(SURFACES))](rng, side)
    instances: list[tuple[int, np.ndarray]] = []
    for _ in range(rng.choice([0, 1, 1, 2, 2, 3])):
        c = int(rng.integers(len(DEFECT_LABELS)))
        drawn: list[np.ndarray] = []
        img = DEFECTS[DEFECT_LABELS[c]](rng, img, drawn)
        instances += [(c + 1, _coverage_to_region(a, DEFECT_LABELS[c])) for a in drawn]
    image = apply_imaging(rng, img)
    aspect = float(np.exp(rng.uniform(np.log(0.75), np.log(4 / 3))))
    width, height = (round(side * aspect), side) if aspect >= 1 else (side, round(side / aspect))
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    mask = np.zeros((height, width), np.uint8)
    resized = []
    for c, region in instances:
        region = cv2.resize(region.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        if region.any():
            mask[region] = c
            resized.append((c, region))
    return image, mask, resized


def box_of(region: np.ndarray) -> list[float]:
    """[x1, y1, x2, y2] enclosing a region's pixels (pixel edges, so a 1-px region is 1 wide)."""
    ys, xs = np.nonzero(region)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def generate_defect_scenes(out_dir: Path, count: int = 600, seed: int = 7, progress: bool = False) -> Path:
    """Write images/, masks/ and annotations.json (COCO) into out_dir and return it."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    coco: dict[str, list] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(DEFECT_LABELS)],
    }
    for i in tqdm(range(count), desc="defect scenes", disable=not progress):
        image, mask, instances = make_scene(np.random.default_rng([seed, 11, i]))
        name = f"scene_{i:04d}.png"
        cv2.imwrite(str(out_dir / "images" / name), image)
        cv2.imwrite(str(out_dir / "masks" / name), mask)
        coco["images"].append({"id": i, "file_name": name, "height": mask.shape[0], "width": mask.shape[1]})
        for c, region in instances:
            x1, y1, x2, y2 = box_of(region)
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": i,
                    "category_id": c,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": float(region.sum()),
                    "iscrowd": 0,
                }
            )
    (out_dir / "annotations.json").write_text(json.dumps(coco))
    return out_dir


def resolve_scene_folder(source: str, seed: int, progress: bool = True) -> Path:
    """The folder of a source; `generated:defect-scenes` is written into the data cache once."""
    if not source.startswith("generated:"):
        return Path(source).expanduser()
    name = source.removeprefix("generated:")
    if name != "defect-scenes":
        raise ValueError(f"unknown generated dataset {name!r} for dense image tasks; known: defect-scenes")
    root = data_cache() / f"{name}-seed{seed}"
    if not (root / ".complete").exists():
        generate_defect_scenes(root, seed=seed, progress=progress)
        (root / ".complete").touch()
    return root


def read_mask_folder(root: Path) -> list[Scene]:
    """images/<stem>.<ext> with masks/<stem>.png beside them."""
    images = sorted(p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    scenes = []
    for path in images:
        mask = root / "masks" / f"{path.stem}.png"
        if not mask.is_file():
            raise FileNotFoundError(f"{path}: no mask {mask} (masks are PNGs of class indices, same stem)")
        scenes.append(Scene(path, mask))
    return scenes


def read_coco(root: Path, labels: list[str]) -> list[Scene]:
    """images/ and annotations.json (COCO boxes); categories are matched to `labels` by name."""
    coco = json.loads((root / "annotations.json").read_text())
    by_name = {c["name"]: c["id"] for c in coco["categories"]}
    unknown = sorted(set(by_name) - set(labels))
    if unknown:
        raise ValueError(f"{root}/annotations.json: categories {unknown} are not among the labels {labels}")
    index = {by_name[n]: i for i, n in enumerate(labels) if n in by_name}
    boxes: dict[int, list] = {img["id"]: [] for img in coco["images"]}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        boxes[a["image_id"]].append((x, y, x + w, y + h, index[a["category_id"]]))
    scenes = []
    for img in sorted(coco["images"], key=lambda im: im["file_name"]):
        rows = np.array(boxes[img["id"]], np.float64).reshape(-1, 5)
        scenes.append(
            Scene(
                root / "images" / img["file_name"],
                boxes=rows[:, :4].astype(np.float32),
                classes=rows[:, 4].astype(np.int64),
            )
        )
    return scenes


def load_scene_splits(
    source: str,
    kind: str,
    labels: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    limit: int | None = None,
    progress: bool = True,
) -> tuple[list[Scene], list[Scene], list[Scene]]:
    """Train / validation / test scenes of a folder: `kind` "masks" (segmentation) or "boxes" (detection)."""
    root = resolve_scene_folder(source, seed, progress)
    if not root.is_dir():
        raise FileNotFoundError(f"folder {root} does not exist")
    scenes = read_mask_folder(root) if kind == "masks" else read_coco(root, labels)
    if not scenes:
        raise ValueError(f"{root}: no images")
    if limit is not None:
        scenes = scenes[:limit]
    rest, test = train_test_split(scenes, test_size=test_fraction, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), random_state=seed)
    return train, val, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    generate_defect_scenes(args.out_dir, args.count, args.seed, progress=True)
    print(args.out_dir)


if __name__ == "__main__":
    main()
