"""``dnas lut build | check | recalibrate``: the command line of latency tables. Reads the
conditions of a table (space, head, input size, batch, device, runtime, threads) from the
options or an experiment file, and reports a build's or check's noise and fidelity in words.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import click
import torch

from cost_models.fidelity import BELOW_CEILING_SDS
from cost_models.latency import LatencyCostModel, LatencyOptions, read_lut, table_runtime
from cost_models.latency_build import Bench, build_lut, calibration_text, recalibrate_lut
from cost_models.latency_check import check_lut
from cost_models.runtimes import get_runtime
from cost_models.timing import (
    NoisePolicy,
)
from dnas.cli import (
    CONFIG_META,
    SIZE,
    FiniteRange,
    example,
    head_outputs,
    out_opt,
    outputs_opt,
    remembered,
    set_opt,
)
from dnas.config import DEFAULT_INPUT_HW, MAX_BATCH, Experiment
from dnas.engine.runtime import pick_device
from dnas.errors import ConfigError, DnasError
from dnas.files import write_text_atomic
from dnas.registry import COMMANDS, RUNTIMES
from dnas.space.graph import SearchSpace, space_from_dict


@click.group("lut")
def lut() -> None:
    """Latency lookup tables: build one for this machine, check its predictions."""


@dataclass(frozen=True)
class Conditions:
    """What ``lut build`` times a space at: input size, batch, device, runtime and CPU
    threads; None where neither the command line nor the experiment says (the defaults)."""

    input_hw: tuple[int, int] | None = None
    batch: int | None = None
    device: str | None = None
    runtime: str | None = None
    threads: int | None = None


# each of the ``Conditions``: its option of ``lut build`` and its key in an experiment
CONDITION_KEYS = {
    "input_hw": ("--input", "input_size"),
    "batch": ("--batch", "cost_model.batch"),
    "device": ("--device", "cost_model.device"),
    "runtime": ("--runtime", "cost_model.runtime"),
    "threads": ("--threads", "cost_model.threads"),
}


def experiment_conditions(exp: Experiment) -> Conditions:
    """The conditions that ``dnas search`` of ``exp`` asks of its table: the input size, and
    what its ``cost_model:`` sets where it is a latency one (``LatencyCostModel.uncovered``)."""
    options = exp.cost_model.options
    if not isinstance(options, LatencyOptions):
        options = LatencyOptions()
    return Conditions(exp.input_hw, options.batch, options.device, options.runtime,
                      options.threads)  # fmt: skip


def settle(given: Conditions, wanted: Conditions, source: str) -> Conditions:
    """The command line's conditions, else the experiment's (``wanted``, from ``source``): a
    condition given both ways and differing is a one-line error naming both, since the
    experiment's search refuses such a table."""
    settled = {}
    for name, (option, key) in CONDITION_KEYS.items():
        mine, theirs = getattr(given, name), getattr(wanted, name)
        if mine is not None and theirs is not None and mine != theirs:
            raise ConfigError(source, key, f"{shown(theirs)}, but {option} {shown(mine)}: "
                              f"'dnas search {source}' would refuse that table; leave out "
                              f"{option} (it defaults to the experiment's), or give this build "
                              f"and the search --set '{key}={as_yaml(mine)}'")  # fmt: skip
        settled[name] = theirs if mine is None else mine
    return Conditions(**settled)


def shown(value: object) -> str:
    """A condition as the command line writes it (an input size as HxW)."""
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


def as_yaml(value: object) -> str:
    """A condition as ``--set`` takes it (an input size as [H,W])."""
    return f"[{value[0]},{value[1]}]" if isinstance(value, tuple) else str(value)


def check_strides(space: SearchSpace, input_hw: tuple[int, int]) -> None:
    """Refuse an input size that the space's strides do not divide, before any timing: a
    layer would round its output up, so the net's output is not the input / its stride (a
    pose search refuses that size). A task that takes any size checks its own: --config."""
    stride = space.total_stride()
    if not (input_hw[0] % stride or input_hw[1] % stride):
        return
    near = "x".join(str(max(stride, round(side / stride) * stride)) for side in input_hw)
    raise click.BadParameter(
        f"{shown(input_hw)}: the strides of space {space.name} ({stride} in all) do not divide "
        f"it, so the net's output would not be the input / its stride, which a pose search "
        f"refuses; expected sides that {stride} divides, such as {near} (or --config EXP, to "
        f"check the size as EXP's task does)",
        param_hint="'--input'",
    )


def what_to_build(space: str | None, config: Path | None, overrides: list[str],
                  outputs: int | None,
                  given: Conditions) -> tuple[SearchSpace, int, Conditions]:  # fmt: skip
    """The space (with the head a search would use), outputs and conditions to time: from
    ``--space`` as written, or from ``--config`` as ``dnas search`` builds them, the
    experiment's conditions the defaults of the command line's (``settle``); the input size is
    checked, as ``dnas search`` checks it, before any timing."""
    from dnas.config import load_experiment
    from dnas.engine.train import check_head_output
    from dnas.space.graph import load_space
    from dnas.task import build_space, build_task

    if (space is None) == (config is None):
        raise click.UsageError("give one of --space and --config")
    if space is not None:
        if overrides:
            raise click.UsageError("--set overrides keys of --config, not of --space")
        search_space = load_space(space)
        settled = replace(given, input_hw=given.input_hw or DEFAULT_INPUT_HW)
        check_strides(search_space, settled.input_hw)
        return search_space, head_outputs(outputs, None), settled  # its default outputs
    if outputs is not None:
        raise click.UsageError(
            "--outputs (--joints) goes with --space; with --config the task sets the outputs"
        )
    exp = load_experiment(config, overrides)
    settled = settle(given, experiment_conditions(exp), exp.source)
    task = build_task(exp)
    search_space = build_space(exp.space, task, exp)
    check_head_output(search_space, task)  # the search's own check of its input size
    return search_space, task.num_outputs, settled


def noise_options(command: Callable) -> Callable:
    """The timing and noise options ``lut build`` and ``lut check`` share."""
    for option in reversed([
        click.option("--min-time", type=FiniteRange(0.001), default=0.1, show_default=True,
                     help="Seconds spent on each timing (torch.utils.benchmark blocks)."),
        click.option("--rounds", type=click.IntRange(1), default=NoisePolicy.rounds,
                     show_default=True,
                     help="Passes over all timings; each keeps its median over the passes."),
        click.option("--max-spread", type=FiniteRange(0.0), default=NoisePolicy.max_spread,
                     show_default=True,
                     help="IQR / median above which a timing is measured again."),
        click.option("--max-drift", type=FiniteRange(0.0), default=NoisePolicy.max_drift,
                     show_default=True,
                     help="Change of the reference net's time within one chunk of timings."),
        click.option("--max-speed-change", type=FiniteRange(0.0),
                     default=NoisePolicy.max_speed_change, show_default=True,
                     help="Reference net this much slower or faster than around any of the "
                          f"last {NoisePolicy.speed_window} chunks: busy."),
        click.option("--allow-noise", is_flag=True,
                     help="Keep noisy timings (counted in meta.noise) even while other "
                          "processes take CPU time, instead of stopping."),
        click.option("--in-process", is_flag=True,
                     help="Run every round in this process rather than each in a fresh one "
                          "(quicker; one process's memory layout then biases all timings)."),
    ]):  # fmt: skip
        command = option(command)
    return command


def make_bench(runtime: str, device: str, threads: int, min_time: float, rounds: int,
               max_spread: float, max_drift: float, max_speed_change: float,
               allow_noise: bool, in_process: bool,
               keep_memory: bool = False) -> Bench:  # fmt: skip
    policy = NoisePolicy(max_spread, max_drift, max_speed_change, rounds=rounds,
                         strict=not allow_noise, fresh_processes=not in_process)  # fmt: skip
    return Bench(get_runtime(runtime, pick_device(device), threads), min_time, policy, keep_memory)


def allocator_warning(allocator: dict, path: Path, now: str = "this check") -> str | None:
    """One line when a check timed under another allocator than the table at ``path`` was
    (``check_lut``'s ``allocator``; ``dnas.allocator``): a net's time can differ by a quarter
    between the two, as it can where the environment sets glibc's thresholds."""
    if allocator["table"] == allocator["check"]:
        return None
    return (f"warning: {path} was timed with {allocator['table']}, {now} with "
            f"{allocator['check']}: a net's time differs between the two (dnas.allocator), so "
            f"the errors include that")  # fmt: skip


def machine_warning(machine: dict, path: Path, now: str = "this check") -> str | None:
    """One line when a check runs on another device than the table at ``path`` was built on
    (``check_lut``'s ``machine``; tables from before 2026-12-07 name a CPU only as "cpu"): its
    errors then measure the difference between the two devices as much as the table."""
    if machine["table"] in (None, "cpu") or machine["table"] == machine["check"]:
        return None
    return (f"warning: {path} was built on {machine['table']}, {now} runs on "
            f"{machine['check']}: the errors include the difference between the two devices "
            f"(build a table here to model this one)")  # fmt: skip


def noise_line(noise: dict) -> str:
    """The guard's report (``NoiseReport.to_dict``) in one line: what was measured again, what
    was kept noisy, and why (the machine unsteady with nothing else running, or --allow-noise)."""
    kept = noise["kept_noisy"] + noise["chunks_kept_noisy"]
    why = "the machine unsteady, nothing else running" if noise.get("unsteady") else "--allow-noise"
    kept = (f", kept {noise['kept_noisy']} noisy timings and {noise['chunks_kept_noisy']} "
            f"noisy chunks or passes ({why})" if kept else "")  # fmt: skip
    return (
        f"noise: worst spread {100 * noise['worst_spread']:.1f} %, reference drift "
        f"{100 * noise['drift']:.1f} %, {noise['remeasured']} timings and "
        f"{noise['chunks_redone']} chunks or passes measured again{kept}"
    )


def ranking_line(report: dict) -> str | None:
    """What ``lut check``'s tau says of the table against its noise ceiling (``NoiseCeiling``):
    within noise of an error-free table's, or below it by more than ``BELOW_CEILING_SDS`` of
    its sds, which the check's noise does not explain. None without a ceiling."""
    gap = report.get("tau_vs_ceiling_sds")
    if gap is None:
        return None
    if gap >= -BELOW_CEILING_SDS:
        return (f"ranking: tau {report['kendall_tau']:.3f} is {gap:+.1f} sd from the noise "
                f"ceiling, not below it beyond noise: the table ranks these nets as well as these "
                f"measurements can tell")  # fmt: skip
    speed = report.get("speed_vs_build")
    moved = f" (the machine took {speed:.2f}x as long as at {since(report)})" if speed else ""
    below = (f"ranking: tau {report['kendall_tau']:.3f} is {-gap:.1f} sd below the noise "
             f"ceiling: the table ranks these nets otherwise than they run now, beyond this "
             f"check's noise{moved}")  # fmt: skip
    refit = report.get("refit") or {}
    refit_gap = refit.get("tau_vs_ceiling_sds")
    if refit_gap is not None and refit_gap >= -BELOW_CEILING_SDS and refit.get("recalibratable"):
        return (f"{below}; but its entries, with scales and overhead refitted to the other "
                f"checked nets, rank them at tau {refit['kendall_tau']:.3f} ({refit_gap:+.1f} "
                f"sd): the entries hold, and the scales and overhead fitted at "
                f"{since(report)} do not fit the machine now; refit them here with "
                f"'dnas lut recalibrate'")  # fmt: skip
    return f"{below}; build it again while the machine is steady"


def since(report: dict) -> str:
    """What ``lut check`` measured the machine's speed against: the build, or the table's last
    ``lut recalibrate``, which timed the gauge nets again."""
    return "its last recalibration" if report.get("recalibrated") else "the build"


def unsteady_warning(noise: dict, result: str, where: str) -> str | None:
    """One line where timings went on as measured because the machine's speed wandered with
    nothing else running (``NoiseReport.unsteady``, recorded at ``where``): ``result`` carries
    that noise."""
    if not noise.get("unsteady"):
        return None
    return (f"warning: this machine's speed was unsteady with nothing else running (a shared VM's "
            f"host?): {noise['unsteady']} noisy timings, chunks or passes went on as measured "
            f"({where}; reference drift {100 * noise['drift']:.0f} %), so "
            f"{result} carries that noise")  # fmt: skip


@lut.command(
    "build",
    epilog=example(
        "dnas lut build --space mbv2_pose_small --input 256x256 --batch 1 -o lut.json",
        "dnas lut build --space mbv2_pose_small --runtime onnxruntime -o ort.json",
        "dnas lut build --config examples/seg_coco.yaml -o seg.json",
    ),
)
@click.option("--space", help="Search space YAML or shipped name.")
@click.option("--config", "config", type=click.Path(path_type=Path),
              callback=remembered(CONFIG_META),
              help="An experiment: its space, head (with its head: override), input size and "
                   "outputs, exactly as 'dnas search' builds them, and the batch, device, "
                   "runtime and threads its latency cost_model: sets (an option that differs "
                   "from the experiment's is refused).")  # fmt: skip
@set_opt
@click.option("--input", "input_size", type=SIZE,
              help="HxW (default: the config's input_size, else 256x256).")  # fmt: skip
@click.option(
    "--batch",
    type=click.IntRange(1, MAX_BATCH),
    help="Batch (default: the config's cost_model.batch, else CPU 1, GPU 32).",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    help="Device (default: the config's cost_model.device, else cpu).",
)
@click.option(
    "--runtime",
    help="A registered runtime: torch (eager) or onnxruntime (the exported ONNX) (default: the "
    "config's cost_model.runtime, else torch).",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    help="CPU threads (default: the config's cost_model.threads, else torch's).",
)
@outputs_opt
@click.option(
    "--calibration",
    type=click.IntRange(0),
    default=40,
    show_default=True,
    help="Random whole networks timed to fit the entries: half drawn uniformly, half spread "
    "over the space's MAC range (a quarter held out).",
)
@click.option("--keep-freed-memory", "keep_memory", is_flag=True,
              help="Time nets as a process that keeps freed memory runs them (glibc thresholds "
                   "set, as dnas trains; like jemalloc, TCMalloc or ONNX Runtime's arena) "
                   "instead of one that leaves glibc's defaults (a plain deployment). "
                   "Recorded; lut check follows it. Advised above batch 1 on a CPU, with an "
                   "allocator that keeps memory where you deploy: plain, batch-8 nets spent "
                   "30-43 % of their time in page faults.")  # fmt: skip
@noise_options
@out_opt("output", file=True)
@click.option("--force", is_flag=True)
def lut_build(space: str | None, config: Path | None, overrides: tuple[str, ...],
              input_size: tuple[int, int] | None,
              batch: int | None, device: str | None, runtime: str | None, threads: int | None,
              outputs: int | None, joints: int | None, calibration: int, min_time: float,
              rounds: int, max_spread: float, max_drift: float, max_speed_change: float,
              allow_noise: bool, in_process: bool, keep_memory: bool, output: Path,
              force: bool) -> None:  # fmt: skip
    """Time every candidate op of SPACE (or of CONFIG's search) at its exact input shape."""
    from dnas.cli import guard_output

    guard_output(output, force)
    search_space, num_outputs, settled = what_to_build(
        space, config, list(overrides), head_outputs(outputs, joints, default=None),
        Conditions(input_size, batch, device, runtime, threads),
    )  # fmt: skip
    if device is None and settled.device is not None:  # the experiment's cost_model.device
        try:
            pick_device(settled.device)
        except DnasError:
            raise ConfigError(str(config), "cost_model.device", f"{settled.device!r}, which "
                              "this machine lacks: build the table on a machine with it (or "
                              "give this build and the search --set cost_model.device=cpu)"
                              ) from None  # fmt: skip
    device = settled.device or "cpu"
    batch = settled.batch or (32 if device == "cuda" else 1)
    runtime = settled.runtime or "torch"
    bench = make_bench(runtime, device, settled.threads or torch.get_num_threads(), min_time,
                       rounds, max_spread, max_drift, max_speed_change, allow_noise, in_process,
                       keep_memory)  # fmt: skip
    table = build_lut(search_space, settled.input_hw, num_outputs, batch, bench, calibration)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, json.dumps(table, indent=1))
    fitted = calibration_text(table["meta"]["calibration_fit"], calibration)
    click.echo(
        f"wrote {output}: {sum(len(v) for v in table['layers'].values())} op entries, "
        f"{runtime} batch {batch}, {table['meta']['device']}, {bench.runtime.threads} threads; "
        f"{fitted}"
    )
    click.echo(noise_line(table["meta"]["noise"]))
    if warning := unsteady_warning(table["meta"]["noise"], "the table", "meta.noise.unsteady"):
        click.echo(warning, err=True)


def checked_space(meta: dict, space: str | None, table_path: Path) -> SearchSpace:
    """The space ``lut check`` samples: ``--space``, else the one the table was built from
    (its recorded copy, head included; older tables: by its file or shipped name)."""
    from dnas.space.graph import load_space

    if space is not None:
        return load_space(space)
    if "space_dict" in meta:  # a mapping (``_check_table``)
        return space_from_dict(meta["space_dict"], source=f"{table_path} (meta.space_dict)")
    recorded = meta.get("space_file")
    try:
        return load_space(recorded if recorded and Path(recorded).is_file() else meta["space"])
    except DnasError as exc:
        raise ConfigError(
            str(table_path),
            "meta.space",
            f"the table records no space_dict, and {exc}; give --space",
        ) from None


def timed_table(table_path: Path, runtime: str | None, space: str | None,
                redo: str) -> tuple[dict, SearchSpace]:  # fmt: skip
    """The table that ``lut check`` or ``lut recalibrate`` times nets of, and its space
    (``checked_space``), validated before any timing: this machine must have the table's
    device (``redo``: what to do elsewhere, 'check it'), ``--runtime``, if given, must be the
    table's, and the table must cover the space."""
    table = read_lut(table_path)
    meta, recorded_runtime = table["meta"], table_runtime(table)
    try:
        pick_device(meta["device"])
    except DnasError:  # the table's device, which nobody asked for on the command line
        raise ConfigError(str(table_path), "meta.device", f"the table was timed on "
                          f"{meta['device']!r}, which this machine lacks; {redo} on a machine "
                          f"with {meta['device'].upper()}") from None  # fmt: skip
    if runtime is not None:
        try:
            RUNTIMES.get(runtime)
        except DnasError as exc:  # the registry's line, naming the registered runtimes
            raise click.BadParameter(str(exc), param_hint="'--runtime'") from None
    if runtime is not None and runtime != recorded_runtime:
        raise DnasError(f"{table_path}: measured in {recorded_runtime}, not {runtime}; build a "
                        f"table with 'dnas lut build --runtime {runtime}' to time that "
                        "runtime")  # fmt: skip
    search_space = checked_space(meta, space, table_path)
    LatencyCostModel(LatencyOptions(str(table_path))).table(
        search_space, tuple(meta["input"]), meta["num_outputs"]
    )  # validates coverage
    return table, search_space


@lut.command("check", epilog=example("dnas lut check --table lut.json --samples 30"))
@click.option("--table", "table_path", type=click.Path(path_type=Path), required=True)
@click.option("--space", help="Search space (default: the table's own, by its file or name).")
@click.option("--samples", type=click.IntRange(2), default=30, show_default=True)
@click.option("--runtime", help="The runtime to measure in (default and only choice: the table's).")
@noise_options
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def lut_check(table_path: Path, space: str | None, samples: int, runtime: str | None,
              min_time: float, rounds: int, max_spread: float, max_drift: float,
              max_speed_change: float, allow_noise: bool, in_process: bool,
              fmt: str) -> None:  # fmt: skip
    """Predicted vs measured latency of random architectures: Kendall tau and MAPE (%), and
    the tau and MAPE a table without error would get against the same measurements (their
    noise ceiling); and of the table's own fastest nets at 25, 50 and 75 % of the space's MAC
    range."""

    table, search_space = timed_table(table_path, runtime, space, "check it")
    meta, recorded_runtime = table["meta"], table_runtime(table)
    bench = make_bench(recorded_runtime, meta["device"], meta["threads"], min_time, rounds,
                       max_spread, max_drift, max_speed_change, allow_noise,
                       in_process)  # fmt: skip
    report = check_lut(table, search_space, samples, bench, what=f"lut check --table {table_path}")
    for warning in (
        machine_warning(report["machine"], table_path),
        allocator_warning(report["allocator"], table_path),
    ):
        if warning:
            click.echo(warning, err=True)
    if warning := unsteady_warning(report["noise"], "the measured times, tau and MAPE",
                                   "the report's noise.unsteady"):  # fmt: skip
        click.echo(warning, err=True)
    if fmt == "json":
        click.echo(json.dumps(report))
        return
    for row in report["rows"]:
        click.echo(
            f"predicted {row['predicted_ms']:8.3f} ms   measured {row['measured_ms']:8.3f} ms"
        )
    conditions = f"{recorded_runtime}, batch {meta['batch']}, {meta['threads']} threads"
    click.echo(f"Kendall tau {report['kendall_tau']:.3f}   MAPE {report['mape']:.2f} %   "
               f"({conditions})")  # fmt: skip
    if ceiling := report["noise_ceiling"]:
        click.echo(f"noise ceiling: a table without error would get tau about "
                   f"{ceiling['kendall_tau']:.3f} (+-{ceiling['kendall_tau_sd']:.3f} from check "
                   f"to check) and, the machine's level aside, MAPE about "
                   f"{ceiling['mape']:.2f} % (compare the MAPE at {since(report)}'s speed) against "
                   f"these measurements (a net's time moved {ceiling['pass_sd']:.1f} % from pass "
                   f"to pass beyond the speed the pass shared)")  # fmt: skip
    else:
        click.echo("noise ceiling: needs --rounds 2 or more")
    if line := ranking_line(report):
        click.echo(line)
    if refit := report["refit"]:
        click.echo(f"refitted: the table's entries with scales and overhead fitted to the other "
                   f"checked nets (leave-one-out) get tau {refit['kendall_tau']:.3f}, MAPE "
                   f"{refit['mape']:.2f} %")  # fmt: skip
    if report["picked"]:
        errors = ", ".join(f"{100 * r['level']:.0f} % {r['predicted_ms']:.3f} vs "
                           f"{r['measured_ms']:.3f} ms" for r in report["picked"])  # fmt: skip
        click.echo(f"the table's own picks (its fastest net at a share of the MAC range), "
                   f"predicted vs measured: {errors}; "
                   f"MAPE {report['picked_mape']:.2f} %")  # fmt: skip
    if report["speed_vs_build"] is not None:
        picks = (f" (the picks' {report['picked_mape_at_build_speed']:.2f} %)"
                 if report["picked"] else "")  # fmt: skip
        click.echo(f"machine speed: {report['speed_from']} took {report['speed_vs_build']:.3f}x "
                   f"as long as at {since(report)}; MAPE at that speed "
                   f"{report['mape_at_build_speed']:.2f} %{picks}")  # fmt: skip
    click.echo(noise_line(report["noise"]))


@lut.command("recalibrate",
             epilog=example("dnas lut recalibrate --table lut.json -o lut-now.json"))  # fmt: skip
@click.option("--table", "table_path", type=click.Path(path_type=Path), required=True)
@click.option("--space", help="Search space (default: the table's own, by its file or name).")
@click.option("--runtime", help="The runtime to time in (default and only choice: the table's).")
@noise_options
@out_opt("output", file=True)
@click.option("--force", is_flag=True)
def lut_recalibrate(table_path: Path, space: str | None, runtime: str | None, min_time: float,
                    rounds: int, max_spread: float, max_drift: float, max_speed_change: float,
                    allow_noise: bool, in_process: bool, output: Path,
                    force: bool) -> None:  # fmt: skip
    """Fit a table's scales and overhead anew to its own calibration nets timed now, keeping
    its op entries: the table moved into the machine's present speed and spell, for the time
    of its nets alone (a build times every op as well). lut check says when a table needs it."""
    from dnas.cli import guard_output

    guard_output(output, force)
    table, search_space = timed_table(table_path, runtime, space, "recalibrate it")
    meta = table["meta"]
    bench = make_bench(table_runtime(table), meta["device"], meta["threads"], min_time, rounds,
                       max_spread, max_drift, max_speed_change, allow_noise,
                       in_process)  # fmt: skip
    fitted = recalibrate_lut(table, search_space, bench, str(table_path))
    new = fitted["meta"]
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, json.dumps(fitted, indent=1))
    done = new["recalibrations"][-1]
    for warning in (
        machine_warning({"table": meta.get("device_name"), "check": done["device_name"]},
                        table_path, "this refit"),
        allocator_warning({"table": done["allocator_before"], "check": new["allocator"]},
                          table_path, "this refit"),
    ):  # fmt: skip
        if warning:
            click.echo(warning, err=True)
    nets = len(new["calibration_nets"])
    click.echo(f"wrote {output}: its {nets} calibration networks took "
               f"{done['nets_vs_before']:.3f}x their times at the last calibration; "
               f"{calibration_text(new['calibration_fit'], nets)}")  # fmt: skip
    click.echo(noise_line(new["noise"]))
    if warning := unsteady_warning(new["noise"], "the refit", "meta.noise.unsteady"):
        click.echo(warning, err=True)


COMMANDS.register("lut")(lut)
