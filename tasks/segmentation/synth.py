"""Synthetic semantic-segmentation set written in real COCO instances format.

Ellipses, rectangles and triangles in random colours and textures (the colour never tells the
category) lie on cluttered textured backgrounds with irregular blobs and strokes; larger shapes
are drawn first so smaller ones partly cover them, thin bars and blobs occlude some of them, and
some images hold a crowd of tiny shapes annotated as one ``iscrowd`` region.

Annotations are what a COCO loader expects: unoccluded instances as polygons (the full shape) or
compressed RLE, instances cut by an occluder as compressed RLE of their visible pixels, crowds as
uncompressed RLE. Every shape is painted through the pycocotools mask of its own annotation, so
the class map the loader builds (larger first, see ``tasks.segmentation.coco``) is exactly the
drawn one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from tasks.segmentation.coco import IGNORE

CATEGORIES = ("ellipse", "rectangle", "triangle")
SPLITS = (("train", 0), ("val", 1))
_GENERATOR = "dnas-synth-seg"
_VERSION = 1


@dataclass
class _Shape:
    """One drawn object: class (1-based), polygon, its mask, and whether it is a crowd."""

    label: int
    polygon: np.ndarray
    mask: np.ndarray
    crowd: bool = False


def _colour(rng: np.random.Generator) -> np.ndarray:
    hsv = np.array([[[rng.integers(0, 180), rng.integers(40, 256), rng.integers(40, 256)]]],
                   np.uint8)  # fmt: skip
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """An (S, S, 3) fill: flat, stripes or a checkerboard of two random colours, with shading."""
    a, b = _colour(rng), _colour(rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:
        weight = np.zeros((size, size), np.float32)
    else:
        t = rng.uniform(0, np.pi)
        period = rng.uniform(0.03, 0.15) * size
        u = (xx * np.cos(t) + yy * np.sin(t)) / period
        v = (-xx * np.sin(t) + yy * np.cos(t)) / period
        weight = (np.floor(u) % 2) if kind == 1 else (np.floor(u) + np.floor(v)) % 2
    fill = a * (1 - weight[..., None]) + b * weight[..., None]
    tilt = rng.uniform(-0.3, 0.3, 2)
    shade = 1 + tilt[0] * (xx / size - 0.5) + tilt[1] * (yy / size - 0.5)
    return fill * shade[..., None]


def _polygon(rng: np.random.Generator, kind: str, centre: np.ndarray, radius: float) -> np.ndarray:
    """Vertices (N, 2) of an ellipse (32-gon), a rotated rectangle or a triangle."""
    turn = rng.uniform(0, 2 * np.pi)
    if kind == "ellipse":
        a = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        pts = np.stack([radius * np.cos(a), radius * rng.uniform(0.45, 1.0) * np.sin(a)], 1)
    elif kind == "rectangle":
        w, h = radius, radius * rng.uniform(0.35, 1.0)
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]], np.float64)
    else:
        a = np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.35, 0.35, 3)
        pts = radius * rng.uniform(0.75, 1.0, (3, 1)) * np.stack([np.cos(a), np.sin(a)], 1)
    rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    return pts @ rot.T + centre


def _mask(polygon: np.ndarray, size: int) -> np.ndarray:
    """The pycocotools rasterisation of a polygon clipped to the image (what the loader sees)."""
    flat = np.clip(polygon, 0, size - 1).round(2).ravel().tolist()
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([flat], size, size)))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour field, textured patches, irregular blobs and strokes (all background)."""
    k = int(rng.integers(2, 4))
    field = np.stack([_colour(rng) for _ in range(k * k)]).reshape(k, k, 3)
    img = cv2.resize(field, (size, size), interpolation=cv2.INTER_LINEAR)
    for _ in range(rng.integers(1, 4)):
        patch = np.zeros((size, size), np.uint8)
        corner = rng.uniform(-0.2, 0.8, 2) * size
        extent = rng.uniform(0.2, 0.7, 2) * size
        cv2.rectangle(patch, tuple(int(v) for v in corner),
                      tuple(int(v) for v in corner + extent), 1, -1)  # fmt: skip
        img = np.where(patch[..., None] > 0, _texture(rng, size), img)
    for _ in range(rng.integers(2, 7)):  # irregular blobs: 6-10 jittered vertices
        n = int(rng.integers(6, 11))
        a = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(0.04, 0.18) * size * rng.uniform(0.4, 1.0, n)
        centre = rng.uniform(0, size, 2)
        pts = (centre + np.stack([r * np.cos(a), r * np.sin(a)], 1)).round().astype(np.int32)
        cv2.fillPoly(img, [pts], _colour(rng).tolist(), cv2.LINE_AA)
    for _ in range(rng.integers(2, 6)):  # strokes that look like shape edges
        p, q = rng.uniform(0, size, (2, 2)).round().astype(int)
        cv2.line(img, tuple(p), tuple(q), _colour(rng).tolist(), int(rng.integers(1, 4)),
                 cv2.LINE_AA)  # fmt: skip
    return img


def _sample_shapes(rng: np.random.Generator, size: int) -> list[_Shape]:
    """1-5 shapes, largest first; sometimes a crowd of tiny shapes, drawn before them."""
    shapes = []
    if rng.random() < 0.25:
        label = int(rng.integers(1, len(CATEGORIES) + 1))
        centre = rng.uniform(0.2, 0.8, 2) * size
        crowd = np.zeros((size, size), np.uint8)
        for _ in range(rng.integers(5, 12)):
            spot = centre + rng.normal(0, 0.08 * size, 2)
            crowd |= _mask(_polygon(rng, CATEGORIES[label - 1], spot, 0.03 * size), size)
        shapes.append(_Shape(label, np.zeros((0, 2)), crowd, crowd=True))
    solid = []
    for _ in range(rng.integers(1, 6)):
        label = int(rng.integers(1, len(CATEGORIES) + 1))
        centre = rng.uniform(0.1, 0.9, 2) * size
        polygon = _polygon(rng, CATEGORIES[label - 1], centre, rng.uniform(0.08, 0.3) * size)
        mask = _mask(polygon, size)
        if mask.sum() >= 16:
            solid.append(_Shape(label, polygon, mask))
    solid.sort(key=lambda s: -int(s.mask.sum()))  # stable: ties keep their drawing order
    return shapes + solid


def _occluders(rng: np.random.Generator, size: int) -> np.ndarray:
    """0-2 thin bars or blobs drawn over everything (background class); their 0/1 mask."""
    mask = np.zeros((size, size), np.uint8)
    if rng.random() < 0.4:
        for _ in range(rng.integers(1, 3)):
            p, q = rng.uniform(0, size, (2, 2)).round().astype(int)
            cv2.line(mask, tuple(p), tuple(q), 1, max(2, int(rng.uniform(0.02, 0.06) * size)))
    return mask


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE (the form crowd annotations use): column-major runs, zeros first."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    counts = ([0] if flat.size and flat[0] else []) + runs.tolist()
    return {"size": list(mask.shape), "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's compressed RLE (``counts`` a string), as pycocotools encodes it, JSON-ready."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """One RGB image, its COCO annotations (without ids) and the true class map."""
    img = _background(rng, size)
    shapes = _sample_shapes(rng, size)
    owner = np.zeros((size, size), np.int32)  # 1-based index of the shape on top, 0 background
    for i, shape in enumerate(shapes, 1):
        on = shape.mask > 0
        img[on] = _texture(rng, size)[on]
        owner[on] = i
    cut = _occluders(rng, size) > 0
    img[cut] = _texture(rng, size)[cut]
    owner[cut] = 0
    truth = np.zeros((size, size), np.uint8)
    anns = []
    for i, shape in enumerate(shapes, 1):
        visible = (owner == i).astype(np.uint8)
        if not visible.any():
            continue
        truth[visible > 0] = IGNORE if shape.crowd else shape.label
        anns.append(_annotation(rng, shape, visible, occluded=bool((cut & (shape.mask > 0)).any())))
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.0))
    img += rng.normal(0, rng.uniform(2, 8), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), anns, truth


def _annotation(rng: np.random.Generator, shape: _Shape, visible: np.ndarray,
                occluded: bool) -> dict:  # fmt: skip
    """Crowd: uncompressed RLE; cut by an occluder: RLE of what is visible; else polygon (full
    shape) or RLE, at random."""
    if shape.crowd:
        segmentation: Any = uncompressed_rle(visible)
    elif occluded or rng.random() < 0.5:
        segmentation = compressed_rle(visible if occluded else shape.mask)
    else:
        segmentation = [np.clip(shape.polygon, 0, visible.shape[0] - 1).round(2).ravel().tolist()]
    area = visible if occluded or shape.crowd else shape.mask
    ys, xs = np.nonzero(area)
    return {"category_id": shape.label, "segmentation": segmentation, "area": int(area.sum()),
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                     int(ys.max() - ys.min() + 1)],
            "iscrowd": int(shape.crowd)}  # fmt: skip


def write_synthetic_seg(out: Path, n_train: int, n_val: int, seed: int,
                        image_size: int = 128) -> dict:  # fmt: skip
    """Draw the set into OUT (``{train,val}/*.jpg``, ``annotations/instances_{train,val}.json``)
    and return its manifest (also OUT/synth.json). Image i of a split comes from
    ``np.random.default_rng([seed, split, i])``, so neither split's size changes the other."""
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"}
                  for i, n in enumerate(CATEGORIES)]  # fmt: skip
    for split, split_id in SPLITS:
        (out / split).mkdir(exist_ok=True)
        images, anns = [], []
        for i in range(n_train if split == "train" else n_val):
            img, image_anns, _ = render(np.random.default_rng([seed, split_id, i]), image_size)
            name = f"{i:06d}.jpg"
            if not cv2.imwrite(str(out / split / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 92]):  # fmt: skip
                raise OSError(f"could not write {out / split / name}")
            images.append({"id": i + 1, "file_name": name, "height": image_size,
                           "width": image_size})  # fmt: skip
            for ann in image_anns:
                anns.append({"id": len(anns) + 1, "image_id": i + 1, **ann})
        data = {"info": {"description": f"{_GENERATOR} v{_VERSION}, seed {seed}"},
                "images": images, "annotations": anns, "categories": categories}  # fmt: skip
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    manifest = {"format": "coco-instances", "generator": _GENERATOR, "version": _VERSION,
                "n_train": n_train, "n_val": n_val, "seed": seed,
                "image_size": image_size}  # fmt: skip
    (out / "synth.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
