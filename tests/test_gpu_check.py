"""The offline GPU check (benchmarks/gpu_check.py) runs here as a dry run, so it cannot rot, and
what travels to the GPU machine stays under its 64 MiB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 60 * 2**20  # the device tool carries 64 MiB; keep a margin


def test_the_gpu_check_dry_run_writes_its_report(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu"]
    command += ["--tiny", "--modes", "growing,static", "--no-cuda-tests", "--out", str(tmp_path)]
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    model = report["models"]["tiny-qwen2"]
    assert set(model["curves"]) == {"growing", "static"}
    assert all(curve["ratio"]["1"] == 1.0 for curve in model["curves"].values())
    rows = model["replay"]
    assert {r["batch"] for r in rows} == {1, 8} and {r["shape"] for r in rows} >= {"chain", "tree"}
    chains = sorted(
        (r["target_tau"], r["tau"]) for r in rows if r["shape"] == "chain" and r["batch"] == 1
    )
    assert chains[0][1] < chains[-1][1]  # more kept tokens, more tokens per step
    assert all(r["tau"] >= 1.0 and r["tokens_per_s"] > 0 for r in rows)
    assert model["projection"] and not report["skipped"]
    assert (tmp_path / "gpu_check.png").stat().st_size > 0
    assert "GPU check" in (tmp_path / "gpu_check.md").read_text()
    assert json.loads((tmp_path / "run.json").read_text())["commit"]


def test_the_carried_working_tree_stays_under_the_limit():
    done = subprocess.run(["git", "ls-files", "-z"], capture_output=True, cwd=ROOT)
    if done.returncode != 0:
        pytest.skip("not a git checkout")
    files = [ROOT / name for name in done.stdout.decode().split("\0") if name]
    total = sum(path.stat().st_size for path in files if path.is_file())
    assert total < CARRY_LIMIT, f"the tracked files weigh {total / 2**20:.1f} MiB"


def test_no_cuda_device_is_a_clear_exit_2(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("a CUDA device is here")
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)]
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2 and "no CUDA device" in done.stderr


def test_features_that_need_newer_transformers_say_so(monkeypatch):
    """The GPU machine has transformers 5.17: the core runs there (the dry run above runs on it
    too when given that version), while state-space targets and windowed caches need 5.24."""
    from conftest import tiny_model
    from test_ssm import tiny_ssm

    from tokentree.backends import make_backend
    from tokentree.backends.hf import kvcache
    from tokentree.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match=r"needs transformers >= 5\.24 \(found 5\.17"):
        kvcache.require_full_transformers("a state-space target", "5.17.0")
    kvcache.require_full_transformers("a state-space target", "5.24.1")
    monkeypatch.setattr(kvcache, "FULL_SUPPORT", (99, 0))  # as if this transformers were older
    with pytest.raises(UnsupportedModelError, match="state-space"):
        make_backend(tiny_ssm("mamba2"))
    make_backend(tiny_model("llama"))  # the core does not ask
