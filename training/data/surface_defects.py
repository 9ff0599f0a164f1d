"""Procedural surface-inspection images for image classification demos.

Four classes, written as an ImageFolder tree (``<out_dir>/<class>/<class>_0000.png``):

* ``ok``      - a defect-free surface.
* ``scratch`` - one thin (1-3 px) straight or gently curved line, lighter or darker
  than the surface, 20-60% of the image long.
* ``spot``    - one to three soft-edged irregular blobs (radius 4-25 px), darker or
  discoloured.
* ``crack``   - a jagged, dark random-walk path with one to four branches.

Every image shows one of four surfaces (brushed metal, wood grain, woven fabric,
painted plastic), then gets a lighting gradient, a colour cast, brightness and contrast
changes, sometimes a slight blur, and sensor noise. About 15% of defects are faint, but
every defect changes brightness by at least twice the spread of the surface around it,
and scratches run across any grain, so each stays visible at 224 px. Defects always lie
inside the central 80% of the image, so a random crop keeps them.
Pixel sizes are given for 256 px images and scale with ``size``.

Generation is deterministic: image ``i`` of class ``c`` draws from
``numpy.random.default_rng([seed, c, i])``, so the same seed gives byte-identical
PNG files whatever order, or subset, the images are made in.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

CLASSES = ("ok", "scratch", "spot", "crack")

FAINT_FRACTION = 0.15
INNER_MARGIN = 0.1  # defects stay inside [10%, 90%] of each axis
MIN_VISIBILITY = 2.0  # defect contrast over the surrounding surface's brightness spread

Image = np.ndarray  # float32, H x W x 3, BGR in [0, 1]
Mask = np.ndarray  # float32, H x W, coverage in [0, 1]


# ---------------------------------------------------------------- noise helpers


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a random grid upsampled bicubically."""
    grid = rng.uniform(-1.0, 1.0, (cells + 3, cells + 3)).astype(np.float32)
    big = cv2.resize(
        grid, (size + 2 * size // cells, size + 2 * size // cells), interpolation=cv2.INTER_CUBIC
    )
    off = size // cells
    return big[off : off + size, off : off + size]


def _directional_noise(rng: np.random.Generator, size: int, angle: float, length: float) -> np.ndarray:
    """Unit-variance noise smeared into streaks of about `length` px at `angle` degrees."""
    canvas = int(size * 1.45) + 2
    knots = rng.standard_normal((canvas, int(canvas / (2.5 * length)) + 2), dtype=np.float32)
    noise = cv2.resize(knots, (canvas, canvas), interpolation=cv2.INTER_CUBIC)
    noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=2.0, sigmaY=0.6)
    # cv2's stubs type results as integer or float arrays (in-place float arithmetic refused); these are floats
    rot: np.ndarray = cv2.getRotationMatrix2D((canvas / 2, canvas / 2), angle, 1.0)
    rot[:, 2] -= (canvas - size) / 2
    streaks = cv2.warpAffine(noise, rot, (size, size), flags=cv2.INTER_LINEAR)
    return streaks / (streaks.std() + 1e-6)


def _coords(size: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by `angle` degrees about the image centre."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return x * c + y * s, -x * s + y * c


def _hsv_colour(hue: float, sat: float, val: float) -> np.ndarray:
    """One BGR colour in [0, 1] from hue (degrees), saturation and value in [0, 1]."""
    hsv = np.array([[[hue % 360.0, sat, val]]], dtype=np.float32)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]


# ---------------------------------------------------------------- surfaces


def brushed_metal(rng: np.random.Generator, size: int) -> Image:
    """Grey/silver metal with fine directional brushing streaks."""
    angle = rng.uniform(0.0, 180.0)
    fine = _directional_noise(rng, size, angle, rng.uniform(15.0, 50.0))
    coarse = _directional_noise(rng, size, angle, rng.uniform(60.0, 120.0))
    grey = (
        rng.uniform(0.45, 0.78)
        + rng.uniform(0.025, 0.06) * fine
        + rng.uniform(0.01, 0.03) * coarse
        + 0.03 * _smooth_noise(rng, size, 3)
    )
    tint = 1.0 + rng.uniform(-0.02, 0.02, 3).astype(np.float32)
    return grey[..., None] * tint


def wood_grain(rng: np.random.Generator, size: int) -> Image:
    """Brown wood: warped growth rings (concentric or near-parallel) with fine grain."""
    angle = rng.uniform(0.0, 180.0)
    u, v = _coords(size, angle)
    concentric = rng.random() < 0.5  # else near-parallel bands from a far-away pith
    centre_distance = size * (rng.uniform(0.3, 0.9) if concentric else rng.uniform(2.0, 6.0))
    stretch = rng.uniform(0.08, 0.35)
    dist = np.sqrt((stretch * (u - rng.uniform(-0.5, 0.5) * size)) ** 2 + (v - centre_distance) ** 2)
    warp = rng.uniform(0.15, 0.45) * _smooth_noise(rng, size, int(rng.integers(2, 4)))
    phase = dist / (rng.uniform(8.0, 24.0) * size / 256) + warp
    phase = phase + 0.08 * np.sin(2 * np.pi * phase * float(rng.integers(2, 4)))
    rings = (0.5 - 0.5 * np.cos(2 * np.pi * phase)) ** rng.uniform(2.0, 6.0)
    pores = _directional_noise(rng, size, -angle, rng.uniform(6.0, 20.0))
    streaks = _directional_noise(rng, size, -angle, rng.uniform(40.0, 90.0))
    light = _hsv_colour(rng.uniform(18, 40), rng.uniform(0.3, 0.7), rng.uniform(0.45, 0.9))
    dark = light * rng.uniform(0.5, 0.75) * np.array([0.8, 0.9, 1.0], np.float32)
    t = rings * rng.uniform(0.5, 0.85) + rng.uniform(0.04, 0.1) * pores + rng.uniform(0.03, 0.08) * streaks
    t = np.clip(t, 0.0, 1.0)[..., None]
    return light * (1.0 - t) + dark * t


def woven_fabric(rng: np.random.Generator, size: int) -> Image:
    """Plain or twill weave: interlaced warp and weft threads with per-thread shading."""
    u, v = _coords(size, rng.uniform(-20.0, 20.0) + rng.choice([0.0, 45.0, 90.0]))
    period = rng.uniform(4.0, 9.0) * size / 256
    fu, fv = u / period, v / period
    col, row = np.floor(fu).astype(np.int64), np.floor(fv).astype(np.int64)
    fu, fv = fu - np.floor(fu), fv - np.floor(fv)
    twill = rng.random() < 0.4
    warp_on_top = ((col - row) % 3 == 0) if twill else ((col + row) % 2 == 0)
    shade_u = 1.0 + rng.uniform(0.03, 0.1) * rng.standard_normal(257, dtype=np.float32)
    shade_v = 1.0 + rng.uniform(0.03, 0.1) * rng.standard_normal(257, dtype=np.float32)
    warp_profile = np.sin(np.pi * fu) ** 0.6 * shade_u[col % 257]
    weft_profile = np.sin(np.pi * fv) ** 0.6 * shade_v[row % 257]
    depth = rng.uniform(0.25, 0.5)
    warp_colour = _hsv_colour(rng.uniform(0, 360), rng.uniform(0.1, 0.7), rng.uniform(0.35, 0.85))
    weft_colour = (
        warp_colour
        if rng.random() < 0.6
        else _hsv_colour(rng.uniform(0, 360), rng.uniform(0.0, 0.15), rng.uniform(0.3, 0.95))
    )
    top = np.where(warp_on_top, warp_profile, weft_profile)[..., None]
    colour = np.where(warp_on_top[..., None], warp_colour, weft_colour)
    fuzz = 0.03 * rng.standard_normal((size, size, 1), dtype=np.float32)
    return colour * (1.0 - depth + depth * top) + fuzz


def painted_plastic(rng: np.random.Generator, size: int) -> Image:
    """Smooth saturated paint with a slight orange-peel ripple."""
    colour = _hsv_colour(rng.uniform(0, 360), rng.uniform(0.5, 0.95), rng.uniform(0.45, 0.9))
    peel: np.ndarray = cv2.GaussianBlur(
        rng.standard_normal((size, size), dtype=np.float32), (0, 0), rng.uniform(1.5, 3.0) * size / 256
    )
    peel /= peel.std() + 1e-6
    shade = 1.0 + rng.uniform(0.01, 0.03) * peel + 0.03 * _smooth_noise(rng, size, 2)
    return colour * shade[..., None]


SURFACES: tuple[Callable[[np.random.Generator, int], Image], ...] = (
    brushed_metal,
    wood_grain,
    woven_fabric,
    painted_plastic,
)


# ---------------------------------------------------------------- defect geometry


def _fit_inside(rng: np.random.Generator, points: np.ndarray, size: int, pad: float) -> np.ndarray:
    """Shrink (if needed) and place a point set at a random spot inside the central box."""
    lo, hi = INNER_MARGIN * size + pad, (1.0 - INNER_MARGIN) * size - pad
    mins, maxs = points.min(axis=0), points.max(axis=0)
    extent = (maxs - mins).max()
    scale = min(1.0, (hi - lo) / max(extent, 1e-6))
    points = (points - mins) * scale
    room = (hi - lo) - points.max(axis=0)
    return points + lo + rng.uniform(0.0, 1.0, 2) * room


def _draw_path(mask: np.ndarray, points: np.ndarray, thickness: np.ndarray, intensity: np.ndarray) -> None:
    """Draw an anti-aliased polyline, segment by segment, into a uint8 mask (max-blended)."""
    fixed = np.round(points * 16).astype(np.int32)
    layer = np.zeros_like(mask)
    for i in range(len(fixed) - 1):
        cv2.line(
            layer,
            tuple(fixed[i]),
            tuple(fixed[i + 1]),
            int(intensity[i]),
            int(thickness[i]),
            cv2.LINE_AA,
            shift=4,
        )
    np.maximum(mask, layer, out=mask)


def _random_walk(
    rng: np.random.Generator, start: np.ndarray, heading: float, steps: int, step_len: float, jitter: float
) -> np.ndarray:
    """A jagged path: each step turns by a random angle around a slowly drifting heading."""
    drift = np.cumsum(rng.normal(0.0, 0.08, steps))
    turns = heading + drift + rng.normal(0.0, jitter, steps)
    lengths = step_len * rng.uniform(0.5, 1.5, steps)
    moves = np.stack([np.cos(turns), np.sin(turns)], axis=1) * lengths[:, None]
    return np.vstack([start, start + np.cumsum(moves, axis=0)])


# ---------------------------------------------------------------- defects


def _grain_angle(img: Image) -> float | None:
    """Direction (radians) of a surface's streaks or grain, or None if it has none."""
    grey = img.mean(axis=2)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    jxx, jyy, jxy = float((gx * gx).mean()), float((gy * gy).mean()), float((gx * gy).mean())
    coherence = np.hypot(jxx - jyy, 2 * jxy) / (jxx + jyy + 1e-9)
    if coherence < 0.3:
        return None
    return 0.5 * np.arctan2(2 * jxy, jxx - jyy) + np.pi / 2


def _contrast(
    rng: np.random.Generator, img: Image, alpha: Mask, strong: tuple[float, float], faint: tuple[float, float]
) -> float:
    """A defect's strength: faint for about FAINT_FRACTION of defects, but always visible.

    The strength is raised until the defect's relative brightness change is at least
    MIN_VISIBILITY times the spread of the surface just around it.
    """
    low, high = faint if rng.random() < FAINT_FRACTION else strong
    size = img.shape[0]
    core = (alpha > 0.5).astype(np.uint8)
    near = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (round(size / 40) * 2 + 1,) * 2)
    far = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (round(size / 12) * 2 + 1,) * 2)
    ring = (cv2.dilate(core, far) > 0) & (cv2.dilate(core, near) == 0)
    grey = img.mean(axis=2)[ring]
    spread = float(grey.std() / (grey.mean() + 1e-6))
    return min(0.9, max(float(rng.uniform(low, high)), MIN_VISIBILITY * spread))


def _darken(img: Image, alpha: Mask, strength: float) -> Image:
    """Scale brightness down by up to `strength` where `alpha` is 1."""
    return img * (1.0 - strength * alpha)[..., None]


def _lighten(img: Image, alpha: Mask, strength: float) -> Image:
    """Brighten where `alpha` is 1, by a similar visible step as `_darken` on light surfaces."""
    return np.minimum(1.0, img + (1.0 - 0.5 * img) * (strength * alpha)[..., None])


def add_scratch(rng: np.random.Generator, img: Image, drawn: list[Mask] | None = None) -> Image:
    """One thin straight or gently curved line, lighter or darker, across any grain. Its coverage is
    appended to `drawn` (defect scenes label their pixels from it)."""
    size = img.shape[0]
    scale = size / 256
    length = rng.uniform(0.2, 0.6) * size
    grain = _grain_angle(img)
    if grain is None:
        angle = rng.uniform(0.0, np.pi)
    else:  # a scratch along the grain would be lost in it
        angle = grain + np.deg2rad(rng.uniform(25.0, 155.0))
    bow = rng.uniform(-0.12, 0.12) * length if rng.random() < 0.6 else 0.0
    t = np.linspace(0.0, 1.0, 40)[:, None]
    p0, p2 = np.zeros(2), length * np.array([np.cos(angle), np.sin(angle)])
    p1 = (p0 + p2) / 2 + bow * np.array([-np.sin(angle), np.cos(angle)])
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    curve = _fit_inside(rng, curve, size, pad=4 * scale)
    width = max(1, round(rng.choice([1, 1, 2, 2, 3]) * scale))
    middles = (t[:-1, 0] + t[1:, 0]) / 2
    along = np.sin(np.pi * middles) ** 0.3 * rng.uniform(0.75, 1.0, len(middles))
    mask = np.zeros((size, size), np.uint8)
    _draw_path(mask, curve, np.full(len(along), width), 255 * along)
    alpha: Mask = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.5 * scale)
    alpha /= alpha.max()
    if drawn is not None:
        drawn.append(alpha)
    strength = _contrast(rng, img, alpha, (0.35, 0.65), (0.2, 0.28))
    if rng.random() < 0.5:
        return _lighten(img, alpha, strength)
    return _darken(img, alpha, strength)


def _blob_mask(rng: np.random.Generator, size: int, centre: np.ndarray, radius: float) -> Mask:
    """A filled irregular blob with soft edges and mottled interior."""
    theta = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
    wobble = sum(
        rng.uniform(0.0, 0.25 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 6)
    )
    aspect = rng.uniform(0.6, 1.0)
    tilt = rng.uniform(0.0, np.pi)
    r = radius * (1.0 + wobble)
    local = np.stack([r * np.cos(theta), aspect * r * np.sin(theta)], axis=1)
    rot = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
    outline = np.round((local @ rot.T + centre) * 16).astype(np.int32)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [outline], 255, cv2.LINE_AA, shift=4)
    soft = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), max(1.0, radius * 0.2))
    mottle = 1.0 + 0.15 * _smooth_noise(rng, size, 16)
    return np.clip(soft * mottle, 0.0, 1.0)


def add_spots(rng: np.random.Generator, img: Image, drawn: list[Mask] | None = None) -> Image:
    """One to three blobs or stains, darker or discoloured; each blob's coverage is appended to `drawn`."""
    size = img.shape[0]
    scale = size / 256
    for _ in range(rng.integers(1, 4)):
        radius = rng.uniform(4.0, 25.0) * scale
        reach = 1.95 * radius + 2 * scale  # outline wobble plus three blur sigmas
        lo, hi = INNER_MARGIN * size + reach, (1 - INNER_MARGIN) * size - reach
        alpha = _blob_mask(rng, size, rng.uniform(lo, hi, 2), radius)
        if drawn is not None:
            drawn.append(alpha)
        img = _darken(img, alpha, _contrast(rng, img, alpha, (0.35, 0.7), (0.22, 0.3)))
        if rng.random() < 0.5:  # rust, tea or oil tint on top of the darkening
            tint = _hsv_colour(rng.uniform(0, 60), rng.uniform(0.4, 0.9), 1.0)
            img = img * (1.0 - 0.5 * alpha[..., None] * (1.0 - tint))
    return img


def add_crack(rng: np.random.Generator, img: Image, drawn: list[Mask] | None = None) -> Image:
    """A jagged dark crack: a random-walk main path with one to four tapering branches; its coverage
    is appended to `drawn`."""
    size = img.shape[0]
    scale = size / 256
    step = rng.uniform(3.0, 6.0) * scale
    steps = int(rng.uniform(0.25, 0.5) * size / step)
    heading = rng.uniform(0.0, 2 * np.pi)
    main = _random_walk(rng, np.zeros(2), heading, steps, step, rng.uniform(0.3, 0.6))
    width = int(rng.integers(1, 4))
    paths = [(main, np.linspace(width, 1, steps))]
    for _ in range(rng.integers(1, 5)):
        at = rng.integers(steps // 5, steps)
        side = rng.choice([-1.0, 1.0])
        n = max(3, int(steps * rng.uniform(0.2, 0.5)))
        branch = _random_walk(
            rng, main[at], heading + side * rng.uniform(0.4, 1.1), n, step * 0.8, rng.uniform(0.3, 0.6)
        )
        paths.append((branch, np.linspace(max(1, width - 1), 1, n)))
    placed = _fit_inside(rng, np.vstack([p for p, _ in paths]), size, pad=4 * scale)
    mask = np.zeros((size, size), np.uint8)
    start = 0
    for path, thickness in paths:
        widths = np.maximum(1, np.round(thickness * scale)).astype(int)
        _draw_path(mask, placed[start : start + len(path)], widths, 255 * rng.uniform(0.8, 1.0, len(widths)))
        start += len(path)
    alpha: Mask = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.4 * scale)
    alpha /= alpha.max()
    if drawn is not None:
        drawn.append(alpha)
    return _darken(img, alpha, _contrast(rng, img, alpha, (0.5, 0.8), (0.25, 0.35)))


# each takes (rng, image, drawn=None): the image with the defect, coverage masks appended to `drawn`
DEFECTS: dict[str, Callable[..., Image]] = {
    "scratch": add_scratch,
    "spot": add_spots,
    "crack": add_crack,
}


# ---------------------------------------------------------------- imaging conditions


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear or radial illumination field around 1.0."""
    x, y = _coords(size, rng.uniform(0.0, 360.0))
    if rng.random() < 0.5:
        return 1.0 + rng.uniform(0.1, 0.35) * x / size
    cx, cy = rng.uniform(-0.4, 0.4, 2) * size
    r2 = ((x - cx) ** 2 + (y - cy) ** 2) / size**2
    return 1.0 + rng.uniform(0.15, 0.35) * (0.3 - r2)


def apply_imaging(rng: np.random.Generator, img: Image) -> np.ndarray:
    """Lighting, colour cast, brightness/contrast, optional blur and sensor noise; to uint8."""
    size = img.shape[0]
    img = img * _lighting(rng, size)[..., None]
    img = img * (1.0 + rng.normal(0.0, 0.03, 3)).astype(np.float32)
    mean = img.mean()
    img = (img - mean) * rng.uniform(0.8, 1.2) + mean + rng.uniform(-0.08, 0.08)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 0.8) * size / 256)
    sigma = rng.uniform(0.003, 0.025)
    img = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def make_image(rng: np.random.Generator, label: str, size: int) -> np.ndarray:
    """One BGR uint8 image of class `label`."""
    img = SURFACES[rng.integers(len(SURFACES))](rng, size)
    if label != "ok":
        img = DEFECTS[label](rng, img)
    return apply_imaging(rng, img)


def generate_surface_defects(
    out_dir: Path, per_class: int = 320, size: int = 256, seed: int = 7, progress: bool = False
) -> Path:
    """Write an ImageFolder tree out_dir/<class>/<class>_<index:04d>.png and return out_dir."""
    out_dir = Path(out_dir)
    for label in CLASSES:
        (out_dir / label).mkdir(parents=True, exist_ok=True)
    jobs = [(c, i) for c in range(len(CLASSES)) for i in range(per_class)]
    for c, i in tqdm(jobs, desc="surface defects", disable=not progress):
        label = CLASSES[c]
        image = make_image(np.random.default_rng([seed, c, i]), label, size)
        cv2.imwrite(str(out_dir / label / f"{label}_{i:04d}.png"), image)
    return out_dir


def main() -> None:
    """Command line: write the dataset to the given folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--per-class", type=int, default=320)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    generate_surface_defects(args.out_dir, args.per_class, args.size, args.seed, progress=True)
    print(args.out_dir)


if __name__ == "__main__":
    main()
