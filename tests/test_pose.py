"""Pose plugin: PCKh (HRNet convention) on real MPII data, heatmaps, crops and decoding."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from conftest import DATA, need

from tasks.pose import heatmap
from tasks.pose.mpii import MPIIDataset
from tasks.pose.pckh import load_gt_valid_mat, pckh_table
from tasks.pose.transforms import affine_transform, apply_affine


@pytest.fixture(scope="module")
def valid5(mpii_valid_h5):
    with h5py.File(mpii_valid_h5) as f:
        part, normalize = f["part"][:5].astype(np.float64), f["normalize"][:5]
    return part, (part == 0).all(-1), normalize


def test_pckh_ground_truth_as_prediction_is_100(valid5):
    gt, missing, heads = valid5
    table = pckh_table(gt.copy(), gt, missing, heads)
    assert all(v == 100.0 for v in table.values())


def test_pckh_with_known_offsets(valid5):
    gt, missing, heads = valid5
    shift = np.zeros_like(gt)
    shift[:, :, 0] = 0.3 * heads[:, None]  # inside 0.5 head, outside 0.1 head
    table = pckh_table(gt + shift, gt, missing, heads)
    assert table["Mean"] == 100.0 and table["Mean@0.1"] == 0.0
    shift = np.zeros_like(gt)
    shift[:, [10, 15], 1] = 0.6 * heads[:, None]  # both wrists wrong, the rest exact
    table = pckh_table(gt + shift, gt, missing, heads)
    assert table["Wrist"] == 0.0 and table["Elbow"] == 100.0 and table["Head"] == 100.0
    visible = ~missing
    scored = visible[:, [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15]].sum()
    wrists = visible[:, [10, 15]].sum()
    assert table["Mean"] == pytest.approx(100.0 * (scored - wrists) / scored)
    only_right = np.zeros_like(gt)
    only_right[:, 12, 0] = 10 * heads  # right shoulder far off: Shoulder = mean(0, 100)
    assert pckh_table(gt + only_right, gt, missing, heads)["Shoulder"] == 50.0


REFERENCE = {  # ../shared/data/README.md, HRNet convention
    "bearpaw-hg_s2_b1": [95.84, 94.57, 88.12, 83.31, 86.26, 80.88, 77.47, 87.30],
    "bearpaw-hg_s8_b1": [96.69, 95.19, 90.08, 85.32, 87.49, 84.26, 80.75, 89.09],
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_pckh_reproduces_published_tables(name, mpii_valid_h5):
    preds = scipy.io.loadmat(need(DATA / "mpii-val" / "preds" / f"{name}.mat"))["preds"]
    with h5py.File(mpii_valid_h5) as f:
        gt, heads = f["part"][:], f["normalize"][:]
    table = pckh_table(preds, gt, (gt == 0).all(-1), heads)
    keys = ["Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean"]
    for key, ref in zip(keys, REFERENCE[name], strict=True):
        assert table[key] == pytest.approx(ref, abs=0.01), key


def test_heatmap_round_trip_is_within_a_quarter_pixel():
    joints = np.array([[10.3, 20.9], [40.0, 8.0], [60.0, 61.0], [-30.0, 5.0]], np.float32)
    vis = np.array([1, 1, 1, 1], np.float32)
    target, weight = heatmap.encode(joints, vis, (64, 64), (16, 16), sigma=1.0)
    assert weight[:, 0].tolist() == [1, 1, 1, 0]  # the last one is off the map
    assert target[0].max() == 1.0 and target[3].max() == 0.0
    coords, maxvals = heatmap.decode(torch.from_numpy(target)[None])
    # HRNet puts the peak at round(joint / stride); decoding returns it (+- 0.25 shift).
    expected = np.floor(joints[:3] / 4 + 0.5)
    assert np.abs(coords[0, :3].numpy() - expected).max() <= 0.25
    assert float(maxvals[0, 3]) == 0.0


def test_heatmap_targets_are_hrnets_gaussians_joint_by_joint():
    """HRNet's JointsDataset.generate_target, written out per joint, on random joints: some off
    the map, some unlabelled with NaN coordinates, a non-square map."""
    rng = np.random.default_rng(0)
    joints = rng.uniform(-30, 110, (40, 2)).astype(np.float32)
    vis = (rng.random(40) > 0.3).astype(np.float32)
    joints[vis == 0] = np.nan
    target, weight = heatmap.encode(joints, vis, (96, 80), (24, 20), sigma=2.0)
    for j, (x, y) in enumerate(joints):
        mu_x, mu_y = int(x / 4 + 0.5) if vis[j] else 0, int(y / 4 + 0.5) if vis[j] else 0
        inside = vis[j] > 0 and -6 <= mu_x < 24 + 6 and -6 <= mu_y < 20 + 6
        assert weight[j, 0] == float(inside), j
        expected = np.zeros((20, 24), np.float32)
        if inside:
            for r in range(max(0, mu_y - 6), min(20, mu_y + 7)):
                for c in range(max(0, mu_x - 6), min(24, mu_x + 7)):
                    expected[r, c] = np.exp(-((c - mu_x) ** 2 + (r - mu_y) ** 2) / 8.0)
        np.testing.assert_allclose(target[j], expected, rtol=1e-6, atol=0, err_msg=str(j))


def test_quarter_offset_moves_toward_the_higher_neighbour():
    hm = torch.zeros(1, 1, 8, 8)
    hm[0, 0, 4, 4], hm[0, 0, 4, 5], hm[0, 0, 3, 4] = 1.0, 0.6, 0.2
    coords, _ = heatmap.decode(hm)
    assert coords[0, 0].tolist() == [4.25, 3.75]


def test_affine_inverse_maps_back():
    center, scale = np.array([300.0, 200.0]), np.array([1.5, 1.5])
    fwd = affine_transform(center, scale, 25.0, (64, 48))
    inv = affine_transform(center, scale, 25.0, (64, 48), inverse=True)
    pts = np.array([[300.0, 200.0], [250.0, 260.0]])
    np.testing.assert_allclose(apply_affine(apply_affine(pts, fwd), inv), pts, atol=1e-3)
    np.testing.assert_allclose(apply_affine(pts[:1], fwd), [[32.0, 24.0]], atol=1e-4)


def test_real_samples_through_dataset_targets_and_back(real_mpii_root):
    """Targets decoded and mapped back to the image land within PCKh@0.5 of the ground truth."""
    ds = MPIIDataset(real_mpii_root, "valid", (256, 256))
    gt, missing, heads = load_gt_valid_mat(real_mpii_root / "annot" / "gt_valid.mat")
    preds = []
    for i in range(len(ds)):
        item = ds[i]
        assert item["input"].shape == (3, 256, 256) and item["target"].shape == (16, 64, 64)
        coords, _ = heatmap.decode(item["target"][None])
        inv = affine_transform(item["center"].numpy(), item["scale"].numpy(), 0.0, (64, 64),
                               inverse=True)  # fmt: skip
        preds.append(apply_affine(coords[0].numpy(), inv))
    table = pckh_table(np.stack(preds) + 1.0, gt, missing, heads)
    assert table["Mean"] == 100.0
    assert table["Mean@0.1"] > 60.0  # only the 1/4-resolution quantisation is left


def test_flip_augmentation_swaps_left_and_right(real_mpii_root):
    from tasks.pose.topdown import Augment

    plain = MPIIDataset(real_mpii_root, "valid", (128, 128))
    flipped = MPIIDataset(real_mpii_root, "valid", (128, 128),
                          augment=Augment(scale_factor=0.0, rotation=0.0, flip=True))  # fmt: skip
    a = plain[0]
    for seed in range(20):
        flipped.rng = np.random.default_rng(seed)
        b = flipped[0]
        if not torch.equal(a["input"], b["input"]):
            break
    assert not torch.equal(a["input"], b["input"])
    # Mirroring maps crop x to 128 - x, i.e. heatmap x to 32 - x, and the person's right ankle
    # (0) of the flipped sample is the left ankle (5) of the plain one.
    pa, _ = heatmap.decode(a["target"][None])
    pb, _ = heatmap.decode(b["target"][None])
    for right, left in [(0, 5), (10, 15), (12, 13)]:
        assert abs(float(pb[0, right, 0]) - (32 - float(pa[0, left, 0]))) <= 1.0
        assert abs(float(pb[0, right, 1]) - float(pa[0, left, 1])) <= 0.5


def test_bad_annotation_is_one_clear_error(tmp_path):
    from dnas.errors import DnasError

    (tmp_path / "annot").mkdir()
    (tmp_path / "annot" / "train.json").write_text('[{"image": "a.jpg", "joints": [[1, 2]]}]')
    with pytest.raises(DnasError, match=r"train.json: entry 0: not an MPII person"):
        MPIIDataset(tmp_path, "train", (64, 64))
    with pytest.raises(DnasError, match=r"valid.json: cannot read MPII annotations"):
        MPIIDataset(tmp_path, "valid", (64, 64))
    person = {"image": "a.jpg", "joints": [[1, 2]] * 16, "joints_vis": [1] * 16,
              "center": [10, 10], "scale": "4"}  # fmt: skip
    (tmp_path / "annot" / "train.json").write_text(json.dumps([person]))
    scale = r"train.json: entry 0: scale must be a positive number, got '4'$"  # not a string
    with pytest.raises(DnasError, match=scale):
        MPIIDataset(tmp_path, "train", (64, 64))
