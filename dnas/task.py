"""The task plugin interface: what the core needs from a dense-prediction task.

A task turns its own ``task:`` options into datasets, a loss, a default head and an evaluator.
Tasks register under a name in ``dnas.registry.TASKS``; the core never imports one directly.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dnas.config import Experiment
from dnas.errors import ConfigError, DnasError, listing
from dnas.registry import TASKS, check_concrete, head_class
from dnas.schema import from_dict, is_finite_number
from dnas.space.graph import SearchSpace, load_space, space_from_dict


@dataclass
class Metrics:
    """Evaluation result: named values (the primary one drives model selection) and a table."""

    values: dict[str, float]
    primary: str
    table: str = ""
    files: dict[str, str] = field(default_factory=dict)
    label: str = ""  # what the primary value is, for axes and tables, e.g. "PCKh@0.5, mean"

    @property
    def primary_label(self) -> str:
        return self.label or self.primary

    @property
    def score(self) -> float:
        return self.values[self.primary]


class Task(ABC):
    """A dense-prediction task plugin: its datasets, loss, head default and evaluation; the
    core runs any registered task without naming it (docs/adding_a_task.md)."""

    name: str = ""  # the name it is registered and written under (build_task sets it)
    Options: ClassVar[type]  # a dataclass: the task's keys under ``task:`` in the experiment YAML
    in_channels: ClassVar[int] = 3  # channels of the ``input`` tensors its datasets yield
    default_space: ClassVar[str | None] = None  # searched when the experiment names no space
    # how its inputs are made from images (recorded with trained weights for deployment):
    # e.g. {"scale": 1/255, "mean": [...], "std": [...], "channels": "RGB"}
    preprocess: ClassVar[dict[str, Any]] = {}
    image_command: ClassVar[str] = ""  # the plugin's CLI command that runs its nets on one image

    def __init__(self, options: Any, input_hw: tuple[int, int], source: str) -> None:
        self.options = options
        self.input_hw = input_hw
        self.source = source

    @property
    @abstractmethod
    def num_outputs(self) -> int:
        """Output channels of the head (one per heatmap, class, ...)."""

    @abstractmethod
    def default_head(self) -> dict[str, Any]:
        """The ``head:`` section used when neither the space nor the experiment gives one."""

    @abstractmethod
    def dataset(self, split: str, augment: bool, seed: int = 0) -> Dataset:
        """The ``train`` or ``val`` split; items are dicts with an ``input`` tensor; ``seed``
        seeds the augmentation."""

    @abstractmethod
    def loss(self, output: Tensor, batch: dict[str, Any]) -> Tensor:
        """The task loss of a batch (a scalar)."""

    def output_info(self) -> dict[str, Any]:
        """What a deployer needs to read the outputs (e.g. the joint or class names and the
        dataset): recorded with trained weights and in exported ONNX files."""
        return {}

    def check_output_shape(self, shape: tuple[int, int, int]) -> None:  # noqa: B027 optional
        """Refuse (ConfigError) a head whose output per input, (C, H, W), this task cannot
        score at its input size. Checked before a run writes anything; default: any shape."""

    def evaluate(
        self,
        model: nn.Module,
        loader: DataLoader,
        device: torch.device,
        out_dir: Path | None,
        save_vis: int = 0,
    ) -> Metrics:
        """Score ``model`` on ``loader``; may write prediction files into ``out_dir``, and
        pictures of the first ``save_vis`` predictions beside their ground truth. A task that
        implements :meth:`predict` and :meth:`score` instead is scored in slices under torchrun
        (each process predicts a slice; rank 0 scores them)."""
        return self.score(loader.dataset, [self.predict(model, loader, device, save_vis)],
                          out_dir, save_vis)  # fmt: skip

    def predict(self, model: nn.Module, loader: DataLoader, device: torch.device,
                keep: int = 0) -> Any:  # fmt: skip
        """Optional, with :meth:`score`: what scoring needs of ``model``'s outputs on the items
        of ``loader``, a contiguous slice of the split (picklable: processes send it to rank 0);
        ``keep`` is how many of its first items the pictures of ``save_vis`` need."""
        raise NotImplementedError(f"{type(self).__qualname__}.predict")

    def score(self, dataset: Dataset, parts: list[Any], out_dir: Path | None,
              save_vis: int = 0) -> Metrics:  # fmt: skip
        """Optional, with :meth:`predict`: the metrics of ``dataset``, the whole split, from
        ``parts``: the :meth:`predict` results of its slices, in order."""
        raise NotImplementedError(f"{type(self).__qualname__}.score")


def scores_in_slices(task: Task) -> bool:
    """Whether ``task`` is scored by :meth:`Task.predict` on slices of the split and
    :meth:`Task.score` of them (it implements both and leaves ``evaluate`` as the base's)."""
    cls = type(task)
    return (cls.evaluate is Task.evaluate and cls.predict is not Task.predict
            and cls.score is not Task.score)  # fmt: skip


# how the core calls a task that is scored in slices
SLICE_CALLS = {"predict": ("model", "loader", "device", "keep"),
               "score": ("dataset", "parts", "out_dir", "save_vis")}  # fmt: skip


def check_evaluation(cls: type, name: str) -> None:
    """A task implements ``evaluate``, or ``predict`` and ``score`` callable as the core calls
    them (an older ``predict`` without ``keep``, or a helper of that name): else one line."""
    if cls.evaluate is not Task.evaluate:
        return
    where = f"task {name!r} ({cls.__module__}.{cls.__qualname__})"
    missing = [m for m in SLICE_CALLS if getattr(cls, m) is getattr(Task, m)]
    if missing:
        raise DnasError(f"{where} does not implement evaluate (or predict and score: it lacks "
                        f"{' and '.join(missing)})")  # fmt: skip
    for method, args in SLICE_CALLS.items():
        try:
            signature = inspect.signature(getattr(cls, method))
        except ValueError:  # no signature to read (a compiled function): taken as it is
            continue
        try:
            signature.bind(None, *args)
        except TypeError:
            raise DnasError(f"{where}: {method}{signature} cannot be called as "
                            f"{method}({', '.join(args)}); implement that, or evaluate "
                            "(docs/adding_a_task.md)") from None  # fmt: skip


def build_task(exp: Experiment) -> Task:
    """The task ``exp.task`` names, with its options (``task:`` keys) checked."""
    if not isinstance(exp, Experiment):
        raise DnasError(f"build_task: expected an Experiment (dnas.load_experiment), got {exp!r}")
    options = dict(exp.task)
    name = options.pop("name")
    try:
        cls = TASKS.get(name)
    except DnasError as exc:
        raise ConfigError(exp.source, "task.name", str(exc)) from None
    check_concrete(cls, "task", name, needs_options=True)
    check_evaluation(cls, name)
    task = cls(from_dict(cls.Options, options, exp.source, "task"), exp.input_hw, exp.source)
    task.name = name  # a subclass registered under another name records that one in weights
    return task


def check_weights_task(info: Mapping[str, Any] | None, path: Path, name: str,
                       doing: str) -> None:  # fmt: skip
    """Weights recorded as another task's are refused in one line that names what the command
    does and the command that runs those weights on an image (their task's ``image_command``)."""
    task = (info or {}).get("task")
    if task is None or task == name:
        return
    try:
        command = TASKS.get(task).image_command
    except DnasError:  # a task whose plugin is not installed here
        command = ""
    other = f" (dnas {command} runs {task} weights on an image)" if command else ""
    raise DnasError(f"{path}: {task} weights; {doing}{other}")


def evaluate(task: Task, model: nn.Module, loader: DataLoader, device: torch.device,
             out_dir: Path | None, save_vis: int = 0) -> Metrics:  # fmt: skip
    """``task.evaluate``, its result checked (:func:`checked_metrics`)."""
    return checked_metrics(task, task.evaluate(model, loader, device, out_dir, save_vis))


def checked_metrics(task: Task, metrics: Any) -> Metrics:
    """A task's evaluation result checked: a plugin's malformed ``Metrics`` (or a score that
    is not a number) is one line naming it, not a KeyError or a NaN in results.json."""
    method = "evaluate" if not scores_in_slices(task) else "score"
    where = f"task {task.name!r} ({type(task).__module__}.{type(task).__qualname__}): {method}()"
    if not isinstance(metrics, Metrics):
        raise DnasError(f"{where} returned a {type(metrics).__name__}, not a dnas.Metrics")
    if metrics.primary not in metrics.values:
        raise DnasError(f"{where}: its primary {metrics.primary!r} is not among its values "
                        f"({listing(sorted(map(str, metrics.values)), 6)})")  # fmt: skip
    if not is_finite_number(metrics.score):
        raise DnasError(f"{where}: {metrics.primary} is {metrics.score!r}, not a finite number "
                        "(a net that diverged?)")  # fmt: skip
    return metrics


def build_space(ref: str | None, task: Task, exp: Experiment,
                option: str | None = None) -> SearchSpace:  # fmt: skip
    """Load a space or architecture (None: the task's ``default_space``) and settle its head:
    the space's own ``head:`` section, else the task's default, with the experiment's ``head:``
    keys laid over it. ``option`` names the command-line option ``ref`` came from (``--arch``),
    which a missing file's error then names instead of the config's ``space``."""
    ref = ref or task.default_space
    if ref is None:
        raise ConfigError(exp.source, "space", f"missing required key (the {task.name} task "
                                               "has no default space)")  # fmt: skip
    try:
        space = load_space(ref)
    except ConfigError as exc:
        if exc.source != str(ref) or exc.key:  # a problem inside the space file: it names it
            raise
        if option is not None:
            raise DnasError(f"{option} {ref}: {exc.detail}") from None
        raise ConfigError(exp.source, "space", f"{ref}: {exc.detail} (relative paths are read "
                          "from the current directory or beside the config)") from None  # fmt: skip
    if space.head is None:
        head: dict[str, Any] = task_default_head(task, exp.head.get("type"))
    else:
        head = {"type": space.head.type, "inputs": list(space.head.inputs), **space.head.options}
    if exp.head.get("type", head["type"]) != head["type"]:
        head = {k: v for k, v in head.items() if k == "inputs"}  # new head type: drop old options
    head.update(exp.head)
    if space.in_channels != task.in_channels:
        raise ConfigError(space.source, "in_channels", f"{space.in_channels}, but the "
                          f"{task.name} task feeds {task.in_channels}-channel inputs")  # fmt: skip
    data = space.to_dict()
    data["head"] = head
    if space.head is None and not exp.head:  # the task's head alone: its faults are the plugin's
        try:
            return space_from_dict(data, source=space.source)
        except ConfigError as exc:
            if not exc.key.startswith("head"):
                raise
            raise ConfigError(default_head_source(task), exc.key, exc.detail) from None
    return space_from_dict(data, source=space.source if not exp.head else exp.source)


def default_head_source(task: Task) -> str:
    """What errors in a task's default head section name instead of a file."""
    return f"task {task.name!r} ({type(task).__module__}.{type(task).__qualname__}): default_head()"


def task_default_head(task: Task, replaced_by: str | None = None) -> dict[str, Any]:
    """``task.default_head()`` checked: a mapping whose ``type`` names a registered head with
    options it declares; a plugin's mistake is one line naming the task, not the space file.
    An experiment's ``head: {type: ...}`` of another type (``replaced_by``) keeps only its
    ``inputs``, so only those are taken then."""
    head, where = task.default_head(), default_head_source(task)
    if not isinstance(head, Mapping) or not isinstance(head.get("type"), str):
        raise DnasError(f"{where}: expected a head section with a 'type', got {head!r:.60}")
    if replaced_by is not None and replaced_by != head["type"]:
        return dict(head)  # build_space drops all but its inputs; space_from_dict checks those
    cls = head_class(head["type"], where)
    from_dict(cls.Options, {k: v for k, v in head.items() if k not in ("type", "inputs")},
              where, "head")  # fmt: skip
    return dict(head)


def dataset_of(task: Task, split: str, augment: bool, seed: int = 0) -> Dataset:
    """``task.dataset(split, augment, seed)`` with its first item checked: a mapping with an
    ``input`` (a tensor or an array, as the loader collates both) of the task's
    ``in_channels`` x H x W, float32. A plugin's mistake is then one line at set-up, not a
    traceback at the first step after a run's files are written."""
    dataset = task.dataset(split, augment, seed)
    if not len(dataset):
        raise DnasError(f"task {task.name}: its {split!r} split is empty")
    item = dataset[0]
    x = item.get("input") if isinstance(item, Mapping) else None
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 3 or shape[0] != task.in_channels:
        got = (f"keys {sorted(map(str, item))}" if isinstance(item, Mapping) and x is None
               else f"input of shape {shape}" if shape
               else type(x if isinstance(item, Mapping) else item).__name__)  # fmt: skip
        raise DnasError(f"task {task.name}: item 0 of its {split!r} split must be a mapping with "
                        f"an 'input' of {task.in_channels} x H x W, got {got}")  # fmt: skip
    kind = str(getattr(x, "dtype", ""))
    if kind.removeprefix("torch.") != "float32":  # the nets' weights are float32
        raise DnasError(f"task {task.name}: item 0 of its {split!r} split has an 'input' of "
                        f"{kind or type(x).__name__}; expected float32")  # fmt: skip
    return dataset
