"""The synthetic set is not solvable without looking: untrained nets and the mean pose fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dnas.engine.sampling import make_loader
from dnas.nn.network import Network
from dnas.space.graph import load_space
from tasks.pose.mpii import MPIIDataset
from tasks.pose.pckh import load_gt_valid_mat, pckh_table
from tasks.pose.synth import write_synthetic_mpii
from tasks.pose.task import PoseOptions, PoseTask


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_mpii(root, n_train=64, n_val=48, seed=7, image_size=128)
    return root


def test_untrained_net_scores_below_10(synth):
    torch.manual_seed(0)
    task = PoseTask(PoseOptions(root=str(synth)), (128, 128), "test")
    net = Network(load_space("efficientpose-a"), 16)
    loader = make_loader(task.dataset("val", augment=False), 16, 0)
    metrics = task.evaluate(net, loader, torch.device("cpu"), None)
    assert metrics.values["Mean"] < 10.0


def test_mean_pose_baseline_scores_below_10(synth):
    """Predict the average training pose, placed by each person's box: no image used."""
    train = MPIIDataset(synth, "train", (128, 128))
    rel = [(r.joints - r.center) / r.scale for r in train.records]
    vis = np.stack([r.vis for r in train.records])[..., None]
    mean_rel = (np.stack(rel) * vis).sum(0) / np.maximum(vis.sum(0), 1)
    val = MPIIDataset(synth, "valid", (128, 128))
    preds = np.stack([r.center + mean_rel * r.scale for r in val.records]) + 1.0
    gt, missing, heads = load_gt_valid_mat(synth / "annot" / "gt_valid.mat")
    table = pckh_table(preds, gt, missing, heads)
    assert table["Mean"] < 10.0
    assert table["Head"] > table["Wrist"]  # the head sits where boxes say; wrists do not
