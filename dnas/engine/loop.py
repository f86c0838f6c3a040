"""The run scaffold that search, training and evaluation share.

:class:`RunContext` is what every run sets up: the torchrun world, the console and
``log.txt``, the seed, the task, the device and mixed precision. :class:`EpochLoop` adds what
search and training share: rotating resume checkpoints and exact resume (position, sums, RNG,
gradient scaler), ``config.yaml``, TensorBoard, the epoch/step loop with ``every_steps``
saves, per-epoch means, ETA lines and the end-of-run check that every process holds the same
weights. A run supplies only its step, its epoch end and its own state.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from dnas.allocator import keep_freed_memory
from dnas.checkpoint import Checkpointer, check_resumable
from dnas.config import Experiment, checked, config_hash, write_config
from dnas.engine import distributed
from dnas.engine.progress import Reporter, eta_text
from dnas.engine.rundir import (
    COMMON_OUTPUTS,
    LOCK,
    LOGS,
    RunLock,
    clear_outputs,
    command_line,
    refuse_to_replace,
    remove_if_empty,
)
from dnas.engine.runtime import (
    Amp,
    check_finite,
    pick_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from dnas.engine.signals import stop_signals
from dnas.errors import AgreedError, DnasError, Interrupted, Signalled
from dnas.files import check_writable, copy_atomic, write_text_atomic
from dnas.schema import to_dict
from dnas.task import build_task


def format_stats(stats: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.5g}" for k, v in stats.items())


def resume_command() -> str:
    """This process's command line with ``--resume``: what continues the run it started."""
    command = command_line()
    return command if "--resume" in command.split() else command + " --resume"


def run_inputs(exp: Experiment, out_dir: Path | str) -> tuple[Experiment, Path]:
    """A run's experiment, checked again as a file is (``dnas.config.checked``: one changed in
    code after loading), and its folder as a Path; a one-line error for either."""
    if not isinstance(out_dir, str | Path):
        raise DnasError(f"out_dir: expected a folder path, got {out_dir!r}")
    return checked(exp), Path(out_dir)


class RunContext:
    """One run in ``out_dir``: joins the torchrun world (only rank 0 creates ``out_dir``, locks
    it and logs), seeds every generator, builds the task, and picks the device and precision;
    then :meth:`setup` builds what the run needs, with no collective (a user error there, on
    any process, stops every process), and :meth:`synchronise` makes the processes agree. A
    run starting afresh (no ``resume``) first removes an earlier run's ``logs``. :meth:`close`
    (or a failing set-up) frees the lock."""

    logs: ClassVar[tuple[str, ...]] = ()  # what a fresh run of this kind clears before logging
    outputs: ClassVar[tuple[str, ...]] = ()  # its results: never cleared without ``force``

    def __init__(self, exp: Experiment, out_dir: Path | str, report: Reporter | None = None,
                 resume: bool = False, force: bool = False) -> None:  # fmt: skip
        exp, out_dir = run_inputs(exp, out_dir)
        self.exp, self.out_dir, self.resume, self.force = exp, out_dir, resume, force
        keep_freed_memory()  # steps reuse their tensors' memory (dnas.allocator)
        self.world = distributed.init_world(exp.device)
        self.report = report or Reporter()
        self.report.active = self.world.main
        self.lock = RunLock(self.out_dir)
        self.resources = contextlib.ExitStack()  # what close() gives back besides the lock
        self.created = not self.out_dir.exists()  # a failed set-up leaves no empty directory
        self.unsynchronised: list[nn.Module] | None = []  # prepared during set-up
        try:
            with distributed.failing_together():  # none goes on alone into a collective
                if not resume:  # every rank (it only reads), before a fresh start clears logs
                    refuse_to_replace(self.out_dir, self.outputs, force)
                if self.world.main:
                    self.take_directory()
                seed_everything(exp.seed)
                self.task = build_task(exp)
                device = pick_device(exp.device, exp.source)
                self.device = distributed.device_for(self.world, device)
                self.amp = Amp(self.device, exp.precision, exp.channels_last)
                self.setup()
            self.synchronise()
        except Signalled as exc:
            stopped = exc.where("during set-up; the run had not begun")
            self.report.log(str(stopped))
            self.abandon()
            raise stopped from None
        except BaseException:
            self.abandon()
            raise

    def take_directory(self) -> None:
        """Rank 0's part of the set-up: create and lock ``out_dir``, clear a fresh start's
        logs and log there."""
        check_writable(self.out_dir / LOCK)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.lock.acquire(self.report.line)
        if not self.resume:
            clear_outputs(self.out_dir, self.logs)
        self.report.attach(self.out_dir / "log.txt")
        self.resources.enter_context(self.report.warnings_logged())

    def abandon(self, scratch: tuple[str, ...] = ()) -> None:
        """After a failed start: free the lock, and remove the run directory when this run
        created it and wrote nothing but its log (and its ``scratch`` files) there."""
        self.close()
        if self.world.main and self.created and self.out_dir.is_dir():
            remove_if_empty(self.out_dir, scratch)

    def setup(self) -> None:
        """What the run builds after the common set-up (nets, loaders, optimisers)."""

    def close(self) -> None:
        self.resources.close()
        self.lock.release()

    def prepare(self, network: nn.Module) -> nn.Module:
        """A network of this run, made ready on its device for its processes: batch norm over
        the global batch (``sync_batchnorm``) and rank 0's initial weights everywhere (NCCL
        broadcasts device tensors, so it is moved first)."""
        network = network.to(self.device)
        if self.exp.sync_batchnorm:
            network = distributed.sync_batchnorm(network, self.device)
        if self.unsynchronised is None:
            distributed.broadcast_state(network)
        else:  # set-up has no collective: a process that fails there must not leave the rest
            self.unsynchronised.append(network)  # waiting in one
        return network

    def synchronise(self) -> None:
        """After every process has set up: rank 0's initial weights in the networks set-up
        prepared; from here on :meth:`prepare` broadcasts them at once."""
        for network in self.unsynchronised or []:
            distributed.broadcast_state(network)
        self.unsynchronised = None


class StepLog:
    """Every step's scalars: a line of ``metrics.jsonl`` (epoch, step, global step and the
    stats) and TensorBoard scalars in ``tb/steps`` at the global step. A resumed run first
    drops the lines of the steps after its checkpoint, which it runs again, so both end as an
    uninterrupted run's would."""

    def __init__(self, out_dir: Path, global_step: int) -> None:
        path = out_dir / "metrics.jsonl"
        drop_after(path, global_step)
        self.file = open(path, "a")  # noqa: SIM115 (closed by the run)
        self.writer = SummaryWriter(str(out_dir / "tb" / "steps"), purge_step=global_step + 1)

    def write(self, epoch: int, step: int, global_step: int, stats: dict[str, float]) -> None:
        record = {"epoch": epoch, "step": step, "global_step": global_step, **stats}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for key, value in stats.items():
            self.writer.add_scalar(key, value, global_step)

    def close(self) -> None:
        self.file.close()
        self.writer.close()


def drop_after(path: Path, global_step: int) -> None:
    """Keep the lines of ``metrics.jsonl`` up to ``global_step``; a line cut short by a kill
    goes too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("global_step", 0) <= global_step:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


@dataclass
class Position:
    """Where a run is: ``step`` steps of epoch ``epoch`` done (``epoch`` epochs finished when
    ``step`` is 0), ``global_step`` steps in all."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0


class EpochLoop(RunContext, ABC):
    """Epochs of steps with exact resume; subclasses set ``steps`` (per epoch) in ``__init__``
    and supply the hooks below."""

    logs, outputs = LOGS, COMMON_OUTPUTS  # outputs: cleared by a fresh start, after set-up
    kind: ClassVar[str]  # the checkpoints' ``kind``
    name: ClassVar[str]  # what the run is called in messages ("search", "train")
    steps: int

    def __init__(self, exp: Experiment, out_dir: Path | str, report: Reporter | None = None,
                 resume: bool = False, force: bool = False) -> None:  # fmt: skip
        self.position = Position()
        self.sums: dict[str, float] = {}  # the epoch's summed step stats so far
        self.interrupted: int | None = None  # the signal that asked the run to stop
        self.steps_log: StepLog | None = None
        super().__init__(exp, out_dir, report, resume, force)  # checks exp and out_dir
        keep = self.exp.checkpoint.keep_last
        self.checkpoints = Checkpointer(self.out_dir / "checkpoints", keep, self.report.line)

    # -- what a run supplies -----------------------------------------------------------------

    @property
    @abstractmethod
    def num_epochs(self) -> int: ...

    @abstractmethod
    def header(self) -> str:
        """The run's first log line: what runs, how long, where."""

    @abstractmethod
    def batches(self, epoch: int, start: int) -> Iterable[Any]:
        """Epoch ``epoch``'s batches from step ``start`` on (the resumable data order)."""

    @abstractmethod
    def step(self, batch: Any) -> dict[str, float]:
        """One step; returns the stats summed into the epoch's means."""

    def begin_epoch(self, epoch: int) -> None:
        """Before epoch ``epoch``'s first step (also when a resume lands inside it)."""

    def epoch_means(self) -> dict[str, float]:
        """The epoch's step stats averaged over its steps and over the processes."""
        steps = max(self.position.step, 1)
        return distributed.mean_over_world({k: v / steps for k, v in self.sums.items()})

    def end_epoch(self, epoch: int, stats: dict[str, float]) -> dict[str, float]:
        """After epoch ``epoch``'s steps: more stats to log (an evaluation, ...)."""
        return {}

    def epoch_line(self, stats: dict[str, float]) -> str:
        return format_stats(stats)

    def write_pictures(self, writer: SummaryWriter, epoch: int) -> None:
        """TensorBoard images after an epoch (rank 0 only)."""

    def files_after_epoch(self) -> list[str]:
        """Files in ``out_dir`` that get the checkpoint state at each epoch end."""
        return []

    def models(self) -> list[nn.Module]:
        """The networks that must be identical in every process at the end."""
        return []

    def generators(self) -> list[torch.Generator]:
        """Generators each process draws from on its own (drop-path masks): checkpointed per
        process, as the global random states and the epoch's sums are."""
        found = (getattr(model, "drop_path_generator", None) for model in self.models())
        return [generator for generator in found if generator is not None]

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """What a checkpoint holds besides the position, sums, RNG, scaler and config."""

    @abstractmethod
    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (the position is already restored)."""

    @abstractmethod
    def finish(self) -> Any:
        """After the last epoch: the run's result."""

    # -- the shared part ---------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "epoch": self.position.epoch,
            "position": asdict(self.position),
            "sums": dict(self.sums),
            **self.state(),
            "scaler": self.amp.scaler.state_dict(),
            "rng": rng_state(),
            "config": to_dict(self.exp),
            "config_hash": config_hash(self.exp),
        }

    def rank_state(self) -> dict[str, Any]:
        """What differs between torchrun's processes: each one's sums and random states."""
        return {"sums": dict(self.sums), "rng": rng_state(),
                "generators": [g.get_state() for g in self.generators()]}  # fmt: skip

    def save(self, *names: str) -> None:
        """A resume checkpoint, and the same state into each of ``names``: written by rank 0,
        with every process's :meth:`rank_state` (so every process calls it)."""
        ranks = distributed.gather_to_main(self.rank_state()) if self.world.distributed else None
        if not self.world.main:
            return
        state = {**self.checkpoint(), "world_size": self.world.size}
        if ranks is not None:  # one process: its own sums and random states are the top-level
            state["ranks"] = ranks
        saved = self.checkpoints.save(state, self.position.global_step)
        for name in names:
            copy_atomic(saved, self.out_dir / name)

    def start(self) -> None:
        """Continue from the newest readable checkpoint (with ``resume``; afresh, saying so,
        when there is none), or begin afresh: write ``config.yaml``."""
        found = self.checkpoints.latest(self.kind) if self.resume else None
        if self.resume:
            self.check_same_checkpoint(found)
        with distributed.failing_together():  # the steps' collectives follow
            if found is None:
                self.begin_afresh()
            else:
                check_resumable(found[0], self.exp, found[1], self.force)
        if found is None:
            return
        state, path = found
        fields = state.get("position") or state["progress"]  # "progress": a 2026-11 train run
        self.position = Position(*(fields[k] for k in ("epoch", "step", "global_step")))
        if self.position.step:  # mid-epoch: the epoch had begun when the state was saved
            self.begin_epoch(self.position.epoch)
        mine = self.own_rank_state(state, path)
        self.sums = dict(mine.get("sums", {}))
        with distributed.failing_together():  # e.g. a cost table that differs from the run's
            self.load_state(state)
        for generator, saved in zip(self.generators(), mine.get("generators") or [], strict=False):
            generator.set_state(saved)
        self.amp.scaler.load_state_dict(state["scaler"])
        set_rng_state(mine["rng"])  # last: nothing draws between the restore and the loop
        p = self.position
        if p.epoch >= self.num_epochs:  # nothing left to run: say so, not "epoch N + 1"
            done = f"{self.num_epochs}/{self.num_epochs}"
            self.report.line(f"{path}: the run had finished (epoch {done}); its results are "
                             "made again from this checkpoint")  # fmt: skip
        else:
            self.report.line(f"resumed from {path}: epoch {p.epoch + 1}, step {p.step}")

    def begin_afresh(self) -> None:
        """No checkpoint to continue: clear an earlier run's results (refused without
        ``force``) and write ``config.yaml``."""
        if self.resume:
            refuse_to_replace(self.out_dir, self.outputs, self.force, resuming=self.name)
            self.report.line(f"no {self.name} checkpoint in {self.checkpoints.directory} to "
                             "resume from: starting afresh")  # fmt: skip
        if self.world.main:
            clear_outputs(self.out_dir, self.outputs)  # set-up has read its inputs by now
            write_config(self.exp, self.out_dir / "config.yaml")

    def check_same_checkpoint(self, found: tuple[dict, Path] | None) -> None:
        """Every process resumes from the checkpoint rank 0 resumes from: one that finds
        another (or none: a node that does not see the run directory) would run other steps
        than the rest and leave them waiting in a collective. Compared by name: nodes may
        mount the shared run directory at other paths."""
        seen = distributed.all_gather_object(found[1].name if found else None)
        others = [rank for rank, name in enumerate(seen) if name != seen[0]]
        if others:
            rank = others[0]
            raise AgreedError(f"{self.checkpoints.directory}: rank {rank} resumes from "
                              f"{seen[rank] or 'no checkpoint'}, rank 0 from "
                              f"{seen[0] or 'no checkpoint'}; under torchrun every node must "
                              "read the run directory rank 0 writes (shared storage)")  # fmt: skip

    def own_rank_state(self, state: dict[str, Any], path: Path) -> dict[str, Any]:
        """This process's part of a checkpoint. Resumed by another number of processes than
        saved it, a run goes on from rank 0's, not as it would have gone: said in one line."""
        ranks = state.get("ranks") or [{"sums": state.get("sums", {}), "rng": state["rng"]}]
        if "world_size" not in state:  # written before 2026-12-07: rank 0's state alone
            if self.world.size > 1:
                self.report.line(f"warning: {path} holds rank 0's random states and sums "
                                 "alone (a checkpoint of an earlier version): every process "
                                 "goes on from them, not exactly as the run would")  # fmt: skip
            return ranks[0]
        saved_by = state["world_size"]
        if saved_by != self.world.size:
            self.report.line(f"warning: {path} was saved by {saved_by} process(es), resumed "
                             f"by {self.world.size}: the run goes on, not exactly as it would "
                             "have (each process's share of the batch, drop-path masks and epoch "
                             "sums differ); resume with its own process count")  # fmt: skip
            return ranks[0]
        return ranks[self.world.rank]

    def running_stats(self) -> dict[str, float]:
        return {"loss": self.sums.get("train/loss", 0.0) / max(self.position.step, 1)}

    def run(self) -> Any:
        """The whole run; returns :meth:`finish`. SIGINT and SIGTERM end it at the next step
        boundary with a checkpoint (:class:`dnas.errors.Interrupted`)."""
        try:
            with stop_signals(self.on_signal):
                self.start()
                result = self.loop()
        except Signalled as exc:
            if self.interrupted is None:  # it came as the run ended: its results are written
                raise
            stopped = exc.where("again, before the run could stop at a step; resume from its "
                                f"newest checkpoint with: {resume_command()}")  # fmt: skip
            self.report.log(str(stopped))
            raise stopped from None
        finally:
            self.close()
        if self.interrupted is not None:  # a signal during the finish: stop what called run()
            distributed.wait_for_all()  # the others' exit barrier: rank 0 has written
            stopped = Signalled(self.interrupted, "as the run finished; its results are written")
            self.report.log(str(stopped))  # (a sweep goes no further)
            raise stopped
        return result

    def on_signal(self, signum: int) -> None:
        self.interrupted = signum

    def loop(self) -> Any:
        with contextlib.ExitStack() as stack:
            writer = self.steps_log = None
            if (
                self.world.main
            ):  # epoch scalars in tb/, per-step ones in tb/steps/ and metrics.jsonl
                writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=self.position.epoch + 1)
                stack.callback(writer.close)
                self.steps_log = StepLog(self.out_dir, self.position.global_step)
                stack.callback(self.steps_log.close)
            self.report.line(self.header())
            for epoch in range(self.position.epoch, self.num_epochs):
                self.run_epoch(epoch, writer)
        for model in self.models():
            distributed.check_in_sync(model, self.name)
        return self.finish()

    def run_epoch(self, epoch: int, writer: SummaryWriter | None) -> None:
        started = time.perf_counter()
        self.run_steps(epoch)
        stats = self.epoch_means()
        stats.update(self.end_epoch(epoch, stats))
        self.position.epoch, self.position.step = epoch + 1, 0
        if writer is not None:
            for key, value in stats.items():
                writer.add_scalar(key, value, epoch + 1)
            self.write_pictures(writer, epoch + 1)
        self.save(*self.files_after_epoch())
        stopping = self.signalled_everywhere()
        seconds = time.perf_counter() - started
        eta = eta_text(epoch + 1, self.num_epochs, seconds)
        self.report.line(f"epoch {epoch + 1}/{self.num_epochs}  {self.epoch_line(stats)}  "
                         f"({seconds:.0f} s, {eta})")  # fmt: skip
        if stopping:
            self.stop_if_interrupted()

    def finite(self, stats: dict[str, float]) -> dict[str, float]:
        """The step's stats, each a finite number: else a one-line error that every process
        meets alike (they are the world's means), so the CLI says it once."""
        try:
            return {k: check_finite(v, k, self.position.global_step) for k, v in stats.items()}
        except DnasError as exc:
            exc.agreed = True
            raise

    def signalled_everywhere(self) -> bool:
        """Whether any process has been signalled, agreed by all of them (a collective), so
        that all stop after the same step. A signal that arrives during the agreement stays
        recorded for the next one: assigning the agreed value over it lost it (and the run
        went on), acting on it alone would stop one process and leave the others waiting."""
        agreed = distributed.signal_over_world(self.interrupted)
        if agreed is not None:
            self.interrupted = agreed
        return agreed is not None

    def stop_if_interrupted(self) -> None:
        """After a signal: checkpoint where the run is, say how to go on, and stop."""
        if self.interrupted is None:
            return
        self.save()
        distributed.wait_for_all()  # torchrun stops every process once one has left: not
        p, name = self.position, signal.Signals(self.interrupted).name  # before rank 0 wrote
        epoch, step = (p.epoch + 1, p.step) if p.step else (p.epoch, self.steps)
        message = (f"interrupted ({name}) at epoch {epoch} step {step}; checkpoint saved; "
                   f"resume with: {resume_command()}")  # fmt: skip
        self.report.log(message)  # the CLI prints it, as the error it exits with
        raise Interrupted(message, self.interrupted)

    def run_steps(self, epoch: int) -> None:
        """Epoch ``epoch``'s steps from where the position is, summing their stats; a resume
        checkpoint every ``checkpoint.every_steps`` steps."""
        p, every = self.position, self.exp.checkpoint.every_steps
        if p.step == 0:
            self.sums = {}
            self.begin_epoch(epoch)
        steps = zip(range(p.step, self.steps), self.batches(epoch, p.step), strict=False)
        desc = f"epoch {epoch + 1}/{self.num_epochs}"
        for _, batch in self.report.steps(steps, self.steps, p.step, desc, self.running_stats):
            stats = distributed.mean_over_world(self.step(batch))  # the global batch's
            stats = self.finite(stats)
            for key, value in stats.items():
                self.sums[key] = self.sums.get(key, 0.0) + value
            p.step, p.global_step = p.step + 1, p.global_step + 1
            if self.steps_log is not None:
                self.steps_log.write(epoch + 1, p.step, p.global_step, stats)
            if every and p.global_step % every == 0 and p.step < self.steps:
                self.save()
            if self.signalled_everywhere() and p.step < self.steps:
                self.stop_if_interrupted()
