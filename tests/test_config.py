"""Experiment YAML: paper defaults, overrides, and one-line errors naming file and key."""

from __future__ import annotations

import warnings

import pytest

from dnas.config import (
    FORM_KEYS,
    CostConfig,
    Experiment,
    band_around,
    checked,
    experiment_from_dict,
    form_reads,
    load_experiment,
)
from dnas.errors import ConfigError, brief


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_paper_defaults(tmp_path):
    exp = load_experiment(write(tmp_path, "task: {name: pose, root: data}\n"))
    s, t = exp.search, exp.train
    assert (s.warmup_epochs, s.epochs, s.batch_size, s.arch_fraction) == (60, 150, 32, 0.2)
    w, a = s.weight_optimizer, s.arch_optimizer
    assert (w.lr, w.momentum, w.weight_decay, a.lr) == (0.05, 0.9, 1e-4, 3e-4)
    assert (t.epochs, t.lr, t.milestones, t.gamma, t.batch_size) == (200, 1e-3, [150, 170], 0.1, 32)
    assert exp.input_hw == (256, 256)


def test_search_weight_optimizer_is_sgd_or_adam(tmp_path):
    import torch

    from dnas.engine.runtime import search_weight_optimizer

    params = [torch.nn.Parameter(torch.ones(3))]
    exp = load_experiment(write(tmp_path, "task: {name: pose, root: data}\n"))
    sgd = search_weight_optimizer(params, exp.search.weight_optimizer)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    exp = load_experiment(
        write(tmp_path, "task: {name: pose, root: data}\n"),
        [
            "search.weight_optimizer.type=adam",
            "search.weight_optimizer.lr=2e-3",
            "search.weight_optimizer.betas=[0.8, 0.99]",
            "search.weight_optimizer.weight_decay=0",
        ],
    )
    adam = search_weight_optimizer(params, exp.search.weight_optimizer)
    assert isinstance(adam, torch.optim.Adam)
    assert (adam.defaults["lr"], adam.defaults["betas"], adam.defaults["weight_decay"]) == (
        2e-3,
        (0.8, 0.99),
        0.0,
    )


def test_optimisers_take_the_multi_tensor_kernels_with_the_same_updates(tmp_path):
    """Search and training optimisers run torch's foreach kernels (on CPU torch would loop over
    tensors); the updates must equal the per-tensor loop's bit for bit."""
    import torch

    from dnas.engine.runtime import adam, search_weight_optimizer

    exp = load_experiment(write(tmp_path, "task: {name: pose, root: data}\n"))
    params = [torch.nn.Parameter(torch.ones(3))]
    assert search_weight_optimizer(params, exp.search.weight_optimizer).defaults["foreach"]
    exp.search.weight_optimizer.type = "adam"
    assert search_weight_optimizer(params, exp.search.weight_optimizer).defaults["foreach"]
    cases = [(lambda p, f: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=f),
              lambda p: search_weight_optimizer(p, exp.search.weight_optimizer)),
             (lambda p, f: torch.optim.Adam(p, lr=1e-2, betas=(0.5, 0.99), weight_decay=1e-3,
                                            foreach=f),
              lambda p: adam(p, 1e-2, (0.5, 0.99), 1e-3))]  # fmt: skip
    exp.search.weight_optimizer.type = "sgd"
    exp.search.weight_optimizer.lr, exp.search.weight_optimizer.weight_decay = 0.1, 1e-4
    gen = torch.Generator().manual_seed(0)
    shapes = [(8, 3, 3, 3), (8,), (5, 7), (1,)]
    for loop_opt, ours in cases:
        start = [torch.randn(s, generator=gen) for s in shapes]
        a = [torch.nn.Parameter(t.clone()) for t in start]
        b = [torch.nn.Parameter(t.clone()) for t in start]
        opts = [loop_opt(a, False), ours(b)]
        for _ in range(5):
            grads = [torch.randn(s, generator=gen) for s in shapes]
            for group, opt in zip((a, b), opts, strict=True):
                for p, g in zip(group, grads, strict=True):
                    p.grad = g.clone()
                opt.step()
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        assert not all(torch.equal(x, t) for x, t in zip(a, start, strict=True))


def test_a_checkpoint_from_before_the_multi_tensor_kernels_resumes_on_them(tmp_path):
    """torch's load_state_dict takes the saved groups' foreach (None before ``adam``)."""
    import torch

    from dnas.engine.runtime import adam, load_optimizer_state, search_weight_optimizer

    exp = load_experiment(write(tmp_path, "task: {name: pose, root: data}\n"))
    params = [torch.nn.Parameter(torch.ones(3))]
    params[0].grad = torch.ones(3)
    for old, ours, key in [
        (torch.optim.SGD(params, lr=0.1, momentum=0.9), lambda p: search_weight_optimizer(
            p, exp.search.weight_optimizer), "search.weight_optimizer.type"),
        (torch.optim.Adam(params, lr=0.1), lambda p: adam(p, 0.1), None),
    ]:  # fmt: skip
        old.step()
        assert old.state_dict()["param_groups"][0]["foreach"] is None
        resumed = ours(params)
        load_optimizer_state(resumed, old.state_dict(), key)
        assert resumed.param_groups[0]["foreach"] is True
        assert resumed.state_dict()["state"][0].keys() == old.state_dict()["state"][0].keys()


def test_overrides_and_numeric_strings(tmp_path):
    path = write(tmp_path, "task: {name: pose, root: data}\nsearch: {arch_optimizer: {lr: 1e-3}}\n")
    exp = load_experiment(
        path, ["search.epochs=3", "cost_model.weight=0.5", "input_size=[128, 96]"]
    )
    assert exp.search.epochs == 3 and exp.cost_model.weight == 0.5 and exp.input_hw == (128, 96)
    assert exp.search.arch_optimizer.lr == 1e-3  # PyYAML reads "1e-3" as a string


@pytest.mark.parametrize(("override", "key"), [
    ("search.epochs=abc", "search.epochs"),
    ("search={epochs: abc}", "search.epochs"),  # inside a section --set replaced
    ("train.milestones=[0]", "train.milestones"),
    ("nosuch.key=1", "nosuch"),  # a section --set made, unknown as a whole
    ("train.x.y=1", "train.x"),
])  # fmt: skip
def test_a_wrong_value_given_by_set_is_blamed_on_set_not_the_file(tmp_path, override, key):
    path = write(tmp_path, "task: {name: pose, root: data}\nsearch: {epochs: 2}\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(path, ["seed=1", override])
    assert (info.value.source, info.value.key) == ("--set", key)
    wrong_in_file = write(tmp_path, "task: {name: pose, root: data}\nsearch: {epochs: x}\n")
    with pytest.raises(ConfigError) as info:  # the file's own mistake, beside an override
        load_experiment(wrong_in_file, ["search.warmup_epochs=1"])
    assert (info.value.source, info.value.key) == (str(wrong_in_file), "search.epochs")


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("search: {epochs: 2}\n", "task", "missing required key"),
        ("task: {root: x}\n", "task.name", "missing required key"),
        ("task: {name: pose, root: x}\nsearch: {epoch: 2}\n", "search.epoch", "unknown key"),
        ("task: {name: pose, root: x}\nsearch: {epochs: two}\n", "search.epochs", "an integer"),
        ("task: {name: pose, root: x}\nsearch: {arch_fraction: 1.5}\n", "search.arch_fraction",
         "<= 0.99"),
        ("task: {name: pose, root: x}\ntrain: {milestones: [-1]}\n", "train.milestones", ">= 1"),
        ("task: {name: pose, root: x}\ninput_size: [64]\n", "input_size", "[height, width]"),
        ("task: {name: pose, root: x}\nsearch: {weight_optimizer: {type: rmsprop}}\n",
         "search.weight_optimizer.type", "expected one of sgd, adam"),
        ("task: {name: pose, root: x}\nsearch: {weight_optimizer: {betas: [0.9]}}\n",
         "search.weight_optimizer.betas", "expected two numbers"),
    ],
)  # fmt: skip
def test_errors_name_file_and_key(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert info.value.key == key and words in info.value.detail
    assert str(info.value).startswith(f"{path}: {key}: ")


def test_a_key_given_twice_is_refused(tmp_path):
    """PyYAML keeps the last of two equal keys without a word; a config must not."""
    path = write(tmp_path, "seed: 0\ntask: {name: pose, root: x}\nseed: 3\n")
    with pytest.raises(ConfigError, match=r"exp.yaml: invalid YAML: line 3, column 1: duplicate "
                       r"key 'seed'"):  # fmt: skip
        load_experiment(path)
    nested = write(tmp_path, "task: {name: pose, root: x}\ncost_model: {target: 1, target: 5}\n")
    with pytest.raises(ConfigError, match="duplicate key 'target'"):
        load_experiment(nested)
    with pytest.raises(
        ConfigError, match=r"--set: search: cannot parse .* \(duplicate key 'epochs'\)"
    ):
        load_experiment(write(tmp_path, "task: {name: pose, root: x}\n"),
                        ["search={epochs: 1, epochs: 2}"])  # fmt: skip


def test_unknown_task_option_is_named(tmp_path):
    from dnas.task import build_task

    exp = load_experiment(write(tmp_path, "task: {name: pose, root: x, sigmaa: 2}\n"))
    with pytest.raises(ConfigError, match=r"exp.yaml: task.sigmaa: unknown key"):
        build_task(exp)
    unknown = r"exp.yaml: task.name: unknown task 'segmentation-x' \(registered: pose, "
    with pytest.raises(ConfigError, match=unknown):  # named when the file is read
        load_experiment(write(tmp_path, "task: {name: segmentation-x}\n"))
    with pytest.raises(ConfigError, match=unknown):  # and for an Experiment made in code
        build_task(Experiment(task={"name": "segmentation-x"}, source=str(tmp_path / "exp.yaml")))


def test_a_broken_plugin_warns_and_the_rest_load(monkeypatch):
    from importlib.metadata import EntryPoint

    from dnas import registry

    broken = EntryPoint("broken", "dnas_no_such_plugin_module", registry.PLUGIN_GROUP)
    real = registry.entry_points
    monkeypatch.setattr(registry, "entry_points", lambda group: [*real(group=group), broken])
    monkeypatch.setattr(registry, "_loaded", False)
    with pytest.warns(UserWarning, match=r"dnas plugin 'broken' \(dnas_no_such_plugin_module\)"):
        registry.load_plugins()
    assert "pose" in registry.TASKS.names()


def test_a_missing_space_is_the_tasks_default(tmp_path, monkeypatch):
    from dnas.registry import TASKS
    from dnas.task import build_space, build_task

    for task in ("pose", "segmentation"):
        exp = load_experiment(write(tmp_path, f"task: {{name: {task}, root: x}}\n"))
        assert exp.space == TASKS.get(task).default_space == "mbv2_pose_small"
    named = load_experiment(write(tmp_path, "task: {name: pose, root: x}\nspace: tiny.yaml\n"))
    assert named.space == "tiny.yaml"
    direct = Experiment(task={"name": "pose", "root": "x"}, source="api")  # space None
    assert build_space(direct.space, build_task(direct), direct).name == "mbv2_pose_small"
    monkeypatch.setattr(TASKS.get("pose"), "default_space", None)  # a task without one
    exp = load_experiment(write(tmp_path, "task: {name: pose, root: x}\n"))
    assert exp.space is None  # fine for train and eval, which take --arch
    with pytest.raises(ConfigError, match=r"exp.yaml: space: missing required key \(the pose"):
        build_space(exp.space, build_task(exp), exp)  # a search needs one
    with pytest.raises(ConfigError, match=r"task.name: missing required key \(one of: .*pose"):
        load_experiment(write(tmp_path, "task: {root: x}\n"))


def test_the_keys_an_unknown_key_is_checked_against_are_the_yaml_keys(tmp_path):
    """Experiment.source is the file's path, set in code: no key a config may write."""
    path = write(tmp_path, "task: {name: pose, root: data}\nbogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert info.value.key == "bogus" and "pictures" in info.value.detail
    assert "source" not in info.value.detail


def test_a_source_key_is_ignored_with_a_warning_and_only_in_a_file(tmp_path):
    """Runs recorded before 2026-12-01 wrote ``source:`` into config.yaml: they still load, but
    a ``source:`` is never dropped without a word; the API's dict form refuses it as a key."""
    path = write(tmp_path, "task: {name: pose, root: data}\nsource: /old/exp.yaml\n")
    with pytest.warns(UserWarning, match=r"exp.yaml: key 'source' ignored: it is no experiment"):
        exp = load_experiment(path)
    assert exp.source == str(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checked(exp).source == str(path)  # its own round trip is silent
    with pytest.raises(ConfigError, match="source"):
        experiment_from_dict({"task": {"name": "pose", "root": "x"}, "source": "y"}, "api")


def test_a_value_no_alternative_of_a_union_takes_is_one_plain_error():
    """A list of the wrong items is that list's error, naming the item; another kind says what
    each alternative expects, once (it read 'expected a string, got int 1 or expected a string,
    got list [1]')."""
    from dnas.schema import check_value

    cases = [
        (1, "task.categories: expected a list or a string, got int 1"),
        ([1], "task.categories[0]: expected a string, got int 1"),
        ({"a": 1}, "task.categories: expected a list or a string, got dict {'a': 1}"),
    ]
    for value, message in cases:
        with pytest.raises(ConfigError) as info:
            check_value(value, list[str] | str, "f.yaml", "task.categories")
        assert str(info.value) == f"f.yaml: {message}"
    assert check_value(["a"], list[str] | str, "f.yaml", "k") == ["a"]


def test_a_band_is_the_share_either_side_of_its_cost_and_forms_read_their_keys():
    assert band_around(100.0, 0.03) == pytest.approx((97.0, 103.0))
    assert CostConfig(form="budget", target=50.0, tolerance=0.02).band() == band_around(50.0, 0.02)
    targeted = [form for form in FORM_KEYS if form_reads(form, "target")]
    assert targeted == ["budget", "hinge", "power"]
    assert not form_reads("relative", "target") and not form_reads("no-such-form", "weight")


def test_another_librarys_error_is_its_type_and_first_line_cut_to_200_characters():
    assert brief(ValueError("bad shape\nsecond line")) == "ValueError: bad shape"
    assert brief(KeyError("x" * 500)) == "KeyError: '" + "x" * 199
    assert brief(RuntimeError()) == "RuntimeError: "
    assert brief(OSError("\n  \nthe reason\nmore")) == "OSError: the reason"
