"""COCO person keypoints 2017 (17 joints), read and scored with pycocotools as HRNet does.

Layout: ``root/annotations/person_keypoints_{split}.json`` and images in ``root/{split}/``;
``annotation`` and ``images`` options point elsewhere (relative paths are taken from root).
Following HRNet's ``lib/dataset/coco.py``: crowd and unlabelled people are skipped, boxes are
clipped to the image, keypoints are used as is (0-based pixels). Evaluation datasets (no
augmentation, HRNet's ``not is_train``) can take person detections instead of ground-truth
boxes. Scoring: person score = box score x mean joint peak above ``in_vis_threshold``, OKS-NMS
per image, then COCOeval keypoints AP.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dnas.errors import ConfigError, DnasError
from dnas.schema import is_finite_number, is_integer, read_json, repeated_id
from dnas.task import Metrics
from tasks.pose.mpii import as_list, read_json_list
from tasks.pose.topdown import DATASETS, PersonRecord, TopDownDataset

COCO_JOINTS = (
    "nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow",
    "r_elbow", "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle",
)  # fmt: skip
# Per-keypoint OKS falloff (COCO / xtcocotools).
COCO_SIGMAS = np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62,
                        1.07, 1.07, 0.87, 0.87, 0.89, 0.89]) / 10.0  # fmt: skip
STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")
PERSON = 1
_IMAGE_KEYS = ("id", "file_name", "width", "height")
_ANN_KEYS = ("id", "image_id", "category_id", "iscrowd", "bbox", "area", "keypoints",
             "num_keypoints")  # fmt: skip
_RESULT_KEYS = ("image_id", "category_id", "keypoints", "score")
_DETECTION_KEYS = ("image_id", "category_id", "bbox", "score")


@dataclass
class COCOOptions:
    """``task.dataset_options`` for COCO; thresholds are HRNet's TEST defaults. Detection boxes
    replace the ground truth only in evaluation datasets; training always uses annotated people."""

    boxes: str = field(default="gt", metadata={"choices": ["gt", "detections"]})
    detections: str | None = None  # COCO results-format person boxes, for boxes: detections
    det_score_threshold: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    in_vis_threshold: float = field(default=0.2, metadata={"min": 0.0, "max": 1.0})
    oks_nms_threshold: float = field(default=0.9, metadata={"min": 0.0, "max": 1.0})
    annotation: str | None = None  # overrides annotations/person_keypoints_{split}.json
    images: str | None = None  # overrides the {split}/ image folder


def _numbers(values: Any, count: int) -> bool:
    """``count`` finite numbers (json also reads NaN and Infinity)."""
    return isinstance(values, list) and len(values) == count and all(map(is_finite_number, values))


def check_unique_ids(path: Path, entries: list[dict], key: str) -> None:
    """pycocotools indexes ``images`` and ``annotations`` by id: a repeated id would leave a
    perfect result file scoring below 1."""
    repeated = repeated_id(entries)
    if repeated:
        raise DnasError(f"{path}: {key}[{repeated[0]}]: id {repeated[1]} is given twice")


def _annotation_problem(ann: Any, images: dict[int, dict], categories: set[int]) -> str | None:
    if not isinstance(ann, dict):
        return "not an object"
    missing = [k for k in _ANN_KEYS if k not in ann]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not _numbers(ann["keypoints"], 3 * len(COCO_JOINTS)):
        return f"keypoints must be {len(COCO_JOINTS)} x 3 numbers (x, y, v)"
    if not _numbers(ann["bbox"], 4) or not _numbers([ann["area"]], 1):
        return "bbox must be 4 numbers [x, y, w, h] and area a number"
    if not is_integer(ann["image_id"]) or ann["image_id"] not in images:
        return f"image_id {ann['image_id']!r} is not in images"[:200]
    if not (is_integer(ann["id"]) and is_integer(ann["category_id"])):
        return "id and category_id must be integers"
    if ann["category_id"] not in categories:
        return f"category_id {ann['category_id']} is not among the categories"
    if ann["iscrowd"] not in (0, 1) or not is_integer(ann["num_keypoints"]):
        return "iscrowd must be 0 or 1 and num_keypoints an integer"
    if any(v not in (0, 1, 2) for v in ann["keypoints"][2::3]):
        return "keypoint visibility flags must be 0, 1 or 2"
    if min(ann["bbox"][2:]) < 0 or ann["area"] < 0:
        return "bbox width and height and area must not be negative"
    return _keypoints_off_image(ann["keypoints"], images[ann["image_id"]])


def _keypoints_off_image(keypoints: list[float], image: dict) -> str | None:
    """A labelled keypoint further outside its image than the image's own size (an annotation
    tool marks joints in the image; 1e9 is a corrupt value, not a joint out of frame)."""
    width, height = image["width"], image["height"]
    for j, (x, y, v) in enumerate(zip(keypoints[0::3], keypoints[1::3], keypoints[2::3],
                                      strict=True)):  # fmt: skip
        if v > 0 and not (-width <= x <= 2 * width and -height <= y <= 2 * height):
            return (f"keypoint {j} ({x:g}, {y:g}) lies far outside its "
                    f"{width:g}x{height:g} image")  # fmt: skip
    return None


def _image_problem(image: Any) -> str | None:
    if not isinstance(image, dict) or any(k not in image for k in _IMAGE_KEYS):
        return f"needs {', '.join(_IMAGE_KEYS)}"
    if not is_integer(image["id"]):
        return "id must be an integer"
    if not isinstance(image["file_name"], str) or not image["file_name"]:
        return "file_name must be a file name"
    if (
        not _numbers([image["width"], image["height"]], 2)
        or min(image["width"], image["height"]) <= 0
    ):
        return "width and height must be positive numbers"
    return None


def load_coco_keypoints(path: Path) -> COCO:
    """A checked COCO person-keypoints json as a pycocotools index; DnasError names the file."""
    data = read_json(path, "COCO keypoint annotations")
    lists = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in lists):
        raise DnasError(f"{path}: not a COCO keypoints file (needs 'images', 'annotations' and "
                        "'categories' lists)")  # fmt: skip
    for i, image in enumerate(data["images"]):
        problem = _image_problem(image)
        if problem:
            raise DnasError(f"{path}: images[{i}]: {problem}")
    check_unique_ids(path, data["images"], "images")
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not is_integer(cat.get("id")):
            raise DnasError(f"{path}: categories[{i}] needs an integer id")
    if PERSON not in {cat["id"] for cat in data["categories"]}:  # else every AP reads -1
        raise DnasError(f"{path}: categories: no person category (id {PERSON})")
    images = {image["id"]: image for image in data["images"]}
    categories = {cat["id"] for cat in data["categories"]}
    for i, ann in enumerate(data["annotations"]):
        problem = _annotation_problem(ann, images, categories)
        if problem:
            raise DnasError(f"{path}: annotations[{i}]: {problem}")
    check_unique_ids(path, data["annotations"], "annotations")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _check_results(path: Path, results: list, coco: COCO) -> None:
    for i, r in enumerate(results):
        if not isinstance(r, dict) or any(k not in r for k in _RESULT_KEYS):
            raise DnasError(f"{path}: results[{i}] needs {', '.join(_RESULT_KEYS)}")
        if not _numbers(r["keypoints"], 3 * len(COCO_JOINTS)) or not _numbers([r["score"]], 1):
            raise DnasError(f"{path}: results[{i}]: keypoints must be "
                            f"{len(COCO_JOINTS)} x 3 numbers and score a number")  # fmt: skip
        if not isinstance(r["image_id"], int) or r["image_id"] not in coco.imgs:
            raise DnasError(f"{path}: results[{i}]: image_id {r['image_id']!r} is not in the "
                            "ground truth")  # fmt: skip
        if not is_integer(r["category_id"]) or r["category_id"] not in coco.cats:
            raise DnasError(f"{path}: results[{i}]: category_id {r['category_id']!r} is not a "
                            "category of the ground truth (person: 1)")  # fmt: skip


def _keypoint_stats(coco: COCO, results: list[dict]) -> dict[str, float]:
    """pycocotools' keypoint summary (fractions); all zeros when there is nothing to score."""
    if not results:
        return dict.fromkeys(STAT_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        detections = coco.loadRes([dict(r) for r in results])  # loadRes edits its input
        coco_eval = COCOeval(coco, detections, "keypoints")
        coco_eval.params.useSegm = None
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, coco_eval.stats, strict=True)}


def read_keypoint_results(path: Path) -> list:
    """A COCO keypoint results list, not empty: pycocotools' loadRes fails on ``[]`` and an AP
    of 0 would hide a wrong file; a dnas run's metrics (``results.json``) names the file."""
    data = read_json(path, "COCO keypoint results")
    if isinstance(data, dict) and "primary_metric" in data:
        raise DnasError(f"{path}: the metrics dnas eval or train writes (results.json), not "
                        f"COCO keypoint results; pass {_results_file(data)}")  # fmt: skip
    results = as_list(data, path, "COCO keypoint results")
    if not results:
        raise DnasError(f"{path}: an empty list: no keypoint results to score (expected one "
                        "entry per detected person, as dnas eval writes them)")  # fmt: skip
    return results


def _results_file(metrics: dict) -> str:
    """The keypoint results file a run's metrics list (``files.results``), else what to run."""
    files = metrics.get("files")
    listed = files.get("results") if isinstance(files, dict) else None
    if isinstance(listed, str):
        return f"the keypoint results it lists: {listed}"
    return "the keypoints_<split>_results.json that dnas eval writes with a COCO experiment"


def coco_keypoint_ap(annotation_json: Path, results_json: Path) -> dict[str, float]:
    """Score an existing COCO keypoint results file against its ground truth (AP, AR...)."""
    coco = load_coco_keypoints(Path(annotation_json))
    results = read_keypoint_results(Path(results_json))
    _check_results(Path(results_json), results, coco)
    return _keypoint_stats(coco, results)


def format_coco_table(stats: dict[str, float]) -> str:
    """The keypoint stats as a one-row markdown table (fractions, as HRNet prints them)."""
    header = "| " + " | ".join(STAT_NAMES) + " |"
    rule = "|" + "---|" * len(STAT_NAMES)
    row = "| " + " | ".join(f"{stats[k]:.3f}" for k in STAT_NAMES) + " |"
    return "\n".join([header, rule, row])


def oks_iou(
    pose: np.ndarray, others: np.ndarray, area: float, other_areas: np.ndarray
) -> np.ndarray:
    """OKS between one (J, 2+) pose and (M, J, 2+) poses, areas as scale (HRNet/xtcocotools)."""
    variances = (COCO_SIGMAS * 2) ** 2
    d2 = ((others[..., :2] - pose[None, :, :2]) ** 2).sum(-1)
    mean_area = (area + np.asarray(other_areas, np.float64)[:, None]) / 2 + np.spacing(1)
    return np.exp(-d2 / variances / mean_area / 2).mean(-1)


def oks_nms(
    poses: np.ndarray, scores: np.ndarray, areas: np.ndarray, threshold: float
) -> list[int]:
    """Greedy NMS: keep the best-scored pose, drop those with OKS > threshold to it, repeat."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        overlap = oks_iou(poses[best], poses[rest], areas[best], areas[rest])
        order = rest[overlap <= threshold]
    return keep


@DATASETS.register("coco")
class COCODataset(TopDownDataset):
    """COCO person keypoints 2017; meta keeps image_id, box score and HRNet's NMS area
    (the padded box, (scale x 200)^2)."""

    Options = COCOOptions
    joint_names = COCO_JOINTS
    skeleton = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6),
                (5, 7), (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5),
                (4, 6))  # fmt: skip
    flip_pairs = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]
    upper_body_ids = tuple(range(11))
    default_splits = ("train2017", "val2017")
    default_augment = {"scale_factor": 0.35, "half_body_prob": 0.3}

    def _path(self, option: str | None, default: Path) -> Path:
        return default if option is None else self.root / option

    def load_records(self) -> list[PersonRecord]:
        if self.options is None:
            self.options = COCOOptions()
        opts = self.options
        self.annotation_path = self._path(
            opts.annotation, self.root / "annotations" / f"person_keypoints_{self.split}.json"
        )
        self.image_dir = self._path(opts.images, self.root / self.split)
        detections = None if opts.detections is None else self.root / opts.detections
        for key, path, found in (("annotation", self.annotation_path, Path.is_file),
                                 ("images", self.image_dir, Path.is_dir),
                                 ("detections", detections, Path.is_file)):  # fmt: skip
            if getattr(opts, key) is not None and not found(path):  # the option's own mistake
                kind = "folder" if key == "images" else "file"
                raise ConfigError("", f"task.dataset_options.{key}",
                                  f"no such {kind} {path} (a relative path is read under "
                                  "task.root)")  # fmt: skip
        if self.annotation_path.is_file() and not self.image_dir.is_dir():  # before the json
            raise DnasError(f"{self.image_dir}: no such folder, where split {self.split!r} keeps "
                            "its images (task.dataset_options.images names another)")  # fmt: skip
        self.coco = load_coco_keypoints(self.annotation_path)
        if opts.boxes == "detections" and self.augment is None:
            return self._detection_records()
        return self._ground_truth_records()

    def _record(
        self, image_id: int, box: list, joints: np.ndarray, vis: np.ndarray, score: float
    ) -> PersonRecord:
        center, scale = self.box_to_center_scale(*box)
        image = self.image_dir / self.coco.imgs[image_id]["file_name"]
        meta = {"image_id": image_id, "score": score, "area": float(np.prod(scale * 200))}
        return PersonRecord(image, center, scale, joints, vis, meta)

    def _ground_truth_records(self) -> list[PersonRecord]:
        records = []
        for image_id in self.coco.getImgIds():
            info = self.coco.imgs[image_id]
            width, height = info["width"], info["height"]
            for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, iscrowd=False)):
                if ann["category_id"] != PERSON:
                    continue
                kpts = np.asarray(ann["keypoints"], np.float32).reshape(-1, 3)
                vis = (kpts[:, 2] > 0).astype(np.float32)
                if not vis.any():
                    continue
                x, y, w, h = ann["bbox"]  # HRNet's sanitising: clip to the image
                x1, y1 = max(0.0, x), max(0.0, y)
                x2 = min(width - 1.0, x1 + max(0.0, w - 1))
                y2 = min(height - 1.0, y1 + max(0.0, h - 1))
                if ann["area"] <= 0 or x2 < x1 or y2 < y1:
                    continue
                box = [x1, y1, x2 - x1, y2 - y1]
                records.append(self._record(image_id, box, kpts[:, :2].copy(), vis, 1.0))
        return records

    def _detection_records(self) -> list[PersonRecord]:
        opts = self.options
        if opts.detections is None:
            raise DnasError("task.dataset_options.detections: required when boxes is "
                            "'detections' (a COCO results json of person boxes)")  # fmt: skip
        path = self.root / opts.detections  # found by load_records
        records = []
        joints = len(COCO_JOINTS)
        for i, det in enumerate(read_json_list(path, "person detections")):
            if not isinstance(det, dict) or any(k not in det for k in _DETECTION_KEYS):
                raise DnasError(f"{path}: detections[{i}] needs {', '.join(_DETECTION_KEYS)}")
            if not _numbers(det["bbox"], 4) or not _numbers([det["score"]], 1):
                raise DnasError(f"{path}: detections[{i}]: bbox must be 4 numbers [x, y, w, h] "
                                "and score a number")  # fmt: skip
            if det["category_id"] != PERSON or det["score"] < opts.det_score_threshold:
                continue
            image_id = det["image_id"]
            if not isinstance(image_id, int) or image_id not in self.coco.imgs:
                raise DnasError(f"{path}: detections[{i}]: image_id {image_id!r} is not in "
                                f"{self.annotation_path}")  # fmt: skip
            zeros = np.zeros((joints, 2), np.float32)
            vis = np.zeros(joints, np.float32)
            records.append(self._record(image_id, det["bbox"], zeros, vis, float(det["score"])))
        return records

    def evaluate(self, preds: np.ndarray, scores: np.ndarray, out_dir: Path | None) -> Metrics:
        if len(preds) != len(self.records) or len(scores) != len(self.records):
            raise DnasError(f"{self.annotation_path}: {len(self.records)} people in split "
                            f"{self.split!r}, but {len(preds)} predictions")  # fmt: skip
        opts = self.options
        kpts = np.concatenate([preds[..., :2], scores[..., None]], -1).astype(np.float64)
        confident = kpts[..., 2] > opts.in_vis_threshold
        kpt_score = (kpts[..., 2] * confident).sum(1) / np.maximum(confident.sum(1), 1)
        box_score = np.array([r.meta["score"] for r in self.records], np.float64)
        person_score = box_score * kpt_score  # HRNet's rescoring
        areas = np.array([r.meta["area"] for r in self.records], np.float64)
        by_image: dict[int, list[int]] = defaultdict(list)
        for i, rec in enumerate(self.records):
            by_image[rec.meta["image_id"]].append(i)
        results = []
        for image_id, people in by_image.items():
            idx = np.array(people)
            for k in oks_nms(kpts[idx], person_score[idx], areas[idx], opts.oks_nms_threshold):
                i = int(idx[k])
                results.append({"image_id": image_id, "category_id": PERSON,
                                "keypoints": kpts[i].reshape(-1).tolist(),
                                "score": float(person_score[i])})  # fmt: skip
        files = {}
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"keypoints_{self.split}_results.json"
            path.write_text(json.dumps(results))
            files["results"] = str(path)
        stats = _keypoint_stats(self.coco, results)
        return Metrics(stats, "AP", format_coco_table(stats), files, "AP (OKS, fraction)")
