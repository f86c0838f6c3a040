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
from dnas.schema import is_finite_number, is_integer, read_json, repeated_id

IGNORE = 255
MAX_CLASSES = IGNORE - 1  # categories a uint8 class map holds besides background and ignore
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
    check_instances(data, str(path))
    return data


def _entries(data: dict, key: str, source: str, fields: dict[str, Any]) -> dict[int, dict]:
    """The entries of list ``key`` by their unique ``id`` (when ``fields`` has one), each a
    mapping whose ``fields`` pass their checks: one error naming the entry otherwise."""
    for i, entry in enumerate(data[key]):
        if not isinstance(entry, dict):
            raise ConfigError(source, f"{key}[{i}]", "expected a mapping")
        for name, (ok, expected) in fields.items():
            if not ok(entry.get(name)):
                raise ConfigError(source, f"{key}[{i}].{name}",
                                  f"expected {expected}, got {entry.get(name)!r}")  # fmt: skip
    if "id" not in fields:
        return {}
    repeated = repeated_id(data[key])
    if repeated:
        raise ConfigError(source, f"{key}[{repeated[0]}].id", f"{repeated[1]} is used twice")
    return {entry["id"]: entry for entry in data[key]}


def check_instances(data: dict, source: str) -> None:
    """Every category, image and annotation of a COCO instances file as the loader reads it:
    ids unique and known, sizes positive, every segmentation a polygon list or an RLE of its
    image's size. A malformed entry is one error naming it; it is never dropped unseen."""
    count = (lambda v: is_integer(v, 0), "a non-negative integer")
    categories = _entries(data, "categories", source, {
        "id": count, "name": (lambda v: isinstance(v, str) and bool(v), "a name")})  # fmt: skip
    images = _entries(data, "images", source, {
        "id": count, "file_name": (lambda v: isinstance(v, str) and bool(v), "a file name"),
        "height": (lambda v: is_integer(v, 1), "a positive integer"),
        "width": (lambda v: is_integer(v, 1), "a positive integer")})  # fmt: skip
    _entries(data, "annotations", source, {
        "image_id": (lambda v: is_integer(v) and v in images, "the id of an image of the file"),
        "category_id": (lambda v: is_integer(v) and v in categories,
                        "the id of a category of the file"),
        "iscrowd": (lambda v: v in (None, 0, 1), "0 or 1")})  # fmt: skip
    for i, ann in enumerate(data["annotations"]):
        image = images[ann["image_id"]]
        problem = segmentation_problem(ann.get("segmentation"), image["height"], image["width"])
        if problem:
            raise ConfigError(source, f"annotations[{i}].segmentation", problem)


def segmentation_problem(segmentation: Any, height: int, width: int) -> str | None:
    """Why ``segmentation`` is not a COCO polygon list or an RLE of an HxW image, or None."""
    if isinstance(segmentation, list):
        polygons_ok = bool(segmentation) and all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
            and all(map(is_finite_number, p))
            for p in segmentation
        )  # fmt: skip
        return None if polygons_ok else ("expected polygons: lists of x, y numbers, an even "
                                         "count of at least 6 each")  # fmt: skip
    if not isinstance(segmentation, dict):
        return f"expected a polygon list or an RLE mapping, got {type(segmentation).__name__}"
    if segmentation.get("size") != [height, width]:
        return (f"an RLE of size {segmentation.get('size')!r} on an image of "
                f"[{height}, {width}]")  # fmt: skip
    counts = segmentation.get("counts")
    if isinstance(counts, str):  # pycocotools decodes any string without a word
        counts = compressed_rle_counts(counts)
        if counts is None or any(c < 0 for c in counts):
            return "RLE counts: not a COCO compressed RLE string"
    if not (isinstance(counts, list) and all(is_integer(c, 0) for c in counts)):
        return "expected RLE counts: a string or a list of non-negative integers"
    if sum(counts) != height * width:
        return f"RLE counts sum to {sum(counts)}, not the image's {height * width} pixels"
    return None


def compressed_rle_counts(text: str) -> list[int] | None:
    """The run lengths a COCO compressed RLE string encodes (pycocotools' ``rleFrString``:
    5-bit groups in characters '0'..'o', 0x20 continues a number, 0x10 signs its last group,
    counts from the third on stored as differences to the count two before); None when the
    string cannot be one."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position == len(text):
                return None  # a number cut short
            code = ord(text[position]) - 48
            if not 0 <= code < 64:
                return None
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position, shift = position + 1, shift + 5
            if not more and code & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def select_categories(
    categories: list[dict], wanted: list[str] | str, source: str, ann_path: Path
) -> list[dict]:
    """The chosen COCO categories in class order (``all``: every one, by id; one name alone is
    a list of one)."""
    by_id = sorted(categories, key=lambda c: c["id"])
    if wanted == "all":
        if len(by_id) > MAX_CLASSES:  # LVIS' 1203: ids past 254 would wrap in the uint8 maps
            raise ConfigError(source, "task.categories", f"'all' is {len(by_id)} categories of "
                              f"{ann_path}; a class map holds at most {MAX_CLASSES} (uint8, "
                              f"{IGNORE} = ignore): list the ones to segment")  # fmt: skip
        return by_id
    wanted = [wanted] if isinstance(wanted, str) else wanted
    if len(wanted) > MAX_CLASSES:
        raise ConfigError(source, "task.categories", f"{len(wanted)} categories; a class map "
                          f"holds at most {MAX_CLASSES} (uint8, {IGNORE} = ignore)")  # fmt: skip
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
