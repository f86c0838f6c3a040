"""Untrusted and broken input, fuzzed through the real CLI with hypothesis.

Valid search spaces, architectures, experiments, annotation files, images and latency tables are
mutated (wrong types, missing and unknown keys, unknown ops, zero, negative and huge sizes, bad
strides, cycles and dangling inputs, non-mappings, invalid YAML, truncated or garbage files).
Every mutated input must be either accepted, and then the command runs (one step) and writes
its result, or rejected with exit code 1 and a one-line ``Error:`` naming the file (click's
usage errors too), never a traceback. Examples are derandomized; ``DNAS_FUZZ_SCALE=N``
runs N times as many.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
import yaml
from click.testing import CliRunner, Result
from conftest import TINY_SPACE
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from dnas.cli import cli
from dnas.space.graph import load_space

SCALE = max(1, int(os.environ.get("DNAS_FUZZ_SCALE", "1")))
TINY_ARCH = TINY_SPACE.parent / "tiny_arch.yaml"


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure reports as found
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


# ----------------------------------------------------------------------------- mutations

BAD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2, 3, 4, 7, 64, 16385, 10**6, 2**31, 2**63, 10**30, -(10**9),
    0.5, -0.5, 1e-300, 1e300, float("nan"), float("inf"), "", "x", "1e-3", "nan",
    "k3e6", "k4e6", "k3e0", "k3e99", "k99e1", "k0e1", "conv2", "conv3", "res3", "maxpool3",
    "skip", "stage1", "stage2", "stage3", "stage1.0", "stage3.0", "stage9.9", "stem", "stem.0",
    "input", "head", "pose", "mpii", "coco", "random", "darts", "latency", "cpu", "fp16",
    "bf16", [], [0], [8, 8], [-1, 64], ["k3e3"], ["k3e3", "k3e3"], [[]], {}, {"a": 1},
]  # fmt: skip
# Names a graph can refer to: forward references make cycles, unknown ones dangle.
NODE_NAMES = ["stage1", "stage2", "stage3", "stage1.0", "stage1.1", "stage2.1", "stage3.0",
              "stem", "stem.1", "input", "head", "stage4", "stage1.9", ""]  # fmt: skip

bad_values = st.one_of(
    st.sampled_from(BAD_VALUES),
    st.sampled_from(BAD_VALUES),
    st.integers(-3, 70),
    st.integers(-(2**70), 2**70),
    st.text(max_size=6),
    st.floats(allow_nan=True, allow_infinity=True),
)


def node_paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every position in a YAML/JSON tree: the root, each mapping key and each list item."""
    found = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += node_paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found += node_paths(value, (*prefix, i))
    return found


def get_at(doc: Any, path: tuple) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def set_at(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    get_at(doc, path[:-1])[path[-1]] = value
    return doc


def delete_at(doc: Any, path: tuple) -> Any:
    if path:
        del get_at(doc, path[:-1])[path[-1]]
    return doc


@st.composite
def mutated(draw: st.DrawFn, base: Any, graph: bool = False) -> Any:
    """``base`` with one to three random mutations (deep-copied)."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        paths = node_paths(doc)
        leaves = [p for p in paths if not isinstance(get_at(doc, p), dict | list)]
        path = draw(st.sampled_from(leaves if leaves and draw(st.integers(0, 3)) else paths))
        kinds = ["replace", "replace", "delete", "add_key", "wrap"]
        kinds += ["graph"] * 3 if graph else []
        kind = draw(st.sampled_from(kinds))
        node = get_at(doc, path)
        if kind == "replace":
            doc = set_at(doc, path, draw(bad_values))
        elif kind == "delete":
            doc = delete_at(doc, path) if path else draw(bad_values)
        elif kind == "wrap":
            doc = set_at(doc, path, [node] if draw(st.booleans()) else {"x": node})
        elif kind == "add_key":
            target = node if isinstance(node, dict) else doc
            if isinstance(target, dict):
                key = draw(st.sampled_from(["extra", "inputs", "input", "Width", "name", "1"]))
                target[key] = draw(bad_values)
        else:
            doc = _graph_mutation(draw, doc)
    return doc


def _graph_mutation(draw: st.DrawFn, doc: Any) -> Any:
    """Point a stage's ``input`` or the head's ``inputs`` at another node (cycles, dangling)."""
    if not isinstance(doc, dict):
        return doc
    stages = doc.get("stages")
    ref = draw(st.sampled_from(NODE_NAMES))
    if draw(st.booleans()) and isinstance(stages, list) and stages:
        stage = draw(st.sampled_from(stages))
        if isinstance(stage, dict):
            stage["input"] = ref
    elif isinstance(doc.get("head"), dict):
        doc["head"]["inputs"] = draw(st.sampled_from([ref, [ref], [ref, "stage3"]]))
    return doc


def write_doc(path: Path, doc: Any) -> Path:
    """YAML when it can be dumped; the repr otherwise (itself a kind of broken input)."""
    try:
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    except (yaml.YAMLError, ValueError):
        path.write_text(repr(doc))
    return path


# ----------------------------------------------------------------------------- the property


def run(args: list[Any]) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_clean(result: Result, output: Path, names: list[Any]) -> None:
    """Accepted: exit 0 and ``output`` written. Rejected: exit 1 and one ``Error:`` line that
    names one of ``names`` (or click's usage error, exit 2); never a traceback."""
    text = f"exit {result.exit_code}\n{result.output}"
    with contextlib.suppress(InvalidArgument):  # outside @given (parametrized tests)
        event(f"exit {result.exit_code}")
    assert "Traceback" not in result.output, text
    if result.exit_code == 0:
        assert output.exists(), text
        return
    assert isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{text}"
    )
    assert result.exit_code == 1, text
    stderr = result.stderr.strip()
    lines = stderr.splitlines()
    if os.environ.get("DNAS_FUZZ_LOG"):
        with open(os.environ["DNAS_FUZZ_LOG"], "a") as log:
            log.write(f"{lines[-1] if lines else ''}\n")
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    if lines[0].endswith(" --help')"):  # a usage error: it names the option, not the file
        return
    assert any(str(name) in lines[0] for name in names), f"names none of {names}: {text}"


def tame(doc: Any) -> Any:
    """Keep runs to one step: valid but long settings (many epochs, a big input, workers,
    random search's samples) are turned down; invalid ones are left for the CLI to reject."""
    if not isinstance(doc, dict):
        return doc
    search, train = doc.get("search"), doc.get("train")
    for section, keys in ((search, ("warmup_epochs", "epochs")), (train, ("epochs",))):
        if isinstance(section, dict):
            for key in keys:
                value = section.get(key)
                if type(value) is int and 1 < value <= 100_000:
                    section[key] = 1
            for key in ("steps_per_epoch",):
                value = section.get(key)
                if value is None or (type(value) is int and 1 < value <= 10**9):
                    section[key] = 1
            random = section.get("random")
            if section is search and isinstance(random, dict | type(None)):
                random = {"samples": 1, "epochs_per_arch": 1, **(random or {})}
                for key in ("samples", "epochs_per_arch"):
                    if type(random[key]) is int and 1 < random[key] <= 100_000:
                        random[key] = 1
                section["random"] = random
    size = doc.get("input_size")
    if isinstance(size, list):
        doc["input_size"] = [64 if type(v) is int and 64 < v <= 8192 else v for v in size]
    if type(doc.get("workers")) is int and 0 < doc["workers"] <= 256:
        doc["workers"] = 0
    return doc


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A tiny synthetic MPII set (the real loader and evaluator run on it)."""
    root = tmp_path_factory.mktemp("fuzz") / "synth"
    result = run(["data", "synth-mpii", root, "--train", 6, "--val", 2, "--size", 64])
    assert result.exit_code == 0, result.output
    return root


def experiment(root: Path, space: Path | str = TINY_SPACE) -> dict:
    """A valid tiny experiment with most keys spelt out, so mutations hit them."""
    return {
        "task": {"name": "pose", "root": str(root), "dataset": "mpii", "sigma": 2,
                 "heatmap_stride": 4, "augment": {"scale_factor": 0.25, "flip": True},
                 "test": {"flip": True, "decoding": "argmax"}},
        "space": str(space),
        "input_size": [32, 32],
        "head": {"deconv_widths": [8, 8]},
        "cost_model": {"type": "flops", "weight": 0.1, "tau": 10, "form": "log"},
        "search": {"strategy": "darts", "warmup_epochs": 1, "epochs": 1, "batch_size": 2,
                   "steps_per_epoch": 1, "arch_fraction": 0.2, "drop_path": 0.1,
                   "weight_optimizer": {"lr": 0.05, "momentum": 0.9},
                   "arch_optimizer": {"lr": 3.0e-4, "betas": [0.5, 0.999]}},
        "train": {"epochs": 1, "batch_size": 2, "steps_per_epoch": 1, "milestones": [1],
                  "eval_every": 1},
        "seed": 0,
        "workers": 0,
        "device": "cpu",
        "precision": "fp32",
    }  # fmt: skip


def search(exp: Path, out: Path, *extra: Any) -> Result:
    return run(["search", exp, "--out", out, *extra])


def train(exp: Path, arch: Path | str, out: Path, *extra: Any) -> Result:
    return run(["train", exp, "--arch", arch, "--out", out, *extra])


class Workdir:
    """A fresh directory per hypothesis example (function-scoped tmp_path is shared by all)."""

    def __init__(self, base: Path) -> None:
        self.base, self.count = base, 0

    def __call__(self) -> Path:
        self.count += 1
        path = self.base / f"ex{self.count}"
        path.mkdir()
        return path


@pytest.fixture
def workdir(tmp_path) -> Workdir:
    return Workdir(tmp_path)


# ----------------------------------------------------------------------------- spaces, archs

SPACE_DOC = yaml.safe_load(TINY_SPACE.read_text())
ARCH_DOC = yaml.safe_load(TINY_ARCH.read_text())
INPUT_SIZES = ["32x32", "32", "64x48", "8x8", "7x7", "0x0", "-32x32", "32x", "abc", "99999x99999",
               "8193x8", "100000000000000000000x8", "32x32x3", ""]  # fmt: skip


@fuzz(400)
@given(doc=st.one_of(mutated(SPACE_DOC, graph=True), mutated(ARCH_DOC, graph=True)))
def test_mutated_spaces_and_architectures_cost(workdir, doc):
    path = write_doc(workdir() / "space.yaml", doc)
    result = run(["cost", path, "--input-size", "32x32", "--format", "json"])
    assert_clean(result, path, [path])
    if result.exit_code == 0:
        report = json.loads(result.output.strip().splitlines()[-1])
        assert {"macs", "min_macs"} & set(report)


@fuzz(40)
@given(size=st.sampled_from(INPUT_SIZES), joints=st.sampled_from(["16", "0", "-1", "10**9",
                                                                 "100000000", "x"]))  # fmt: skip
def test_cost_input_size_and_outputs(workdir, size, joints):
    result = run(["cost", TINY_SPACE, "--input-size", size, "--joints", joints, "--format", "json"])
    assert_clean(result, TINY_SPACE, ["input size", "outputs", TINY_SPACE])


@fuzz(12)
@given(doc=mutated(ARCH_DOC, graph=True))
def test_mutated_architectures_train_one_step(workdir, synth_root, doc):
    work = workdir()
    arch = write_doc(work / "arch.yaml", doc)
    exp = work / "exp.yaml"
    exp.write_text(yaml.safe_dump(experiment(synth_root)))
    result = train(exp, arch, work / "out")
    assert_clean(result, work / "out" / "model.pt", [arch, exp])


@fuzz(12)
@given(doc=mutated(SPACE_DOC, graph=True))
def test_mutated_spaces_search_one_step(workdir, synth_root, doc):
    work = workdir()
    space = write_doc(work / "space.yaml", doc)
    exp = work / "exp.yaml"
    exp.write_text(yaml.safe_dump(experiment(synth_root, space)))
    result = search(exp, work / "out")
    assert_clean(result, work / "out" / "search.json", [space, exp])


# ----------------------------------------------------------------------------- experiments

OVERRIDE_KEYS = [
    "search.epochs",
    "search",
    "input_size",
    "task.root",
    "task",
    "seed",
    "cost_model.weight",
    "search.batch_size.x",
    "",
    "a..b",
    "train.milestones",
]
# fmt: skip


@fuzz(30)
@given(
    data=st.data(),
    override=st.one_of(st.none(), st.tuples(st.sampled_from(OVERRIDE_KEYS), bad_values)),
)
def test_mutated_experiments_search_one_step(workdir, synth_root, data, override):
    work = workdir()
    doc = tame(data.draw(mutated(experiment(synth_root))))
    exp = write_doc(work / "exp.yaml", doc)
    extra = []
    if override is not None:
        key, value = override
        extra = ["--set", f"{key}={json.dumps(value) if value == value else '.nan'}"]
    result = search(exp, work / "out", *extra)
    assert_clean(result, work / "out" / "search.json", [exp, "--set", synth_root])


BROKEN_YAML = [
    b"", b"just a string\n", b"- a\n- b\n", b"42\n", b"~\n", b"name: [unclosed\n",
    b"name: x\n\tstem: []\n", b"{a: 1, a: 2, b\n", b"\xff\xfe\x00garbage", b"name: \x00\n",
    b"&a [*a]\n", b"a: &a [*a, *a]\nb: *a\n", b"? [a, b]\n: 1\n", b"a: *unknown\n",
    b"!!python/object:os.system {}\n", b"[" * 5000, b"stem: &s {op: conv3}\nstages: *s\n",
]  # fmt: skip


@pytest.mark.parametrize("text", BROKEN_YAML)
def test_broken_yaml_text(tmp_path, synth_root, text):
    path = tmp_path / "broken.yaml"
    path.write_bytes(text)
    result = run(["cost", path, "--input-size", "32x32"])
    assert_clean(result, tmp_path / "never", [path])
    result = search(path, tmp_path / "out")
    assert_clean(result, tmp_path / "never", [path])
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(experiment(synth_root)))
    assert_clean(train(exp, path, tmp_path / "t"), tmp_path / "never", [path])


# ----------------------------------------------------------------------------- data files


@st.composite
def corrupted(draw: st.DrawFn, data: bytes) -> bytes:
    """Truncated, garbage, empty or bit-flipped file contents."""
    kind = draw(st.sampled_from(["truncate", "garbage", "empty", "flip", "prefix", "deep"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=200))
    if kind == "flip":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 20))):
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] = draw(st.integers(0, 255))
        return bytes(buf)
    if kind == "prefix":
        return draw(st.binary(min_size=1, max_size=16)) + data
    if kind == "deep":  # nesting deep enough to exhaust a recursive parser
        return b"[" * 100_000 + data
    return b""


def copy_root(src: Path, work: Path) -> Path:
    dst = work / "data"
    shutil.copytree(src, dst)
    return dst


def write_exp(work: Path, root: Path, **changes: Any) -> Path:
    doc = experiment(root)
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            doc[section][name] = value
        else:
            doc[section] = value
    path = work / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@fuzz(15)
@given(data=st.data())
def test_corrupt_images(workdir, synth_root, data):
    work = workdir()
    root = copy_root(synth_root, work)
    images = sorted((root / "images").glob("*.jpg"))
    broken = data.draw(corrupted(images[0].read_bytes()))
    for image in images:
        image.write_bytes(broken)
    exp = write_exp(work, root)
    result = search(exp, work / "out")
    assert_clean(result, work / "out" / "search.json", [root / "images"])


def test_corrupt_image_with_loader_workers(tmp_path, synth_root):
    root = copy_root(synth_root, tmp_path)
    for image in (root / "images").glob("*.jpg"):
        image.write_bytes(b"not a jpeg")
    exp = write_exp(tmp_path, root, workers=1)
    result = search(exp, tmp_path / "out")
    assert_clean(result, tmp_path / "out" / "search.json", [root / "images"])


@fuzz(12)
@given(data=st.data())
def test_broken_mpii_annotations(workdir, synth_root, data):
    work = workdir()
    root = copy_root(synth_root, work)
    path = root / "annot" / "train.json"
    if data.draw(st.booleans()):
        entries = json.loads(path.read_text())[:2]
        path.write_text(json.dumps(data.draw(mutated(entries))))
    else:
        path.write_bytes(data.draw(corrupted(path.read_bytes())))
    exp = write_exp(work, root)
    result = search(exp, work / "out")
    assert_clean(result, work / "out" / "search.json", [path, root / "images"])


def _gt_valid_variants(n: int) -> list[dict]:
    good = {"pos_gt_src": np.ones((16, 2, n)), "jnt_missing": np.zeros((16, n)),
            "headboxes_src": np.ones((2, 2, n))}  # fmt: skip
    return [
        {k: v for k, v in good.items() if k != "jnt_missing"},
        {**good, "pos_gt_src": np.ones((16, 2))},
        {**good, "headboxes_src": np.ones((2, 2, n + 1))},
        {**good, "pos_gt_src": np.array(["a", "b"])},
        {**good, "jnt_missing": {"a": 1}},
        {"x": np.zeros(3)},
    ]


@fuzz(6)
@given(data=st.data())
def test_broken_gt_valid_mat(workdir, synth_root, data):
    work = workdir()
    root = copy_root(synth_root, work)
    path = root / "annot" / "gt_valid.mat"
    if data.draw(st.booleans()):
        scipy.io.savemat(path, data.draw(st.sampled_from(_gt_valid_variants(2))))
    else:
        path.write_bytes(data.draw(corrupted(path.read_bytes())))
    exp = write_exp(work, root)
    result = train(exp, TINY_ARCH, work / "out")
    assert_clean(result, work / "out" / "model.pt", [path])


@pytest.fixture(scope="session")
def coco_root(synth_root, tmp_path_factory) -> Path:
    """Two synthetic images as a COCO person-keypoints split (``train2017``)."""
    root = tmp_path_factory.mktemp("coco")
    (root / "annotations").mkdir()
    (root / "train2017").mkdir()
    entries = json.loads((synth_root / "annot" / "train.json").read_text())[:4]
    images, annotations = [], []
    for i, e in enumerate(entries, 1):
        shutil.copy(synth_root / "images" / e["image"], root / "train2017" / e["image"])
        images.append({"id": i, "file_name": e["image"], "width": 64, "height": 64})
        xs = [min(max(x - 1, 0), 63) for x, _ in e["joints"]]
        ys = [min(max(y - 1, 0), 63) for _, y in e["joints"]]
        kpts = [v for x, y in zip(xs[:17], ys[:17], strict=False) for v in (x, y, 2)]
        kpts += [0, 0, 0] * (17 - len(kpts) // 3)
        annotations.append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0,
                            "bbox": [min(xs), min(ys), max(xs) - min(xs) + 1,
                                     max(ys) - min(ys) + 1],
                            "area": 100.0, "keypoints": kpts, "num_keypoints": 16})  # fmt: skip
    doc = {"images": images, "annotations": annotations,
           "categories": [{"id": 1, "name": "person"}]}  # fmt: skip
    (root / "annotations" / "person_keypoints_train2017.json").write_text(json.dumps(doc))
    return root


@fuzz(10)
@given(data=st.data())
def test_broken_coco_annotations(workdir, coco_root, data):
    work = workdir()
    root = copy_root(coco_root, work)
    path = root / "annotations" / "person_keypoints_train2017.json"
    if data.draw(st.integers(0, 3)):
        doc = json.loads(path.read_text())
        path.write_text(json.dumps(data.draw(mutated(doc))))
    else:
        path.write_bytes(data.draw(corrupted(path.read_bytes())))
    task = {"name": "pose", "root": str(root), "dataset": "coco"}
    exp = write_exp(work, root, task=task)
    result = search(exp, work / "out")
    assert_clean(result, work / "out" / "search.json", [path, root / "train2017"])


@pytest.fixture(scope="session")
def lsp_root(synth_root, tmp_path_factory) -> Path:
    """Six synthetic images as LSP-extended: joints.mat (14, 3, N) and images/im%05d.jpg."""
    root = tmp_path_factory.mktemp("lsp")
    (root / "images").mkdir()
    entries = json.loads((synth_root / "annot" / "train.json").read_text())[:6]
    joints = np.zeros((14, 3, len(entries)))
    for i, e in enumerate(entries):
        shutil.copy(synth_root / "images" / e["image"], root / "images" / f"im{i + 1:05d}.jpg")
        joints[:, :2, i] = np.asarray(e["joints"])[:14]
        joints[:, 2, i] = 1
    scipy.io.savemat(root / "joints.mat", {"joints": joints})
    return root


def _lsp_variants(n: int) -> list[Any]:
    return [np.zeros((14, 2, n)), np.zeros((3, 14)), np.full((14, 3, n), np.nan),
            np.full((14, 3, n), np.inf), np.array(["a", "b"]), {"a": 1}, np.zeros((0, 0, 0)),
            np.zeros((14, 3, 1)), np.ones((14, 3, n)) * 20]  # fmt: skip


@fuzz(15)
@given(data=st.data())
def test_broken_lsp_joints(workdir, lsp_root, data):
    work = workdir()
    root = copy_root(lsp_root, work)
    path = root / "joints.mat"
    if data.draw(st.booleans()):
        key = data.draw(st.sampled_from(["joints", "joints", "other"]))
        scipy.io.savemat(path, {key: data.draw(st.sampled_from(_lsp_variants(6)))})
    else:
        path.write_bytes(data.draw(corrupted(path.read_bytes())))
    task = {"name": "pose", "root": str(root), "dataset": "lsp",
            "dataset_options": {"train_range": [0, 4], "val_range": [4, 6]}}  # fmt: skip
    exp = write_exp(work, root, task=task)
    result = search(exp, work / "out")
    assert_clean(result, work / "out" / "search.json", [path, "task.dataset_options"])


def latency_table(space_ref: Path, input_hw: tuple[int, int]) -> dict:
    """A well-formed table for ``space_ref`` as ``dnas lut build`` writes it (made-up times)."""
    space = load_space(space_ref)
    shapes = space.infer_shapes(*input_hw)
    table: dict = {"fixed": {"head": 0.1}, "layers": {}, "shapes": {}}
    for layer in space.layers:
        table["shapes"][layer.name] = list(shapes[layer.input])
        if layer.searchable:
            table["layers"][layer.name] = {
                op: 0.01 * (i + 1) for i, op in enumerate(layer.candidates)
            }
        else:
            table["fixed"][layer.name] = 0.02
    table.update(scale=1.1, overhead_ms=0.05)
    table["meta"] = {"space": space.name, "input": list(input_hw), "num_outputs": 16,
                     "batch": 1, "device": "cpu", "threads": 1}  # fmt: skip
    return table


LATENCY_TABLE = latency_table(TINY_SPACE, (32, 32))


@fuzz(20)
@given(data=st.data())
def test_broken_latency_tables(workdir, synth_root, data):
    work = workdir()
    path = work / "table.json"
    kind = data.draw(st.sampled_from(["mutate", "mutate", "mutate", "bytes", "other shape"]))
    if kind == "mutate":
        path.write_text(json.dumps(data.draw(mutated(LATENCY_TABLE))))
    elif kind == "bytes":
        path.write_bytes(data.draw(corrupted(json.dumps(LATENCY_TABLE).encode())))
    else:
        path.write_text(json.dumps(latency_table(TINY_SPACE, (64, 64))))
    exp = write_exp(work, synth_root)
    result = search(exp, work / "out", "--cost-model", "latency", "--cost-table", path)
    assert_clean(result, work / "out" / "search.json", [path])


def test_in_channels_that_the_task_cannot_feed(tmp_path, synth_root):
    arch = tmp_path / "arch.yaml"
    arch.write_text(yaml.safe_dump({**ARCH_DOC, "in_channels": 4}))
    exp = write_exp(tmp_path, synth_root)
    assert_clean(train(exp, arch, tmp_path / "out"), tmp_path / "out" / "model.pt", [arch])
