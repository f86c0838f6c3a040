"""dnas pose pckh: reproduces the published tables from prediction files, both GT formats."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner
from conftest import DATA, need

from dnas.cli import cli

REFERENCE = {  # ../shared/data/README.md (HRNet convention)
    "bearpaw-hg_s2_b1.mat": [95.84, 94.57, 88.12, 83.31, 86.26, 80.88, 77.47, 87.30],
    "bearpaw-hg_s8_b1.mat": [96.69, 95.19, 90.08, 85.32, 87.49, 84.26, 80.75, 89.09],
}
KEYS = ["Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean"]


@pytest.fixture(scope="module")
def gt_valid_mat(tmp_path_factory, mpii_valid_h5):
    """HRNet's gt_valid.mat for the same 2958 people, head boxes with 0.6 x diagonal ==
    valid.h5's normalize, so both ground-truth formats must give the same table."""
    with h5py.File(mpii_valid_h5) as f:
        part, normalize = f["part"][:], f["normalize"][:]
    side = normalize / 0.6 / np.sqrt(2)
    boxes = np.zeros((2, 2, len(part)))
    boxes[0] = 100.0
    boxes[1] = 100.0 + np.stack([side, side])
    path = tmp_path_factory.mktemp("gt") / "gt_valid.mat"
    scipy.io.savemat(path, {"pos_gt_src": part.transpose(1, 2, 0),
                            "jnt_missing": (part == 0).all(-1).T.astype(np.int64),
                            "headboxes_src": boxes})  # fmt: skip
    return path


def pckh_json(gt, preds):
    result = CliRunner().invoke(cli, ["pose", "pckh", "--gt", str(gt), "--preds", str(preds),
                                      "--format", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reproduces_readme_table_with_both_ground_truths(name, mpii_valid_h5, gt_valid_mat):
    preds = need(DATA / "mpii-val" / "preds" / name)
    for gt in (mpii_valid_h5, gt_valid_mat):
        table = pckh_json(gt, preds)
        assert set(table) == {*KEYS, "Mean@0.1"}
        for key, ref in zip(KEYS, REFERENCE[name], strict=True):
            assert table[key] == pytest.approx(ref, abs=0.01), (gt.name, key)


def test_transposed_h5_predictions_are_accepted(mpii_valid_h5, tmp_path):
    tompson = need(DATA / "mpii-val" / "preds" / "tompson.h5")
    with h5py.File(tompson) as f:
        assert f["preds"].shape == (2, 16, 2958)
        preds = f["preds"][:].transpose(2, 1, 0)
    same = tmp_path / "tompson.mat"
    scipy.io.savemat(same, {"preds": preds})
    assert pckh_json(mpii_valid_h5, tompson) == pckh_json(mpii_valid_h5, same)


def test_text_table_and_errors(mpii_valid_h5, tmp_path):
    preds = need(DATA / "mpii-val" / "preds" / "bearpaw-hg_s2_b1.mat")
    out = CliRunner().invoke(cli, ["pose", "pckh", "--gt", str(mpii_valid_h5), "--preds",
                                   str(preds)]).output  # fmt: skip
    assert "| PCKh@0.5 | 95.84 | 94.57 | 88.12 | 83.31 | 86.26 | 80.88 | 77.47 | 87.30 |" in out
    wrong = tmp_path / "wrong.mat"
    scipy.io.savemat(wrong, {"preds": np.zeros((10, 16, 2))})
    result = CliRunner().invoke(cli, ["pose", "pckh", "--gt", str(mpii_valid_h5), "--preds",
                                      str(wrong)])  # fmt: skip
    assert result.exit_code == 1
    assert "preds has shape (10, 16, 2), expected (2958, 16, 2)" in result.output
    nokey = tmp_path / "nokey.mat"
    scipy.io.savemat(nokey, {"other": np.zeros(3)})
    result = CliRunner().invoke(cli, ["pose", "pckh", "--gt", str(mpii_valid_h5), "--preds",
                                      str(nokey)])  # fmt: skip
    assert result.exit_code == 1 and "no 'preds' array" in result.output
    cases = {  # an HDF5 of the wrong structure, NaN predictions, a ground truth without heads
        "no 'preds' array": lambda f: f.create_group("preds"),
        "preds holds NaN or infinite values": lambda f: f.create_dataset(
            "preds", data=np.full((2958, 16, 2), np.nan)),
    }  # fmt: skip
    for message, make in cases.items():
        bad = tmp_path / "bad.h5"
        with h5py.File(bad, "w") as f:
            make(f)
        result = CliRunner().invoke(cli, ["pose", "pckh", "--gt", str(mpii_valid_h5), "--preds",
                                          str(bad)])  # fmt: skip
        assert result.exit_code == 1 and message in result.output, result.output
    gt = tmp_path / "gt.h5"
    with h5py.File(mpii_valid_h5, "r") as src, h5py.File(gt, "w") as f:
        f.create_dataset("part", data=src["part"][()])
        f.create_dataset("normalize", data=np.zeros(len(src["part"])))
    result = CliRunner().invoke(cli, ["pose", "pckh", "--gt", str(gt), "--preds", str(preds)])
    assert result.exit_code == 1 and "every head size must be positive" in result.output
