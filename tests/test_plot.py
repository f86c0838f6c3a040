"""Plots: op-probability heat maps, entropies, architecture block diagrams and ``dnas plot``."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_SPACE, write_experiment
from matplotlib.colors import to_rgba
from matplotlib.patches import Rectangle

from dnas import checkpoint
from dnas.checkpoint import save_atomic
from dnas.cli import cli
from dnas.errors import DnasError
from dnas.search.derive import derive
from dnas.space.choices import entropies, most_probable_ops, undecided_layers
from dnas.space.graph import load_space, space_from_dict
from dnas.space.ops import parse_op
from dnas.vis.plot import (
    FIXED_COLOUR,
    KERNEL_COLOURS,
    architecture_figure,
    block_colour,
    candidates_of,
    figure_to_array,
    op_probability_figure,
    op_probability_matrix,
    save_figure,
    sweep_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def blocks(fig) -> list[Rectangle]:
    """The layer blocks of an architecture figure, in drawing order."""
    return [p for p in fig.axes[0].patches if str(p.get_gid()).startswith("layer:")]


def invoke(*args):
    return CliRunner().invoke(cli, ["plot", *(str(a) for a in args)])


# ---------------------------------------------------------------- op probabilities


def test_matrix_is_the_union_of_candidates_with_nan_elsewhere():
    candidates = {"a": ("k3e3", "skip"), "b": ("k5e6", "k3e3", "conv3")}
    probs = {"b": [0.2, 0.3, 0.5], "a": [0.9, 0.1]}
    layers, ops, matrix = op_probability_matrix(probs, candidates)
    assert layers == ["a", "b"]
    assert ops == ["k3e3", "skip", "k5e6", "conv3"]
    expected = np.array([[0.9, 0.1, np.nan, np.nan], [0.3, np.nan, 0.2, 0.5]])
    np.testing.assert_array_equal(matrix, expected)
    assert matrix.dtype == np.float64


def test_matrix_of_the_tiny_space_rows_follow_the_network():
    candidates = candidates_of(load_space(TINY_SPACE))
    probs = {layer: [1.0 / len(ops)] * len(ops) for layer, ops in candidates.items()}
    layers, ops, matrix = op_probability_matrix(probs, candidates)
    assert layers == ["stage1.0", "stage1.1", "stage2.0", "stage2.1", "stage3.0"]
    assert ops == ["k3e3", "k5e3", "skip", "k5e6", "k3e6"]
    candidate = ~np.isnan(matrix)
    assert candidate.tolist() == [
        [True, True, False, False, False],
        [True, True, True, False, False],
        [True, False, False, True, False],
        [True, False, True, True, False],
        [True, False, False, False, True],
    ]
    np.testing.assert_allclose(np.nansum(matrix, axis=1), 1.0)


def test_matrix_rejects_probabilities_that_do_not_fit():
    with pytest.raises(DnasError, match="layer a"):
        op_probability_matrix({"a": [0.5, 0.5]}, {"a": ("k3e3", "k5e3", "skip")})
    with pytest.raises(DnasError, match="layer b"):
        op_probability_matrix({"a": [1.0]}, {"a": ("k3e3",), "b": ("k3e3",)})


def test_heat_map_annotates_every_candidate_cell_and_names_the_epoch():
    candidates = {"a": ("k3e3", "skip"), "b": ("k5e6", "k3e3", "conv3")}
    fig = op_probability_figure({"a": [0.9, 0.1], "b": [0.2, 0.3, 0.5]}, candidates, epoch=7)
    ax = fig.axes[0]
    assert ax.get_title().startswith("op probabilities, epoch 7\n")
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["0.100", "0.200", "0.300", "0.500", "0.900"]
    assert len(fig.axes) == 2  # the heat map and its colorbar
    outlined = {p.get_gid(): p for p in ax.patches if isinstance(p, Rectangle)}
    assert sorted(p.get_xy() for p in outlined.values()) == [(-0.5, -0.5), (2.5, 0.5)]  # argmax


def test_heat_map_colours_the_deviation_from_uniform():
    """0.14 and 0.17 of a 7-op layer must not look alike: colour is p - 1/#candidates."""
    candidates = {"a": ("k3e3", "k5e3", "k7e3", "k3e6", "k5e6", "k7e6", "skip"),
                  "b": ("k3e3", "skip")}  # fmt: skip
    probs = {"a": [0.17, 0.14, 0.14, 0.14, 0.14, 0.14, 0.13], "b": [0.5, 0.5]}
    fig = op_probability_figure(probs, candidates)
    image = fig.axes[0].images[0]
    deviation = image.get_array()
    np.testing.assert_allclose(deviation[0], np.array(probs["a"]) - 1 / 7, atol=1e-12)
    np.testing.assert_allclose(deviation[1, [0, 6]], [0.0, 0.0], atol=1e-12)
    assert deviation.mask[1, 1:6].all()  # not candidates of b
    low, high = image.get_clim()
    assert high == pytest.approx(0.17 - 1 / 7) and low == -high  # white is uniform
    colours = image.to_rgba(deviation)
    assert np.abs(colours[0, 0] - colours[0, 1]).max() > 0.2  # 0.17 vs 0.14: distinct colours


def test_heat_map_marks_undecided_layers_and_dashes_their_argmax():
    candidates = {"a": ("k3e3", "skip"), "b": ("k5e6", "k3e3", "conv3"), "c": ("k3e3", "skip")}
    probs = {"a": [0.9, 0.1], "b": [0.35, 0.33, 0.32], "c": [0.45, 0.55]}
    fig = op_probability_figure(probs, candidates)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["a", "b (undecided)", "c"]  # top p 0.35 < 0.5; 0.55 is decided
    assert "1 of 3 layers undecided" in ax.get_title()
    styles = {p.get_gid(): p.get_linestyle() for p in ax.patches}
    assert styles == {"derived:0": "-", "derived:1": "--", "derived:2": "-"}
    assert undecided_layers(probs) == ["b"]


def test_entropies_match_hand_computed_values():
    got = entropies({"uniform3": [1 / 3] * 3, "onehot": [0.0, 1.0, 0.0], "half": [0.5, 0.5]})
    assert got["uniform3"] == pytest.approx(math.log(3))
    assert got["onehot"] == 0.0
    assert got["half"] == pytest.approx(math.log(2))
    assert list(got) == ["uniform3", "onehot", "half"]


# ---------------------------------------------------------------- architecture


def test_efficientpose_a_has_one_block_per_layer_coloured_by_kernel():
    space = load_space("efficientpose-a")
    fig = architecture_figure(space)
    layers = [layer for stage in space.stages for layer in stage.layers]
    drawn = blocks(fig)
    assert [p.get_gid() for p in drawn] == [f"layer:{layer.name}" for layer in layers]
    assert len(drawn) == 26
    for patch, layer in zip(drawn, layers, strict=True):
        spec = parse_op(layer.candidates[0])
        assert patch.get_facecolor() == to_rgba(KERNEL_COLOURS[spec.kernel]), layer.name
        assert patch.get_height() == spec.expansion  # height proportional to expansion
    gids = {p.get_gid(): p for p in fig.axes[0].patches}
    assert gids["stem"].get_facecolor() == gids["head"].get_facecolor() == to_rgba(FIXED_COLOUR)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "stem\nconv3 / k3e1" in texts and "head\nslim_deconv" in texts
    assert "stage3\ns2 (/16)\n64 ch" in texts and "stage4\ns1 (/16)\n96 ch" in texts
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["3x3", "5x5", "7x7"]


def test_other_ops_get_their_own_colour_and_legend_entry():
    fig = architecture_figure(load_space("simplebaseline-r50"))
    assert {p.get_facecolor() for p in blocks(fig)} == {to_rgba(block_colour("res3"))}
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["3x3", "5x5", "7x7", "ResNet bottleneck"]


def test_search_space_is_drawn_with_choices_skip_as_a_thin_line():
    space = load_space(TINY_SPACE)
    choices = {"stage1.0": "k5e3", "stage1.1": "skip", "stage2.0": "k5e6", "stage2.1": "skip",
               "stage3.0": "k3e6"}  # fmt: skip
    fig = architecture_figure(space, choices)
    assert [p.get_gid() for p in blocks(fig)] == ["layer:stage1.0", "layer:stage2.0",
                                                  "layer:stage3.0"]  # fmt: skip
    assert [p.get_label() for p in blocks(fig)] == ["k5e3", "k5e6", "k3e6"]
    skips = [line.get_gid() for line in fig.axes[0].lines if str(line.get_gid()).startswith("skip")]
    assert skips == ["skip:stage1.1", "skip:stage2.1"]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["3x3", "5x5", "7x7", "skip"]


BRANCHY = {
    "name": "branchy",
    "stem": [{"op": "conv3", "width": 8, "stride": 2}, {"op": "k3e1", "width": 8}],
    "stages": [
        {"name": "stage1", "width": 8, "stride": 2, "layers": 2, "ops": ["k3e3"]},
        {"name": "stage2", "width": 16, "stride": 2, "layers": 2, "ops": ["k5e6"]},
        {"name": "stage3", "width": 16, "stride": 2, "layers": 2, "ops": ["k3e6"]},
        {"name": "side", "width": 16, "stride": 2, "layers": 1, "ops": ["k7e3"], "input": "stage2"},
    ],
    "head": {"type": "fpn_lite", "inputs": ["stage2", "stage3", "side"]},
}


def edges(fig) -> dict[str, np.ndarray]:
    """gid -> the (x, y) vertices of each input-edge arrow of an architecture figure."""
    return {str(p.get_gid()): p.get_path().vertices for p in fig.axes[0].patches
            if str(p.get_gid()).startswith(("branch:", "head-input:"))}  # fmt: skip


def test_branches_and_multi_input_heads_are_drawn_as_arrows_from_their_source():
    import tasks.segmentation  # noqa: F401  (registers fpn_lite)

    fig = architecture_figure(space_from_dict(BRANCHY, source="<test>"))
    drawn = edges(fig)
    assert sorted(drawn) == ["branch:side", "head-input:side.0", "head-input:stage2.1",
                             "head-input:stage3.1"]  # fmt: skip
    centre = {p.get_gid(): p.get_x() + p.get_width() / 2 for p in blocks(fig)}
    head = next(p for p in fig.axes[0].patches if p.get_gid() == "head")
    side = next(p for p in blocks(fig) if p.get_gid() == "layer:side.0")
    # the branch leaves the top of stage2's last block and ends on side's stage boundary
    assert drawn["branch:side"][0] == pytest.approx((centre["layer:stage2.1"], 3.0))
    assert drawn["branch:side"][3][0] == pytest.approx(side.get_x() - 0.1)  # [3]: shaft end
    for layer in ("stage2.1", "stage3.1", "side.0"):
        start, end = drawn[f"head-input:{layer}"][0], drawn[f"head-input:{layer}"][3]
        assert start[0] == pytest.approx(centre[f"layer:{layer}"])
        assert end[0] == pytest.approx(head.get_x() + head.get_width() / 2)
        assert end[1] == pytest.approx(head.get_y() + head.get_height(), abs=0.1)  # onto its top
    levels = [v[1, 1] for v in drawn.values()]
    assert len(set(levels)) == 4  # each arrow crosses at a level of its own
    labels = sorted(t.get_text() for t in fig.axes[0].texts if t.get_text().startswith("from"))
    assert labels == ["from side", "from stage2", "from stage3"]  # each source named once


def test_a_chained_net_has_no_extra_arrows():
    assert edges(architecture_figure(load_space("efficientpose-a"))) == {}
    assert edges(architecture_figure(load_space("mobilenetv2"))) == {}


def test_search_space_needs_choices_or_probabilities_that_fit():
    space = load_space(TINY_SPACE)
    with pytest.raises(DnasError, match="give choices or arch_probs"):
        architecture_figure(space)
    with pytest.raises(DnasError, match="stage1.0=k7e6"):
        architecture_figure(space, {layer: "k3e3" for layer in candidates_of(space)}
                            | {"stage1.0": "k7e6"})  # fmt: skip
    with pytest.raises(DnasError, match="no op chosen for stage1.1, stage2.0, stage2.1, stage3.0"):
        architecture_figure(space, {"stage1.0": "k3e3"})


def test_arch_probs_draw_the_argmax():
    space = load_space(TINY_SPACE)
    probs = {layer: [0.1] * len(ops) for layer, ops in candidates_of(space).items()}
    probs["stage1.0"] = [0.2, 0.8]
    probs["stage2.1"] = [0.1, 0.1, 0.8]  # skip
    fig = architecture_figure(space, arch_probs=probs)
    assert [p.get_label() for p in blocks(fig)] == ["k5e3", "k3e3", "k3e3", "k3e3"]


# ---------------------------------------------------------------- output


def test_figure_to_array_is_hwc_uint8_and_nothing_is_left_open():
    fig = architecture_figure(load_space("efficientpose-a"))
    array = figure_to_array(fig)
    width, height = fig.get_size_inches() * fig.dpi
    assert array.dtype == np.uint8
    assert array.shape == (round(height), round(width), 3)
    assert array.min() < 100 and array.max() == 255  # drawn, not blank
    assert plt.get_fignums() == []  # never registered with pyplot


def test_save_figure_picks_the_format_by_suffix(tmp_path):
    space = load_space("efficientpose-a")
    png = save_figure(architecture_figure(space), tmp_path / "a.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    svg = save_figure(architecture_figure(space), tmp_path / "sub" / "a.svg")
    assert b"<svg" in svg.read_bytes()[:500]
    with pytest.raises(DnasError, match=r"a\.pdf: expected a \.png or \.svg"):
        save_figure(architecture_figure(space), tmp_path / "a.pdf")


# ---------------------------------------------------------------- dnas plot


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    """A real (tiny) DARTS search on synthetic data, through the CLI."""
    root = tmp_path_factory.mktemp("plot-search")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DNAS_CACHE_DIR", str(root / "cache"))
        runner = CliRunner()
        data = runner.invoke(cli, ["data", "synth-mpii", str(root / "d"), "--train", "10",
                                   "--val", "2", "--size", "64"])  # fmt: skip
        assert data.exit_code == 0, data.output
        search = {"warmup_epochs": 0, "epochs": 1, "batch_size": 2, "steps_per_epoch": 1}
        exp = write_experiment(root / "exp.yaml", root / "d", search=search)
        result = runner.invoke(cli, ["search", str(exp), "--out", str(root / "run")])
        assert result.exit_code == 0, result.output
    return root / "run"


def test_cli_plots_a_search_run(search_run, tmp_path):
    out = tmp_path / "plots"
    result = invoke(search_run, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {out / 'op_probs.png'}, {out / 'architecture.png'}"
    for name in ("op_probs.png", "architecture.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    again = invoke(search_run, "-o", out)
    assert again.exit_code == 1 and "already exists; pass --force" in again.output
    assert invoke(search_run, "-o", out, "--force").exit_code == 0


def test_cli_draws_the_same_architecture_as_derive(search_run):
    arch, _ = derive(search_run)
    from dnas.vis.plot import load_plot_source

    source = load_plot_source(search_run / "search.pt")
    assert source.epoch == 1 and set(source.arch_probs) == set(candidates_of(source.space))
    fig = architecture_figure(source.space, arch_probs=source.arch_probs)
    derived = [layer.candidates[0] for stage in arch.stages for layer in stage.layers]
    assert [p.get_label() for p in blocks(fig)] == [op for op in derived if op != "skip"]
    title = fig.axes[0].get_title()  # the derived net, not the space it came from
    assert title.startswith(f"{source.space.name}-derived: colour = kernel size"), title


def test_a_budget_searchs_plots_box_the_ops_derive_keeps(search_run, tmp_path):
    """Under a budget the derived net may differ from the argmax (layers moved into the band):
    the heat map boxes and stars those, and the drawing is the derived net, as derive writes."""
    from dnas.vis.plot import load_plot_source, write_plots

    ckpt = checkpoint.load(search_run / "search.pt")
    space = space_from_dict(ckpt["space"], "search.pt")
    argmax = most_probable_ops(space, ckpt["arch_probs"])
    layer = space.searchable_layers[0]
    moved = next(op for op in layer.candidates if op != argmax[layer.name])
    ckpt["choices"] = {**argmax, layer.name: moved}  # as a projection into a band leaves it
    save_atomic(ckpt, tmp_path / "search.pt")
    source = load_plot_source(tmp_path / "search.pt")
    assert source.choices == ckpt["choices"]
    fig = op_probability_figure(source.arch_probs, candidates_of(source.space), None,
                                source.choices)  # fmt: skip
    ax = fig.axes[0]
    ops = [t.get_text() for t in ax.get_xticklabels()]
    box = next(p for p in ax.patches if p.get_gid() == "derived:0")
    assert ops[round(box.get_x() + 0.5)] == moved
    assert ax.get_yticklabels()[0].get_text().endswith(" *")
    assert "* = moved into the budget band (1)" in ax.get_title()
    drawn = architecture_figure(source.space, source.choices)
    layers = [layer for stage in source.space.stages for layer in stage.layers]
    picked = [source.choices.get(layer.name, layer.candidates[0]) for layer in layers]
    ops_drawn = [op for op in picked if op != "skip"]
    assert [p.get_label() for p in blocks(drawn)] == ops_drawn
    assert len(write_plots(source, tmp_path / "plots", "png")) == 2


def test_cli_writes_svg(search_run, tmp_path):
    result = invoke(search_run / "search.pt", "-o", tmp_path, "--format", "svg")
    assert result.exit_code == 0, result.output
    for name in ("op_probs.svg", "architecture.svg"):
        assert b"<svg" in (tmp_path / name).read_bytes()[:500]
    assert not list(tmp_path.glob("*.png"))


def test_cli_plots_architecture_yaml_and_train_runs(tmp_path):
    result = invoke("efficientpose-a", "-o", tmp_path / "shipped")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "shipped").iterdir()) == ["architecture.png"]
    space = load_space("efficientpose-a")
    train = tmp_path / "train"
    save_atomic({"kind": "dnas-train", "epoch": 1, "model": {}, "arch": space.to_dict()},
                train / "last.pt")  # fmt: skip
    result = invoke(train, "-o", tmp_path / "train-plots")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "train-plots" / "architecture.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not a checkpoint", "bad.pt: not a PyTorch checkpoint"),
        (None, "bad.pt: expected a dnas search checkpoint"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, content, expected):
    bad = tmp_path / "bad.pt"
    if content is None:
        save_atomic({"weight": np.zeros(2).tolist()}, bad)
    else:
        bad.write_bytes(content)
    result = invoke(bad, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and expected in result.output
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_search_space_yaml_and_empty_directories(tmp_path):
    result = invoke(TINY_SPACE, "-o", tmp_path / "out")
    assert (
        result.exit_code == 1 and "a search space; expected a fixed architecture" in result.output
    )
    (tmp_path / "empty").mkdir()
    result = invoke(tmp_path / "empty", "-o", tmp_path / "out")
    assert result.exit_code == 1 and "no search.pt, last.pt or best.pt" in result.output


def test_plot_refuses_a_head_that_cannot_be_built(tmp_path):
    import yaml

    from dnas.space.graph import resolve_path

    data = yaml.safe_load(resolve_path("efficientpose-a").read_text())
    data["head"]["inputs"] = ["stage3", "stage4"]  # slim_deconv reads one node
    arch = tmp_path / "two.yaml"
    arch.write_text(yaml.safe_dump(data))
    runner = CliRunner()
    for command in (["plot", str(arch), "-o", str(tmp_path / "p")], ["cost", str(arch)]):
        result = runner.invoke(cli, command)
        assert result.exit_code == 1, command
        assert (
            result.output.strip()
            == f"Error: {arch}: head: slim_deconv reads exactly one input node"
        )
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------- sweep


def test_sweep_figure_names_the_metric_and_keeps_every_label_inside_the_axes():
    rows = [{"weight": w, "cost": c, "cost_unit": "MMAC", "score": s, "metric": "Mean",
             "metric_label": "PCKh@0.5, mean of joints (%)"}
            for w, c, s in ((0.0, 1.345, 4.55), (1.0, 1.1, 2.0), (50.0, 0.967, 0.0))]  # fmt: skip
    fig = sweep_figure(rows, "weight")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "val PCKh@0.5, mean of joints (%)"
    assert ax.get_xlabel() == "derived cost (MMAC)"
    fig.canvas.draw()
    box = ax.get_window_extent()
    labels = [t for t in ax.texts if t.get_text().startswith("weight=")]
    assert [t.get_text() for t in labels] == ["weight=0", "weight=1", "weight=50"]
    for text in labels:  # the rightmost and topmost labels were clipped at the axes' edge
        extent = text.get_window_extent()
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1, text.get_text()
        assert box.y0 <= extent.y0 and extent.y1 <= box.y1, text.get_text()
    older = sweep_figure([{k: v for k, v in r.items() if k != "metric_label"} for r in rows],
                         "weight")  # fmt: skip
    assert older.axes[0].get_ylabel() == "val Mean"  # sweeps recorded before the label existed


def test_a_shipped_name_with_its_yaml_suffix_plots_and_a_missing_run_is_named(tmp_path):
    from dnas.vis.plot import load_plot_source

    assert load_plot_source("efficientpose-a.yaml").space.name == "efficientpose-a"
    with pytest.raises(DnasError, match="search: no such run directory or file; expected"):
        load_plot_source(tmp_path / "runs" / "search")
