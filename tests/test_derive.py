"""dnas derive: argmax per layer from hand-set architecture parameters."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_SPACE

from dnas import checkpoint
from dnas.checkpoint import save_atomic
from dnas.cli import cli
from dnas.errors import DnasError
from dnas.nn.network import Network
from dnas.search.derive import derive
from dnas.space.graph import load_space

LOAD = checkpoint.load


def fake_search_checkpoint(path, probs):
    space = load_space(TINY_SPACE)
    save_atomic({"kind": "dnas-search", "space": space.to_dict(), "arch_probs": probs}, path)


HAND_SET = {  # tiny space: stage1.0 [k3e3 k5e3], stage1.1 [k3e3 k5e3 skip], ...
    "stage1.0": [0.2, 0.8],
    "stage1.1": [0.1, 0.2, 0.7],
    "stage2.0": [0.6, 0.4],
    "stage2.1": [0.3, 0.5, 0.2],
    "stage3.0": [0.45, 0.55],
}


def test_derive_takes_the_argmax_of_each_layer(tmp_path):
    fake_search_checkpoint(tmp_path / "search.pt", HAND_SET)
    arch, rows = derive(tmp_path)
    chosen = {r.layer: (r.op, r.prob) for r in rows}
    assert chosen == {
        "stage1.0": ("k5e3", 0.8), "stage1.1": ("skip", 0.7), "stage2.0": ("k3e3", 0.6),
        "stage2.1": ("k5e6", 0.5), "stage3.0": ("k3e6", 0.55),
    }  # fmt: skip
    assert arch.is_fixed
    assert [lay.candidates[0] for lay in arch.stages[0].layers] == ["k5e3", "skip"]


def test_derive_from_the_supernet_alphas(tmp_path):
    net = Network(load_space(TINY_SPACE), 16)
    with torch.no_grad():
        for alpha in net.alphas:
            alpha.zero_()
            alpha[-1] = 2.0  # the last candidate everywhere
    probs = {n: p.tolist() for n, p in zip(net.searchable, net.arch_probs(), strict=True)}
    fake_search_checkpoint(tmp_path / "search.pt", probs)
    arch, rows = derive(tmp_path / "search.pt")
    assert [r.op for r in rows] == ["k5e3", "skip", "k5e6", "skip", "k3e6"]
    assert all(r.prob == pytest.approx(torch.softmax(torch.tensor([0.0] * 2 + [2.0]), 0)[-1].item())
               for r in rows if r.op == "skip")  # fmt: skip


def test_cli_writes_an_architecture_that_cost_accepts(tmp_path, monkeypatch):
    fake_search_checkpoint(tmp_path / "search.pt", HAND_SET)
    out = tmp_path / "arch.yaml"
    loads = []  # a super net's checkpoint takes seconds to load: derive and its warnings share one
    monkeypatch.setattr(checkpoint, "load", lambda *a, **k: loads.append(a) or LOAD(*a, **k))
    result = CliRunner().invoke(cli, ["derive", str(tmp_path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert len(loads) == 1
    assert "stage1.1     skip    0.700" in result.output
    result = CliRunner().invoke(cli, ["cost", str(out), "--input-size", "64x64", "--format",
                                      "json"])  # fmt: skip
    assert result.exit_code == 0 and '"macs"' in result.output
    again = CliRunner().invoke(cli, ["derive", str(tmp_path), "-o", str(out)])
    assert again.exit_code == 1 and "already exists; pass --force" in again.output


def test_derive_rejects_other_files(tmp_path):
    save_atomic({"model": {}}, tmp_path / "x.pt")
    with pytest.raises(DnasError, match="not a dnas search checkpoint"):
        derive(tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DnasError, match="not a PyTorch checkpoint"):
        derive(tmp_path / "junk.pt")


def test_checkpoints_needing_code_are_refused(tmp_path):
    import argparse

    from dnas.checkpoint import load

    # training scripts often save their argparse namespace: unpickling it needs code
    torch.save({"model": {}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "evil.pt")
    with pytest.raises(DnasError, match=r"refused: it pickles the Python object argparse.Name"):
        load(tmp_path / "evil.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(DnasError, match=r"text.pt: not a PyTorch checkpoint"):
        load(tmp_path / "text.pt")


def test_the_derived_file_says_the_input_size_it_was_searched_at(tmp_path):
    """'dnas cost arch.yaml' costs at 256x256: the file names the size its search used."""
    space = load_space(TINY_SPACE)
    save_atomic({"kind": "dnas-search", "space": space.to_dict(), "arch_probs": HAND_SET,
                 "config": {"input_size": [96, 64]}}, tmp_path / "search.pt")  # fmt: skip
    out = tmp_path / "arch.yaml"
    assert CliRunner().invoke(cli, ["derive", str(tmp_path), "-o", str(out)]).exit_code == 0
    header = [line for line in out.read_text().splitlines() if line.startswith("#")]
    assert header == [
        f"# derived by 'dnas derive {tmp_path}'",
        f"# searched at 96x64: 'dnas cost {out} --config {tmp_path / 'config.yaml'}' costs it "
        "as the search did (its input size, head and outputs)",
    ]
    assert load_space(out).is_fixed
