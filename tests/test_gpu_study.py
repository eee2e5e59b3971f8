"""scripts/gpu_study.sh: the plan, stage bookkeeping and time limit, and every stage on CPU (--tiny)."""
import json
import os
import re
import subprocess
import sys
import time
from importlib.util import find_spec

from scripts.gpu_study import Stage, done, marker, run_stage
from tests.conftest import ROOT


def study(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    r = subprocess.run(["bash", "scripts/gpu_study.sh", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r


def test_dry_run_prints_the_h100_plan_and_runs_nothing(tmp_path):
    out = study("--dry-run", "--cores", "16", "--out", str(tmp_path / "run")).stdout
    stages = dict(re.findall(r"^\[([a-z-]+)\] ([\d.]+) min", out, re.M))
    assert list(stages) == ["data", "sft", "sft-rag", "dpo", "grpo", "eval"]
    minutes = {k: float(v) for k, v in stages.items()}
    assert max(minutes.values()) <= 9 and sum(minutes.values()) <= 25
    assert "cad.synth --n 30000" in out and "--workers 16" in out
    # 6 minutes less 1.5 of overhead at 430 samples/s in batches of 64
    assert "max_steps=1810" in out and "configs/sft_gpu_rag.yaml" in out and "rl.grpo" in out
    assert "scripts/eval_all.sh" in out and "configs/accelerate/1gpu.yaml" in out
    assert not (tmp_path / "run").exists()


def test_a_stage_is_stopped_at_its_limit_and_done_only_with_the_same_commands(tmp_path):
    slow = Stage("slow", 0.01, [[sys.executable, "-c", "import time; time.sleep(60)"]], "sleeps")
    t0 = time.perf_counter()
    assert run_stage(tmp_path, slow, limit_min=0.02) == 3
    assert time.perf_counter() - t0 < 20 and not done(tmp_path, slow)
    quick = Stage("quick", 0.01, [[sys.executable, "-c", "print('ok')"]], "prints")
    assert run_stage(tmp_path, quick, limit_min=1) == 0 and done(tmp_path, quick)
    assert json.loads(marker(tmp_path, quick).read_text())["commands"] == quick.commands
    changed = Stage("quick", 0.01, [[sys.executable, "-c", "print('other')"]], "prints")
    assert not done(tmp_path, changed)  # another plan runs the stage again
    failing = Stage("failing", 0.01, [[sys.executable, "-c", "raise SystemExit(4)"]], "fails")
    assert run_stage(tmp_path, failing, limit_min=1) == 4 and not done(tmp_path, failing)


def test_tiny_study_runs_every_stage_then_skips_them(tmp_path):
    run = tmp_path / "run"
    first = study("--tiny", "--out", str(run)).stdout
    grpo = find_spec("rl.grpo") is not None
    names = ["data", "sft", "sft-rag", "dpo", *(["grpo"] if grpo else []), "eval"]
    for name in names:
        assert f"[{name}] done in" in first, first[-3000:]
        assert json.loads(marker(run, Stage(name, 0, [], "")).read_text())["seconds"] > 0
    for path in ("sft/final/model.safetensors", "sft-rag/final/model.safetensors", "dpo/final/model.safetensors",
                 "results/study/table.md", "results/rag/table.md"):
        assert (run / path).stat().st_size > 0, path
    table = (run / "results" / "study" / "table.md").read_text()
    assert "DPO, beam 4" in table and "SFT, beam 4" in table
    if grpo:
        assert json.loads((run / "results" / "grpo-beam4.eval.json").read_text())
    weights = (run / "sft" / "final" / "model.safetensors").stat().st_mtime_ns
    second = study("--tiny", "--out", str(run)).stdout
    for name in names:
        assert f"[{name}] already done" in second
    assert "$ " not in second  # no command ran
    assert (run / "sft" / "final" / "model.safetensors").stat().st_mtime_ns == weights
