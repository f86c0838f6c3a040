"""Tests for the synthetic MPII-format dataset generator."""

import json

import cv2
import numpy as np
import pytest
from scipy.io import loadmat

from tasks.pose.synth import _IDX, JOINT_NAMES, _sample_person, write_synthetic_mpii

SIZE = 128


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    manifest = write_synthetic_mpii(out, n_train=6, n_val=4, seed=7, image_size=SIZE)
    return out, manifest


def _entries(out, split):
    return json.loads((out / "annot" / f"{split}.json").read_text())


def test_layout_and_manifest(dataset):
    out, manifest = dataset
    assert manifest == {
        "format": "mpii", "generator": "dnas-synth-mpii", "version": 1, "n_train": 6,
        "n_val": 4, "seed": 7, "image_size": SIZE,
    }  # fmt: skip
    assert json.loads((out / "synth.json").read_text()) == manifest
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == [f"train_{i:06d}.jpg" for i in range(6)] + [
        f"valid_{i:06d}.jpg" for i in range(4)
    ]
    img = cv2.imread(str(out / "images" / "valid_000003.jpg"))
    assert img.shape == (SIZE, SIZE, 3)
    assert img.std() > 10  # a textured picture, not a flat fill


@pytest.mark.parametrize("split, n", [("train", 6), ("valid", 4)])
def test_json_entries_follow_hrnet_mpii(dataset, split, n):
    out, _ = dataset
    entries = _entries(out, split)
    assert len(entries) == n
    for i, e in enumerate(entries):
        assert set(e) == {"image", "center", "scale", "joints", "joints_vis"}
        assert e["image"] == f"{split}_{i:06d}.jpg"
        joints, vis = np.array(e["joints"]), np.array(e["joints_vis"])
        assert joints.shape == (len(JOINT_NAMES), 2) and vis.shape == (len(JOINT_NAMES),)
        assert set(vis.tolist()) <= {0, 1}
        assert vis.sum() > 8
        # 1-based MATLAB pixels for annotated joints, (0, 0) for missing ones.
        assert ((joints[vis == 1] >= 1) & (joints[vis == 1] <= SIZE)).all()
        assert (joints[vis == 0] == 0).all()
        # The torso is always kept in the image; the centre sits among the joints.
        assert vis[[_IDX["pelvis"], _IDX["thorax"]]].all()
        lo, hi = joints[vis == 1].min(0), joints[vis == 1].max(0)
        assert ((np.array(e["center"]) >= lo - 1) & (np.array(e["center"]) <= hi + 1)).all()
        # 200 * scale covers the person: at least the thorax-to-pelvis distance, at most ~image.
        torso = np.linalg.norm(joints[_IDX["thorax"]] - joints[_IDX["pelvis"]])
        assert 2.5 * torso < 200 * e["scale"] < 1.3 * SIZE


def test_gt_valid_mat_matches_json(dataset):
    out, _ = dataset
    entries = _entries(out, "valid")
    gt = loadmat(out / "annot" / "gt_valid.mat")
    names = gt["dataset_joints"]
    assert names.shape == (1, 16)
    # HRNet finds joints with np.where(dataset_joints == name)[1][0].
    assert np.where(names == "head")[1][0] == _IDX["head_top"]
    assert np.where(names == "lsho")[1][0] == _IDX["l_shoulder"]
    assert gt["jnt_missing"].shape == (16, 4)
    assert gt["pos_gt_src"].shape == (16, 2, 4)
    assert gt["headboxes_src"].shape == (2, 2, 4)
    joints = np.array([e["joints"] for e in entries])  # (N, 16, 2)
    vis = np.array([e["joints_vis"] for e in entries])
    np.testing.assert_array_equal(gt["pos_gt_src"], joints.transpose(1, 2, 0))
    np.testing.assert_array_equal(gt["jnt_missing"], 1 - vis.T)
    boxes = gt["headboxes_src"]
    assert (boxes[1] > boxes[0]).all()
    for k, e in enumerate(entries):
        # The head box wraps the annotated head (head top to upper neck).
        for j in (_IDX["head_top"], _IDX["upper_neck"]):
            if e["joints_vis"][j]:
                assert (boxes[0, :, k] - 0.5 <= e["joints"][j]).all()
                assert (e["joints"][j] <= boxes[1, :, k] + 0.5).all()
    head_size = 0.6 * np.linalg.norm(boxes[1] - boxes[0], axis=0)
    assert (head_size > 2).all() and (head_size < SIZE / 3).all()


def test_deterministic_and_seed_dependent(tmp_path):
    runs = [(tmp_path / "a", 7), (tmp_path / "b", 7), (tmp_path / "c", 8)]
    for out, seed in runs:
        write_synthetic_mpii(out, n_train=3, n_val=2, seed=seed, image_size=SIZE)
    a, b, c = (out for out, _ in runs)
    for rel in ("annot/train.json", "annot/valid.json", "annot/gt_valid.mat", "synth.json"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    for img in (a / "images").iterdir():
        assert img.read_bytes() == (b / "images" / img.name).read_bytes()
    assert (a / "annot/train.json").read_bytes() != (c / "annot/train.json").read_bytes()
    assert (a / "images/train_000000.jpg").read_bytes() != (
        c / "images/train_000000.jpg"
    ).read_bytes()


def test_split_sizes_do_not_change_content(tmp_path):
    write_synthetic_mpii(tmp_path / "small", n_train=2, n_val=1, seed=3, image_size=SIZE)
    write_synthetic_mpii(tmp_path / "large", n_train=3, n_val=2, seed=3, image_size=SIZE)
    small, large = _entries(tmp_path / "small", "train"), _entries(tmp_path / "large", "train")
    assert large[:2] == small
    assert _entries(tmp_path / "large", "valid")[:1] == _entries(tmp_path / "small", "valid")
    # Train and valid images are drawn from different streams.
    assert _entries(tmp_path / "large", "valid")[0]["joints"] != large[0]["joints"]


def test_facing_direction_decides_left_right():
    people = [_sample_person(np.random.default_rng([11, 5, i]), 256) for i in range(40)]
    facing = [p.facing_camera for p in people]
    assert 5 <= sum(facing) <= 35  # both directions are common
    for p in people:
        x = p.pts[:, 0]  # camera frame, before the in-plane rotation
        pairs = [("r_shoulder", "l_shoulder"), ("r_hip", "l_hip")]
        for right, left in pairs:
            # Facing the camera, the person's right side shows on the image left.
            assert (x[_IDX[right]] < x[_IDX[left]]) == p.facing_camera
        # The face is only visible from the front half of the head.
        if p.face_z > 0.3:
            assert np.cos(p.yaw) > -0.5
        # The annotated figure is upright-ish before the in-plane rotation.
        assert p.pts[_IDX["head_top"], 1] < p.pts[_IDX["pelvis"], 1]
