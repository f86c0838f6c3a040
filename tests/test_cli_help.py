"""The CLI speaks one way: -o/--out on every command that writes, usage mistakes are one line
with exit code 1, and every help page ends with an example."""

from __future__ import annotations

import shlex

import click
import pytest
from click.testing import CliRunner

from dnas.cli import cli

WRITERS = [["search"], ["derive"], ["train"], ["eval"], ["sweep"], ["export"], ["plot"],
           ["predict"], ["segment"], ["lut", "build"]]  # fmt: skip
COMMANDS = [*WRITERS, ["cost"], ["spaces"], ["lut", "check"], ["data", "synth-mpii"],
            ["data", "synth-seg"], ["pose", "pckh"], ["pose", "coco-ap"]]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_help_page_has_an_example(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0
    examples = [e.strip() for e in result.output.split("Examples:\n", 1)[1].splitlines()]
    assert examples and examples[0].startswith(("dnas ", "torchrun "))
    cmd = cli
    for name in command:
        cmd = cmd.get_command(None, name)
    known = {opt for param in cmd.params for opt in param.opts}
    for line in examples:  # every option an example uses is one the command has
        args = shlex.split(line)
        args = args[args.index("dnas") + 1 + len(command) :] if "dnas" in args else args
        used = [a for a in args if a.startswith("-")]
        assert set(used) <= known, (line, set(used) - known)
        for option in (p for p in cmd.params if isinstance(p, click.Option) and p.required):
            assert set(option.opts) & set(used), (line, option.opts)
        positional = [p for p in cmd.params if isinstance(p, click.Argument) and p.required]
        assert len([a for a in args if not a.startswith("-")]) >= len(positional), line


@pytest.mark.parametrize("command", WRITERS, ids=" ".join)
def test_one_output_flag_everywhere(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert "-o, --out" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["search"],
        ["search", "x.yaml"],
        ["derive", "--bogus"],
        ["train", "x.yaml", "-o", "r"],
        ["lut", "build", "--space", "s"],
    ],  # fmt: skip
)
def test_usage_mistakes_are_one_line_with_exit_1(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and " --help')" in lines[0]
