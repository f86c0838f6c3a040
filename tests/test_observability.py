"""What a search shows: TensorBoard scalars and pictures per epoch, and the run directory's log."""

from __future__ import annotations

import json
import math

import pytest
from conftest import write_experiment
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dnas import checkpoint
from dnas.config import config_changes, config_hash, load_experiment
from dnas.engine.progress import Reporter, counter
from dnas.search.run import run_search
from dnas.space.choices import entropies


def test_search_logs_entropies_pictures_and_lines(tmp_path, real_mpii_root):
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root, pictures=True,
                           search={"arch_optimizer": {"lr": 0.05}, "warmup_epochs": 2})  # fmt: skip
    run_search(load_experiment(exp), tmp_path / "run", Reporter(lambda _: None))
    result = json.loads((tmp_path / "run" / "search.json").read_text())
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0})
    events.Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    assert {"search/op_probabilities", "search/architecture"} <= images
    # a picture when it changed: the second warm-up epoch left the probabilities as they were
    assert [e.step for e in events.Images("search/op_probabilities")] == [1, 3]
    drawn = [e.step for e in events.Images("search/architecture")]
    assert drawn[0] == 1 and 2 not in drawn
    picture = events.Images("search/architecture")[-1]
    assert picture.width > 300 and picture.height > 100
    assert {"train/loss", "arch/task_loss", "search/expected_cost", "lr/weights"} <= scalars
    final = entropies(result["arch_probs"])
    for layer, probs in result["arch_probs"].items():  # below uniform's ln(n): it moved
        assert 0 < final[layer] < math.log(len(probs)) - 1e-6
    for layer, value in final.items():
        logged = events.Scalars(f"entropy/{layer}")
        assert [e.step for e in logged] == [1, 2, 3]  # the scalars every epoch
        assert logged[-1].value == pytest.approx(value, abs=1e-5)
    log = (tmp_path / "run" / "log.txt").read_text().splitlines()
    assert log[0].split(" ", 1)[1].startswith("search: ")
    assert sum(" epoch " in line and "eta " in line for line in log) == 3


def test_pictures_false_skips_the_images_not_the_scalars(tmp_path, real_mpii_root):
    search = {"arch_optimizer": {"lr": 0.05}, "warmup_epochs": 1}
    exp = write_experiment(tmp_path / "exp.yaml", real_mpii_root, pictures=False, search=search)
    run_search(load_experiment(exp), tmp_path / "run", Reporter(lambda _: None))
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == []
    layers = json.loads((tmp_path / "run" / "search.json").read_text())["arch_probs"]
    assert all(len(events.Scalars(f"entropy/{layer}")) == 2 for layer in layers)
    # pictures change no result: a resume with them switched on sees no change of config
    recorded = checkpoint.load(tmp_path / "run" / "search.pt")["config"]
    drawn = load_experiment(exp, ["pictures=true"])
    assert config_changes(recorded, drawn) == [] and recorded["pictures"] is False
    assert config_hash(drawn) == config_hash(load_experiment(exp))


def test_counter_off_a_terminal_prints_counts_and_eta_lines():
    lines = []
    with counter(10, "lut build: timings", every_s=0.0, echo=lines.append) as update:
        for _ in range(5):
            update(2)
    # one line per update but the last (the work is done then), each with count, share, ETA
    assert [line.split("  ")[0] for line in lines] == [
        f"lut build: timings: {n}/10 ({10 * n}%)" for n in (2, 4, 6, 8)
    ]
    assert all("eta 0:00:0" in line for line in lines)
    quiet = []
    with counter(10, "x", every_s=3600.0, echo=quiet.append) as update:
        update(5)
    assert quiet == []  # nothing before every_s has passed
