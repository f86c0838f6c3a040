"""Scoring a split in slices (``dnas.engine.evaluation``): the slices partition the split in
order, and a task's ``score`` of its slices' ``predict`` results is its score of the whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SPACE, write_experiment

from dnas.config import load_experiment
from dnas.engine.distributed import World
from dnas.engine.evaluation import SplitScorer, slice_of
from dnas.engine.runtime import seed_everything
from dnas.engine.sampling import make_loader
from dnas.engine.train import build_fixed
from dnas.errors import DnasError
from dnas.registry import TASKS
from dnas.task import Task, build_task, dataset_of, scores_in_slices
from tasks.pose.task import PoseTask
from tasks.segmentation.synth import write_synthetic_seg

ARCH = str(TINY_SPACE.parent / "tiny_arch.yaml")


@pytest.mark.parametrize("length", [0, 1, 3, 4, 7, 100])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_the_slices_partition_the_split_in_rank_order(length, size):
    slices = [slice_of(length, World(rank, size)) for rank in range(size)]
    assert [i for s in slices for i in s] == list(range(length))
    assert max(map(len, slices)) - min(map(len, slices)) <= 1


def sliced_metrics(task: Task, net: torch.nn.Module, dataset, cuts: list[int], out_dir: Path,
                   save_vis: int):  # fmt: skip
    """What rank 0 scores when the processes predict the slices between ``cuts`` (one item a
    batch, as the whole is scored here: a net's outputs differ in the last bits with the batch
    size, and an untrained net's flat heatmaps turn that into another peak)."""
    edges = [0, *cuts, len(dataset)]
    parts = [task.predict(net, make_loader(dataset, 1, 0, range(a, b)),
                          torch.device("cpu"), max(0, save_vis - a))
             for a, b in zip(edges, edges[1:], strict=False)]  # fmt: skip
    return task.score(dataset, parts, out_dir, save_vis)


def trained_like(exp_path: Path):
    """The experiment's task, val split and tiny net (initial weights: seeded, not trained,
    enough for scores that differ per item)."""
    exp = load_experiment(exp_path)
    task = build_task(exp)
    seed_everything(0)
    return task, dataset_of(task, "val", augment=False), build_fixed(exp, ARCH, task)[1]


@pytest.mark.parametrize("cuts", [[2], [1], [1, 3]])
def test_pose_scored_in_slices_scores_as_the_whole(synth_root, tmp_path, cuts):
    task, val, net = trained_like(write_experiment(tmp_path / "exp.yaml", synth_root))
    assert scores_in_slices(task)
    cpu = torch.device("cpu")
    whole = task.evaluate(net, make_loader(val, 1, 0), cpu, tmp_path / "a", 3)
    parts = sliced_metrics(task, net, val, cuts, tmp_path / "b", 3)
    assert parts.values == pytest.approx(whole.values, abs=1e-9)
    assert parts.table == whole.table
    pictures = sorted(p.name for p in (tmp_path / "b" / "vis").iterdir())
    assert pictures == sorted(p.name for p in (tmp_path / "a" / "vis").iterdir())
    assert len(pictures) == 3
    for name in pictures:
        assert (tmp_path / "b" / "vis" / name).read_bytes() == \
            (tmp_path / "a" / "vis" / name).read_bytes()  # fmt: skip
    edges = [0, *cuts, len(val)]
    sliced = [task.predict(net, make_loader(val, 1, 0, range(a, b)), cpu)[0]
              for a, b in zip(edges, edges[1:], strict=False)]  # fmt: skip
    assert np.array_equal(np.concatenate(sliced), task.predict(net, make_loader(val, 1, 0), cpu)[0])


def test_pose_score_puts_the_slices_in_order(synth_root):
    """The ground truth as predictions, cut in two: PCKh 100 in order, less out of order."""
    task = build_task(load_experiment(write_experiment(Path(synth_root) / ".." / "o.yaml",
                                                       synth_root)))  # fmt: skip
    val = dataset_of(task, "val", augment=False)
    truth = np.stack([r.joints for r in val.records]).astype(np.float64)
    sure = np.ones(truth.shape[:2])
    cut = [(truth[:1], sure[:1]), (truth[1:], sure[1:])]
    assert task.score(val, cut, None).score == pytest.approx(100.0)
    assert task.score(val, cut[::-1], None).score < 50.0


@pytest.mark.parametrize("cuts", [[2], [1], [1, 3]])
def test_segmentation_scored_in_slices_scores_as_the_whole(tmp_path, cuts):
    root = tmp_path / "seg"
    write_synthetic_seg(root, 4, 5, seed=3, image_size=64)
    exp = write_experiment(tmp_path / "exp.yaml", root, task={
        "name": "segmentation", "root": str(root), "categories": "all",
        "train_split": "train", "val_split": "val"})  # fmt: skip
    task, val, net = trained_like(exp)
    whole = task.evaluate(net, make_loader(val, 1, 0), torch.device("cpu"), tmp_path / "a", 3)
    parts = sliced_metrics(task, net, val, cuts, tmp_path / "b", 3)
    assert parts.values == whole.values
    assert (tmp_path / "b" / "confusion.json").read_text() == \
        (tmp_path / "a" / "confusion.json").read_text()  # fmt: skip
    for name in ("0000.png", "0001.png", "0002.png"):  # rank 0 alone held fewer than 3
        assert (tmp_path / "b" / "vis" / name).read_bytes() == \
            (tmp_path / "a" / "vis" / name).read_bytes()  # fmt: skip
    assert not (tmp_path / "b" / "vis" / "0003.png").exists()


def test_a_world_of_one_scores_the_whole_split_in_one_loader(synth_root, tmp_path):
    task, val, net = trained_like(write_experiment(tmp_path / "exp.yaml", synth_root))
    scorer = SplitScorer(task, val, 4, 0, World())
    assert not scorer.in_slices and scorer.loader.dataset is val
    two = SplitScorer(task, val, 4, 0, World(1, 2))
    assert two.in_slices and list(two.loader.sampler) == [2, 3] and two.loader.dataset is val
    metrics = scorer(net, torch.device("cpu"), None)
    assert metrics.score == task.evaluate(net, make_loader(val, 4, 0), torch.device("cpu"),
                                          None).score  # fmt: skip


class OwnEvaluate(PoseTask):
    """A pose task with an evaluate of its own: scored as it says, by rank 0 alone."""

    def evaluate(self, model, loader, device, out_dir, save_vis=0):
        return super().evaluate(model, loader, device, out_dir, save_vis)


class PredictOnly(PoseTask):
    """Predicts in slices but cannot score them."""

    score = Task.score
    evaluate = Task.evaluate


class Unscored(PoseTask):
    predict, score, evaluate = Task.predict, Task.score, Task.evaluate


class OlderPredict(PoseTask):
    """A subclass written when the pose task's predict took no ``keep``."""

    def predict(self, model, loader, device):
        return super().predict(model, loader, device)


@pytest.fixture
def tasks():
    added = {
        "own_evaluate": OwnEvaluate,
        "predict_only": PredictOnly,
        "unscored": Unscored,
        "older_predict": OlderPredict,
    }
    for name, cls in added.items():
        TASKS.register(name)(cls)
    yield
    for name in added:
        TASKS._items.pop(name)


def test_a_task_says_how_it_is_scored_or_is_refused_in_one_line(tasks, synth_root, tmp_path):
    def task(name: str) -> Task:
        exp = write_experiment(tmp_path / f"{name}.yaml", synth_root, task={"name": name})
        return build_task(load_experiment(exp))

    assert not scores_in_slices(task("own_evaluate"))  # its evaluate is what it means
    where = r"task 'predict_only' \(test_evaluation.PredictOnly\)"
    with pytest.raises(DnasError, match=rf"^{where} does not implement evaluate \(or predict "
                                        r"and score: it lacks score\)$"):  # fmt: skip
        task("predict_only")
    with pytest.raises(DnasError, match=r"it lacks predict and score\)$"):
        task("unscored")
    where = r"task 'older_predict' \(test_evaluation.OlderPredict\)"
    with pytest.raises(DnasError, match=rf"^{where}: predict\(self, model, loader, device\) "
                                        r"cannot be called as predict\(model, loader, device, "
                                        r"keep\); implement that, or evaluate"):  # fmt: skip
        task("older_predict")
