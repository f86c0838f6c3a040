"""The pose task: top-down heatmap datasets, MSE loss, slim-deconv head, dataset metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dnas.errors import ConfigError, DnasError
from dnas.registry import TASKS
from dnas.schema import from_dict
from dnas.task import Metrics, Task
from dnas.vis.images import panels, resized, write_png
from tasks.pose.draw import draw_pose
from tasks.pose.inference import predict_batch
from tasks.pose.loss import joints_mse
from tasks.pose.topdown import DATASETS, IMAGENET_MEAN, IMAGENET_STD, Augment, TopDownDataset

HEATMAP_STRIDES = (1, 2, 4, 8)  # task.heatmap_stride's choices


@dataclass
class TestOptions:
    """Test-time protocol (HRNet): flip test with the flipped maps shifted one pixel, then
    argmax + quarter-pixel offset, or DARK sub-pixel decoding."""

    flip: bool = True
    shift_heatmap: bool = True
    decoding: str = field(default="argmax", metadata={"choices": ["argmax", "dark"]})


@dataclass
class PoseOptions:
    root: str
    dataset: str = "mpii"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    train_split: str | None = None  # default: the dataset's own split names
    val_split: str | None = None
    sigma: float = field(default=2.0, metadata={"min": 0.1})
    heatmap_stride: int = field(default=4, metadata={"choices": list(HEATMAP_STRIDES)})
    augment: dict[str, Any] = field(default_factory=dict)
    test: TestOptions = field(default_factory=TestOptions)


def whole_stride(output_hw: tuple[int, ...], input_hw: tuple[int, int]) -> int | None:
    """The stride s with output = input / s exactly on both sides, else None."""
    (out_h, out_w), (height, width) = output_hw, input_hw
    if out_h <= 0 or height % out_h:
        return None
    stride = height // out_h
    return stride if out_w * stride == width else None


@TASKS.register("pose")
class PoseTask(Task):
    """Top-down heatmap pose estimation (paper Sec. 3), on any registered pose dataset."""

    name = "pose"
    default_space = "mbv2_pose_small"
    preprocess = {"scale": 1 / 255, "mean": IMAGENET_MEAN.tolist(), "std": IMAGENET_STD.tolist(),
                  "channels": "RGB"}  # fmt: skip
    Options = PoseOptions
    image_command = "predict"

    def __init__(self, options: PoseOptions, input_hw: tuple[int, int], source: str) -> None:
        super().__init__(options, input_hw, source)
        try:
            self.dataset_cls: type[TopDownDataset] = DATASETS.get(options.dataset)
        except DnasError as exc:
            raise ConfigError(source, "task.dataset", str(exc)) from None
        cls = self.dataset_cls
        self.dataset_options = (
            from_dict(cls.Options, options.dataset_options, source, "task.dataset_options")
            if hasattr(cls, "Options") else None
        )  # fmt: skip
        if options.dataset_options and self.dataset_options is None:
            raise ConfigError(source, "task.dataset_options", f"{options.dataset} takes none")
        self.augment = from_dict(
            Augment, {**getattr(cls, "default_augment", {}), **options.augment}, source,
            "task.augment",
        )  # fmt: skip

    @property
    def num_outputs(self) -> int:
        return self.dataset_cls.num_joints()

    def default_head(self) -> dict[str, Any]:
        return {"type": "slim_deconv", "deconv_widths": [64, 32], "sic": True}

    def dataset(self, split: str, augment: bool, seed: int = 0) -> TopDownDataset:
        opts = self.options
        train, val = self.dataset_cls.default_splits
        name = {"train": opts.train_split or train, "val": opts.val_split or val}.get(split, split)
        if not Path(opts.root).is_dir():
            raise ConfigError(self.source, "task.root", f"no such directory {opts.root!r}")
        try:
            dataset = self.dataset_cls(
                Path(opts.root), name, self.input_hw, opts.sigma, opts.heatmap_stride,
                self.augment if augment else None, seed, self.dataset_options,
            )  # fmt: skip
        except ConfigError as exc:  # a dataset names the key; the file is the task's to name
            if exc.source:
                raise
            raise ConfigError(self.source, exc.key, exc.detail) from None
        except DnasError as exc:  # a split the user named chose the file that failed
            if getattr(opts, f"{split}_split", None) is None:
                raise
            raise ConfigError(self.source, f"task.{split}_split", f"{name!r}: {exc}") from None
        if not len(dataset):  # else a traceback deep in collate or in the evaluation
            raise ConfigError(self.source, "task.root", f"{opts.root}: split {name!r} has no "
                              "person to train on or score (its annotations, ranges, boxes or "
                              "detection threshold leave none)")  # fmt: skip
        if split == "val":  # scored: what the evaluation reads besides the people, now
            dataset.check_scorable()
        return dataset

    def output_info(self) -> dict[str, Any]:
        """One heatmap per joint, at input / heatmap_stride; predictions are 0-based pixels."""
        return {"dataset": self.options.dataset, "joint_names": list(self.dataset_cls.joint_names),
                "heatmap_stride": self.options.heatmap_stride}  # fmt: skip

    def check_output_shape(self, shape: tuple[int, int, int]) -> None:
        """The head must give one heatmap per joint at the targets' size (input / stride)."""
        height, width = self.input_hw
        stride = self.options.heatmap_stride
        self.check_match(tuple(shape), (self.num_outputs, height // stride, width // stride))

    def check_match(self, output: tuple[int, ...], target: tuple[int, ...]) -> None:
        """The head's output must have the heatmap targets' shape. A head at a whole stride of
        the input other than ``task.heatmap_stride`` blames that key; anything else, the input
        size (sides the space's strides do not divide) with the stride it was paired with."""
        if output == target:
            return
        height, width = self.input_hw
        stride = self.options.heatmap_stride
        head = whole_stride(output[-2:], self.input_hw)
        if head is not None and head != stride:
            fix = f"set task.heatmap_stride: {head}, or " if head in HEATMAP_STRIDES else ""
            raise ConfigError(
                self.source, "task.heatmap_stride",
                f"{stride}: the head's output {output} is at input / {head} of the "
                f"{height}x{width} input, the heatmap targets at input / {stride} {target}; "
                f"{fix}use a head that upsamples to input / {stride}",
            )  # fmt: skip
        raise ConfigError(
            self.source, "input_size",
            f"{height}x{width}: the head's output {output} does not match the heatmap targets "
            f"{target} (joints x H/{stride} x W/{stride}, task.heatmap_stride: {stride}); use "
            "an input size that the space's strides divide, or check its head's upsampling",
        )  # fmt: skip

    def loss(self, output: Tensor, batch: dict[str, Any]) -> Tensor:
        self.check_match(tuple(output.shape[1:]), tuple(batch["target"].shape[1:]))
        return joints_mse(output, batch["target"], batch["target_weight"])

    def predict(self, model: nn.Module, loader: DataLoader, device: torch.device,
                keep: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """(N, J, 2) 0-based image coordinates and (N, J) peak values for the loader's people
        (``keep``: the pictures draw from these, nothing more is needed)."""
        test = self.options.test
        preds, scores = [], []
        for batch in loader:
            p, s = predict_batch(model, batch["input"].to(device), batch["center"].numpy(),
                                 batch["scale"].numpy(), self.dataset_cls.flip_pairs, test.flip,
                                 test.shift_heatmap, test.decoding)  # fmt: skip
            preds.append(p)
            scores.append(s)
        return np.concatenate(preds), np.concatenate(scores)

    def score(self, dataset: TopDownDataset, parts: list[tuple[np.ndarray, np.ndarray]],
              out_dir: Path | None, save_vis: int = 0) -> Metrics:  # fmt: skip
        """The dataset's metric (PCKh, PCK, COCO AP) of the people's predictions, in order."""
        preds = np.concatenate([p for p, _ in parts])
        scores = np.concatenate([s for _, s in parts])
        metrics = dataset.evaluate(preds, scores, out_dir)
        if save_vis and out_dir is not None:
            metrics.files["visualisations"] = str(
                save_visualisations(dataset, preds, scores, out_dir / "vis", save_vis)
            )
        return metrics


def save_visualisations(dataset: TopDownDataset, preds: np.ndarray, scores: np.ndarray,
                        out_dir: Path, count: int, threshold: float = 0.2) -> Path:  # fmt: skip
    """PNGs of the first ``count`` people: ground truth (left) beside the prediction (right)."""
    names, skeleton = dataset.joint_names, dataset.skeleton
    for i, rec in enumerate(dataset.records[:count]):
        image, factor = resized(dataset.read_image(rec.image))  # draw at the panel's size
        truth = draw_pose(image, rec.joints * factor, rec.vis > 0, names, skeleton)
        guess = draw_pose(image, preds[i] * factor, scores[i] > threshold, names, skeleton)
        titles = ["ground truth", f"prediction (score > {threshold:g})"]
        write_png(out_dir / f"{i:04d}.png", panels([truth, guess], titles))
    return out_dir
