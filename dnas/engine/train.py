"""Training and evaluating a fixed architecture (paper Sec. 4: Adam, step schedule).

The run directory holds ``config.yaml``, ``log.txt``, ``checkpoints/`` (resume state, the newest
``checkpoint.keep_last`` kept), ``last.pt`` (written every epoch), ``best.pt`` (best validation
score), ``model.pt`` (final weights), ``results.json`` and TensorBoard ``tb/``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from dnas import checkpoint
from dnas.config import Experiment
from dnas.engine import distributed
from dnas.engine.evaluation import SplitScorer
from dnas.engine.loop import EpochLoop, RunContext
from dnas.engine.progress import Reporter
from dnas.engine.rundir import command_line
from dnas.engine.runtime import (
    adam,
    load_optimizer_state,
    to_device,
    weight_step,
)
from dnas.engine.sampling import epoch_batches, train_loader
from dnas.engine.schedule import Schedule, unreached_milestones
from dnas.errors import ConfigError, DnasError
from dnas.files import write_text_atomic
from dnas.nn.network import Network
from dnas.nn.profile import count_macs, count_params, head_output_shape, op_costs
from dnas.nn.remap import remap_into
from dnas.nn.weights import check_fits, check_outputs, load_weights, weights_info, with_info
from dnas.space.graph import SearchSpace
from dnas.task import Metrics, Task, build_space, dataset_of

KIND = "dnas-train"


def check_head_output(space: SearchSpace, task: Task) -> None:
    """The task's check of the head's output shape at its input size, on the ``meta`` device,
    so that a size the space's strides cannot serve fails before a run writes anything."""
    stride, (height, width) = space.total_stride(), task.input_hw
    if min(height, width) < stride:  # its deepest layers would see maps of 1x1 (rounded up)
        raise ConfigError(task.source, "input_size", f"{height}x{width}: smaller than the "
                          f"{stride} that the strides of space {space.name} divide it by; "
                          f"expected sides of at least {stride}")  # fmt: skip
    shape = head_output_shape(space, task.input_hw, task.num_outputs)
    if shape[0] != task.num_outputs:  # a head plugin that ignores its num_outputs
        head = space.head.type if space.head else "head"
        raise DnasError(f"{space.source}: head {head!r} gives {shape[0]} output channels, the "
                        f"{task.name} task has {task.num_outputs}")  # fmt: skip
    task.check_output_shape(shape)
    if height % stride or width % stride:  # a task that takes any size (segmentation) took it
        warnings.warn(f"{task.source}: input_size {height}x{width}: the strides of space "
                      f"{space.name} ({stride} in all) do not divide it, so its layers round "
                      f"their outputs up and the head's {shape[1]}x{shape[2]} is not the input "
                      f"/ its stride; sides that {stride} divides keep outputs and labels "
                      "aligned", stacklevel=2)  # fmt: skip


def build_fixed(exp: Experiment, arch_ref: str, task: Task) -> tuple[SearchSpace, Network]:
    """The architecture and its network; sizes are checked first on the meta device, so an
    absurd input size or width is a one-line error, not an attempt to allocate it."""
    arch = build_space(arch_ref, task, exp, option="--arch")
    if not arch.is_fixed:
        n = len(arch.searchable_layers)
        raise ConfigError(
            arch.source,
            "stages",
            f"{n} layers still have several candidate ops; "
            "this is a search space, derive an architecture first (dnas derive)",
        )
    outputs = task.num_outputs  # before the size check: reading it may read a split's file
    try:
        op_costs(arch, exp.input_hw, outputs)
    except DnasError as exc:
        raise ConfigError(exp.source, "input_size", str(exc)) from None
    check_head_output(arch, task)
    return arch, Network(arch, outputs)


def show_size(info: dict | None) -> str:
    return ", ".join(str(v) for v in info["input_size"]) if info else ""


def recorded_arch(info: dict | None, weights: Path, out_dir: Path) -> str:
    """The architecture the weights record, written as ``out_dir/arch.yaml`` (no --arch given)."""
    if info is None:
        raise DnasError(f"{weights}: these weights record no architecture; pass --arch")
    path = out_dir / "arch.yaml"
    body = yaml.safe_dump(info["arch"], sort_keys=False, default_flow_style=None)
    write_text_atomic(path, f"# the architecture recorded in {weights}\n{body}")
    return str(path)


def model_size(net: Network, input_hw: tuple[int, int]) -> dict[str, int]:
    device = next(net.parameters()).device
    return {
        "params": count_params(net),
        "macs": count_macs(net, torch.zeros(1, net.space.in_channels, *input_hw, device=device)),
    }


class TrainRun(EpochLoop):
    """Training a fixed architecture: Adam, a step schedule, an evaluation every
    ``train.eval_every`` epochs (``best.pt`` at the best score), ``last.pt`` every epoch and
    ``model.pt`` at the end."""

    kind, name = KIND, "train"
    outputs = (*EpochLoop.outputs, "last.pt", "best.pt", "model.pt", "results.json")

    def __init__(self, exp: Experiment, arch_ref: str, out_dir: Path | str,
                 init: Path | None = None, report: Reporter | None = None, resume: bool = False,
                 force: bool = False) -> None:  # fmt: skip
        self.arch_ref, self.init = arch_ref, init
        super().__init__(exp, out_dir, report, resume, force)

    def setup(self) -> None:
        exp = self.exp
        self.arch, self.net = build_fixed(exp, self.arch_ref, self.task)
        if self.init is not None:  # another task's weights: its name, not a shape mismatch
            info = weights_info(self.init)
            check_fits(info, self.init, "task", info and info.get("task"), exp.task["name"],
                       " (--init takes weights of this task)")  # fmt: skip
            try:
                load_weights(self.net, self.init)
            except DnasError:  # another net's weights: say whose, not torch's list of keys
                recorded = info and info["arch"]["name"]
                check_fits(info, self.init, "architecture", recorded, self.arch.name,
                           " (--init takes weights of the net it trains)")  # fmt: skip
                raise
        elif exp.remap_from:
            mapped = remap_into(self.net, Path(exp.remap_from))
            self.report.line(f"remapped {len(mapped)} convolutions from {exp.remap_from}")
        self.net = self.prepare(self.amp.model(self.net))
        cfg = exp.train
        self.params = self.net.weight_parameters()
        self.opt = adam(self.params, cfg.lr, weight_decay=cfg.weight_decay)
        train_set = dataset_of(self.task, "train", augment=True, seed=exp.seed)
        self.loader = train_loader(train_set, range(len(train_set)), cfg.batch_size, exp.workers,
                                   exp.seed, self.world.rank, self.world.size)  # fmt: skip
        self.scorer = SplitScorer(self.task, dataset_of(self.task, "val", augment=False),
                                  cfg.batch_size, exp.workers, self.world)  # fmt: skip
        self.steps = min(len(self.loader), cfg.steps_per_epoch or len(self.loader))
        self.sched = Schedule(self.opt, cfg, self.steps)
        if unreached := unreached_milestones(cfg):
            self.report.line(f"warning: train.milestones {unreached} lie at or past "
                             f"train.epochs {cfg.epochs}: the learning rate never steps down "
                             "there; set train.milestones within the run, or "
                             "train.schedule=cosine")  # fmt: skip
        self.model: nn.Module = self.net
        self.best_score: float | None = None  # the best validation score yet
        self.best_now = False
        self.metrics: Metrics | None = None  # the latest evaluation

    def synchronise(self) -> None:
        super().synchronise()
        if self.world.distributed:  # DDP's construction is a collective
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)

    @property
    def num_epochs(self) -> int:
        return self.exp.train.epochs

    def start(self) -> None:
        """Resume or begin afresh, then record the run's architecture as ``arch.yaml`` ('dnas
        train RUN --resume' reads it), only once the directory is this run's."""
        super().start()
        record = self.out_dir / "arch.yaml"
        given = Path(self.arch_ref)
        same = given.is_file() and given.resolve() == record.resolve()  # --arch RUN/arch.yaml
        if self.world.main and not same and not (self.resume and record.exists()):
            body = yaml.safe_dump(self.arch.to_dict(), sort_keys=False, default_flow_style=None)
            write_text_atomic(record, f"# trained by: {command_line()}\n{body}")

    def header(self) -> str:
        return (f"train: {self.arch.name}, {self.num_epochs} epochs x {self.steps} steps, "
                f"device {self.device}"
                + (f", {self.world.size} processes" if self.world.distributed else ""))  # fmt: skip

    def batches(self, epoch: int, start: int) -> Iterator[dict]:
        return epoch_batches(self.loader, epoch, start)

    def step(self, batch: dict) -> dict[str, float]:
        batch = to_device(batch, self.device)
        loss = weight_step(self.model, batch, self.task.loss, self.opt, self.params, amp=self.amp)
        self.sched.after_step()
        return {"train/loss": float(loss)}

    def end_epoch(self, epoch: int, stats: dict[str, float]) -> dict[str, float]:
        extra = {"lr": self.opt.param_groups[0]["lr"]}
        self.sched.after_epoch()
        self.best_now = False
        if (epoch + 1) % self.exp.train.eval_every == 0 or epoch + 1 == self.num_epochs:
            self.metrics = self.evaluate()
            extra.update({f"val/{k}": v for k, v in self.metrics.values.items()})
            score = self.metrics.score
            self.best_now = self.best_score is None or score > self.best_score
            self.best_score = score if self.best_now else self.best_score
        return extra

    def epoch_line(self, stats: dict[str, float]) -> str:
        line = f"train/loss {stats['train/loss']:.5g}"
        if self.metrics is not None and f"val/{self.metrics.primary}" in stats:
            line += f"  val/{self.metrics.primary} {self.metrics.score:.2f}"
        return line

    def files_after_epoch(self) -> list[str]:
        return ["best.pt", "last.pt"] if self.best_now else ["last.pt"]

    def models(self) -> list[nn.Module]:
        return [self.net]

    def evaluate(self) -> Metrics:
        """The validation split's metrics (:class:`SplitScorer`), on every process."""
        return self.scorer(self.net, self.device, None)

    def info(self) -> dict[str, Any]:
        """What the weights are (:func:`dnas.nn.weights.weights_info`): in ``model.pt`` and in
        every training checkpoint, so that export and predict read it from ``best.pt`` too."""
        return {"arch": self.arch.to_dict(), "input_size": list(self.exp.input_hw),
                "num_outputs": self.task.num_outputs, "task": self.task.name,
                "preprocess": dict(self.task.preprocess),
                "outputs": self.task.output_info()}  # fmt: skip

    def state(self) -> dict[str, Any]:
        return {
            "best_score": self.best_score, "model": self.net.state_dict(),
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "arch": self.arch.to_dict(), "info": self.info(),
        }  # fmt: skip

    def load_state(self, state: dict[str, Any]) -> None:
        recorded = state.get("arch", {})
        if recorded != self.arch.to_dict():  # weights of another net: refuse, even with --force
            raise DnasError(
                f"{self.checkpoints.directory}: this run trained architecture "
                f"{recorded.get('name', '?')!r}, not {self.arch.name!r} ({self.arch.source}); "
                "resume with the run's own --arch or start a new --out"
            )
        self.net.load_state_dict(state["model"])
        load_optimizer_state(self.opt, state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if "progress" in state:  # a checkpoint written before 2026-12-01
            legacy = state["progress"]
            self.best_score, self.sums = legacy["best_score"], {"train/loss": legacy["loss_sum"]}
        else:
            self.best_score = state["best_score"]

    def finish(self) -> Metrics:
        """``model.pt``, and the final evaluation in ``log.txt`` and ``results.json``."""
        if self.world.main:
            checkpoint.save_atomic(with_info(self.net.state_dict(), self.info()),
                                   self.out_dir / "model.pt")  # fmt: skip
        if self.metrics is None:  # a resumed run that had already finished: score what it holds
            self.metrics = self.evaluate()
        self.report.line(self.metrics.table)
        if self.world.main:
            results = {
                **self.metrics.values, "primary_metric": self.metrics.primary,
                "primary_label": self.metrics.primary_label,
                "architecture_name": self.arch.name, **model_size(self.net, self.exp.input_hw),
                "input_size": list(self.exp.input_hw), "epochs": self.num_epochs,
                "best_score": self.best_score, "weights": str(self.out_dir / "model.pt"),
                "table": self.metrics.table,
            }  # fmt: skip
            write_text_atomic(self.out_dir / "results.json", json.dumps(results, indent=1))
        return self.metrics


def run_train(
    exp: Experiment,
    arch_ref: str,
    out_dir: Path | str,
    init: Path | None = None,
    report: Reporter | None = None,
    resume: bool = False,
    force: bool = False,
) -> Metrics:
    """Train ``arch_ref`` into ``out_dir`` (with ``resume``: continue the run there); returns
    the last evaluation. Under ``torchrun`` every process calls this; only rank 0 writes."""
    return TrainRun(exp, arch_ref, out_dir, init, report, resume, force).run()


def run_eval(
    exp: Experiment, arch_ref: str, weights: Path, out_dir: Path, save_vis: int = 0
) -> dict:
    """Evaluate trained weights on the validation split; writes ``results.json`` into out_dir.
    Under ``torchrun`` the processes score it together (:class:`SplitScorer`) and each
    returns the results."""
    run = RunContext(exp, out_dir, Reporter(lambda _: None))
    try:
        with distributed.failing_together():  # wrong weights: every process says rank 0's error
            arch_ref = checked_arch(run, arch_ref, weights) if run.world.main else None
        arch_ref = distributed.broadcast_object(arch_ref)
        with distributed.failing_together():
            arch, net = trained_net(run, arch_ref, weights)
            scorer = SplitScorer(run.task, dataset_of(run.task, "val", augment=False),
                                 exp.train.batch_size, exp.workers, run.world)  # fmt: skip
        metrics = scorer(net, run.device, run.out_dir, save_vis)
        with distributed.failing_together():
            results = eval_results(run, metrics, arch_ref, arch, net, weights) \
                if run.world.main else None  # fmt: skip
    except BaseException:  # wrong weights or architecture: no --out left behind
        run.abandon(scratch=("arch.yaml",))  # the architecture it read from the weights
        raise
    run.close()
    return distributed.broadcast_object(results)


def checked_arch(run: RunContext, arch_ref: str | None, weights: Path) -> str:
    """The weights checked against the experiment, and the architecture to build: ``arch_ref``
    or the one the weights record (written as ``arch.yaml`` in the run's folder)."""
    exp = run.exp
    info = weights_info(weights)
    check_fits(info, weights, "task", info and info.get("task"), exp.task["name"],
               " (evaluate them with an experiment of their task)")  # fmt: skip
    check_fits(info, weights, "input size", info and info["input_size"], exp.input_hw,
               f" (evaluate with --set 'input_size=[{show_size(info)}]')")  # fmt: skip
    check_outputs(info, weights, run.task.output_info(),
                  " (evaluate them with an experiment of their outputs)")  # fmt: skip
    check_fits(info, weights, "outputs", info and info["num_outputs"], run.task.num_outputs)
    return arch_ref or recorded_arch(info, weights, run.out_dir)


def trained_net(run: RunContext, arch_ref: str, weights: Path) -> tuple[SearchSpace, Network]:
    """``arch_ref``'s network with ``weights`` loaded, on the run's device."""
    info = weights_info(weights)
    arch, net = build_fixed(run.exp, arch_ref, run.task)
    check_fits(info, weights, "architecture", info and info["arch"]["name"], arch.name)
    load_weights(net, weights)
    return arch, net.to(run.device)


def eval_results(run: RunContext, metrics: Metrics, arch_ref: str, arch: SearchSpace,
                 net: Network, weights: Path) -> dict:  # fmt: skip
    """``results.json`` of ``dnas eval`` (written), and the printed table."""
    exp = run.exp
    size = model_size(net, exp.input_hw)
    results = {
        **metrics.values,  # the task's metric table, flat
        "primary_metric": metrics.primary,
        "primary_label": metrics.primary_label,
        "architecture": str(Path(arch_ref).resolve()) if Path(arch_ref).exists() else arch_ref,
        "architecture_name": arch.name,
        "params": size["params"],
        "macs": size["macs"],
        "input_size": list(exp.input_hw),
        "weights": str(weights),
        "files": metrics.files,
    }
    write_text_atomic(run.out_dir / "results.json", json.dumps(results, indent=1))
    results["table"] = metrics.table
    return results
