"""The CLI speaks one way: -o/--out on every command that writes, usage mistakes are one line
with exit code 1, and every help page ends with an example."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dnas.cli import cli

WRITERS = [["search"], ["derive"], ["train"], ["eval"], ["sweep"], ["export"], ["plot"],
           ["predict"], ["lut", "build"]]  # fmt: skip
COMMANDS = [*WRITERS, ["cost"], ["spaces"], ["lut", "check"], ["data", "synth-mpii"],
            ["data", "synth-seg"], ["pose", "pckh"], ["pose", "coco-ap"]]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_help_page_has_an_example(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0
    examples = result.output.split("Examples:\n", 1)[1].splitlines()
    assert examples and examples[0].strip().startswith(("dnas ", "torchrun "))


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
