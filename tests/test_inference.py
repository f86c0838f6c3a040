"""Test-time protocol: flip test, DARK decoding, dnas predict and eval --save-vis."""

from __future__ import annotations

import json

import cv2
import numpy as np
import torch
from click.testing import CliRunner
from conftest import TINY_SPACE, write_experiment

from dnas.checkpoint import save_atomic
from dnas.cli import cli
from dnas.nn.network import Network
from dnas.space.graph import load_space
from dnas.vis.images import PANEL_HEIGHT, TITLE_HEIGHT
from tasks.pose import heatmap
from tasks.pose.inference import infer_heatmaps

TINY_ARCH = TINY_SPACE.with_name("tiny_arch.yaml")


def gaussian_map(cx: float, cy: float, size: int = 32, sigma: float = 2.0) -> np.ndarray:
    xs = np.arange(size)[None, :]
    ys = np.arange(size)[:, None]
    return np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2)).astype(np.float32)


def test_dark_recovers_sub_pixel_peaks_better_than_argmax():
    centres = [(10.3, 12.7), (20.6, 8.4), (15.5, 15.2)]
    maps = np.stack([gaussian_map(x, y) for x, y in centres])[None]
    dark, _ = heatmap.decode_dark(maps)
    plain, _ = heatmap.decode(torch.from_numpy(maps))
    truth = np.array(centres)
    dark_err = np.abs(dark[0] - truth).max()
    plain_err = np.abs(plain[0].numpy() - truth).max()
    assert dark_err < 0.05 < plain_err


class Lopsided(torch.nn.Module):
    """Heatmaps that depend only on the image: joint j lights the column of the brightest pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        out = torch.zeros(n, 4, h, w)
        col = x[:, 0].sum(1).argmax(-1)
        for i in range(n):
            out[i, 0, :, col[i]] = 1.0  # joint 0 ("right") sees the bright column
        return out


def test_flip_test_swaps_pairs_mirrors_and_shifts():
    images = torch.zeros(1, 3, 8, 8)
    images[0, :, :, 2] = 1.0
    plain = infer_heatmaps(Lopsided(), images, [(0, 1)], flip=False)
    assert plain[0, 0, 0].nonzero().flatten().tolist() == [2]
    both = infer_heatmaps(Lopsided(), images, [(0, 1)], flip=True, shift=False)
    # the mirrored pass puts the bright column at 5 for joint 0; flipped back: column 2 of
    # joint 1 (the pair partner); averaged with the plain pass
    assert both[0, 0, 0, 2] == 0.5 and both[0, 1, 0, 2] == 0.5
    shifted = infer_heatmaps(Lopsided(), images, [(0, 1)], flip=True, shift=True)
    assert shifted[0, 1, 0, 3] == 0.5 and shifted[0, 1, 0, 2] == 0.0


def test_predict_writes_png_and_prints_keypoints(tmp_path, mpii_samples):
    net = Network(load_space(TINY_ARCH), 16)
    save_atomic(net.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "pose.png"
    result = CliRunner().invoke(cli, [
        "predict", str(mpii_samples / "005808361.jpg"), "--arch", str(TINY_ARCH), "--weights",
        str(tmp_path / "w.pt"), "--box", "800,60,400,700", "--input-size", "64x64", "-o", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [k["name"] for k in report["keypoints"]][:2] == ["r_ankle", "r_knee"]
    assert len(report["keypoints"]) == 16 and report["box"] == [800, 60, 400, 700]
    assert out.exists() and out.read_bytes()[:4] == b"\x89PNG"
    photo = cv2.imread(str(mpii_samples / "005808361.jpg"))
    drawn = cv2.imread(str(out))  # the photo at its size, then the colours' legend below it
    assert drawn.shape[1] == photo.shape[1] and drawn.shape[0] > photo.shape[0]
    edge = drawn[60 + 350, 800 - 2 : 800 + 3].astype(int)  # the box's left side, half way down
    assert (np.abs(edge - 160) < 30).all(axis=1).any()  # drawn in grey
    assert (drawn[photo.shape[0] :] == 255).mean() > 0.5  # a white strip with the legend
    again = CliRunner().invoke(cli, ["predict", str(mpii_samples / "005808361.jpg"), "--arch",
                                     str(TINY_ARCH), "--weights", str(tmp_path / "w.pt"), "-o",
                                     str(out), "--box", "1,2,0,4"])  # fmt: skip
    assert again.exit_code == 1 and "width and height must be positive" in again.output
    again = CliRunner().invoke(cli, ["predict", str(mpii_samples / "005808361.jpg"), "--arch",
                                     str(TINY_ARCH), "--weights", str(tmp_path / "w.pt"), "-o",
                                     str(out)])  # fmt: skip
    assert again.exit_code == 1 and "already exists" in again.output


def test_eval_save_vis(tmp_path, real_mpii_root):
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root)
    net = Network(load_space(TINY_ARCH), 16)
    save_atomic(net.state_dict(), tmp_path / "w.pt")
    result = CliRunner().invoke(cli, ["eval", str(exp), "--arch", str(TINY_ARCH), "--weights",
                                      str(tmp_path / "w.pt"), "--out", str(tmp_path / "e"),
                                      "--save-vis", "3"])  # fmt: skip
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "e" / "vis").glob("*.png"))
    assert [p.name for p in pngs] == ["0000.png", "0001.png", "0002.png"]
    picture = cv2.imread(str(pngs[0]))
    assert picture.shape[0] == PANEL_HEIGHT + TITLE_HEIGHT  # the photo shrunk under the titles
    assert picture[:TITLE_HEIGHT].min() < 80  # "ground truth" / "prediction" written


def test_eval_prediction_file_scores_the_same_with_dnas_pose_pckh(tmp_path, real_mpii_root):
    """dnas eval on MPII writes pred.mat in the format `dnas pose pckh` reads, same numbers."""
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root)
    net = Network(load_space(TINY_ARCH), 16)
    save_atomic(net.state_dict(), tmp_path / "w.pt")
    CliRunner().invoke(cli, ["eval", str(exp), "--arch", str(TINY_ARCH), "--weights",
                             str(tmp_path / "w.pt"), "--out", str(tmp_path / "e")])  # fmt: skip
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    scored = CliRunner().invoke(
        cli,
        [
            "pose",
            "pckh",
            "--gt",
            str(real_mpii_root / "annot" / "gt_valid.mat"),
            "--preds",
            str(tmp_path / "e" / "pred.mat"),
            "--format",
            "json",
        ],
    )
    table = json.loads(scored.output)
    for key in ("Head", "Wrist", "Mean", "Mean@0.1"):
        assert table[key] == round(results[key], 4)


def test_training_order_is_seeded_and_independent_of_workers(real_mpii_root):
    """The same seed gives the same augmented batches with 0 or 2 workers; another epoch
    gives another order and other augmentations."""
    from dnas.engine.sampling import epoch_batches, train_loader
    from tasks.pose.task import PoseOptions, PoseTask

    task = PoseTask(PoseOptions(root=str(real_mpii_root)), (64, 64), "test")
    dataset = task.dataset("train", augment=True)
    runs = []
    for workers in (0, 2):
        loader = train_loader(dataset, range(len(dataset)), 2, workers, seed=5)
        runs.append([[b["input"] for b in epoch_batches(loader, e)] for e in (0, 1)])
    assert len(runs[0][0]) == 2
    for a, b in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1], strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(runs[0][0][0], runs[0][1][0])
