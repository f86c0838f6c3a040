"""The segmentation plugin: COCO class maps, loss, metrics, augmentation, synthetic set, CLI."""

from __future__ import annotations

import itertools
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner
from conftest import DATA, TINY_SPACE, need, write_experiment
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from dnas.cli import cli
from dnas.config import CostConfig, Experiment, load_experiment
from dnas.errors import ConfigError, DnasError
from dnas.nn.network import Network
from dnas.nn.weights import load_weights, with_info
from dnas.schema import from_dict
from dnas.search.cost_model import get_cost_model
from dnas.space.choices import uniform_choices
from dnas.space.graph import load_space
from dnas.task import build_space, build_task
from dnas.vis.images import PANEL_HEIGHT, TITLE_HEIGHT
from tasks.segmentation.coco import IGNORE, class_map, decode, load_records, read_coco
from tasks.segmentation.metrics import confusion, scores
from tasks.segmentation.synth import render, write_synthetic_seg
from tasks.segmentation.task import SegmentationTask
from tasks.segmentation.transforms import (
    PAD_RGB,
    letterbox,
    letterbox_image,
    random_scale_crop,
    to_input,
    unletterbox_classes,
)

COCO_MINI = DATA / "coco-mini"
TINY_ARCH = TINY_SPACE.parent / "tiny_arch.yaml"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth-seg")
    write_synthetic_seg(root, 12, 4, seed=3, image_size=64)
    return root


def seg_experiment(path: Path, root: Path, **sections) -> Path:
    """A tiny segmentation experiment on the synthetic set (conftest's 64x64, 1-2 steps)."""
    defaults = {
        "task": {"name": "segmentation", "root": str(root), "categories": "all",
                 "train_split": "train", "val_split": "val"},
        "search": {"steps_per_epoch": 1, "random": {"samples": 2, "epochs_per_arch": 1}},
        "train": {"epochs": 1},
    }  # fmt: skip
    for key, value in sections.items():
        merge = isinstance(value, dict) and key in defaults
        defaults[key] = {**defaults[key], **value} if merge else value
    return write_experiment(path, root, **defaults)


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def expected_map(coco: COCO, image_id: int, category_ids: list[int]) -> np.ndarray:
    """The documented rule, straight from pycocotools' annToMask: crowds ignore, then instances
    largest first (ties: later annotation on top)."""
    info = coco.imgs[image_id]
    out = np.zeros((info["height"], info["width"]), np.uint8)
    anns = [a for a in coco.imgToAnns[image_id] if a["category_id"] in category_ids]
    for ann in anns:
        if ann["iscrowd"]:
            out[coco.annToMask(ann) > 0] = IGNORE
    solid = [(i, coco.annToMask(a) > 0, a) for i, a in enumerate(anns) if not a["iscrowd"]]
    for _, mask, ann in sorted(solid, key=lambda t: (-t[1].sum(), t[0])):
        out[mask] = category_ids.index(ann["category_id"]) + 1
    return out


# ---------------------------------------------------------------- COCO class maps


def test_decode_matches_ann_to_mask_polygons_and_rle():
    """Every annotation of coco-mini val (polygons, uncompressed crowd RLE) decodes exactly."""
    ann_file = need(COCO_MINI / "annotations" / "instances_val2017.json")
    coco = COCO(str(ann_file))
    kinds = set()
    for ann in coco.dataset["annotations"]:
        info = coco.imgs[ann["image_id"]]
        mask = decode(ann["segmentation"], info["height"], info["width"])
        assert np.array_equal(mask, coco.annToMask(ann)), ann["id"]
        kinds.add(type(ann["segmentation"]).__name__)
    assert kinds == {"list", "dict"}


def test_person_class_maps_match_pycocotools_on_coco_mini():
    ann_file = need(COCO_MINI / "annotations" / "instances_val2017.json")
    coco = COCO(str(ann_file))
    records = load_records(read_coco(ann_file), COCO_MINI / "val2017", [1])
    assert len(records) == 79
    crowd_pixels = person_pixels = 0
    for rec, image_id in zip(records, sorted(coco.imgs), strict=True):
        got = class_map(rec)
        assert np.array_equal(got, expected_map(coco, image_id, [1])), image_id
        crowd_pixels += int((got == IGNORE).sum())
        person_pixels += int((got == 1).sum())
    assert crowd_pixels > 1000 and person_pixels > 100_000  # both paths really ran


def test_all_categories_and_chosen_order_on_coco_mini():
    ann_file = need(COCO_MINI / "annotations" / "instances_val2017.json")
    coco = COCO(str(ann_file))
    image_id = max(coco.imgs, key=lambda i: len({a["category_id"] for a in coco.imgToAnns[i]}))
    index = sorted(coco.imgs).index(image_id)
    task = build_task(exp_for({"name": "segmentation", "root": str(COCO_MINI),
                               "categories": "all"}))  # fmt: skip
    assert task.num_outputs == 81 and task.class_names[:3] == ["background", "person", "bicycle"]
    got = class_map(task.dataset("val", False).records[index])
    assert len(set(np.unique(got).tolist()) - {0, IGNORE}) >= 3
    assert np.array_equal(got, expected_map(coco, image_id, sorted(coco.cats)))
    task = build_task(exp_for({"name": "segmentation", "root": str(COCO_MINI),
                               "categories": ["dog", "person"]}))  # fmt: skip
    assert task.class_names == ["background", "dog", "person"]
    got = class_map(task.dataset("val", False).records[index])
    assert np.array_equal(got, expected_map(coco, image_id, [18, 1]))


def synth_task(root: Path, **options) -> SegmentationTask:
    """The task on the synthetic set: all categories unless ``options`` say otherwise."""
    task = {"name": "segmentation", "root": str(root), "categories": "all",
            "train_split": "train", "val_split": "val", **options}  # fmt: skip
    return build_task(exp_for(task))


def exp_for(task: dict) -> Experiment:
    """An in-memory experiment with this ``task:`` section (64x64 input)."""
    return Experiment(task=task, input_size=[64, 64], source="exp.yaml")


def test_synthetic_compressed_rle_decodes_like_pycocotools(synth_root):
    coco = COCO(str(synth_root / "annotations" / "instances_train.json"))
    forms = set()
    for ann in coco.dataset["annotations"]:
        segm = ann["segmentation"]
        forms.add("polygon" if isinstance(segm, list) else type(segm["counts"]).__name__)
        assert np.array_equal(decode(segm, 64, 64), coco.annToMask(ann)), ann["id"]
    assert forms == {"polygon", "str", "list"}  # polygons, compressed and uncompressed RLE


def test_synthetic_class_maps_are_the_drawn_truth(synth_root):
    data = read_coco(synth_root / "annotations" / "instances_train.json")
    records = load_records(data, synth_root / "train", [1, 2, 3])
    labels = set()
    for i, rec in enumerate(records):
        _, _, truth = render(np.random.default_rng([3, 0, i]), 64)
        got = class_map(rec)
        assert np.array_equal(got, truth), i
        labels |= set(np.unique(got).tolist())
    assert labels == {0, 1, 2, 3, IGNORE}


def test_crowd_as_class(synth_root):
    data = read_coco(synth_root / "annotations" / "instances_train.json")
    records = load_records(data, synth_root / "train", [1, 2, 3])
    rec = next(r for r in records if any(inst.iscrowd for inst in r.instances))
    ignored, as_class = class_map(rec), class_map(rec, crowd_as_class=True)
    crowd = next(inst for inst in rec.instances if inst.iscrowd)
    assert (ignored == IGNORE).sum() > 0 and (as_class == IGNORE).sum() == 0
    assert set(np.unique(as_class[ignored == IGNORE])) == {crowd.label}
    assert np.array_equal(as_class[ignored != IGNORE], ignored[ignored != IGNORE])


# ---------------------------------------------------------------- synthetic set


def test_synthetic_set_is_deterministic(tmp_path, synth_root):
    write_synthetic_seg(tmp_path / "a", 12, 4, seed=3, image_size=64)
    write_synthetic_seg(tmp_path / "b", 12, 2, seed=4, image_size=64)
    for rel in ("annotations/instances_train.json", "annotations/instances_val.json",
                "train/000005.jpg", "val/000003.jpg"):  # fmt: skip
        assert (tmp_path / "a" / rel).read_bytes() == (synth_root / rel).read_bytes(), rel
    other = json.loads((tmp_path / "b" / "annotations" / "instances_train.json").read_text())
    mine = json.loads((synth_root / "annotations" / "instances_train.json").read_text())
    assert other["annotations"] != mine["annotations"]
    assert [c["name"] for c in mine["categories"]] == ["ellipse", "rectangle", "triangle"]


def test_synth_seg_command_caches_and_refuses_overwrite(tmp_path):
    out = tmp_path / "s"
    run("data", "synth-seg", out, "--train", 2, "--val", 1, "--size", 32)
    assert "cached" in run("data", "synth-seg", out, "--train", 2, "--val", 1, "--size", 32)
    result = CliRunner().invoke(cli, ["data", "synth-seg", str(out), "--train", "3"])
    assert result.exit_code == 1 and "holds a different synthetic set" in result.output
    run("data", "synth-seg", out, "--train", 3, "--val", 1, "--size", 32, "--force")
    assert len(list((out / "train").glob("*.jpg"))) == 3


# ---------------------------------------------------------------- loss and metrics


def test_loss_ignores_255_and_upsamples_bilinearly(synth_root):
    task = synth_task(synth_root)
    torch.manual_seed(0)
    label = torch.randint(0, 4, (2, 16, 16))
    label[0, :8] = IGNORE
    keep = label != IGNORE
    full = torch.randn(2, 4, 16, 16)
    manual = -full.log_softmax(1).gather(1, (label % IGNORE)[:, None])[:, 0][keep].mean()
    loss = task.loss(full, {"label": label})
    assert float(loss) == pytest.approx(float(manual), rel=1e-5)
    changed = full.clone()
    changed[0, :, :8] += 10 * torch.randn(4, 8, 16)  # logits of ignored pixels only
    assert float(task.loss(changed, {"label": label})) == pytest.approx(float(loss), rel=1e-6)
    small = torch.randn(2, 4, 4, 4)  # stride-4 logits: upsampled bilinearly to 16x16
    up = F.interpolate(small, size=(16, 16), mode="bilinear", align_corners=False)
    assert float(task.loss(small, {"label": label})) == pytest.approx(
        float(task.loss(up, {"label": label})), rel=1e-6
    )
    label[:] = IGNORE
    small.requires_grad_()
    empty = task.loss(small, {"label": label})
    assert empty.item() == 0.0
    empty.backward()
    assert torch.isfinite(small.grad).all()


def test_loss_rejects_wrong_channel_count(synth_root):
    task = synth_task(synth_root, categories=["ellipse"])
    with pytest.raises(Exception, match="head gives 4 channels, the task has 2 classes"):
        task.loss(torch.zeros(1, 4, 8, 8), {"label": torch.zeros(1, 8, 8, dtype=torch.long)})


def test_scores_on_hand_computed_confusion_matrices():
    m = np.array([[50, 10, 0], [5, 30, 0], [0, 0, 0]])
    s = scores(m)
    assert s["iou"][0] == pytest.approx(100 * 50 / 65)
    assert s["iou"][1] == pytest.approx(100 * 30 / 45)
    assert s["iou"][2] is None  # absent from ground truth and prediction: left out of the mean
    assert s["mIoU"] == pytest.approx((100 * 50 / 65 + 100 * 30 / 45) / 2)
    assert s["pixel_acc"] == pytest.approx(100 * 80 / 95)
    assert s["mAcc"] == pytest.approx((100 * 50 / 60 + 100 * 30 / 35) / 2)
    # predicted but never true: IoU 0, and it counts in the mean
    s = scores(np.array([[8, 2], [0, 0]]))
    assert s["iou"] == [pytest.approx(80.0), 0.0] and s["mIoU"] == pytest.approx(40.0)


def test_confusion_skips_ignore_pixels():
    label = torch.tensor([[0, 1, 2, IGNORE], [1, 1, IGNORE, 0]])
    pred = torch.tensor([[0, 1, 1, 2], [2, 1, 0, 0]])
    expected = torch.tensor([[2, 0, 0], [0, 2, 1], [0, 1, 0]])
    assert torch.equal(confusion(pred, label, 3), expected)


# ---------------------------------------------------------------- augmentation


def blocky_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 96x128 class map of 16x16 blocks, and an image whose colour is a function of the class."""
    colours = np.array([[10, 20, 30], [200, 40, 40], [40, 200, 40], [40, 40, 200]], np.uint8)
    label = np.kron(rng.integers(0, 4, (6, 8)), np.ones((16, 16), np.int64)).astype(np.uint8)
    return colours[label], label, colours


@pytest.mark.parametrize("seed", range(6))
def test_augmentation_keeps_image_and_label_aligned(seed):
    rng = np.random.default_rng(seed)
    image, label, colours = blocky_pair(rng)
    out_img, out_lab = random_scale_crop(image, label, (48, 40), rng, (0.5, 2.0), True)
    assert out_img.shape == (48, 40, 3) and out_lab.shape == (48, 40)
    valid = out_lab != IGNORE
    assert valid.sum() > 100
    # where the class is the same in a 3x3 neighbourhood, bilinear colour == nearest class colour
    pad = np.pad(out_lab, 1, mode="edge")
    same = np.all([pad[dy : dy + 48, dx : dx + 40] == out_lab for dy in range(3)
                   for dx in range(3)], axis=0) & valid  # fmt: skip
    diff = np.abs(out_img[same].astype(int) - colours[out_lab[same]].astype(int)).max()
    assert same.sum() > 50 and diff <= 1
    assert (out_img[~valid] == PAD_RGB).all()  # padding: the mean colour


def test_letterbox_pads_with_ignore_and_flip_moves_both():
    image, label, _ = blocky_pair(np.random.default_rng(0))
    img, lab = letterbox(image, label, (64, 64))  # 96x128 -> 48x64 at the top, then padding
    assert np.array_equal(lab[:48], label[1::2, 1::2]) and (lab[48:] == IGNORE).all()
    assert np.array_equal(img[48:], np.broadcast_to(img[63, 0], (16, 64, 3)))
    flips = []
    for seed in range(8):
        plain = random_scale_crop(image, label, (32, 32), np.random.default_rng(seed),
                                  (0.8, 1.2), False)  # fmt: skip
        maybe = random_scale_crop(image, label, (32, 32), np.random.default_rng(seed),
                                  (0.8, 1.2), True)  # fmt: skip
        mirrored = [np.ascontiguousarray(a[:, ::-1]) for a in plain]
        flipped = all(np.array_equal(m, b) for m, b in zip(mirrored, maybe, strict=True))
        same = all(np.array_equal(p, b) for p, b in zip(plain, maybe, strict=True))
        assert flipped or same
        flips.append(flipped and not same)
    assert 0 < sum(flips) < len(flips)


def test_dataset_augmentation_is_seeded_and_rng_reseedable(synth_root):
    task = synth_task(synth_root)
    one, two = task.dataset("train", True, seed=5), task.dataset("train", True, seed=5)
    assert torch.equal(one[3]["input"], two[3]["input"])
    assert torch.equal(one[3]["label"], two[3]["label"])
    two.rng = np.random.default_rng(99)  # what the core does per worker / per item
    assert not torch.equal(one[3]["label"], two[3]["label"])
    val = task.dataset("val", False)
    item = val[0]
    assert item["input"].shape == (3, 64, 64) and item["label"].dtype == torch.int64
    assert torch.equal(val[0]["label"], item["label"])


# ---------------------------------------------------------------- head


def test_fpn_lite_head_reads_several_nodes(synth_root, tmp_path):
    head = {"type": "fpn_lite", "inputs": ["stage1", "stage2", "stage3"], "width": 16}
    exp = load_experiment(seg_experiment(tmp_path / "e.yaml", synth_root, head=head))
    task = build_task(exp)
    space = build_space(str(TINY_SPACE), task, exp)
    assert space.head.inputs == ("stage1.1", "stage2.1", "stage3.0")
    net = Network(space, task.num_outputs)
    out = net(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 4, 16, 16)  # the finest input, stage1, is at stride 4
    assert list(net.head.state_dict())[-1] == "classifier.bias"
    bad = seg_experiment(tmp_path / "bad.yaml", synth_root, head={**head, "width": 0})
    with pytest.raises(ConfigError, match="head.width: expected a value >= 1"):
        Network(build_space(str(TINY_SPACE), task, load_experiment(bad)), 4)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"root": "nowhere"}, "task.root: no such directory 'nowhere'"),
        ({"categories": ["ellipse", "person"]}, "task.categories: unknown category 'person' in"),
        ({"crowd": "maybe"}, "task.crowd: expected one of ignore, class, got 'maybe'"),
        ({"augment": {"scale_min": 3.0}}, "task.augment.scale_min: 3.0 is above scale_max 2.0"),
        ({"colour": 1}, "task.colour: unknown key"),
    ],
)
def test_bad_input_is_a_one_line_error(synth_root, tmp_path, task, message):
    path = seg_experiment(tmp_path / "bad.yaml", synth_root, task=task)
    result = CliRunner().invoke(cli, ["train", str(path), "--arch", str(TINY_ARCH), "--out",
                                      str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert "\n" not in line and line.startswith(f"Error: {path}: ") and message in line


def first_line_of(command: str, exp: Path, out: Path) -> str:
    """Run ``command`` (search or train) on ``exp``; it must fail in one line, returned."""
    extra = ["--arch", str(TINY_ARCH)] if command == "train" else []
    result = CliRunner().invoke(cli, [command, str(exp), *extra, "--out", str(out)])
    assert result.exit_code == 1 and "\n" not in result.output.strip(), result.output
    return result.output.strip()


@pytest.mark.parametrize(
    ("command", "key"),
    [
        ("search", "train_split"),
        ("train", "train_split"),
        ("search", "val_split"),
        ("train", "val_split"),
    ],
)  # fmt: skip
def test_a_split_without_its_annotation_file_names_the_split_key(synth_root, tmp_path, command,
                                                                key):  # fmt: skip
    """Once blamed task.root; the split's key, the file it looked for and the splits there."""
    exp = seg_experiment(tmp_path / "bad.yaml", synth_root, task={key: "training"})
    wanted = synth_root / "annotations" / "instances_training.json"
    assert first_line_of(command, exp, tmp_path / "out") == (
        f"Error: {exp}: task.{key}: 'training': annotation file {wanted} not found; the splits "
        f"under {synth_root}: train, val"
    )


def test_an_annotations_template_matching_no_file_names_that_key(synth_root, tmp_path):
    exp = seg_experiment(tmp_path / "bad.yaml", synth_root,
                         task={"annotations": "ann/{split}.json"})  # fmt: skip
    assert first_line_of("search", exp, tmp_path / "out") == (
        f"Error: {exp}: task.annotations: 'ann/{{split}}.json': no file under {synth_root} "
        f"matches it (for task.val_split 'val': {synth_root / 'ann' / 'val.json'})"
    )


# ---------------------------------------------------------------- end to end


def test_cli_search_derive_train_eval_export(synth_root, tmp_path):
    exp = seg_experiment(tmp_path / "exp.yaml", synth_root)
    run("search", exp, "--out", tmp_path / "search")
    run("derive", tmp_path / "search", "-o", tmp_path / "arch.yaml")
    arch = tmp_path / "arch.yaml"
    run("train", exp, "--arch", arch, "--out", tmp_path / "train")
    weights = tmp_path / "train" / "model.pt"
    out = run("eval", exp, "--arch", arch, "--weights", weights, "--out", tmp_path / "eval",
              "--save-vis", 2, "--format", "json")  # fmt: skip
    results = json.loads(out)
    assert results["primary_metric"] == "mIoU" and 0 <= results["mIoU"] <= 100
    assert 0 <= results["pixel_acc"] <= 100 and "IoU/background" in results
    confusion_file = json.loads(Path(results["files"]["confusion"]).read_text())
    total = np.array(confusion_file["matrix"])
    assert total.shape == (4, 4)
    assert 100 * np.trace(total) / total.sum() == pytest.approx(results["pixel_acc"])
    pictures = sorted((tmp_path / "eval" / "vis").glob("*.png"))
    assert len(pictures) == 2
    import cv2

    picture = cv2.imread(str(pictures[0]))
    # three 64 px panels drawn at 384 px (6x), each under a 28 px title band, 8 px gaps
    assert picture.shape == (PANEL_HEIGHT + TITLE_HEIGHT, 3 * PANEL_HEIGHT + 2 * 8, 3)
    onnx = tmp_path / "net.onnx"
    run("export", "--arch", arch, "--weights", weights, "-o", onnx, "--input-size", "64x64")
    import onnxruntime as ort

    net = Network(build_space(str(arch), build_task(load_experiment(exp)), load_experiment(exp)), 4)
    load_weights(net, weights)
    x = torch.randn(2, 3, 64, 64)
    want = net.eval()(x).detach().numpy()
    got = ort.InferenceSession(str(onnx)).run(None, {"input": x.numpy()})[0]
    assert got.shape == (2, 4, 16, 16) and np.abs(got - want).max() < 1e-4
    cost = json.loads(run("cost", arch, "--outputs", 4, "--input-size", "64x64",
                          "--format", "json"))  # fmt: skip
    assert cost["outputs"] == 4 and cost["macs"] == results["macs"]
    assert json.loads(run("cost", arch, "--config", exp, "--format", "json")) == cost  # its task's
    searched = json.loads(run("cost", "--config", exp, "--format", "json"))  # the space's range
    assert searched["min_macs"] <= cost["macs"] <= searched["max_macs"]


@pytest.mark.parametrize("strategy", ["gumbel", "binary_gates", "random"])
def test_other_strategies_run(synth_root, tmp_path, strategy):
    exp = seg_experiment(tmp_path / "exp.yaml", synth_root)
    run("search", exp, "--out", tmp_path / "s", "--strategy", strategy)
    assert json.loads((tmp_path / "s" / "search.json").read_text())["strategy"] == strategy


def test_latency_table_at_segmentation_size_and_fpn_lite_search(synth_root, tmp_path):
    quick = ["--min-time", 0.01, "--rounds", 1, "--allow-noise", "--calibration", 0]
    table = tmp_path / "lut.json"
    run("lut", "build", "--space", TINY_SPACE, "--input", "64x64", "--outputs", 4, *quick,
        "-o", table)  # fmt: skip
    head = {"type": "fpn_lite", "inputs": ["stage2", "stage3"], "width": 8}
    exp = seg_experiment(tmp_path / "exp.yaml", synth_root, head=head)
    # a table of the space's own head (slim_deconv) does not time the search's fpn_lite head
    args = ["search", exp, "--out", tmp_path / "r", "--cost-model", "latency", "--cost-table",
            table]  # fmt: skip
    refused = CliRunner().invoke(cli, [str(a) for a in args])
    assert refused.exit_code == 1
    assert ("missing head fpn_lite(width=8, smooth=True, upsample=bilinear) on stage2.1, "
            "stage3.0 (table has slim_deconv(deconv_widths=[8, 8], deconv_kernel=4, sic=True, "
            "upsample=deconv) on stage3.0)") in refused.output  # fmt: skip
    # --config builds what the search uses: the space with the experiment's head and outputs
    run("lut", "build", "--config", exp, "--set", f"task.root={synth_root}", *quick[:-1], "8",
        "-o", table, "--force")  # fmt: skip
    meta = json.loads(table.read_text())["meta"]
    assert meta["head"]["type"] == "fpn_lite" and meta["num_outputs"] == 4
    assert meta["input"] == [64, 64]
    text = run("lut", "check", "--table", table, "--samples", 2, "--min-time", 0.01, "--rounds",
               2, "--in-process", "--allow-noise")  # fmt: skip
    assert "Kendall tau" in text and "noise ceiling: a table without error would get tau" in text
    assert "from check to check" in text and "compare the MAPE at the build's speed" in text
    # two nets: every simulated check may rank them alike (sd 0), and then there is no line
    ranking = [line for line in text.splitlines() if line.startswith("ranking: tau ")]
    assert len(ranking) <= 1 and all(" sd from the noise ceiling" in line or " sd below the "
                                     "noise ceiling" in line for line in ranking)  # fmt: skip
    # a refit to the calibration nets timed again keeps the head; the search takes the table
    now = tmp_path / "lut-now.json"
    run("lut", "recalibrate", "--table", table, "-o", now, *quick[:4], "--in-process",
        "--allow-noise")  # fmt: skip
    refitted = json.loads(now.read_text())["meta"]
    assert refitted["head"] == meta["head"] and len(refitted["recalibrations"]) == 1
    run("search", exp, "--out", tmp_path / "s", "--cost-model", "latency", "--cost-table", now)
    result = json.loads((tmp_path / "s" / "search.json").read_text())
    assert result["cost_unit"] == "ms" and result["final_cost"] > 0
    run("derive", tmp_path / "s", "-o", tmp_path / "arch.yaml")
    arch = yaml.safe_load((tmp_path / "arch.yaml").read_text())
    assert arch["head"]["type"] == "fpn_lite" and arch["head"]["width"] == 8


def test_an_onnxruntime_table_for_a_segmentation_search(synth_root, tmp_path):
    """The segmentation plugin's search on ONNX Runtime latency, end to end: the table built for
    the experiment's fpn_lite head, checked in ONNX Runtime, refused by an eager check, used
    by a budget search."""
    quick = ["--min-time", 0.01, "--rounds", 1, "--allow-noise", "--calibration", 0]
    head = {"type": "fpn_lite", "inputs": ["stage2", "stage3"], "width": 8}
    exp = seg_experiment(tmp_path / "exp.yaml", synth_root, head=head)
    table = tmp_path / "ort.json"
    run("lut", "build", "--config", exp, "--runtime", "onnxruntime", *quick, "-o", table)
    meta = json.loads(table.read_text())["meta"]
    assert meta["runtime"] == "onnxruntime" and meta["head"]["type"] == "fpn_lite"
    check = run("lut", "check", "--table", table, "--runtime", "onnxruntime", "--samples", 2,
                "--min-time", 0.01, "--rounds", 1, "--allow-noise", "--format", "json")  # fmt: skip
    assert json.loads(check)["runtime"] == "onnxruntime"
    eager = CliRunner().invoke(cli, ["lut", "check", "--table", str(table), "--runtime", "torch"])
    assert eager.exit_code == 1 and "measured in onnxruntime, not torch" in eager.output
    cost = {"type": "latency", "table": str(table)}
    e = load_experiment(exp)
    model = get_cost_model("latency", from_dict(CostConfig, cost, "<test>"))
    space = build_space(e.space, build_task(e), e)
    latency = model.table(space, (64, 64), 4)
    low, high = latency.cost_range()
    # a real net's cost near the middle: a quick table's costs cluster by the number of skip
    # layers, and a band between two clusters holds no net (the search then takes the nearest)
    rng = np.random.default_rng(0)
    costs = [latency.of_choices(uniform_choices(space.searchable_layers, rng))
             for _ in range(500)]  # fmt: skip
    target = min(costs, key=lambda c: abs(c - (low + 0.5 * (high - low))))
    budget = seg_experiment(tmp_path / "budget.yaml", synth_root, head=head,
                            cost_model={**cost, "form": "budget", "target": target},
                            search={"strategy": "gumbel", "warmup_epochs": 0, "epochs": 2,
                                    "arch_optimizer": {"lr": 0.1}})  # fmt: skip
    run("search", budget, "--out", tmp_path / "s")
    result = json.loads((tmp_path / "s" / "search.json").read_text())
    assert result["cost_unit"] == "ms" and abs(result["final_cost"] / target - 1) <= 0.03


@pytest.mark.parametrize("strategy", ["gumbel", "random"])
def test_budget_search_lands_on_the_target_for_segmentation(synth_root, tmp_path, strategy):
    space = Path(__file__).parent / "data" / "budget_space.yaml"
    table = get_cost_model("flops").table(load_space(space), (64, 64), 4)
    low, high = table.cost_range()
    target = low + 0.4 * (high - low)
    exp = seg_experiment(tmp_path / "exp.yaml", synth_root, space=str(space),
                         cost_model={"form": "budget", "target": target},
                         search={"strategy": strategy, "warmup_epochs": 0, "epochs": 2,
                                 "arch_optimizer": {"lr": 0.1}})  # fmt: skip
    run("search", exp, "--out", tmp_path / "s")
    result = json.loads((tmp_path / "s" / "search.json").read_text())
    assert abs(result["final_cost"] / target - 1) <= 0.03
    assert 0 < result["decisiveness"] <= 1


def test_compressed_rle_counts_are_the_masks_run_lengths():
    """Decoded against run lengths counted from the mask itself (pycocotools' encoding)."""
    from tasks.segmentation.coco import compressed_rle_counts

    rng = np.random.default_rng(0)
    for trial in range(60):
        height, width = rng.integers(1, 40, 2)
        mask = (rng.random((height, width)) < rng.random() * (trial % 4 > 0)).astype(np.uint8)
        flat = mask.flatten(order="F")  # COCO runs go down the columns, zeros first
        runs = [len(list(group)) for _, group in itertools.groupby(flat.tolist())]
        runs = [0, *runs] if flat[0] else runs
        text = mask_utils.encode(np.asfortranarray(mask))["counts"].decode()
        assert compressed_rle_counts(text) == runs, (trial, text)
    assert compressed_rle_counts("zzzz") is None and compressed_rle_counts("0") == [0]
    assert compressed_rle_counts("P") is None  # a continued number cut short


def test_a_split_without_an_object_of_its_categories_is_refused(synth_root, tmp_path):
    root = tmp_path / "root"
    (root / "annotations").mkdir(parents=True)
    (root / "val").symlink_to(synth_root / "val")
    (root / "train").symlink_to(synth_root / "train")
    for split in ("train", "val"):
        data = json.loads((synth_root / "annotations" / f"instances_{split}.json").read_text())
        data["annotations"] = [] if split == "val" else data["annotations"]
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    task = build_task(exp_for({"name": "segmentation", "root": str(root), "categories": "all",
                               "train_split": "train", "val_split": "val"}))  # fmt: skip
    assert len(task.dataset("train", augment=False))
    with pytest.raises(DnasError, match="no annotation of the chosen categories .* in split "
                                        "'val': nothing to learn or score"):  # fmt: skip
        task.dataset("val", augment=False)  # once: mIoU 100 on background alone


def test_malformed_instances_are_one_error_naming_the_entry(synth_root, tmp_path):
    """Entries the loader would crash on, or drop and so score wrongly, are refused."""
    from tasks.segmentation.coco import read_coco

    good = json.loads((synth_root / "annotations" / "instances_val.json").read_text())
    rle = {"size": [64, 64], "counts": [100, 3996]}
    edits = {
        "annotations[0].category_id: expected the id of a category of the file, got 77":
            lambda d: d["annotations"][0].update(category_id=77),
        "annotations[0].image_id: expected the id of an image of the file, got 9999":
            lambda d: d["annotations"][0].update(image_id=9999),
        "annotations[0].image_id: expected the id of an image of the file, got [1]":
            lambda d: d["annotations"][0].update(image_id=[1]),
        "annotations[1].segmentation: expected polygons":
            lambda d: d["annotations"][1].update(segmentation=[[1, 2, 3, 4, float("nan"), 6]]),
        "images[1].id: 1 is used twice": lambda d: d["images"][1].update(id=1),
        "categories[0].name: expected a name, got None": lambda d: d["categories"][0].pop("name"),
        "images[0].height: expected a positive integer, got 'abc'":
            lambda d: d["images"][0].update(height="abc"),
        "annotations[0].segmentation: expected polygons":
            lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4, 5]]),
        "an RLE of size [32, 32] on an image of [64, 64]":
            lambda d: d["annotations"][0].update(segmentation=rle | {"size": [32, 32]}),
        "RLE counts sum to 4000, not the image's 4096 pixels":
            lambda d: d["annotations"][0].update(segmentation=rle | {"counts": [100, 3900]}),
        "RLE counts: not a COCO compressed RLE string":  # pycocotools decodes it silently
            lambda d: d["annotations"][0].update(segmentation=rle | {"counts": "zzzz"}),
        "RLE counts sum to 4, not the image's 4096 pixels":  # a valid string, too short
            lambda d: d["annotations"][0].update(segmentation=rle | {"counts": "13"}),
    }  # fmt: skip
    for i, (message, edit) in enumerate(edits.items()):
        data = json.loads(json.dumps(good))
        edit(data)
        path = tmp_path / f"bad{i}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(DnasError, match=re.escape(message)):
            read_coco(path)
    fine = tmp_path / "fine.json"
    data = json.loads(json.dumps(good))
    data["annotations"][0]["segmentation"] = rle  # an uncompressed RLE of the image's size
    fine.write_text(json.dumps(data))
    assert len(read_coco(fine)["annotations"]) == len(good["annotations"])


def test_an_input_size_the_strides_do_not_divide_is_warned_about(synth_root, tmp_path):
    """Segmentation resizes its logits to any label size, so it takes 72x64; but the layers
    round their outputs up (72 / 16 is 4.5), so it is said, once, when the run starts."""
    exp = seg_experiment(tmp_path / "exp.yaml", synth_root, input_size=[72, 64])
    with pytest.warns(UserWarning) as caught:
        run("search", exp, "--out", tmp_path / "s")
    texts = [str(w.message) for w in caught if "do not divide" in str(w.message)]
    assert texts == [f"{exp}: input_size 72x64: the strides of space tiny (16 in all) do not "
                     "divide it, so its layers round their outputs up and the head's 20x16 is "
                     "not the input / its stride; sides that 16 divides keep outputs and labels "
                     "aligned"]  # fmt: skip
    logged = (tmp_path / "s" / "log.txt").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in logged if "do not divide" in line] == [
        f"warning: {texts[0]}"
    ]  # the run's log holds its warnings too, time-stamped as every line
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d ", line) for line in logged)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*do not divide")  # a size they divide
        run("search", seg_experiment(tmp_path / "ok.yaml", synth_root), "--out", tmp_path / "t")


# ---------------------------------------------------------------- dnas segment


def test_unletterbox_puts_each_image_pixel_where_the_letterbox_took_it():
    """Channel c peaks at canvas column c (logit -(X - c)^2): after the bilinear resize the
    argmax is the canvas column nearest to where the pixel's centre went, (x + 0.5) s - 0.5
    (cv2's and align_corners=False's pixel-centre convention); half a pixel off (corners
    aligned) picks other columns."""
    canvas = np.arange(160, dtype=np.float32)
    logits = -((canvas[None, None, :] - np.arange(160)[:, None, None]) ** 2)  # (c, 1, X)
    logits = torch.from_numpy(np.repeat(logits, 5, axis=1))  # a 5x160 canvas: 2x64 at 2.5x
    back = unletterbox_classes(logits, (2, 64), 2.5)
    expected = np.rint(2.5 * np.arange(64) + 0.75)  # (x + 0.5) * 2.5 - 0.5, never a tie
    assert (back.numpy() == expected[None, :]).all()


def test_unletterbox_brings_a_class_map_back_onto_its_image():
    rng = np.random.default_rng(1)
    _, label, _ = blocky_pair(rng)  # 96x128 blocks of classes 0-3
    for out_hw in [(64, 64), (96, 96), (160, 128)]:  # shrunk, padded below, enlarged
        image, scale = letterbox_image(np.zeros((*label.shape, 3), np.uint8), out_hw)
        _, boxed = letterbox(image, label, out_hw)  # the label as the net saw the image
        logits = F.one_hot(torch.from_numpy(np.where(boxed == IGNORE, 0, boxed)).long(), 4)
        logits = logits.permute(2, 0, 1).float() + 0.01 * torch.randn(4, *out_hw)
        back = unletterbox_classes(logits, label.shape, scale)
        agree = (back.numpy() == label).mean()
        assert back.shape == label.shape and agree > 0.97, (out_hw, agree)  # edges only differ
        whole = F.interpolate(logits[None, :, : round(96 * scale), : round(128 * scale)],
                              size=label.shape, mode="bilinear")[0].argmax(0)  # fmt: skip
        assert torch.equal(unletterbox_classes(logits, label.shape, scale, chunk=3), whole)


@pytest.fixture(scope="module")
def seg_weights(synth_root, tmp_path_factory) -> Path:
    """A tiny segmentation net trained for 2 steps (its train run directory)."""
    base = tmp_path_factory.mktemp("seg-train")
    run("train", seg_experiment(base / "exp.yaml", synth_root), "--arch", TINY_ARCH, "--out",
        base / "train")  # fmt: skip
    return base / "train"


def test_segment_writes_the_class_map_eval_would_predict(synth_root, seg_weights, tmp_path):
    image = sorted((synth_root / "val").glob("*.jpg"))[0]
    mask, picture = tmp_path / "m.png", tmp_path / "s.png"
    out = json.loads(run("segment", image, "--weights", seg_weights, "-o", picture,
                         "--mask", mask).strip().splitlines()[-1])  # fmt: skip
    import cv2

    classes = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
    assert classes.shape == (64, 64) and classes.max() <= 3  # one channel of class ids
    net = Network(load_space(str(TINY_ARCH)), 4)
    load_weights(net, seg_weights / "model.pt")
    rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
    want = F.interpolate(net.eval()(to_input(rgb)[None]), size=(64, 64), mode="bilinear")
    assert np.array_equal(classes, want[0].argmax(0).numpy())  # same size: eval's own map
    counts = np.bincount(classes.ravel(), minlength=4)
    names = ["background", "ellipse", "rectangle", "triangle"]
    assert out["classes"] == [
        {"id": c, "name": names[c], "percent": round(100 * counts[c] / 64**2, 2)}
        for c in range(4) if counts[c]
    ]  # fmt: skip
    drawn = cv2.imread(str(picture))
    assert drawn.shape[1] == 2 * PANEL_HEIGHT + 8 and drawn.shape[0] >= PANEL_HEIGHT + TITLE_HEIGHT
    strip = tmp_path / "strip.png"  # 640x1: its panels stay within 4x their height, legible
    cv2.imwrite(str(strip), cv2.resize(cv2.imread(str(image)), (640, 1)))
    run("segment", strip, "--weights", seg_weights, "-o", tmp_path / "strip_seg.png")
    drawn = cv2.imread(str(tmp_path / "strip_seg.png"))
    assert drawn.shape[1] == 2 * 4 * PANEL_HEIGHT + 8 and drawn.shape[0] < PANEL_HEIGHT
    column = tmp_path / "column.png"  # 1x64: a panel wide enough for its title
    cv2.imwrite(str(column), cv2.resize(cv2.imread(str(image)), (1, 64)))
    run("segment", column, "--weights", seg_weights, "-o", tmp_path / "column_seg.png")
    assert cv2.imread(str(tmp_path / "column_seg.png")).shape[1] >= 2 * 120 + 8
    wide = tmp_path / "wide.png"  # a non-square image: the map comes back at its own size
    cv2.imwrite(str(wide), cv2.resize(cv2.imread(str(image)), (100, 40)))
    run("segment", wide, "--weights", seg_weights, "-o", tmp_path / "w.png",
        "--mask", tmp_path / "wm.png", "--input-size", "128x128")  # fmt: skip
    assert cv2.imread(str(tmp_path / "wm.png"), cv2.IMREAD_UNCHANGED).shape == (40, 100)


def test_segment_and_predict_refuse_each_others_weights(synth_root, seg_weights, tmp_path):
    image = sorted((synth_root / "val").glob("*.jpg"))[0]
    state = torch.load(seg_weights / "model.pt", weights_only=True)
    pose = tmp_path / "pose.pt"
    torch.save(with_info(state, {**state._metadata["dnas"], "task": "pose"}), pose)
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"an earlier class map")
    cases = [
        (["segment", image, "--weights", pose],
         "pose weights; dnas segment draws class maps (dnas predict runs pose weights"),
        (["predict", image, "--weights", seg_weights],
         "segmentation weights; dnas predict draws pose keypoints (dnas segment runs"),
        (["segment", image, "--weights", seg_weights, "--mask", tmp_path / "m.jpg"],
         "expected a .png path"),
        (["segment", image, "--weights", seg_weights, "-o", tmp_path / "s.txt"],
         "expected an image path such as out.png"),
        (["segment", image, "--weights", seg_weights, "-o", tmp_path / "same.png", "--mask",
          tmp_path / "same.png"], "'--mask': '"),  # the class map would replace the picture
        (["segment", image, "--weights", seg_weights, "-o", tmp_path / "new.png", "--mask",
          taken], "taken.png already exists; pass --force to overwrite or choose another --mask"),
    ]  # fmt: skip
    for args, message in cases:
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == 1 and message in result.output, result.output
        assert result.output.strip().count("\n") == 0


def test_eval_refuses_weights_of_other_classes_of_the_same_count(synth_root, seg_weights, tmp_path):
    """Same number of classes, another order: scored as they were, every IoU a wrong class's."""
    exp = seg_experiment(tmp_path / "exp.yaml", synth_root,
                         task={"categories": ["triangle", "rectangle", "ellipse"]})  # fmt: skip
    done = CliRunner().invoke(cli, ["eval", str(exp), "--weights", str(seg_weights),
                                    "--out", str(tmp_path / "eval")])  # fmt: skip
    assert done.exit_code == 1 and done.output.count("\n") == 1, done.output
    assert ("these weights were trained with class_names ['background', 'ellipse', 'rectangle', "
            "'triangle'], not ['background', 'triangle', 'rectangle', 'ellipse'] (evaluate them "
            "with an experiment of their outputs)") in done.output  # fmt: skip
    assert not (tmp_path / "eval").exists()


def test_more_categories_than_a_class_map_holds_are_refused():
    """LVIS' 1203 categories as 'all': ids past 254 wrapped in the uint8 maps (class 255 read as
    ignore, 256 as background), training and scoring the wrong classes without a word."""
    from tasks.segmentation.coco import MAX_CLASSES, select_categories

    many = [{"id": i, "name": f"c{i}"} for i in range(1, 301)]
    assert len(select_categories(many[:MAX_CLASSES], "all", "exp.yaml", Path("a.json"))) == 254
    with pytest.raises(ConfigError, match=r"task.categories: 'all' is 300 categories of a.json; "
                                          r"a class map holds at most 254"):  # fmt: skip
        select_categories(many, "all", "exp.yaml", Path("a.json"))
    with pytest.raises(ConfigError, match=r"task.categories: 255 categories; a class map holds"):
        select_categories(many, [c["name"] for c in many[:255]], "exp.yaml", Path("a.json"))
