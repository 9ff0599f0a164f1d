"""Image datasets in ImageFolder layout (`root/<class>/<image>`), and generated ones cached on disk.

Sources: a folder path; `generated:surface-defects` (training/data/surface_defects.py);
`generated:photo-crops` (crops of scikit-image's bundled photos, for calibrating and checking a
pretrained classifier that is exported as is); `generated:keywords` (training/data/keywords.py,
audio clips, with `train/` and `test/` sub-trees that keep test voices unheard in training).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from sklearn.model_selection import train_test_split

from serving.settings import tuneserve_home

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# enough that a recipe's validation split (a tenth) resolves a 1-point change of top-1 agreement
# better than a handful of crops can; the count is part of the cache folder's name
PHOTO_CROPS = 1000


def data_cache() -> Path:
    """Generated datasets, kept between builds: runs/data/ in the home folder."""
    return tuneserve_home() / "runs" / "data"


@dataclass
class ImageExamples:
    paths: list[Path]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.paths)


def generate_photo_crops(out_dir: Path, count: int = PHOTO_CROPS, seed: int = 7) -> Path:
    """Random crops, flips and scales of scikit-image's colour photos, in one unlabelled class folder."""
    import skimage.data

    d = skimage.data
    photos = [
        d.astronaut(),
        d.chelsea(),
        d.coffee(),
        d.rocket(),
        d.stereo_motorcycle()[0],
        d.retina(),
        d.immunohistochemistry(),
        d.hubble_deep_field(),
    ]
    rng = np.random.default_rng(seed)
    target = out_dir / "unlabelled"
    target.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        frac = rng.uniform(0.5, 1.0)
        ch, cw = int(h * frac), int(w * frac)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = photo[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        cv2.imwrite(
            str(target / f"crop_{i:04d}.png"), cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2BGR)
        )
    return out_dir


def resolve_dataset_folder(source: str, seed: int, progress: bool = True) -> Path:
    """The folder of a source; a generated one is written into the data cache the first time, with a
    progress bar (`progress`)."""
    if not source.startswith("generated:"):
        return Path(source).expanduser()
    name = source.removeprefix("generated:")
    root = data_cache() / (
        f"{name}-{PHOTO_CROPS}-seed{seed}" if name == "photo-crops" else f"{name}-seed{seed}"
    )
    if not (root / ".complete").exists():
        log.info("generating the %s data set into %s (once; later builds reuse it)", name, root)
        if name == "surface-defects":
            from training.data.surface_defects import generate_surface_defects

            generate_surface_defects(root, seed=seed, progress=progress)
        elif name == "photo-crops":
            generate_photo_crops(root, seed=seed)
        elif name == "keywords":
            from training.data.keywords import generate_keyword_clips

            generate_keyword_clips(root, seed=seed, progress=progress)
        else:
            raise ValueError(
                f"unknown generated dataset {name!r}; known: surface-defects, photo-crops, keywords"
            )
        (root / ".complete").touch()
    return root


def read_class_folder(root: Path, suffixes: set[str] = IMAGE_SUFFIXES) -> tuple[list[Path], list[str]]:
    """Files with one of `suffixes` in `root/<class>/`, and their class (folder) names."""
    if not root.is_dir():
        raise FileNotFoundError(f"folder {root} does not exist")
    paths, names = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() in suffixes:
                paths.append(path)
                names.append(class_dir.name)
    if not paths:
        raise ValueError(f"{root}: no files in <class>/ sub-folders ({', '.join(sorted(suffixes))})")
    return paths, names


def load_image_splits(
    source: str,
    label_names: list[str] | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    limit: int | None = None,
    progress: bool = True,
):
    paths, names = read_class_folder(resolve_dataset_folder(source, seed, progress))
    classes = label_names or sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(names) - set(index))
    # folders that are not classes of the recipe (e.g. "unlabelled") get -1: labelled later by the model
    if unknown and label_names is not None and len(unknown) < len(set(names)):
        raise ValueError(f"image folders {unknown} are not among the recipe's labels")
    labels = [index.get(n, -1) for n in names]
    stratify = labels if min(labels) >= 0 else None
    if limit is not None and limit < len(paths):
        paths, _, labels, _ = train_test_split(
            paths, labels, train_size=limit, random_state=seed, stratify=stratify
        )
        stratify = labels if stratify is not None else None
    rest_p, test_p, rest_y, test_y = train_test_split(
        paths, labels, test_size=test_fraction, random_state=seed, stratify=stratify
    )
    val_share = val_fraction / (1 - test_fraction)
    train_p, val_p, train_y, val_y = train_test_split(
        rest_p,
        rest_y,
        test_size=val_share,
        random_state=seed,
        stratify=rest_y if stratify is not None else None,
    )
    return (
        ImageExamples(train_p, train_y),
        ImageExamples(val_p, val_y),
        ImageExamples(test_p, test_y),
        classes,
    )
