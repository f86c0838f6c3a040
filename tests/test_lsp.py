"""LSP / LSP-extended: loader on the real LSPET joints and images, targets, PCK@0.2 of the torso."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import scipy.io
from conftest import DATA, need

from dnas.errors import ConfigError, DnasError
from dnas.schema import from_dict
from tasks.pose import heatmap
from tasks.pose.lsp import LSP_JOINTS, LSPDataset, LSPOptions, pck, reference_sizes, scored_note
from tasks.pose.topdown import DATASETS
from tasks.pose.transforms import affine_transform, apply_affine

L_SHOULDER, R_HIP = LSP_JOINTS.index("l_shoulder"), LSP_JOINTS.index("r_hip")
R_SHOULDER, L_HIP = LSP_JOINTS.index("r_shoulder"), LSP_JOINTS.index("l_hip")
WRISTS = [LSP_JOINTS.index("r_wrist"), LSP_JOINTS.index("l_wrist")]


@pytest.fixture(scope="module")
def lspet():
    return need(DATA / "lspet")


@pytest.fixture(scope="module")
def val(lspet) -> LSPDataset:
    return LSPDataset(lspet, "val", (128, 128))


@pytest.fixture(scope="module")
def val_gt(val):
    """Ground truth of the val range, its annotated mask and each person's reference distance:
    left shoulder-right hip, else right shoulder-left hip, else the median of those."""
    gt = np.stack([r.joints for r in val.records]).astype(np.float64)
    annotated = np.stack([r.vis for r in val.records]) > 0

    def diagonal(a: int, b: int) -> np.ndarray:
        size = np.linalg.norm(gt[:, a] - gt[:, b], axis=-1)
        return np.where(annotated[:, a] & annotated[:, b], size, 0.0)

    torso = diagonal(L_SHOULDER, R_HIP)
    torso = np.where(torso > 0, torso, diagonal(R_SHOULDER, L_HIP))
    torso[torso == 0] = np.median(torso[torso > 0])
    return gt, annotated, torso


def test_default_ranges_give_1800_train_and_200_val_people(lspet, val):
    assert DATASETS.get("lsp") is LSPDataset and LSPDataset.default_splits == ("train", "val")
    assert len(LSPDataset(lspet, "train", (128, 128))) == 1800 and len(val) == 200
    raw = scipy.io.loadmat(lspet / "joints.mat")["joints"]
    for k, rec in enumerate(val.records):
        i = 1800 + k
        assert rec.meta["index"] == i and rec.image.name == f"im{i + 1:05d}.jpg"
        assert rec.joints.shape == (14, 2) and rec.vis.shape == (14,)
        assert rec.center.shape == (2,) and rec.scale.shape == (2,)
        annotated = rec.vis > 0
        assert 5 <= annotated.sum() <= 14  # every LSPET person has >= 5 joints in frame
        np.testing.assert_allclose(rec.joints, raw[:, :2, i] - 1.0, atol=1e-4)
        np.testing.assert_array_equal(rec.meta["visible"], raw[:, 2, i])
        h, w = cv2.imread(str(rec.image), cv2.IMREAD_GRAYSCALE).shape
        x, y = rec.joints[annotated].T
        assert (x > -1).all() and (x < w).all() and (y > -1).all() and (y < h).all()
        assert 0 <= rec.center[0] < w and 0 <= rec.center[1] < h
        # Square input: a square box at least the joints' extent x 1.25, and >= 75 px x 1.25.
        extent = np.ptp(rec.joints[annotated], axis=0).max()
        assert rec.scale[0] == rec.scale[1]
        assert rec.scale[0] * 200 == pytest.approx(max(extent, 75.0) * 1.25, rel=1e-5)


def test_sample_targets_decode_back_within_pck(val, val_gt):
    gt, annotated, torso = val_gt
    people = np.arange(8)
    preds = gt.copy()
    for i in people:
        item = val[int(i)]
        assert item["input"].shape == (3, 128, 128) and item["target"].shape == (14, 32, 32)
        np.testing.assert_array_equal(item["target_weight"].numpy().ravel(), annotated[i])
        coords, _ = heatmap.decode(item["target"][None])
        inv = affine_transform(item["center"].numpy(), item["scale"].numpy(), 0.0, (32, 32),
                               inverse=True)  # fmt: skip
        preds[i] = apply_affine(coords[0].numpy(), inv)
    err = np.linalg.norm(preds[people] - gt[people], axis=-1)[annotated[people]]
    assert (err / np.repeat(torso[people], annotated[people].sum(1)) <= 0.2).all()
    assert err.max() < 4.0  # only the 1/4-resolution quantisation is left
    assert pck(preds[people], gt[people], annotated[people])["Mean"] == 100.0


def test_pck_ground_truth_and_known_offsets(val_gt):
    gt, annotated, torso = val_gt
    size, rule = reference_sizes(gt, annotated)
    np.testing.assert_allclose(size, torso, rtol=1e-12)
    # every person is scored: 145 by the published diameter, 25 by the other diagonal, 30 by
    # the split's median (they lack a shoulder and a hip of each diagonal)
    assert np.bincount(rule).tolist() == [145, 25, 30]
    assert np.median(torso[rule < 2]) == pytest.approx(torso[rule == 2][0])
    assert all(v == 100.0 for v in pck(gt.copy(), gt, annotated).values())
    shift = np.zeros_like(gt)
    shift[..., 0] = 0.1 * torso[:, None]
    assert all(v == 100.0 for v in pck(gt + shift, gt, annotated).values())
    shift[..., 0] = 0.3 * torso[:, None]
    assert all(v == 0.0 for v in pck(gt + shift, gt, annotated).values())
    shift = np.zeros_like(gt)
    shift[:, WRISTS, 1] = 0.3 * torso[:, None]
    table = pck(gt + shift, gt, annotated)
    assert table["Wrist"] == 0.0 and table["Elbow"] == 100.0 and table["Head"] == 100.0
    for key, people in (("Mean", rule >= 0), ("Mean_strict", rule == 0)):
        counted = annotated[people]
        expected = 100.0 * (counted.sum() - counted[:, WRISTS].sum()) / counted.sum()
        assert table[key] == pytest.approx(expected, abs=1e-12) and 80.0 < expected < 90.0


def test_pck_by_hand():
    """Four people: the published diameter (10 px: threshold 2 px), the other diagonal (20 px),
    a degenerate zero-length pair (the other diagonal again), and neither (the median of 10, 20
    and 20)."""
    gt = np.tile(np.arange(14.0)[None, :, None] * 3.0, (4, 1, 2))
    gt[:, L_SHOULDER], gt[:, R_HIP] = (0.0, 0.0), (6.0, 8.0)  # 10 px
    gt[:, R_SHOULDER], gt[:, L_HIP] = (0.0, 0.0), (12.0, 16.0)  # 20 px
    gt[3, R_HIP] = gt[3, L_SHOULDER]  # zero length: not a diameter
    annotated = np.ones((4, 14), bool)
    annotated[0, LSP_JOINTS.index("neck")] = False
    annotated[1, L_SHOULDER] = False
    annotated[2, [L_SHOULDER, R_SHOULDER]] = False
    size, rule = reference_sizes(gt, annotated)
    np.testing.assert_allclose(size, [10.0, 20.0, 20.0, 20.0])
    assert rule.tolist() == [0, 1, 2, 1]
    preds = gt.copy()
    preds[0, WRISTS[0]] += (0.0, 3.0)  # 0.3 x 10: wrong
    preds[0, WRISTS[1]] += (0.0, 1.5)  # 0.15 x 10: right
    preds[0, LSP_JOINTS.index("neck")] += 50.0  # not annotated: ignored
    preds[1, WRISTS[0]] += (0.0, 3.5)  # 0.175 x 20: right
    preds[2, WRISTS[0]] += (0.0, 4.5)  # 0.225 x 20: wrong
    preds[3, WRISTS[1]] += (0.0, 4.5)  # 0.225 x 20: wrong
    table = pck(preds, gt, annotated)
    assert table["Wrist"] == 62.5 and table["Head"] == 100.0 and table["Ankle"] == 100.0
    assert table["Mean"] == pytest.approx(100.0 * (annotated.sum() - 3) / annotated.sum())
    assert table["Mean_strict"] == pytest.approx(100.0 * 12 / 13)  # person 0 alone
    note = scored_note(gt, annotated)
    assert note.startswith(
        "4 of 4 people scored (1 by the left shoulder-right hip, 2 by the "
        "right shoulder-left hip, 1 by the median of the split = 20.0 px)"
    )


def test_a_split_without_any_torso_scores_no_one():
    gt = np.zeros((2, 14, 2))
    annotated = np.ones((2, 14), bool)
    annotated[:, [L_SHOULDER, R_SHOULDER]] = False
    size, rule = reference_sizes(gt, annotated)
    assert size.tolist() == [0.0, 0.0] and rule.tolist() == [2, 2]
    assert pck(gt, gt, annotated)["Mean"] == 0.0
    assert scored_note(gt, annotated).startswith("0 of 2 people scored")


def test_evaluate_table_and_predictions_file(val, val_gt, tmp_path):
    gt, _, _ = val_gt
    metrics = val.evaluate(gt.copy(), np.ones(gt.shape[:2]), tmp_path)
    assert metrics.primary == "Mean" and metrics.score == 100.0
    assert "| | Head |" in metrics.table and "\n| PCK@0.2 | " in metrics.table
    assert "200 of 200 people scored (145 by the left shoulder-right hip, 25 by" in metrics.table
    assert "); Mean_strict 100.00: only those with the left shoulder-right hip" in metrics.table
    assert metrics.values["Mean_strict"] == 100.0
    saved = scipy.io.loadmat(metrics.files["predictions"])["preds"]
    assert saved.shape == (200, 14, 2)
    np.testing.assert_allclose(saved, gt + 1.0)
    with pytest.raises(DnasError, match=r"199 predictions for the 200 people"):
        val.evaluate(gt[:-1], np.ones((199, 14)), None)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        (LSPOptions(val_range=[1800, 2001]), "val_range"),
        (LSPOptions(val_range=[1900, 1900]), "val_range"),
        (LSPOptions(train_range=[0]), "train_range"),
    ],
)
def test_bad_ranges_are_one_line_errors(lspet, options, key):
    with pytest.raises(DnasError, match=rf"task.dataset_options.{key}: .* stop <= 2000 ") as exc:
        LSPDataset(lspet, "train", (64, 64), options=options)
    assert "\n" not in str(exc.value)


def test_bad_split_option_and_file_errors(lspet, tmp_path):
    with pytest.raises(DnasError, match=r"lsp has splits 'train' and 'val'.*got 'valid'"):
        LSPDataset(lspet, "valid", (64, 64))
    with pytest.raises(ConfigError, match=r"task.dataset_options.val_range: expected a value >= 0"):
        from_dict(LSPOptions, {"val_range": [-1, 5]}, "exp.yaml", "task.dataset_options")
    with pytest.raises(DnasError, match=r"joints.mat: missing") as exc:
        LSPDataset(tmp_path, "val", (64, 64))
    assert "\n" not in str(exc.value)
    scipy.io.savemat(tmp_path / "joints.mat", {"joints": np.zeros((16, 3, 4))})
    with pytest.raises(DnasError, match=r"joints.mat: expected .* got \(16, 3, 4\)"):
        LSPDataset(tmp_path, "val", (64, 64))
    (tmp_path / "joints.mat").write_text("not matlab")
    with pytest.raises(DnasError, match=r"joints.mat: not a MATLAB file with a numeric"):
        LSPDataset(tmp_path, "val", (64, 64))
    for shape, flag_at in (((14, 3, 4), (5, 2, 1)), ((3, 14, 4), (2, 5, 1))):
        joints = np.ones(shape)
        joints[flag_at] = 3.0  # neither visible nor not
        scipy.io.savemat(tmp_path / "joints.mat", {"joints": joints})
        with pytest.raises(DnasError, match=r"joints.mat: 'joints' visibility flags must be 0 "
                                            r"or 1, found 3$"):  # fmt: skip
            LSPDataset(tmp_path, "val", (64, 64))


def test_original_lsp_layout_inverts_the_flag(tmp_path):
    """Original LSP: (3, 14, N), im%04d.jpg, third row 1 = occluded; occluded joints keep weight."""
    rng = np.random.default_rng(0)
    joints = np.zeros((3, 14, 4))
    joints[:2] = rng.uniform(10, 150, size=(2, 14, 4))
    joints[2, :7] = 1.0  # the first 7 joints occluded
    joints[:2, 0, 3] = (-5.0, 20.0)  # person 3's right ankle out of frame
    scipy.io.savemat(tmp_path / "joints.mat", {"joints": joints})
    ds = LSPDataset(tmp_path, "val", (64, 64), options=LSPOptions([0, 2], [2, 4]))
    assert [r.image.name for r in ds.records] == ["im0003.jpg", "im0004.jpg"]
    np.testing.assert_array_equal(ds.records[0].meta["visible"], [0] * 7 + [1] * 7)
    np.testing.assert_array_equal(ds.records[0].vis, np.ones(14))
    assert ds.records[1].vis[0] == 0 and ds.records[1].vis[1:].all()
    np.testing.assert_allclose(ds.records[0].joints, joints[:2, :, 2].T - 1.0)
