"""The pose task: MPII-format data, heatmap MSE loss, slim-deconv head, PCKh evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dnas.errors import DnasError
from dnas.registry import TASKS
from dnas.task import Metrics, Task
from tasks.pose import heatmap
from tasks.pose.loss import joints_mse
from tasks.pose.mpii import NUM_JOINTS, Augment, MPIIDataset
from tasks.pose.pckh import format_table, load_gt_valid_mat, pckh_table
from tasks.pose.transforms import affine_transform, apply_affine


@dataclass
class PoseOptions:
    root: str
    dataset: str = field(default="mpii", metadata={"choices": ["mpii"]})
    train_split: str = "train"
    val_split: str = "valid"
    sigma: float = field(default=2.0, metadata={"min": 0.1})
    heatmap_stride: int = field(default=4, metadata={"choices": [1, 2, 4, 8]})
    augment: Augment = field(default_factory=Augment)


@TASKS.register("pose")
class PoseTask(Task):
    """Top-down heatmap pose estimation (paper Sec. 3): 16 MPII joints, PCKh@0.5."""

    name = "pose"
    Options = PoseOptions

    @property
    def num_outputs(self) -> int:
        return NUM_JOINTS

    def default_head(self) -> dict[str, Any]:
        return {"type": "slim_deconv", "deconv_widths": [64, 32], "sic": True}

    def dataset(self, split: str, augment: bool, seed: int = 0) -> MPIIDataset:
        opts = self.options
        name = {"train": opts.train_split, "val": opts.val_split}.get(split, split)
        return MPIIDataset(
            Path(opts.root),
            name,
            self.input_hw,
            opts.sigma,
            opts.heatmap_stride,
            opts.augment if augment else None,
            seed,
        )

    def loss(self, output: Tensor, batch: dict[str, Any]) -> Tensor:
        target = batch["target"]
        if output.shape[1:] != target.shape[1:]:
            raise DnasError(
                f"head output {tuple(output.shape[1:])} does not match the heatmap targets "
                f"{tuple(target.shape[1:])} (joints x H/{self.options.heatmap_stride} x "
                f"W/{self.options.heatmap_stride}); check the space's strides and head widths"
            )
        return joints_mse(output, target, batch["target_weight"])

    @torch.no_grad()
    def predict(self, model: nn.Module, loader: DataLoader, device: torch.device) -> np.ndarray:
        """(N, 16, 2) 0-based image coordinates for every person of the loader, in order."""
        model.eval()
        preds = []
        for batch in loader:
            output = model(batch["input"].to(device)).float().cpu()
            coords, _ = heatmap.decode(output)
            hm_wh = (output.shape[3], output.shape[2])
            for k in range(len(coords)):
                inv = affine_transform(
                    batch["center"][k].numpy(), batch["scale"][k].numpy(), 0.0, hm_wh, inverse=True
                )
                preds.append(apply_affine(coords[k].numpy(), inv))
        return np.stack(preds)

    def evaluate(
        self, model: nn.Module, loader: DataLoader, device: torch.device, out_dir: Path | None
    ) -> Metrics:
        dataset = loader.dataset
        gt_path = dataset.root / "annot" / f"gt_{dataset.split}.mat"
        if not gt_path.exists():
            raise DnasError(
                f"{gt_path}: missing; PCKh needs the head boxes of split "
                f"{dataset.split!r} in HRNet's gt_valid.mat format"
            )
        gt, missing, head_sizes = load_gt_valid_mat(gt_path)
        preds = self.predict(model, loader, device) + 1.0  # 1-based, like the ground truth
        if len(preds) != len(gt):
            raise DnasError(
                f"{gt_path}: {len(gt)} people, but split {dataset.split!r} has {len(preds)}"
            )
        table = pckh_table(preds, gt, missing, head_sizes)
        files = {}
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            pred_path = out_dir / "pred.mat"
            scipy.io.savemat(str(pred_path), {"preds": preds})
            files["predictions"] = str(pred_path)
        return Metrics(table, "Mean", format_table(table), files)
