"""Pictures that task plugins read and write: a dataset's images (``read_rgb``) and the panels
of ``dnas eval --save-vis`` and ``dnas predict`` (RGB, side by side, each under its title,
written as PNG)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dnas.errors import DnasError

PANEL_HEIGHT = 384  # px: a 128 px synthetic crop is drawn 3x, a 720 px photo is shrunk
TITLE_HEIGHT = 28  # px of white band above each panel for its title
MAX_ASPECT = 4  # a panel is at most this many times as wide as PANEL_HEIGHT
MIN_PANEL_WIDTH = 120  # px: a 1-pixel-wide image's panel still has room for its title
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def read_rgb(path: Path, allow_truncated: bool = False) -> np.ndarray:
    """An image file as an (H, W, 3) RGB array; a missing or undecodable file is one line, and
    so is a truncated JPEG unless ``allow_truncated`` (checked before decoding: libjpeg would
    print a line of its own, and OpenCV fill the missing part grey), as PIL refuses one."""
    if not allow_truncated and Path(path).is_file() and truncated_jpeg(path):
        raise DnasError(f"{path}: a truncated JPEG (it ends before its end marker); replace "
                        "the file or leave it out of the annotations")  # fmt: skip
    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if Path(path).is_file() else None
    if image is None:
        raise DnasError(f"{path}: missing or unreadable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def truncated_jpeg(path: Path) -> bool:
    """A JPEG that ends before its end-of-image marker: OpenCV decodes it anyway, the missing
    part grey, with no more than a libjpeg warning on stderr. The file's markers are walked
    from the start (a segment's length skips it; a scan's entropy-coded data runs to the next
    marker other than a stuffed 0xFF00 or a restart), so bytes after the end marker (a phone's
    trailer) or an embedded thumbnail's own end marker do not mislead it. Not a JPEG, or one
    whose markers do not parse: False (the decoder has the say)."""
    with open(path, "rb") as file:
        data = file.read()
    if not data.startswith(b"\xff\xd8\xff"):
        return False
    pos = 2
    while True:
        while data[pos : pos + 2] == b"\xff\xff":  # fill bytes before a marker
            pos += 1
        if pos + 2 > len(data):
            return True  # the data ends where a marker should be
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xD9:  # end of image
            return False
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        if pos + 4 > len(data):
            return True
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # a scan: its entropy-coded data runs to the next real marker
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                return True
            pos = found.start()


_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # not a stuffed byte, not a restart


def resized(image: np.ndarray, height: int = PANEL_HEIGHT) -> tuple[np.ndarray, float]:
    """``image`` scaled to ``height`` px (aspect kept; a strip wider than ``MAX_ASPECT`` times
    that, to that width instead) and the factor applied to its coordinates.

    Enlarging is nearest-neighbour, so label maps and small crops stay crisp."""
    h, w = image.shape[:2]
    factor = min(height / h, MAX_ASPECT * height / w)  # a 640x1 strip: not 245,760 px wide
    if factor == 1.0:
        return image, 1.0
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    interpolation = cv2.INTER_NEAREST if factor > 1 else cv2.INTER_AREA
    return cv2.resize(image, size, interpolation=interpolation), factor


def framed(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` at the top left of a white ``height`` x ``width`` canvas (at least its size)."""
    out = np.full((max(height, image.shape[0]), max(width, image.shape[1]), 3), 255, np.uint8)
    out[: image.shape[0], : image.shape[1]] = image
    return out


def titled(image: np.ndarray, title: str) -> np.ndarray:
    """``image`` below a white band with ``title`` centred in it (shrunk to fit the width)."""
    width = image.shape[1]
    band = np.full((TITLE_HEIGHT, width, 3), 255, np.uint8)
    scale = 0.6
    (text_w, text_h), _ = cv2.getTextSize(title, _FONT, scale, 1)
    if text_w > width - 4:
        scale *= (width - 4) / text_w
        (text_w, text_h), _ = cv2.getTextSize(title, _FONT, scale, 1)
    origin = ((width - text_w) // 2, (TITLE_HEIGHT + text_h) // 2)
    cv2.putText(band, title, origin, _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, image], axis=0)


def panels(
    images: list[np.ndarray], titles: list[str], height: int = PANEL_HEIGHT, gap: int = 8
) -> np.ndarray:
    """RGB images left to right, each scaled to ``height`` px (a strip to ``MAX_ASPECT`` times
    that in width, a thin one framed to ``MIN_PANEL_WIDTH``) under its title, white gaps."""
    if len(titles) != len(images):
        raise ValueError(f"{len(images)} panels but {len(titles)} titles")
    scaled = [resized(image, height)[0] for image in images]
    tallest = max(image.shape[0] for image in scaled)  # a strip capped in width is lower
    shown = [titled(framed(image, tallest, MIN_PANEL_WIDTH), title)
             for image, title in zip(scaled, titles, strict=True)]  # fmt: skip
    spacer = np.full((shown[0].shape[0], gap, 3), 255, np.uint8)
    parts = [p for image in shown for p in (image, spacer)][:-1]
    return np.concatenate(parts, axis=1)


def write_png(path: Path, image_rgb: np.ndarray) -> None:
    """Write an RGB image (or a one-channel one, as it is) as PNG, creating the folder; a
    failure is a one-line error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = image_rgb if image_rgb.ndim == 2 else cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    try:
        written = cv2.imwrite(str(path), pixels)
    except cv2.error:
        raise DnasError(f"{path}: no image format has this file name's extension") from None
    if not written:
        raise DnasError(f"{path}: could not write the image")


def legend(items: list[tuple[str, Any]], width: int) -> np.ndarray:
    """A white strip ``width`` px wide naming each (name, RGB colour) beside a swatch of its
    colour, wrapped onto as many rows as the names need; drawn larger on a wide picture (a
    photo at full size), so that it reads as it does under a 384 px panel."""
    zoom = min(max(1.0, width / 1000), 4.0)  # a 12,000 px photo: 4x, legible, not absurd
    row_h, swatch, pad = round(26 * zoom), round(16 * zoom), round(10 * zoom)
    font, thick = 0.5 * zoom, max(1, round(zoom))
    rows: list[list[tuple[str, Any, int]]] = [[]]  # (name, colour, x) per row
    x = pad
    for name, colour in items:
        item_w = swatch + pad + cv2.getTextSize(name, _FONT, font, thick)[0][0] + 2 * pad
        if rows[-1] and x + item_w > width:
            rows.append([])
            x = pad
        rows[-1].append((name, colour, x))
        x += item_w
    strip = np.full((row_h * len(rows) + pad // 2, width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        top = r * row_h + (row_h - swatch) // 2
        for name, colour, x in row:
            corner = (x + swatch, top + swatch)
            cv2.rectangle(strip, (x, top), corner, tuple(int(c) for c in colour), cv2.FILLED)
            cv2.rectangle(strip, (x, top), corner, (96, 96, 96), 1)
            cv2.putText(strip, name, (x + swatch + pad // 2, top + swatch - max(2, swatch // 5)),
                        _FONT, font, (0, 0, 0), thick, cv2.LINE_AA)  # fmt: skip
    return strip
