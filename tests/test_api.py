"""The public Python API (``dnas/__init__.py``) and the example that uses it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dnas

ROOT = Path(__file__).parent.parent


def test_import_dnas_is_light_and_every_export_resolves():
    code = "import sys, dnas; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
    for name in dnas.__all__:
        assert getattr(dnas, name) is not None, name
    assert set(dir(dnas)) == {*dnas.__all__, "__version__"}
    with pytest.raises(AttributeError, match="no attribute 'search_space'"):
        dnas.search_space  # noqa: B018  (the old flat module is no public name)


def test_api_example_searches_derives_and_trains(tmp_path):
    out = tmp_path / "api"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "api_search.py"), "--out",
                           str(out), "--steps", "2"], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    target = float(re.search(r"target ([\d.]+) MMAC", done.stdout).group(1))
    derived = json.loads((out / "search" / "search.json").read_text())
    assert abs(derived["final_cost"] / target - 1) <= 0.03  # the budget search landed
    arch = dnas.load_space(str(out / "arch.yaml"))
    assert not arch.searchable_layers  # a fixed net
    assert (out / "train" / "model.pt").is_file()
    score = float(re.search(r"^Mean: ([\d.]+)$", done.stdout, re.M).group(1))
    assert 0 <= score <= 100
