"""Two processes (torchrun, gloo on CPU) against one: SFT, DPO, and the sharded batch jobs.

Every launch goes through ``tests.rank_audit``, which records per rank the world size and the
files it wrote, so each test checks that two ranks really ran and which of them wrote what.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cad.distributed import merge, my_share, part_path
from sft.config import SFTConfig
from tests.conftest import ROOT

TINY = dict(encoder_name="vit_tiny_patch16_224", image_size=64, in_chans=1,
            encoder_kwargs={"depth": 2, "embed_dim": 96, "num_heads": 3},
            decoder={"d_model": 128, "d_kv": 32, "d_ff": 256, "num_decoder_layers": 2, "num_heads": 4, "dropout_rate": 0.0})
SFT = dict(tokenizer_vocab_size=400, val_size=8, lr=2e-3, warmup_steps=2, max_steps=6, log_every=1, eval_every=3,
           sample_every=100, sample_n=2, save_every=3, max_target_length=256, **TINY)


def launch(module: str, args: list[str], audit: Path) -> dict[int, list[str]]:
    """``torchrun --nproc_per_node 2 -m MODULE ARGS`` on CPU; the paths each rank wrote."""
    audit.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tests.rank_audit", str(audit), module, "--", *args]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    writes = {}
    for rank in (0, 1):
        lines = (audit / f"rank-{rank}.txt").read_text().splitlines()
        assert lines[0] == "world_size 2", f"rank {rank}: {lines[0]}"
        writes[rank] = [line.split(" ", 1)[1] for line in lines[1:] if line.startswith("write ")]
    return writes


def under(paths: list[str], root: Path) -> set[str]:
    root = str(root.resolve())
    return {str(Path(p).relative_to(root)) for p in paths if p.startswith(root + os.sep)}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from cad.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(40, out, seed=5, workers=2, shard_size=40, size=128, progress=False)
    return out


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory, data):
    """The same 6 steps on 2 processes x 4 rows and on 1 process x 8 rows."""
    from cad.config import load_config
    from sft.train import train

    base = tmp_path_factory.mktemp("sft")
    overrides = [f"train_data={data}", *[f"{k}={json.dumps(v)}" for k, v in SFT.items()]]
    writes = launch("sft", ["--config", "configs/sft_tiny.yaml", *overrides, f"output_dir={base / 'two'}", "batch_size=4"],
                    base / "audit")
    train(load_config(SFTConfig, "configs/sft_tiny.yaml", [*overrides, f"output_dir={base / 'one'}", "batch_size=8"]))
    return base, writes


def scalars(run_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in run_dir.rglob("events.out.tfevents*")}
    acc = EventAccumulator(str(events))
    acc.Reload()
    return [e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)]


def test_sft_on_two_processes_matches_one(sft_runs):
    from transformers import get_cosine_schedule_with_warmup

    base, writes = sft_runs
    two, one = base / "two", base / "one"
    metrics = json.loads((two / "final" / "training_metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == SFT["max_steps"]
    # the learning rate follows the cosine schedule over max_steps (not twice as fast)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=SFT["lr"])
    sched = get_cosine_schedule_with_warmup(opt, SFT["warmup_steps"], SFT["max_steps"])
    expected = []
    for _ in range(SFT["max_steps"]):
        opt.step()
        sched.step()
        expected.append(sched.get_last_lr()[0])
    assert np.allclose(scalars(two, "train/lr"), expected, rtol=1e-5, atol=1e-9)
    # the same global batches: the loss follows the one-process run
    assert np.allclose(scalars(two, "train/loss"), scalars(one, "train/loss"), rtol=0.02)
    assert np.allclose(scalars(two, "val/loss"), scalars(one, "val/loss"), rtol=0.01)
    # rank 1 writes none of the run's files (its RNG state in each checkpoint goes through torch's
    # own file writer, which the audit does not see); rank 0 writes them all
    assert not under(writes[1], two), sorted(under(writes[1], two))
    rank0 = under(writes[0], two)
    assert {"config.yaml", "tokenizer/tokenizer_config.json", "final/training_metrics.json", "final/config.json",
            "checkpoints/step-6/trainer_state.json"} <= rank0


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, data):
    """Preference pairs (ground truth over a perturbed copy) through rl.pairs' dataset builder."""
    from cad.data import load_gencad, undecoded
    from cad.programs import perturb
    from rl.pairs import build_dataset, ground_truth

    out = tmp_path_factory.mktemp("pairs")
    ds = undecoded(load_gencad(str(data)))
    rng = np.random.default_rng(0)
    with (out / "scored.jsonl").open("w") as f:
        for r in list(ds)[:16]:
            f.write(json.dumps({"id": r["deepcad_id"], "candidates": [
                {"code": r["cadquery"], "source": "reference", "total": 10.0, "executed": True, "grammatical": True, "iou": 1.0},
                {"code": perturb(r["cadquery"], rng, 0.3), "source": "sample", "total": 1.0, "executed": True,
                 "grammatical": True, "iou": 0.2}]}) + "\n")
    assert build_dataset(out / "scored.jsonl", ground_truth(ds, str(data)), out / "pairs", margin=0.5)["pairs"] == 16
    return out / "pairs"


def test_dpo_on_two_processes_matches_one(tmp_path, sft_runs, pairs):
    from rl.dpo import DPORecipe, train_dpo

    sft = sft_runs[0] / "one" / "final"
    common = dict(sft_model=str(sft), pairs=str(pairs), lr=1e-3, max_steps=4, warmup_steps=1, logging_steps=1, save_steps=4)
    writes = launch("rl.dpo", ["--config", "configs/dpo.yaml", *[f"{k}={v}" for k, v in common.items()],
                               f"output_dir={tmp_path / 'two'}", "batch_size=2"], tmp_path / "audit")
    train_dpo(DPORecipe(output_dir=str(tmp_path / "one"), batch_size=4, **common))
    logs = {n: json.loads((tmp_path / n / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
            for n in ("one", "two")}
    two = [e for e in logs["two"] if "loss" in e]
    one = [e for e in logs["one"] if "loss" in e]
    assert [e["step"] for e in two] == [1, 2, 3, 4]
    # linear warmup then decay over max_steps (TRL logs the rate of the step just taken)
    assert np.allclose([e["learning_rate"] for e in two], [0.0, 1e-3, 1e-3 * 2 / 3, 1e-3 / 3])
    assert np.allclose([e["loss"] for e in two], [e["loss"] for e in one], rtol=0.02, atol=1e-3)
    metrics = json.loads((tmp_path / "two" / "final" / "dpo_metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 4
    final = tmp_path / "two" / "final"
    assert not under(writes[1], final), sorted(under(writes[1], final))  # the final model is written once
    assert {"model.safetensors", "dpo_metrics.json", "preprocessor_config.json"} <= {p.name for p in final.iterdir()}


def test_batches_are_shared_round_robin_and_merged_in_input_order(tmp_path):
    items = list(range(10))
    shares = [my_share(items, 3, r, 2) for r in (0, 1)]
    assert shares == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9]]
    out = tmp_path / "o.jsonl"
    out.write_text(json.dumps({"id": "b", "v": 0}) + "\n" + json.dumps({"id": "z", "v": 9}) + "\n")
    part_path(out, 0).write_text(json.dumps({"id": "c", "v": 1}) + "\n" + '{"id": "a", "v"')  # cut short
    part_path(out, 1).write_text(json.dumps({"id": "a", "v": 2}) + "\n" + json.dumps({"id": "b", "v": 3}) + "\n")
    assert merge(out, ["a", "b", "c"]) == 4
    assert [(r["id"], r["v"]) for r in read_jsonl(out)] == [("a", 2), ("b", 3), ("c", 1), ("z", 9)]
    assert not list(tmp_path.glob("o.jsonl.part*"))


def test_sharded_jobs_give_what_one_process_gives(tmp_path, sft_runs, data):
    """rl.pairs, decoding and scripts.eval_all on 2 processes: same ids and programs as 1 process,
    in input order; an interrupted run's part file is resumed."""
    from decoding.__main__ import main as decode_main
    from rl.pairs import main as pairs_main
    from scripts.eval_all import main as eval_main

    model = str(sft_runs[0] / "one" / "final")
    src = f"{data}"
    # decoding (sampling strategy: seeded per batch), with a part file left by an interrupted run
    dec = ["--model", model, "--data", src, "--limit", "7", "--strategy", "bestofn", "--n", "2", "--batch-size", "2",
           "--max-new-tokens", "24", "--workers", "1"]
    assert decode_main([*dec, "--out", str(tmp_path / "one.jsonl")]) == 0
    one = read_jsonl(tmp_path / "one.jsonl")
    two_out = tmp_path / "two.jsonl"
    # the second batch of two was written before the interruption (and a line cut short)
    part_path(two_out, 1).write_text("".join(json.dumps(r) + "\n" for r in one[2:4]) + '{"id": "cut')
    writes = launch("decoding", [*dec, "--out", str(two_out)], tmp_path / "audit-dec")
    two = read_jsonl(two_out)
    assert [(r["id"], r["code"]) for r in two] == [(r["id"], r["code"]) for r in one]
    assert len({r["id"] for r in two}) == 7 and not list(tmp_path.glob("two.jsonl.part*"))
    assert str(part_path(two_out, 0)) in writes[0] and str(part_path(two_out, 1)) in writes[1]  # both decoded
    # rl.pairs: sampling and scoring
    pa = ["--model", model, "--data", src, "--limit", "6", "--k", "2", "--batch-size", "2", "--max-new-tokens", "24", "--workers", "1",
          "--include-reference", "--margin", "0.5"]
    assert pairs_main([*pa, "--out", str(tmp_path / "p1")]) == 0
    launch("rl.pairs", [*pa, "--out", str(tmp_path / "p2")], tmp_path / "audit-pairs")
    codes = [[(r["id"], [c["code"] for c in r["candidates"]]) for r in read_jsonl(tmp_path / p / "samples.jsonl")]
             for p in ("p1", "p2")]
    assert len(codes[0]) == 6 and codes[0] == codes[1]  # log-probabilities may differ in the last digit
    scored = [[r["id"] for r in read_jsonl(tmp_path / p / "scored.jsonl")] for p in ("p1", "p2")]
    assert scored[0] == scored[1] == [i for i, _ in codes[0]]
    # the harness: every configuration's cached predictions
    ev = ["--model", model, "--data", f"s={src}", "--retrieval-data", src, "--limit", "2", "--batch-size", "1", "--n", "2", "--k", "1",
          "--ns", "1,2", "--refine", "0", "--max-new-tokens", "16", "--examples", "2", "--quiet",
          "--only", "retrieval,beam4,bestof2"]
    assert eval_main([*ev, "--results", str(tmp_path / "e1"), "--run", "r"]) == 0
    launch("scripts.eval_all", [*ev, "--results", str(tmp_path / "e2"), "--run", "r"], tmp_path / "audit-eval")
    preds1 = sorted((tmp_path / "e1").rglob("preds.jsonl"))
    preds2 = sorted((tmp_path / "e2").rglob("preds.jsonl"))
    assert len(preds1) == 3 and [p.relative_to(tmp_path / "e1") for p in preds1] == [p.relative_to(tmp_path / "e2") for p in preds2]
    for p1, p2 in zip(preds1, preds2):
        assert [(r["id"], r["code"]) for r in read_jsonl(p1)] == [(r["id"], r["code"]) for r in read_jsonl(p2)], p1
    for e in ("e1", "e2"):  # every configuration scored on both images
        records = json.loads((tmp_path / e / "r" / "table.json").read_text())["records"]
        assert {r["key"] for r in records} == {"retrieval", "beam4", "bestof2"}
