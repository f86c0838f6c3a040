"""COCO instance annotations (polygons, RLE, crowds) -> per-pixel class maps.

Class 0 is background, classes 1..K are the chosen categories in the order given (``all``: every
category of the file, by id). Instances are painted largest first, so a smaller object lying on
a larger one stays visible (equal areas: the later annotation wins). Crowd regions
(``iscrowd: 1``) are painted first with the ignore index (or their class, ``crowd: class``), so
individually annotated instances on top of a crowd keep their label.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from dnas.errors import ConfigError, DnasError
from dnas.schema import read_json

IGNORE = 255
BACKGROUND = "background"


@dataclass(frozen=True)
class Instance:
    """One annotated object of a selected category: its class index and COCO segmentation."""

    label: int
    segmentation: Any
    iscrowd: bool


@dataclass(frozen=True)
class ImageRecord:
    """One image of a split: its file, size and the instances of the selected categories."""

    path: Path
    height: int
    width: int
    instances: tuple[Instance, ...]


@lru_cache(maxsize=2)
def read_coco(path: Path) -> dict:
    """The parsed annotation file (cached: the task reads it for its classes, then its split)."""
    data = read_json(path, "annotation file")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DnasError(f"{path}: not a COCO instances file (no '{key}' list)")
    return data


def select_categories(
    categories: list[dict], wanted: list[str] | str, source: str, ann_path: Path
) -> list[dict]:
    """The chosen COCO categories in class order (``all``: every one, by id; one name alone is
    a list of one)."""
    by_id = sorted(categories, key=lambda c: c["id"])
    if wanted == "all":
        return by_id
    wanted = [wanted] if isinstance(wanted, str) else wanted
    by_name = {c["name"]: c for c in by_id}
    if not wanted or len(set(wanted)) != len(wanted):
        raise ConfigError(source, "task.categories", f"expected distinct names, got {wanted}")
    for name in wanted:
        if name not in by_name:
            known = ", ".join(by_name)
            message = f"unknown category {name!r} in {ann_path} (known: {known})"
            raise ConfigError(source, "task.categories", message)
    return [by_name[name] for name in wanted]


def load_records(data: dict, image_dir: Path, category_ids: list[int]) -> list[ImageRecord]:
    """Every image of the file (also those without a selected object: they are background)."""
    label_of = {cid: i + 1 for i, cid in enumerate(category_ids)}
    per_image: dict[int, list[Instance]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        if ann["category_id"] in label_of and ann["image_id"] in per_image:
            per_image[ann["image_id"]].append(Instance(
                label_of[ann["category_id"]], ann["segmentation"], bool(ann.get("iscrowd", 0))
            ))  # fmt: skip
    return [ImageRecord(image_dir / img["file_name"], int(img["height"]), int(img["width"]),
                        tuple(per_image[img["id"]]))
            for img in sorted(data["images"], key=lambda im: im["id"])]  # fmt: skip


def decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A polygon list, uncompressed or compressed RLE -> an (H, W) 0/1 mask (pycocotools'
    annToMask without the COCO object)."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


def class_map(record: ImageRecord, crowd_as_class: bool = False) -> np.ndarray:
    """The (H, W) uint8 class map of an image: 0 background, 1..K classes, 255 ignore."""
    out = np.zeros((record.height, record.width), np.uint8)
    masks = [(inst, decode(inst.segmentation, record.height, record.width).astype(bool))
             for inst in record.instances]  # fmt: skip
    for inst, mask in masks:
        if inst.iscrowd:
            out[mask] = inst.label if crowd_as_class else IGNORE
    solid = [(i, inst, mask) for i, (inst, mask) in enumerate(masks) if not inst.iscrowd]
    for _, inst, mask in sorted(solid, key=lambda t: (-int(t[2].sum()), t[0])):
        out[mask] = inst.label
    return out
