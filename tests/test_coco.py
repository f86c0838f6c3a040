"""COCO keypoints: loader, detections, OKS-NMS and COCOeval scoring on real COCO data."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from conftest import DATA, need
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dnas.errors import DnasError
from dnas.schema import from_dict
from tasks.pose.coco import (
    COCODataset,
    COCOOptions,
    coco_keypoint_ap,
    load_coco_keypoints,
    oks_iou,
    oks_nms,
)
from tasks.pose.topdown import Augment

INPUT_HW = (256, 192)


@pytest.fixture(scope="module")
def coco_mini():
    return need(DATA / "coco-mini")


@pytest.fixture(scope="module")
def val(coco_mini) -> COCODataset:
    return COCODataset(coco_mini, "val2017", INPUT_HW)


@pytest.fixture(scope="module")
def samples():
    return need(DATA / "mmpose-samples" / "coco")


def ground_truth(ds: COCODataset) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([r.joints for r in ds.records]), np.stack([r.vis for r in ds.records])


def test_loader_reads_annotated_people(coco_mini, val):
    data = json.loads((coco_mini / "annotations" / "person_keypoints_val2017.json").read_text())
    people = [a for a in data["annotations"] if not a["iscrowd"] and a["num_keypoints"] > 0]
    assert len(val) == len(people) == 68
    first = people[0]
    rec = next(r for r in val.records if r.meta["image_id"] == first["image_id"])
    kpts = np.array(first["keypoints"], np.float32).reshape(17, 3)
    np.testing.assert_array_equal(rec.joints, kpts[:, :2])  # used as is, 0-based pixels
    np.testing.assert_array_equal(rec.vis, kpts[:, 2] > 0)
    for r in val.records:
        assert r.joints.shape == (17, 2) and r.vis.shape == (17,)
        assert r.image.is_file() and r.meta["score"] == 1.0
        assert r.scale[0] / r.scale[1] == pytest.approx(0.75)  # input width / height
    x, y, w, h = first["bbox"]  # inside the image, so sanitising only trims one pixel
    assert rec.center == pytest.approx([x + (w - 1) / 2, y + (h - 1) / 2])
    assert rec.scale * 200 / 1.25 == pytest.approx(
        [max(w - 1, 0.75 * (h - 1)), max(h - 1, (w - 1) / 0.75)]
    )
    item = val[0]
    assert tuple(item["input"].shape) == (3, 256, 192)
    assert tuple(item["target"].shape) == (17, 64, 48)
    assert float(item["target_weight"].sum()) == val.records[0].vis.sum()


def test_class_settings():
    assert COCODataset.num_joints() == 17
    assert COCODataset.default_splits == ("train2017", "val2017")
    for a, b in COCODataset.flip_pairs:
        assert COCODataset.joint_names[a][2:] == COCODataset.joint_names[b][2:]
        assert {COCODataset.joint_names[a][:2], COCODataset.joint_names[b][:2]} == {"l_", "r_"}
    opts = from_dict(COCOOptions, {"boxes": "detections", "detections": "d.json"}, "exp.yaml")
    assert opts.det_score_threshold == 0.0 and opts.oks_nms_threshold == 0.9
    with pytest.raises(DnasError, match="boxes"):
        from_dict(COCOOptions, {"boxes": "predicted"}, "exp.yaml")


def test_ground_truth_scores_ap_one(val, tmp_path):
    preds, vis = ground_truth(val)
    metrics = val.evaluate(preds, vis, tmp_path)
    assert metrics.primary == "AP"
    assert metrics.values == pytest.approx(dict.fromkeys(metrics.values, 1.0))
    assert list(metrics.values) == ["AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75",
                                    "ARM", "ARL"]  # pycocotools' stats order  # fmt: skip
    assert "| AP |" in metrics.table
    results = json.loads((tmp_path / "keypoints_val2017_results.json").read_text())
    assert len(results) == len(val)
    assert set(results[0]) == {"image_id", "category_id", "keypoints", "score"}
    assert len(results[0]["keypoints"]) == 51 and results[0]["category_id"] == 1
    # the same results as another category, or ground truth without a person category: refused
    gt = val.root / "annotations" / "person_keypoints_val2017.json"
    for i, edit in enumerate([{"category_id": 2}, {"category_id": "person"}]):
        other = tmp_path / f"other{i}.json"
        other.write_text(json.dumps([r | edit for r in results]))
        with pytest.raises(DnasError, match=r"results\[0\]: category_id .* is not a category"):
            coco_keypoint_ap(gt, other)
    data = json.loads(gt.read_text())
    no_person = tmp_path / "gt.json"
    no_person.write_text(json.dumps(data | {"categories": [{"id": 2, "name": "dog"}]}))
    with pytest.raises(DnasError, match=r"categories: no person category \(id 1\)"):
        coco_keypoint_ap(no_person, tmp_path / "keypoints_val2017_results.json")
    flags = json.loads(json.dumps(data))
    flags["annotations"][0]["keypoints"][2] = 7
    no_person.write_text(json.dumps(flags))
    with pytest.raises(DnasError, match=r"annotations\[0\]: keypoint visibility flags must be"):
        load_coco_keypoints(no_person)


def test_annotations_pycocotools_would_index_wrongly_are_refused(coco_mini, tmp_path):
    """pycocotools keeps the last entry of an id given twice (a perfect result file then
    scored AP 0.978): duplicate ids, an annotation of no category, a joint at 1e9, refused."""
    gt = json.loads((coco_mini / "annotations" / "person_keypoints_val2017.json").read_text())
    first = gt["annotations"][0]
    x_at = 3 * next(j for j in range(17) if first["keypoints"][3 * j + 2] > 0)

    def edited(path: str, value) -> dict:
        """``gt`` with the entry at ``path`` (keys and indices, '/'-separated) set to value."""
        data = json.loads(json.dumps(gt))
        *parents, last = [int(k) if k.isdigit() else k for k in path.split("/")]
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
        return data

    cases = [
        ("annotations/1/id", first["id"], r"annotations\[1\]: id \d+ is given twice"),
        ("images/1/id", gt["images"][0]["id"], r"images\[1\]: id \d+ is given twice"),
        ("annotations/0/category_id", 99,
         r"annotations\[0\]: category_id 99 is not among the categories"),
        (f"annotations/0/keypoints/{x_at}", 1e9,
         r"annotations\[0\]: keypoint \d+ \(1e\+09, [\d.]+\) lies far outside its \d+x\d+ image"),
    ]  # fmt: skip
    for path, value, message in cases:
        (tmp_path / "gt.json").write_text(json.dumps(edited(path, value)))
        with pytest.raises(DnasError, match=message):
            load_coco_keypoints(tmp_path / "gt.json")


def test_perturbed_predictions_match_direct_cocoeval(coco_mini, val, tmp_path):
    preds, vis = ground_truth(val)
    noisy = preds + np.random.default_rng(0).normal(0.0, 2.0, preds.shape)
    metrics = val.evaluate(noisy, vis, tmp_path)
    ann = coco_mini / "annotations" / "person_keypoints_val2017.json"
    res = tmp_path / "keypoints_val2017_results.json"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        coco_eval = COCOeval(gt, gt.loadRes(str(res)), "keypoints")
        coco_eval.params.useSegm = None
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    assert list(metrics.values.values()) == pytest.approx(list(coco_eval.stats))
    assert 0.5 < metrics.values["AP"] < 0.95
    assert coco_keypoint_ap(ann, res) == pytest.approx(metrics.values)
    shifted = val.evaluate(preds + 3.0, vis, None)  # a bigger error scores lower
    assert shifted.values["AP"] < metrics.values["AP"] and shifted.files == {}


def test_rescoring_uses_confident_joints(val, tmp_path):
    preds, vis = ground_truth(val)
    scores = np.where(vis > 0, 0.8, 0.1)  # 0.1 is below in_vis_threshold 0.2
    val.evaluate(preds, scores, tmp_path)
    results = json.loads((tmp_path / "keypoints_val2017_results.json").read_text())
    assert all(r["score"] == pytest.approx(0.8) for r in results)
    val.evaluate(preds, np.zeros_like(vis), tmp_path)  # no confident joint: person score 0
    results = json.loads((tmp_path / "keypoints_val2017_results.json").read_text())
    assert all(r["score"] == 0.0 for r in results)


def test_oks_nms_suppresses_duplicates_and_keeps_people():
    rng = np.random.default_rng(1)
    a = np.concatenate([rng.uniform(100, 200, (17, 2)), np.ones((17, 1))], 1)
    b = a.copy()
    b[:, :2] += 300  # another person far away
    near = a.copy()
    near[:, :2] += 0.5  # a duplicate of a
    poses = np.stack([a, near, b])
    areas = np.full(3, 100.0 * 100.0)
    assert oks_nms(poses, np.array([0.9, 0.8, 0.7]), areas, 0.9) == [0, 2]
    assert oks_nms(poses, np.array([0.5, 0.8, 0.7]), areas, 0.9) == [1, 2]
    assert oks_nms(poses, np.array([0.9, 0.8, 0.7]), areas, 1.0) == [0, 1, 2]
    d = np.sqrt(2 * 0.5**2)  # the OKS of the duplicate, from the definition
    sigmas = np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07,
                       1.07, 0.87, 0.87, 0.89, 0.89]) / 10  # COCO's, written out  # fmt: skip
    expected = np.exp(-(d**2) / (2 * 1e4 * (2 * sigmas) ** 2)).mean()
    assert oks_iou(a, poses, 1e4, areas) == pytest.approx([1.0, expected, 0.0], abs=1e-12)
    assert 0.9 < expected < 1.0


def test_detection_boxes(samples, tmp_path):
    dets = json.loads((samples / "test_coco_det_AP_H_56.json").read_text())
    opts = COCOOptions(
        annotation="test_coco.json",
        images=".",
        boxes="detections",
        detections="test_coco_det_AP_H_56.json",
        det_score_threshold=0.5,
    )
    ds = COCODataset(samples, "val2017", INPUT_HW, options=opts)
    kept = [d for d in dets if d["category_id"] == 1 and d["score"] >= 0.5]
    assert 0 < len(ds) == len(kept) < len(dets)
    for rec, det in zip(ds.records, kept, strict=True):
        assert rec.meta["image_id"] == det["image_id"] and rec.meta["score"] == det["score"]
        assert not rec.vis.any() and rec.image.is_file()
    assert tuple(ds[0]["input"].shape) == (3, 256, 192)
    metrics = ds.evaluate(np.zeros((len(ds), 17, 2)), np.ones((len(ds), 17)), tmp_path)
    assert metrics.values["AP"] == 0.0
    # identical poses: OKS-NMS keeps the best box of each image, scored box x joints (1)
    results = json.loads((tmp_path / "keypoints_val2017_results.json").read_text())
    best = {
        d["image_id"]: max(k["score"] for k in kept if k["image_id"] == d["image_id"]) for d in kept
    }
    assert sorted((r["image_id"], r["score"]) for r in results) == sorted(best.items())
    opts.det_score_threshold = 1.0  # above every detection: nothing to score, AP 0
    empty = COCODataset(samples, "val2017", INPUT_HW, options=opts)
    assert len(empty) == 0
    assert empty.evaluate(np.zeros((0, 17, 2)), np.zeros((0, 17)), None).values["AP"] == 0.0
    training = COCODataset(samples, "val2017", INPUT_HW, augment=Augment(), options=opts)
    assert all(r.meta["score"] == 1.0 for r in training.records)  # HRNet: train on gt people


def test_missing_detections_is_one_line_error(samples):
    opts = COCOOptions(annotation="test_coco.json", images=".", boxes="detections")
    with pytest.raises(DnasError, match="detections"):
        COCODataset(samples, "val2017", INPUT_HW, options=opts)
    opts.detections = "nowhere.json"
    missing = r"task.dataset_options.detections: no such file .*nowhere\.json"
    with pytest.raises(DnasError, match=missing) as err:
        COCODataset(samples, "val2017", INPUT_HW, options=opts)
    assert "\n" not in str(err.value)


def test_malformed_annotation_files(tmp_path, samples):
    with pytest.raises(DnasError, match="person_keypoints_val2017.json: cannot read"):
        COCODataset(tmp_path, "val2017", INPUT_HW)
    data = json.loads((samples / "test_coco.json").read_text())
    bad = tmp_path / "bad.json"
    data["annotations"][3]["keypoints"] = data["annotations"][3]["keypoints"][:-3]
    bad.write_text(json.dumps(data))
    with pytest.raises(DnasError, match=r"bad\.json: annotations\[3\]: keypoints must be 17"):
        load_coco_keypoints(bad)
    bad.write_text(json.dumps({"images": []}))
    (tmp_path / "val2017").mkdir()  # else the missing image folder is named first
    with pytest.raises(DnasError, match=r"bad\.json: not a COCO keypoints file"):
        COCODataset(tmp_path, "val2017", INPUT_HW, options=COCOOptions(annotation="bad.json"))
    bad.write_text("{")
    with pytest.raises(DnasError, match=r"bad\.json: not valid JSON"):
        load_coco_keypoints(bad)


def test_coco_keypoint_ap_on_files(samples, tmp_path):
    ann = samples / "test_coco.json"
    data = json.loads(ann.read_text())
    results = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in data["annotations"]
        if a["num_keypoints"] > 0
    ]
    res = tmp_path / "res.json"
    res.write_text(json.dumps(results))
    assert coco_keypoint_ap(ann, res)["AP"] == pytest.approx(1.0)
    res.write_text("[]")  # pycocotools' loadRes fails on it; an AP of 0 would hide the mistake
    with pytest.raises(DnasError, match=r"res\.json: an empty list: no keypoint results"):
        coco_keypoint_ap(ann, res)
    res.write_text(json.dumps([{**results[0], "image_id": 123456789}]))
    with pytest.raises(DnasError, match=r"res\.json: results\[0\]: image_id 123456789"):
        coco_keypoint_ap(ann, res)
    res.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(DnasError, match=r"res\.json: expected a JSON list"):
        coco_keypoint_ap(ann, res)


def test_a_missing_path_option_or_image_folder_is_named_at_set_up(coco_mini, tmp_path):
    """The option that named a missing file is the key in the error (with --set, which gave it
    here), and a split's missing image folder is found before training, not image by image."""
    from click.testing import CliRunner
    from conftest import TINY_ARCH, write_experiment

    from dnas.cli import cli

    task = {"name": "pose", "dataset": "coco", "root": str(coco_mini)}
    exp = write_experiment(tmp_path / "exp.yaml", coco_mini, task=task)
    base = ["train", str(exp), "--arch", str(TINY_ARCH), "-o", str(tmp_path / "out")]
    cases = {
        "annotation=none.json": f"Error: --set: task.dataset_options.annotation: no such file "
                                f"{coco_mini / 'none.json'} (a relative path is read under "
                                "task.root)",
        "images=nowhere": f"Error: --set: task.dataset_options.images: no such folder "
                          f"{coco_mini / 'nowhere'} (a relative path is read under task.root)",
        "detections=det.json": f"Error: --set: task.dataset_options.detections: no such file "
                               f"{coco_mini / 'det.json'} (a relative path is read under "
                               "task.root)",
    }  # fmt: skip
    for option, line in cases.items():
        result = CliRunner().invoke(cli, [*base, "--set", f"task.dataset_options.{option}"])
        assert result.exit_code == 1 and result.output.strip() == line, result.output
    root = tmp_path / "root"  # the annotations without the image folders
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        name = f"person_keypoints_{split}.json"
        (root / "annotations" / name).write_bytes((coco_mini / "annotations" / name).read_bytes())
    result = CliRunner().invoke(cli, [*base, "--set", f"task.root={root}"])
    assert result.exit_code == 1 and result.output.strip() == (
        f"Error: {root / 'train2017'}: no such folder, where split 'train2017' keeps its images "
        "(task.dataset_options.images names another)")  # fmt: skip
    assert not (tmp_path / "out").exists()
