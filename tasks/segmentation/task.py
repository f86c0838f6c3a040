"""The segmentation task: COCO-format class maps, cross-entropy with an ignore index, mIoU."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dnas.errors import ConfigError, DnasError
from dnas.registry import TASKS
from dnas.task import Metrics, Task
from dnas.vis.images import panels, read_rgb, write_png
from tasks.segmentation.coco import (
    BACKGROUND,
    IGNORE,
    ImageRecord,
    class_map,
    load_records,
    read_coco,
    select_categories,
)
from tasks.segmentation.draw import overlay, palette
from tasks.segmentation.metrics import confusion, format_table, scores
from tasks.segmentation.transforms import (
    MEAN,
    STD,
    letterbox,
    random_scale_crop,
    to_image,
    to_input,
)


@dataclass
class SegAugment:
    """Training augmentation: the letterbox scale times U(scale_min, scale_max), a random crop
    of the input size (padded with ignore where the image is smaller), horizontal flip."""

    scale_min: float = field(default=0.5, metadata={"min": 0.05})
    scale_max: float = field(default=2.0, metadata={"min": 0.05})
    flip: bool = True


@dataclass
class SegmentationOptions:
    """The keys of the experiment's ``task:`` section for ``name: segmentation``."""

    root: str
    categories: list[str] | str = field(default_factory=lambda: ["person"])  # or "all"
    train_split: str = "train2017"
    val_split: str = "val2017"
    annotations: str = "annotations/instances_{split}.json"  # relative to root
    images: str = "{split}"  # image folder, relative to root
    crowd: str = field(default="ignore", metadata={"choices": ["ignore", "class"]})
    augment: SegAugment = field(default_factory=SegAugment)


class SegmentationDataset(Dataset):
    """Images of one COCO split with their class maps at ``input_hw``: augmented (training) or
    letterboxed (validation); ``rng`` drives the augmentation and is re-seeded per worker."""

    def __init__(self, records: list[ImageRecord], input_hw: tuple[int, int],
                 augment: SegAugment | None, seed: int, crowd_as_class: bool) -> None:  # fmt: skip
        self.records = records
        self.input_hw = input_hw
        self.augment = augment
        self.crowd_as_class = crowd_as_class
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.records)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The RGB image and its class map at the original resolution."""
        rec = self.records[index]
        image = read_rgb(rec.path)
        if image.shape[:2] != (rec.height, rec.width):
            raise DnasError(f"{rec.path}: image is {image.shape[1]}x{image.shape[0]}, the "
                            f"annotations say {rec.width}x{rec.height}")  # fmt: skip
        return image, class_map(rec, self.crowd_as_class)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.read(index)
        aug = self.augment
        if aug is None:
            image, label = letterbox(image, label, self.input_hw)
        else:
            image, label = random_scale_crop(image, label, self.input_hw, self.rng,
                                             (aug.scale_min, aug.scale_max), aug.flip)  # fmt: skip
        return {"input": to_input(image), "label": torch.from_numpy(label.astype(np.int64)),
                "index": index}  # fmt: skip


@TASKS.register("segmentation")
class SegmentationTask(Task):
    """Semantic segmentation on COCO-format instance annotations (class 0 = background)."""

    name = "segmentation"
    default_space = "mbv2_pose_small"  # the paper's MobileNetV2 backbone space
    preprocess = {"scale": 1 / 255, "mean": MEAN.tolist(), "std": STD.tolist(), "channels": "RGB"}
    Options = SegmentationOptions
    image_command = "segment"

    def __init__(self, options: SegmentationOptions, input_hw: tuple[int, int],
                 source: str) -> None:  # fmt: skip
        super().__init__(options, input_hw, source)
        aug = options.augment
        if aug.scale_min > aug.scale_max:
            raise ConfigError(source, "task.augment.scale_min",
                              f"{aug.scale_min} is above scale_max {aug.scale_max}")  # fmt: skip
        for key in ("annotations", "images"):
            if "{split}" not in getattr(options, key):
                raise ConfigError(source, f"task.{key}", "must contain '{split}'")

    def split_paths(self, split: str) -> tuple[Path, Path]:
        """(annotation file, image folder) of a split name such as ``val2017``."""
        root = Path(self.options.root)
        return (root / self.options.annotations.format(split=split),
                root / self.options.images.format(split=split))  # fmt: skip

    def split_name(self, split: str) -> tuple[str, str]:
        """(split name, the key that set it) of ``train`` or ``val``."""
        return getattr(self.options, f"{split}_split"), f"task.{split}_split"

    def read_split(self, split: str) -> dict:
        """The parsed annotation file of ``train`` or ``val``. A missing file is an error on the
        split's key when other splits' files are there, else on ``task.annotations``."""
        name, key = self.split_name(split)
        path, _ = self.split_paths(name)
        root, template = Path(self.options.root), self.options.annotations
        if not root.is_dir():
            raise ConfigError(self.source, "task.root", f"no such directory {str(root)!r}")
        if path.is_file():
            return read_coco(path)
        found = self.found_splits()
        if not found:
            raise ConfigError(self.source, "task.annotations", f"{template!r}: no file under "
                              f"{root} matches it (for {key} {name!r}: {path})")  # fmt: skip
        raise ConfigError(self.source, key, f"{name!r}: annotation file {path} not found; the "
                          f"splits under {root}: {', '.join(found)}")  # fmt: skip

    def found_splits(self) -> list[str]:
        """The split names whose annotation files exist under the root, for an error."""
        root, template = Path(self.options.root), self.options.annotations
        any_split = re.escape(template).replace(re.escape("{split}"), "([^/]+)", 1)
        match = re.compile(any_split.replace(re.escape("{split}"), r"\1")).fullmatch
        files = root.glob(template.format(split="*"))
        return sorted({m[1] for m in (match(f.relative_to(root).as_posix()) for f in files) if m})

    @functools.cached_property
    def categories(self) -> list[dict]:
        """The selected COCO categories in class order (read from the validation file)."""
        path, _ = self.split_paths(self.options.val_split)
        return select_categories(self.read_split("val")["categories"], self.options.categories,
                                 self.source, path)  # fmt: skip

    @property
    def class_names(self) -> list[str]:
        """``background`` then the chosen categories: index = class id."""
        return [BACKGROUND, *(c["name"] for c in self.categories)]

    @property
    def num_outputs(self) -> int:
        """One logit channel per class, background included."""
        return len(self.class_names)

    def default_head(self) -> dict[str, Any]:
        """The core's slim_deconv head (stride 4 on a stride-16 backbone)."""
        return {"type": "slim_deconv", "deconv_widths": [64, 32], "sic": True}

    def dataset(self, split: str, augment: bool, seed: int = 0) -> SegmentationDataset:
        """``train`` or ``val`` with the chosen categories' class maps."""
        name, _ = self.split_name(split)
        data = self.read_split(split)
        ann_path, image_dir = self.split_paths(name)
        chosen = select_categories(data["categories"], [c["name"] for c in self.categories],
                                   self.source, ann_path)  # fmt: skip
        records = load_records(data, image_dir, [c["id"] for c in chosen])
        if not records:
            raise DnasError(f"{ann_path}: no images")
        if not any(record.instances for record in records):  # else mIoU 100 on background alone
            names = ", ".join(c["name"] for c in chosen)
            raise DnasError(f"{ann_path}: no annotation of the chosen categories ({names}) in "
                            f"split {name!r}: nothing to learn or score")  # fmt: skip
        return SegmentationDataset(records, self.input_hw,
                                   self.options.augment if augment else None, seed,
                                   self.options.crowd == "class")  # fmt: skip

    def output_info(self) -> dict[str, Any]:
        """One logit map per class (background first), upsampled to the input size."""
        return {"class_names": list(self.class_names)}

    def loss(self, output: Tensor, batch: dict[str, Any]) -> Tensor:
        """Pixel-wise cross-entropy, logits upsampled bilinearly to the label size; ignore
        pixels (255) are left out of the mean (a batch of only ignore pixels gives 0)."""
        label = batch["label"]
        if output.shape[1] != self.num_outputs:
            names = ", ".join(self.class_names)
            raise DnasError(f"head gives {output.shape[1]} channels, the task has "
                            f"{self.num_outputs} classes ({names})")  # fmt: skip
        logits = upsample(output, label.shape[-2:])
        total = F.cross_entropy(logits, label, ignore_index=IGNORE, reduction="sum")
        return total / (label != IGNORE).sum().clamp(min=1)

    @torch.no_grad()
    def predict(self, model: nn.Module, loader: DataLoader, device: torch.device,
                keep: int = 0) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor]]]:  # fmt: skip
        """The (ground truth x prediction) pixel counts of the loader's images, at input
        resolution, and (input, label, prediction) of its first ``keep`` images."""
        was_training = model.training
        model.eval()
        k = self.num_outputs
        matrix = torch.zeros(k, k, dtype=torch.int64)
        shown: list[tuple[Tensor, Tensor, Tensor]] = []
        for batch in loader:
            x, label = batch["input"].to(device), batch["label"]
            pred = upsample(model(x).float(), label.shape[-2:]).argmax(1).cpu()
            matrix += confusion(pred, label, k)
            shown += list(zip(batch["input"], label, pred, strict=True))[: keep - len(shown)]
        model.train(was_training)
        return matrix, shown

    def score(self, dataset: Dataset, parts: list[tuple[Tensor, list]], out_dir: Path | None,
              save_vis: int = 0) -> Metrics:  # fmt: skip
        """mIoU, pixel accuracy and per-class IoU over the whole split."""
        matrix = sum((m for m, _ in parts), torch.zeros_like(parts[0][0]))
        shown = [item for _, kept in parts for item in kept][:save_vis]
        result = scores(matrix.numpy())
        values = {key: result[key] for key in ("mIoU", "pixel_acc", "mAcc")}
        for name, iou in zip(self.class_names, result["iou"], strict=True):
            if iou is not None:
                values[f"IoU/{name}"] = iou
        metrics = Metrics(values, primary="mIoU", table=format_table(result, self.class_names),
                          label="mIoU (%)")  # fmt: skip
        if out_dir is not None:
            metrics.files["confusion"] = str(self.write_confusion(matrix, out_dir))
            if shown:
                metrics.files["visualisations"] = str(self.save_vis(shown, out_dir / "vis"))
        return metrics

    def write_confusion(self, matrix: Tensor, out_dir: Path) -> Path:
        """``confusion.json``: class names and the (ground truth x prediction) pixel counts."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "confusion.json"
        path.write_text(json.dumps({"classes": self.class_names, "ignore_index": IGNORE,
                                    "matrix": matrix.tolist()}))  # fmt: skip
        return path

    def save_vis(self, shown: list[tuple[Tensor, Tensor, Tensor]], out_dir: Path) -> Path:
        """PNGs of the first images as the net saw them: image | ground truth | prediction."""
        colours = palette(self.num_outputs)
        for i, (x, label, pred) in enumerate(shown):
            image = to_image(x)
            truth = label.numpy().astype(np.uint8)
            guess = pred.numpy().astype(np.uint8)
            picture = panels(
                [image, overlay(image, truth, colours), overlay(image, guess, colours)],
                ["image", "ground truth", "prediction"],
            )
            write_png(out_dir / f"{i:04d}.png", picture)
        return out_dir


def upsample(logits: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    """Bilinear resize of (N, C, h, w) logits to the label size (a no-op when equal)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
