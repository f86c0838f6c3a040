"""Search-space YAML: shipped spaces load, invalid files give one-line errors with file + key."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from dnas.cli import cli
from dnas.errors import ConfigError
from dnas.space.graph import load_space, shipped_names

VALID = {
    "name": "t",
    "stem": [{"op": "conv3", "width": 8, "stride": 2}, {"op": "k3e1", "width": 8}],
    "stages": [
        {
            "name": "s1",
            "width": 16,
            "stride": 2,
            "layers": 2,
            "ops": ["k3e3", "k5e6"],
            "skip": True,
        },
        {"name": "s2", "width": 16, "stride": 1, "blocks": ["k3e3", ["k3e3", "skip"]]},
    ],
    "head": {"type": "slim_deconv", "deconv_widths": [8, 8]},
}


def write(tmp_path, data):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def error_of(tmp_path, data) -> ConfigError:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return info.value


def mutate(path: list, value):
    data = yaml.safe_load(yaml.safe_dump(VALID))
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


def test_shipped_spaces_match_table_1():
    small, large = load_space("mbv2_pose_small"), load_space("mbv2_pose_large")
    assert [(s.width, s.stride, len(s.layers)) for s in small.stages] == [
        (24, 2, 4), (32, 2, 6), (64, 2, 10), (96, 1, 8)]  # fmt: skip
    assert [(s.width, s.stride, len(s.layers)) for s in large.stages] == [
        (32, 2, 6), (64, 2, 8), (96, 2, 10), (160, 1, 10)]  # fmt: skip
    assert [lay.width for lay in small.stem] == [32, 16]
    assert [lay.width for lay in large.stem] == [32, 24]
    six = {"k3e3", "k3e6", "k5e3", "k5e6", "k7e3", "k7e6"}
    for space in (small, large):
        for stage in space.stages:
            assert set(stage.layers[0].candidates) == six  # first layer reshapes: no skip
            for layer in stage.layers[1:]:
                assert set(layer.candidates) == six | {"skip"}
    assert small.infer_shapes(256, 256)["stage4.7"] == (96, 16, 16)
    assert {"efficientpose-a", "efficientpose-b", "efficientpose-c"} <= set(shipped_names())


def test_other_candidate_sets_need_no_code(tmp_path):
    data = mutate(["stages", 0, "ops"], ["k3e1", "k3e3", "k7e3"])
    space = load_space(write(tmp_path, data))
    assert space.stages[0].layers[1].candidates == ("k3e1", "k3e3", "k7e3", "skip")
    assert space.stages[1].layers[1].candidates == ("k3e3", "skip")
    assert not space.stages[1].layers[0].searchable


@pytest.mark.parametrize(
    ("path", "value", "key", "words"),
    [
        (["stages", 0, "ops"], ["k3e3", "k4e6"], "stages[0].ops[1]", "kernel must be odd"),
        (["stages", 0, "ops"], ["conv3", "magic"], "stages[0].ops[1]", "unknown op 'magic'"),
        (["stages", 1, "width"], -3, "stages[1].width", "expected an integer in 1..16384"),
        (["stages", 1, "width"], "wide", "stages[1].width", "expected an integer"),
        (["stages", 0, "stride"], 3, "stages[0].stride", "expected stride 1 or 2"),
        (["stages", 0, "width"], KeyError, "stages[0].width", "missing required key"),
        (["stem", 1, "op"], KeyError, "stem[1].op", "missing required key"),
        (["name"], KeyError, "name", "missing required key"),
        (["stages", 0, "wdith"], 3, "stages[0].wdith", "unknown key"),
        (["stages", 1, "input"], "nowhere", "stages[1].input", "unknown node 'nowhere'"),
        (["head", "inputs"], ["s9"], "head.inputs[0]", "unknown node 's9'"),
        (["stages", 0, "name"], 7, "stages[0].name", "expected a name (text without dots), got 7"),
        (["stages", 1, "name"], "input", "stages[1].name",
         "'input' names a node of every space (input, stem, head); choose another"),
        (["stages", 1, "name"], "s1", "stages[1].name", "duplicate name 's1'"),
        (["stages", 0, "name"], "stem", "stages[0].name", "'stem' names a node of every space"),
        (["stages", 1, "name"], "head", "stages[1].name", "'head' names a node of every space"),
    ],
)  # fmt: skip
def test_invalid_yaml_names_file_and_key(tmp_path, path, value, key, words):
    err = error_of(tmp_path, mutate(path, value))
    assert err.key == key
    assert words in err.detail


def test_skip_where_shapes_differ(tmp_path):
    data = mutate(["stages", 0, "ops"], ["k3e3", "skip"])
    del data["stages"][0]["skip"]
    err = error_of(tmp_path, data)
    assert err.key == "stages[0].ops"
    assert "layer s1.0" in err.detail and "8 -> 16 channels with stride 2" in err.detail
    data = mutate(["stages", 1, "blocks"], [["k3e3", "skip"]])
    assert load_space(write(tmp_path, data)).stages[1].layers[0].candidates == ("k3e3", "skip")
    data["stages"][1]["width"] = 32  # now layer s2.0 maps 16 -> 32 channels
    err = error_of(tmp_path, data)
    assert err.key == "stages[1].blocks[0]" and "16 -> 32 channels with stride 1" in err.detail


def test_cycle_is_rejected(tmp_path):
    data = mutate(["stages", 0, "input"], "s2")
    err = error_of(tmp_path, data)
    assert "cycle" in err.detail and "s1.0" in err.detail


def test_graph_branches_and_multi_input_head(tmp_path):
    data = mutate(["stages", 1, "input"], "stem")
    data["stages"][1]["blocks"] = ["k3e3", "k3e3"]
    data["head"]["inputs"] = ["s1", "s2"]  # both branches are read (else s1 would be dead)
    space = load_space(write(tmp_path, data))
    assert space.head.inputs == ("s1.1", "s2.1")
    assert space.stages[1].layers[0].input == "stem.1"
    shapes = space.infer_shapes(64, 64)
    assert shapes["s2.0"] == (16, 32, 32) and shapes["s1.1"] == (16, 16, 16)


def test_cli_prints_one_line_and_fails(tmp_path):
    path = write(tmp_path, mutate(["stages", 1, "width"], 0))
    result = CliRunner().invoke(cli, ["cost", str(path)])
    assert result.exit_code == 1
    expected = f"Error: {path}: stages[1].width: expected an integer in 1..16384, got 0"
    assert result.output.strip() == expected
    result = CliRunner().invoke(cli, ["cost", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 1 and "no such file or shipped space" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    result = CliRunner().invoke(cli, ["cost", str(bad)])
    assert result.exit_code == 1 and "invalid YAML: line" in result.output


def test_round_trip_through_yaml(tmp_path):
    space = load_space("mbv2_pose_small")
    again = load_space(write(tmp_path, space.to_dict()))
    assert [x.candidates for x in again.layers] == [x.candidates for x in space.layers]
    assert again.digest() == space.digest()


def test_cli_lists_shipped_spaces():
    result = CliRunner().invoke(cli, ["spaces"])
    assert result.exit_code == 0
    assert "efficientpose-b" in result.output
    assert "stage4    160 s1  k7e3 k7e3 k7e3 k7e3 k7e3 k7e3 skip k7e3 k7e6 k7e3" in result.output


def test_a_stage_whose_output_nothing_reads_is_refused(tmp_path):
    from dnas.space.graph import resolve_path

    data = yaml.safe_load(resolve_path("mbv2_pose_small").read_text())
    head_input = data["head"]["inputs"][0]
    data["stages"].append({"name": "unread", "width": 32, "stride": 1, "layers": 1,
                           "ops": ["k3e3", "k5e6"]})  # fmt: skip
    data["head"]["inputs"] = [head_input]  # the head still reads the old last stage
    path = tmp_path / "dead.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_space(path)
    assert info.value.key == f"stages[{len(data['stages']) - 1}]"
    assert "output of stage 'unread' never reaches the head" in info.value.detail
    # a stage that reads the stem while the stage after it reads the raw input: the stage is
    # the one nothing reads, not the stem it reads
    data["stages"] = data["stages"][:2]
    data["stages"][1]["input"] = "input"
    data["head"]["inputs"] = [data["stages"][1]["name"]]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"stages\[0\]: the output of stage 'stage1' never "
                                          "reaches the head"):  # fmt: skip
        load_space(path)
    # a chain cut off (stage2 reads stage1, stage3 the raw input): the dead end is named first
    data["stages"] = [*data["stages"], {**data["stages"][1], "name": "stage3"}]
    data["stages"][1].pop("input")
    data["head"]["inputs"] = ["stage3"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"stages\[1\]: the output of stage 'stage2' never"):
        load_space(path)
