"""Images of English text for OCR checks, made here: lines in several fonts (DejaVu TrueType fonts
where the system has them, OpenCV's Hershey fonts always), slightly rotated, blurred and saved as
JPEG, and A5 pages of them; and the character error rate to score a reading with."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

LINES = [
    "Please return the signed contract by Friday",
    "Order 58213 shipped to Rotterdam on 2 May",
    "Temperature must stay below 25 degrees",
    "Contact support at help desk extension 4410",
    "Net weight 12.5 kg, gross weight 14 kg",
    "The meeting moved to room B-204 at 3 pm",
    "Replace the filter every six months",
    "Account balance: 3,912.07 USD",
]
TRUETYPE = ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf"]
HERSHEY = [
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
]
PAPER, INK = 248, 25
A5_150_DPI = (874, 1240)  # width, height in pixels: 148 x 210 mm at 150 dots per inch

Font = ImageFont.FreeTypeFont | int  # a TrueType font, or one of OpenCV's Hershey fonts


def fonts(size: int = 28) -> list[Font]:
    """The TrueType fonts found (Pillow looks in the system's font folders), then the Hershey fonts."""
    found: list[Font] = []
    for name in TRUETYPE:
        try:
            found.append(ImageFont.truetype(name, size))
        except OSError:
            continue
    return found + HERSHEY


def render(text: str, font: Font, size: int = 28) -> np.ndarray:
    """One line of dark text on light paper, grey (H, W) uint8, with margins; `size` in pixels."""
    if isinstance(font, ImageFont.FreeTypeFont):
        image = Image.new("L", (int(font.getlength(text)) + 60, size * 3), PAPER)
        ImageDraw.Draw(image).text((30, size), text, font=font, fill=INK)
        return np.array(image)
    scale = size / 30
    (width, height), _ = cv2.getTextSize(text, font, scale, 2)
    grey = np.full((size * 3, width + 60), PAPER, np.uint8)
    cv2.putText(grey, text, (30, size + height), font, scale, INK, 2, cv2.LINE_AA)
    return grey


def degrade(grey: np.ndarray, rng: np.random.Generator, max_degrees: float = 2.5) -> bytes:
    """Rotated by up to `max_degrees`, blurred (sigma 0.5 to 1 pixel), saved as JPEG at quality 75."""
    h, w = grey.shape
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-max_degrees, max_degrees), 1.0)
    grey = cv2.warpAffine(grey, turn, (w, h), borderValue=PAPER)
    grey = cv2.GaussianBlur(grey, (0, 0), rng.uniform(0.5, 1.0))
    return cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 75])[1].tobytes()


def page(
    texts: list[str], font: Font, size: int = 26, spacing: int = 44, shape: tuple[int, int] = A5_150_DPI
) -> np.ndarray:
    """A page (grey) of the texts, one a line, from the top-left margin down, cut at the margins."""
    width, height = shape
    sheet = np.full((height, width), PAPER, np.uint8)
    for i, text in enumerate(texts):
        line = render(text, font, size)[:, : width - 40]
        top = 40 + i * spacing
        if top + line.shape[0] > height:
            break
        sheet[top : top + line.shape[0], 20 : 20 + line.shape[1]] = np.minimum(
            sheet[top : top + line.shape[0], 20 : 20 + line.shape[1]], line
        )
    return sheet


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def character_errors(read: str, truth: str) -> tuple[int, int]:
    """Edit distance and the truth's length, spaces ignored: (errors, characters)."""
    got, want = read.replace(" ", ""), truth.replace(" ", "")
    return edit_distance(got, want), len(want)
