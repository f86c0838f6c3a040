"""The ``dnas`` command line: search, derive, train, eval, sweep, export, cost, plot, spaces,
and the commands task plugins and cost models register (data, predict, lut, ...)."""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dnas.engine.signals import exit_on_signals, raise_on_signals
from dnas.errors import (
    ConfigError,
    DnasError,
    Interrupted,
    JoinError,
    Signalled,
    from_worker,
    user_error_line,
)
from dnas.files import check_writable
from dnas.search.bounds import BAND, CHANCE_SAMPLES, DEFAULT_BAND

if TYPE_CHECKING:  # imported lazily where used: 'dnas --help' does not import torch
    from dnas.space.graph import SearchSpace

# User mistakes surface as one line on stderr and exit code 1, click's usage errors included.


# click >= 8.2 raises this for a group run without a command; it prints the group's help
NO_ARGS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class DnasGroup(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:  # the root's own options ('dnas -h') are parsed here, outside any invoke
            return super().parse_args(ctx, args)
        except NO_ARGS_HELP:
            raise
        except click.UsageError as exc:
            raise one_line(exc, ctx) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NO_ARGS_HELP:
            raise  # 'dnas lut' alone: its help, as 'dnas' alone prints the root's
        except click.UsageError as exc:  # one line and exit 1, like every other user mistake
            raise one_line(exc, ctx) from None
        except OSError as exc:  # a path that the checks before the work could not foresee
            raise UserError(user_error_line(exc) or str(exc)) from None
        except (DnasError, RuntimeError) as exc:
            message = from_worker(exc)  # a data error inside a loader worker
            if message is None and not isinstance(exc, DnasError):
                raise
            if isinstance(exc, Interrupted):  # asked for: its line, exit 130 / 143, no "Error:"
                raise Stopped(str(exc), exc.exit_code) from None
            agreed = isinstance(exc, DnasError) and exc.agreed
            if isinstance(exc, ConfigError):  # a check after loading, of a value --set gave
                exc = blamed_on_set(exc, ctx.meta)
            raise UserError(message or str(exc), agreed, own=isinstance(exc, JoinError)) from None


def blamed_on_set(exc: ConfigError, meta: dict) -> ConfigError:
    """``exc`` as ``--set``'s where it names a key that the command's ``--set`` gave (the
    command's CONFIG or ``--config`` and its overrides are in ``meta``, which click shares
    between a command's context and its groups')."""
    from dnas.config import blamed

    config = meta.get(CONFIG_META)
    if config is None:
        return exc
    # a run directory's own config, or the copy in a search run's checkpoint (dnas rank)
    sources = {str(config), *(str(Path(config) / name) for name in ("config.yaml", "search.pt"))}
    return blamed(exc, sources, meta.get(SET_META, ()))


class UserError(click.ClickException):
    """A user mistake's one line, exit 1. Under torchrun, one that every process meets alike
    (before the process group exists: the same arguments and files; or ``agreed``) is said by
    the first process of each node; any other (``own``: one process could not join) may be
    one process's own, and each says it."""

    def __init__(self, message: str, agreed: bool = False, own: bool = False) -> None:
        super().__init__(message)
        self.alike = agreed or not (own or joined_world())

    def show(self, file: Any = None) -> None:
        if not self.alike or int(os.environ.get("LOCAL_RANK", "0")) == 0:
            super().show(file)


def joined_world() -> bool:
    """Whether this process has joined a torchrun process group (its module loaded: the CLI
    imports torch only where a command needs it)."""
    distributed = sys.modules.get("dnas.engine.distributed")
    return distributed is not None and distributed.dist.is_initialized()


def leave_world(succeeded: bool) -> None:
    """Leave the process group, if this process joined one (see ``shutdown``)."""
    if joined_world():
        sys.modules["dnas.engine.distributed"].shutdown(together=succeeded)


class Stopped(click.ClickException):
    """A run stopped by a signal, as asked: its line as it is (not as an error), and its exit
    code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        if is_main_process():  # torchrun: every process stops at the same step; rank 0 says so
            click.echo(self.format_message(), err=True)


def one_line(exc: click.UsageError, ctx: click.Context) -> click.ClickException:
    """A usage error as one line (exit 1) that points at the command's help."""
    where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
    return UserError(f"{exc.format_message()} (see '{where} --help')")


class RootGroup(DnasGroup):
    """The ``dnas`` group: built-in commands plus those plugins register in COMMANDS."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from dnas.registry import COMMANDS

        return sorted({*super().list_commands(ctx), *COMMANDS.names()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from dnas.registry import COMMANDS

        builtin = super().get_command(ctx, name)
        if builtin is not None:
            if name in COMMANDS.names():  # a plugin's command can never run under this name
                click.echo(f"warning: a plugin's command {name!r} is hidden by the built-in "
                           f"'dnas {name}'; register it under another name", err=True)  # fmt: skip
            return builtin
        return plugin_command(COMMANDS, name)


class DataGroup(DnasGroup):
    """``dnas data``: its sub-commands come from plugins (the DATA_COMMANDS registry)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from dnas.registry import DATA_COMMANDS

        return DATA_COMMANDS.names()

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from dnas.registry import DATA_COMMANDS

        return plugin_command(DATA_COMMANDS, name)


def plugin_command(registry: Any, name: str) -> click.Command | None:
    """The click command a plugin registered as ``name``; None (with a warning naming the
    plugin) when it registered something else, such as the function before @click.command."""
    if name not in registry.names():
        return None
    command = registry.get(name)
    if isinstance(command, click.Command):
        return command
    from dnas.registry import defining_module

    click.echo(f"warning: {registry.kind} {name!r} ({defining_module(command)}) is not a click "
               "command (register the @click.command object); skipped", err=True)  # fmt: skip
    return None


def is_main_process() -> bool:
    """False on the ranks > 0 of a torchrun job (only rank 0 prints results)."""
    return int(os.environ.get("RANK", "0")) == 0


class SizeParam(click.ParamType):
    """An input size option: ``256x192`` (height x width) or ``256``; click names the option
    in its one-line error."""

    name = "HxW"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[int, int]:  # fmt: skip
        from dnas.config import MAX_INPUT

        if isinstance(value, tuple):
            return value
        parts = str(value).lower().split("x")
        try:
            height, width = int(parts[0]), int(parts[-1])
        except ValueError:
            height = width = None
        if len(parts) > 2 or height is None:
            self.fail(f"expected HxW such as 256x192, got {value!r}", param, ctx)
        if not 8 <= min(height, width) <= max(height, width) <= MAX_INPUT:
            self.fail(f"expected both sides in 8..{MAX_INPUT}, got {value!r}", param, ctx)
        return height, width


SIZE = SizeParam()


class FiniteRange(click.FloatRange):
    """A number within bounds that is also finite (click's ``FloatRange`` lets nan and inf
    through: comparisons with nan are false)."""

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> float:  # fmt: skip
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"expected a finite number, got {value!r}", param, ctx)
        return number


def guard_output(path: Path, force: bool, option: str = "--out") -> None:
    """Never overwrite a result silently, and say before any work when ``path`` cannot be
    written at all; ``option`` is the one that named it."""
    check_writable(path)  # first: a name too long for the file system fails path.exists()
    if path.exists() and not force:
        raise DnasError(f"{path} already exists; pass --force to overwrite or choose another "
                        f"{option}")  # fmt: skip


def guard_picture(path: Path, force: bool, example_name: str) -> None:
    """``guard_output`` of a picture ``-o``: a name OpenCV writes an image to (``.png``,
    ``.jpg``, ...), else a usage error showing ``example_name``."""
    import cv2

    if not cv2.haveImageWriter(str(path)):
        raise click.BadParameter(f"expected an image path such as {example_name}, got '{path}'",
                                 param_hint="'-o' / '--out'")  # fmt: skip
    guard_output(path, force)


def warn_if_truncated(image: Path, shown: str) -> None:
    """One warning line, before libjpeg's own, when ``image`` is a JPEG cut short: its missing
    part is ``shown`` (predicted on, segmented) as grey."""
    from dnas.vis.images import truncated_jpeg

    if Path(image).is_file() and truncated_jpeg(image):
        click.echo(f"warning: {image}: the JPEG ends before its end marker (a truncated file?); "
                   f"its missing part is {shown} as grey", err=True)  # fmt: skip


def out_opt(dest: str = "out", file: bool = False, required: bool = True,
            help: str | None = None) -> Callable:  # fmt: skip
    """The one output flag of every command: ``-o/--out`` (a directory, or with ``file`` a
    file); ``--output``, its earlier name on some commands, still works."""
    kind = click.Path(file_okay=file, dir_okay=not file, path_type=Path)
    return click.option("-o", "--out", "--output", dest, type=kind, required=required,
                        help=help or ("Output file." if file else "Output directory."))  # fmt: skip


def outputs_opt(func: Callable) -> Callable:
    """``--outputs N``, the head's output channels, and ``--joints``, its earlier name (hidden);
    the command reads them with :func:`head_outputs`."""
    func = click.option("--joints", type=click.IntRange(1), hidden=True)(func)
    return click.option("--outputs", type=click.IntRange(1),
                        help="Head output channels [default: 16].")(func)  # fmt: skip


def head_outputs(outputs: int | None, joints: int | None, default: int | None = 16) -> int | None:
    """``--outputs`` (or ``--joints``), else ``default``."""
    if outputs is not None and joints is not None and outputs != joints:
        raise click.UsageError("--joints is the earlier name of --outputs: give one of them")
    return outputs or joints or default


CONFIG_META, SET_META = "dnas.config", "dnas.overrides"  # keys of click's Context.meta


def remembered(key: str) -> Callable:
    """A click callback that keeps its parameter's value in ``ctx.meta[key]`` (for
    :func:`blamed_on_set`)."""

    def keep(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            ctx.meta[key] = value
        return value

    return keep


config_arg = click.argument("config", type=click.Path(path_type=Path),
                            callback=remembered(CONFIG_META))  # fmt: skip


def run_config(config: Path, out: Path | None, default_out: str = "") -> tuple[Path, Path]:
    """CONFIG is an experiment YAML or a run directory (its ``config.yaml``, fed back as it is);
    ``--out`` defaults to the run directory (``/default_out`` below it)."""
    if config.is_dir():
        path = config / "config.yaml"
        if not path.is_file():
            raise DnasError(f"{config}: no config.yaml in it: not a dnas run directory")
        return path, out or (config / default_out if default_out else config)
    if out is None:
        raise click.UsageError("Missing option '-o' / '--out' (needed unless CONFIG is a run "
                               "directory)")  # fmt: skip
    return config, out


set_opt = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", callback=remembered(SET_META),
    help="Override a config value as KEY.PATH=YAML (repeatable; see the examples below).",
)  # fmt: skip
force_opt = click.option("--force", is_flag=True, help="Overwrite existing results in --out.")
resume_opt = click.option(
    "--resume", is_flag=True,
    help="Continue the run in --out from its newest checkpoint (a changed config needs --force).",
)  # fmt: skip
quiet_opt = click.option(
    "--quiet", is_flag=True, help="No progress bars: plain log lines every 30 s (batch jobs)."
)
remap_opt = click.option(
    "--remap-from", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Seed MobileNetV2 state_dict (torchvision layout) to initialise from (FNA remapping).",
)  # fmt: skip


def example(*commands: str) -> str:
    """A help page's closing examples (click prints ``\\b`` paragraphs as written)."""
    return "\b\nExamples:\n" + "\n".join(f"  {c}" for c in commands)


DISTRIBUTED = ("search", "train", "eval")  # the commands that run data-parallel under torchrun


@click.group(cls=RootGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dnas")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Hardware-aware differentiable architecture search for dense prediction."""
    command = ctx.invoked_subcommand
    if command and command not in DISTRIBUTED and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(f"dnas {command} runs in one process: run it without torchrun "
                        f"(under it: {', '.join(DISTRIBUTED)})")  # fmt: skip


@cli.command(
    epilog=example(
        "dnas search examples/demo.yaml -o runs/search --set search.epochs=2",
        "dnas search EXP.yaml -o runs/search --resume",
        "torchrun --nproc_per_node 2 -m dnas search EXP.yaml -o runs/search",
    )
)
@config_arg
@out_opt(required=False, help="Output directory (default: CONFIG, when it is a run directory).")
@click.option("--strategy", help="Override search.strategy (darts, random, ...).")
@click.option("--cost-model", help="Override cost_model.type (flops, params, latency).")
@click.option("--cost-table", help="Override cost_model.table (a dnas lut build table).")
@remap_opt
@set_opt
@resume_opt
@quiet_opt
@force_opt
def search(config: Path, out: Path | None, strategy: str | None, cost_model: str | None,
           cost_table: str | None, remap_from: Path | None, overrides: tuple[str],
           resume: bool, quiet: bool, force: bool):  # fmt: skip
    """Search an architecture with the experiment CONFIG (a YAML, or a run directory to
    --resume); writes OUT/search.pt and search.json.

    Works under ``torchrun --nproc_per_node N -m dnas search ...`` (data parallel)."""
    from dnas.config import load_experiment
    from dnas.engine.progress import Reporter
    from dnas.search.run import run_search

    options = {"search.strategy": ("--strategy", strategy),
               "remap_from": ("--remap-from", remap_from),
               "cost_model.type": ("--cost-model", cost_model),
               "cost_model.table": ("--cost-table", cost_table)}  # fmt: skip
    extra = [f"{key}={value}" for key, (_, value) in options.items() if value]
    config, out = run_config(config, out)
    try:
        exp = load_experiment(config, [*overrides, *extra])
    except ConfigError as exc:
        if cost_table and exc.key == "cost_model.table" and exc.detail.startswith("unknown key"):
            raise click.UsageError("--cost-table goes with --cost-model latency (a cost model "
                                   "that reads a table)") from None  # fmt: skip
        option, value = options.get(exc.key, (None, None))
        if value:  # the option's value is wrong, not the config file
            raise DnasError(f"{option} {value}: {exc.detail}") from None
        raise
    run_search(exp, out, Reporter(click.echo, quiet), resume, force)
    if not is_main_process():  # torchrun: rank 0 prints the results
        return
    click.echo(f"wrote {out / 'search.pt'}, {out / 'search.json'}, {out / 'tb'}")


@cli.command(epilog=example("dnas derive runs/search -o runs/arch.yaml --name my-net"))
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@out_opt("output", file=True)
@click.option("--name", help="Name of the derived architecture.")
@force_opt
def derive(run: Path, output: Path, name: str | None, force: bool):
    """Derive the architecture of a search RUN (directory or search.pt): the op it chose per
    layer (the most probable one; under a budget, the most probable net within the band)."""
    from dnas.search.derive import (
        budget_warning,
        derive_checkpoint,
        derived_line,
        evidence_warnings,
        format_rows,
        incomplete_warning,
        read_search,
        undecided_warning,
        write_architecture,
    )

    guard_output(output, force)
    path, ckpt = read_search(run)
    arch, rows = derive_checkpoint(path, ckpt, name)
    if warning := incomplete_warning(path, ckpt):
        click.echo(f"warning: {warning}", err=True)
    line = derived_line(ckpt)
    size = (ckpt.get("config") or {}).get("input_size")
    header = [f"derived by 'dnas derive {run}'", *([line] if line else [])]
    if isinstance(size, list) and len(size) == 2:  # dnas cost ARCH alone: 256x256, 16 outputs
        config = path.parent / "config.yaml"
        header.append(f"searched at {size[0]}x{size[1]}: 'dnas cost {output} --config {config}' "
                      "costs it as the search did (its input size, head and outputs)")  # fmt: skip
    write_architecture(arch, output, "\n".join(header), force=True)  # guarded above
    click.echo(format_rows(rows))
    if line:
        click.echo(line)
    for warning in (budget_warning(ckpt), undecided_warning(rows), *evidence_warnings(ckpt)):
        if warning:
            click.echo(f"warning: {warning}", err=True)
    click.echo(f"wrote {output}")


def band_opt(help: str) -> Callable:
    return click.option("--band", type=FiniteRange(*BAND), default=DEFAULT_BAND,
                        show_default=True, help=help)  # fmt: skip


@cli.command(epilog=example("dnas agreement runs/search-s0 runs/search-s1 runs/search-s2"))
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@band_opt("Chance: random architectures within this share of the runs' mean cost.")
@click.option(
    "--samples",
    type=click.IntRange(CHANCE_SAMPLES),
    default=200,
    show_default=True,
    help="Sets of random architectures (as many as RUNS) that estimate chance.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of those draws.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def agreement(runs: tuple[Path, ...], band: float, samples: int, seed: int, fmt: str):
    """Whether search RUNS that differ in their seed derive the same ops, against chance.

    Prints the share of layers on which each pair of derived nets agrees, and the same share
    between random architectures of the runs' mean derived cost. Searches whose decisions come
    from the data agree above chance (z > 2); ones that agree at chance decided on their seed.
    """
    from dnas.search.agreement import compare_runs, format_report

    report = compare_runs(list(runs), band, samples, seed)
    for warning in report["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    click.echo(json.dumps(report, indent=1) if fmt == "json" else format_report(report))


@cli.command(
    epilog=example(
        "dnas rank runs/search --random 50 -o runs/best.yaml",
        "dnas rank runs/search runs/train-a-s0 runs/train-a-s1 runs/train-b-s0 efficientpose-a",
    )
)
@click.argument("run", type=click.Path(exists=True, path_type=Path),
                callback=remembered(CONFIG_META))  # fmt: skip
@click.argument("archs", nargs=-1)
@click.option("--random", "random_nets", type=click.IntRange(0), default=0, show_default=True,
              help="Also score this many random nets of the derived net's cost.")  # fmt: skip
@band_opt("Random architectures within this share of the derived net's cost.")
@click.option("--calibration-batches", type=click.IntRange(1), default=20, show_default=True,
              help="Training batches that recompute each net's batch-norm statistics.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random draws and of the calibration batches.")  # fmt: skip
@click.option("--compare", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Another search run of the space (another seed): score the same nets "
              "in its super net; Kendall's tau between the two rankings (repeatable).")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@out_opt("output", file=True, required=False,
         help="Write the best one-shot net within the band as an architecture YAML.")  # fmt: skip
@set_opt
@force_opt
def rank(run: Path, archs: tuple[str, ...], random_nets: int, band: float,
         calibration_batches: int, seed: int, compare: tuple[Path, ...], fmt: str,
         output: Path | None, overrides: tuple[str], force: bool):  # fmt: skip
    """Score architectures with the weights of search RUN's super net (one-shot evaluation).

    ARCHS are architecture YAMLs, shipped names or 'dnas train' run directories; a run's
    score is the net's standalone figure, and with three or more trained nets the report gives
    Kendall's tau between the super net's ranking and training alone. Near 0, the super net
    cannot tell better nets from worse ones, so its search cannot beat random ones. With -o,
    the best net by one-shot score within the band of the derived net's cost is written as an
    architecture (random search with weight sharing); select on images that neither the
    search trained on nor the final score uses, pointing the validation split at them with
    --set.
    """
    from dnas.search.oneshot import format_report, write_best
    from dnas.search.oneshot import rank as rank_nets

    if output is not None:
        guard_output(output, force)
    report = rank_nets(run, list(archs), random_nets, band, calibration_batches, seed, overrides,
                       compare)  # fmt: skip
    click.echo(json.dumps(report, indent=1) if fmt == "json" else format_report(report))
    if output is not None:
        write_best(run, report, output)
        if fmt == "text":
            click.echo(f"wrote {output}")


@cli.command(
    epilog=example(
        "dnas train examples/demo.yaml --arch runs/arch.yaml -o runs/train",
        "dnas train EXP.yaml --arch efficientpose-a -o runs/a --set train.epochs=20 "
        "--set 'train.milestones=[15, 18]'",
    )
)
@config_arg
@click.option("--arch", help="Architecture YAML or shipped name (default: the run directory's "
              "arch.yaml, when CONFIG is one).")  # fmt: skip
@out_opt(required=False, help="Output directory (default: CONFIG, when it is a run directory).")
@click.option("--init", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Initial weights (state_dict or dnas checkpoint).")  # fmt: skip
@remap_opt
@set_opt
@resume_opt
@quiet_opt
@force_opt
def train(config: Path, arch: str | None, out: Path | None, init: Path | None,
          remap_from: Path | None,
          overrides: tuple[str], resume: bool, quiet: bool, force: bool):  # fmt: skip
    """Train a fixed architecture ARCH with the experiment CONFIG (a YAML, or a train run
    directory to --resume); writes OUT/model.pt, results.json and arch.yaml (the architecture).

    Works under ``torchrun --nproc_per_node N -m dnas train ...`` (DistributedDataParallel)."""
    from dnas.config import load_experiment
    from dnas.engine.progress import Reporter
    from dnas.engine.train import run_train

    extra = [f"remap_from={remap_from}"] if remap_from else []
    if arch is None and config.is_dir() and (config / "arch.yaml").is_file():
        arch = str(config / "arch.yaml")  # the architecture the run recorded
    if arch is None:
        raise click.UsageError("Missing option '--arch' (needed unless CONFIG is a train run "
                               "directory)")  # fmt: skip
    config, out = run_config(config, out)
    exp = load_experiment(config, [*overrides, *extra])
    run_train(exp, arch, out, init, Reporter(click.echo, quiet), resume, force)  # logs the table
    if not is_main_process():  # torchrun: rank 0 prints the results
        return
    click.echo(f"wrote {out / 'model.pt'}, {out / 'best.pt'}, {out / 'last.pt'}, "
               f"{out / 'results.json'}, {out / 'tb'}")  # fmt: skip


@cli.command(
    "eval",
    epilog=example(
        "dnas eval EXP.yaml --arch runs/arch.yaml --weights runs/train/model.pt -o runs/eval",
        "dnas eval EXP.yaml --arch efficientpose-a --weights a.pt -o runs/eval --save-vis 8",
    ),
)
@config_arg
@click.option("--arch", help="Architecture YAML or shipped name (default: the one the weights "
              "record; dnas train's model.pt, best.pt and last.pt do).")  # fmt: skip
@click.option("--weights", type=click.Path(path_type=Path),
              help="Weights file or train run directory (default: CONFIG/model.pt, when CONFIG "
              "is a run directory).")  # fmt: skip
@out_opt(required=False, help="Output directory (default: CONFIG/eval for a run directory).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option("--save-vis", type=click.IntRange(0), default=0, metavar="N",
              help="Save N pictures of ground truth beside prediction in OUT/vis.")  # fmt: skip
@set_opt
@force_opt
def evaluate(config: Path, arch: str | None, weights: Path | None, out: Path | None, fmt: str,
             save_vis: int,
             overrides: tuple[str], force: bool):  # fmt: skip
    """Evaluate WEIGHTS of ARCH on the validation split; writes OUT/results.json."""
    from dnas.config import load_experiment
    from dnas.engine.train import run_eval
    from dnas.nn.weights import weights_file
    from dnas.space.graph import describe
    from dnas.task import build_space, build_task

    run_dir = config if config.is_dir() else None
    config, out = run_config(config, out, "eval")
    if weights is None and run_dir is None:
        raise click.UsageError("Missing option '--weights' (needed unless CONFIG is a train run "
                               "directory)")  # fmt: skip
    weights = weights_file(weights or run_dir)
    exp = load_experiment(config, list(overrides))
    guard_output(out / "results.json", force)
    results = run_eval(exp, arch, weights, out, save_vis)
    if not is_main_process():  # torchrun: rank 0 prints the results
        return
    table = results.pop("table")
    if fmt == "json":
        click.echo(json.dumps(results))
        return
    click.echo(describe(build_space(results["architecture"], build_task(exp), exp)))
    click.echo(f"params {results['params']:,}  MACs {results['macs']:,} at "
               f"{exp.input_hw[0]}x{exp.input_hw[1]}")  # fmt: skip
    click.echo(table)
    click.echo(
        f"wrote {out / 'results.json'}" + "".join(f", {p}" for p in results["files"].values())
    )


@cli.command(
    epilog=example(
        "dnas cost efficientpose-a --input-size 256x256 --outputs 16",
        "dnas cost runs/seg/arch.yaml --config examples/seg_synth.yaml",
    )
)
@click.argument("arch", required=False)
@click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path),
    callback=remembered(CONFIG_META),
    help="An experiment: the head its task adds (or its head: section), its outputs "
    "and input size, as 'dnas search' builds them; ARCH defaults to its space.",
)
@set_opt
@click.option("--input-size", type=SIZE,
              help="HxW [default: the config's input_size, else 256x256].")  # fmt: skip
@outputs_opt
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def cost(arch: str | None, config: Path | None, overrides: tuple[str, ...],
         input_size: tuple[int, int] | None, outputs: int | None, joints: int | None,
         fmt: str):  # fmt: skip
    """Params and MACs of an architecture (YAML path or shipped name, e.g. efficientpose-a).

    For a search space, prints the range over its architectures instead.
    """
    from dnas.config import DEFAULT_INPUT_HW
    from dnas.nn.profile import cost_report

    if config is None:
        report = cost_report(headed_space(arch, overrides), input_size or DEFAULT_INPUT_HW,
                             head_outputs(outputs, joints))  # fmt: skip
    else:
        report = cost_report(*task_space(arch, config, overrides, input_size, outputs or joints))
    if fmt == "json":
        click.echo(json.dumps(report))
        return
    for key, value in report.items():
        shown = f"{value:,}" if isinstance(value, int) else value
        click.echo(f"{key:<18} {shown}")


def headed_space(arch: str | None, overrides: tuple[str, ...]) -> SearchSpace:
    """``dnas cost ARCH`` without a config: the space as written, which must have a head."""
    from dnas.space.graph import load_space

    if arch is None:
        raise click.UsageError("give ARCH, or --config EXPERIMENT for its space")
    if overrides:
        raise click.UsageError("--set overrides keys of --config")
    space = load_space(arch)
    if space.head is None:
        raise ConfigError(
            space.source,
            "head",
            "missing: this space has no head section "
            "(give --config EXPERIMENT to cost it with the head its task adds)",
        )
    return space


def task_space(
    arch: str | None, config: Path, overrides: tuple[str, ...],
    input_size: tuple[int, int] | None, outputs: int | None,
) -> tuple[SearchSpace, tuple[int, int], int]:  # fmt: skip
    """``dnas cost --config``: ARCH (else the experiment's space) with the head, input size
    and outputs a search or training of the experiment builds, checked as they check them."""
    from dnas.config import load_experiment
    from dnas.engine.train import check_head_output
    from dnas.task import build_space, build_task

    if outputs is not None:
        raise click.UsageError("--outputs (--joints) goes without --config; with --config the "
                               "task sets the outputs")  # fmt: skip
    size = [f"input_size=[{input_size[0]}, {input_size[1]}]"] if input_size else []
    try:
        exp = load_experiment(config, [*overrides, *size])
        task = build_task(exp)
        space = build_space(arch or exp.space, task, exp, option="ARCH" if arch else None)
        check_head_output(space, task)
    except ConfigError as exc:  # the size the command line gave, not the config's
        if size and exc.key == "input_size":
            raise ConfigError("--input-size", "", exc.detail) from None
        raise
    return space, task.input_hw, task.num_outputs


def parse_values(
    ctx: click.Context, param: click.Parameter, text: str | None
) -> list[float] | None:
    """``--weights`` / ``--targets``: finite, non-negative numbers (the sweep checks each
    against the config's bounds, and that they name distinct run directories)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        raise click.BadParameter(f"expected finite non-negative numbers, got {text!r}")
    return values


@cli.command(
    epilog=example(
        "dnas sweep examples/lambda_sweep.yaml -o runs/sweep --weights 0.02,0.05,0.1",
        "dnas sweep EXP.yaml -o runs/budgets --targets 20,30,40",
    )
)
@config_arg
@out_opt()
@click.option("--weights", "weight_values", callback=parse_values,
              help="Cost weights (lambda) to sweep, e.g. 0.01,0.1,1.")  # fmt: skip
@click.option(
    "--targets",
    "target_values",
    callback=parse_values,
    help="Budget targets to sweep, in the cost model's unit, e.g. 100,200,400.",
)
@set_opt
@resume_opt
@quiet_opt
@force_opt
def sweep(config: Path, out: Path, weight_values: list[float] | None,
          target_values: list[float] | None,
          overrides: tuple[str], resume: bool, quiet: bool, force: bool):  # fmt: skip
    """One search per lambda (or budget), each derived net trained and scored; writes
    OUT/sweep.json, sweep.md and sweep.png (score vs cost). --resume keeps finished runs and
    continues the interrupted one."""
    from dnas.config import load_experiment
    from dnas.engine.progress import Reporter
    from dnas.search.sweep import run_sweep

    if (weight_values is None) == (target_values is None):
        raise click.UsageError("give exactly one of --weights and --targets")
    kind, values = ("weight", weight_values) if weight_values else ("target", target_values)
    # a budget, hinge or power config needs a target to load; each point replaces this one
    # (and check_values names a bad --targets value itself); after --set, which may replace
    # the whole cost_model section
    post = ["cost_model.target=1.0"] if kind == "target" else []
    exp = load_experiment(config, [*overrides, *post])
    rows = run_sweep(exp, kind, values, out, Reporter(click.echo, quiet), resume, force)
    click.echo((out / "sweep.md").read_text().rstrip())
    click.echo(f"wrote {out / 'sweep.json'}, {out / 'sweep.md'}, {out / 'sweep.png'} "
               f"({len(rows)} runs)")  # fmt: skip


@cli.command(
    epilog=example(
        "dnas export --arch runs/arch.yaml --weights runs/train/model.pt -o net.onnx",
    )
)
@click.option("--arch", help="Architecture YAML or shipped name (default: the weights' own).")
@click.option("--weights", type=click.Path(path_type=Path), required=True,
              help="Weights file or train run directory (its model.pt).")  # fmt: skip
@out_opt("output", file=True)
@click.option(
    "--input-size",
    type=SIZE,
    help="HxW (default: the size the weights were trained at, else 256x256; another size keeps "
    "the net's output stride, with a warning).",
)
@click.option("--opset", type=click.IntRange(11), default=17, show_default=True)
@force_opt
def export(arch: str | None, weights: Path, output: Path, input_size: tuple[int, int] | None,
           opset: int, force: bool):  # fmt: skip
    """Export trained WEIGHTS of ARCH to ONNX with batch norm folded into the convolutions; the
    file's metadata records the architecture, input size, outputs and preprocessing."""
    from dnas.nn.export import export_onnx
    from dnas.nn.network import Network
    from dnas.nn.weights import (
        head_outputs_of,
        load_weights,
        onnx_metadata,
        resize_warning,
        resolve,
        weights_file,
    )

    guard_output(output, force)
    weights = weights_file(weights)
    space, size, info = resolve(weights, arch, input_size, resizable=True)
    outputs = head_outputs_of(weights)
    warning = resize_warning(space, info, weights, size, outputs)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    net = Network(space, outputs)
    load_weights(net, weights)
    export_onnx(
        net, size, output, space.in_channels, opset, onnx_metadata(space, size, outputs, info)
    )
    click.echo(f"wrote {output} ({outputs} outputs at {size[0]}x{size[1]}, batch-norm folded)")


@cli.command(epilog=example("dnas spaces"))
def spaces():
    """List the shipped search spaces and architectures."""
    from dnas.space.graph import describe, load_space, shipped_names

    for name in shipped_names():  # by the name that loads it, then its layers
        summary = describe(load_space(name)).split("\n", 1)
        click.echo("\n".join([name, *summary[1:]]) + "\n")


@cli.command(
    epilog=example(
        "dnas plot runs/search -o runs/plots", "dnas plot efficientpose-a -o plots --format svg"
    )
)
@click.argument("ref")
@out_opt()
@click.option("--format", "fmt", type=click.Choice(["png", "svg"]), default="png",
              show_default=True)  # fmt: skip
@force_opt
def plot(ref: str, out: Path, fmt: str, force: bool):
    """Draw REF (search or train run, checkpoint, architecture YAML or shipped name) into OUT:
    op_probs (searches) and architecture pictures."""
    from dnas.nn.heads import build_head
    from dnas.vis.plot import load_plot_source, plot_paths, write_plots

    source = load_plot_source(ref)
    if source.space.head is not None:  # draw only what dnas can build (as 'dnas cost' does)
        build_head(source.space, 1)
    for path in plot_paths(source, out, fmt):
        guard_output(path, force)
    written = write_plots(source, out, fmt)
    click.echo("wrote " + ", ".join(str(p) for p in written))


@cli.group(cls=DataGroup)
def data():
    """Dataset tools contributed by task plugins (e.g. synth-mpii)."""


def one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                     lineno: int, line: str | None = None) -> str:  # fmt: skip
    """Warnings as the CLI's own: one ``warning:`` line, not the source line that raised it."""
    return f"warning: {message}\n"


def main() -> None:
    warnings.formatwarning = one_line_warning
    if not is_main_process():  # torchrun: every rank reads the same config; rank 0 warns
        warnings.simplefilter("ignore")
    raise_on_signals()
    code = 1  # a bug's traceback
    try:
        try:
            cli.main(prog_name="dnas")
        except Signalled as exc:  # outside a run's steps: its line (not an error), 130 / 143
            exit_on_signals(exc.exit_code)  # a further signal cannot cut this line short
            if is_main_process():  # torchrun signals every process; rank 0 says so
                click.echo(str(exc), err=True)
            sys.exit(exc.exit_code)
    except SystemExit as done:  # how click ends every command
        code = done.code if isinstance(done.code, int) else 0 if done.code is None else 1
        raise
    finally:  # from here on a signal ends the process with the command's own status
        exit_on_signals(code)
        leave_world(succeeded=code == 0)


if __name__ == "__main__":
    sys.exit(main())
