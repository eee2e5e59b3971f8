"""The main job, end to end on CPU with no network: ``make demo`` (``python -m scripts.demo``).

1. Metrics: the ten real GenCAD-Code rows scored against perturbed copies of their own programs
   (sandbox execution, exact and voxel Best IoU, error classes).
2. Renderer: our renders of the ten ground-truth programs against the real images.
3. Data: a small synthetic GenCAD-style train set and a held-out test set.
4. SFT: the tiny recipe trained for a few minutes.
5. Preference pairs: the SFT model's samples on training images scored by ``reward.score``
   (the ground truth joins them, so even a weak model's images give pairs).
6. DPO: a few steps of TRL's DPOTrainer from the SFT model.
7. Evaluation (``scripts.eval_all``): every configuration of the study (retrieval, beam 4,
   grammar, best-of-N, rerank, DPO) and its ablations on the synthetic test set and the ten real
   images; the table is printed, the report written.

Everything lands in ``outputs/demo`` (override with DEMO_DIR); steps already done are reused.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cad.programs import perturb
from cad.render import render_geometry, silhouette_iou
from cad.sandbox import ExecOptions, SandboxPool
from reward.evaluate import evaluate_pairs
from scripts._common import REFERENCE, reference_rows

OUT = Path(os.environ.get("DEMO_DIR", "outputs/demo"))
MAX_NEW_TOKENS = 192


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def metrics_on_reference(pool: SandboxPool, rows: list[dict]) -> dict:
    rng = np.random.default_rng(0)
    pairs = [(r["deepcad_id"], perturb(r["cadquery"], rng, 0.1), r["cadquery"]) for r in rows]
    summary, _ = evaluate_pairs(pairs, pool, iou="both", progress=False)
    return summary


def renderer_on_reference(pool: SandboxPool, rows: list[dict]) -> list[float]:
    results = pool.run_many([r["cadquery"] for r in rows], ExecOptions(want_geometry=True))
    scores = []
    (OUT / "renders").mkdir(parents=True, exist_ok=True)
    for row, res in zip(rows, results):
        real = np.array(Image.open(REFERENCE / row["image"]).convert("RGB"))
        ours = render_geometry(res.geometry)
        scores.append(silhouette_iou(real, ours))
        Image.fromarray(np.concatenate([real, ours], 1)).save(OUT / "renders" / f"{row['deepcad_id']}.png")
    return scores


def main() -> None:
    t_start = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    rows = reference_rows()
    table: list[dict] = []
    with SandboxPool(2) as pool:
        step("1. Metrics: real GenCAD rows against perturbed copies of their programs")
        s = metrics_on_reference(pool, rows)
        print(json.dumps({k: s[k] for k in ("n", "vsr", "exec_rate", "iou_best", "iou_best_voxel", "errors")}))
        table.append({"data": "real-10", "model": "perturbed ground truth (sigma 0.1)", **s})

        step("2. Renderer: silhouette IoU of our renders against the real images")
        sil = renderer_on_reference(pool, rows)
        print(f"silhouette IoU: mean {np.mean(sil):.4f}, min {np.min(sil):.4f} (side by side in {OUT / 'renders'})")

    step("3. Data: synthetic GenCAD-style programs, executed, rendered, sharded")
    from cad.synth import synthesize

    synthesize(600, OUT / "synth-train", seed=0, workers=2, shard_size=300, size=448)
    synthesize(40, OUT / "synth-test", seed=1, workers=2, shard_size=40, size=448, split="test")

    step("4. SFT: the tiny recipe on CPU")
    from cad.config import load_config
    from sft.config import SFTConfig
    from sft.train import train

    model_dir = OUT / "sft" / "final"
    if not (model_dir / "model.safetensors").exists():
        cfg = load_config(SFTConfig, "configs/sft_tiny.yaml", [
            f"train_data={OUT / 'synth-train'}", f"output_dir={OUT / 'sft'}", "max_steps=240", "sample_every=1000"])
        metrics = train(cfg)
        print(json.dumps({k: metrics[k] for k in ("steps", "train_seconds", "val_loss", "samples_per_s_this_run")}))

    step("5. Preference pairs from the SFT model's samples, scored by the reward")
    from rl.pairs import build_pairs

    pairs = build_pairs(str(OUT / "synth-train"), OUT / "pairs", model=str(model_dir), k=4, margin=0.5, limit=32,
                        include_reference=True, max_new_tokens=MAX_NEW_TOKENS)
    print(json.dumps(pairs))

    step("6. DPO: a few steps of TRL's DPOTrainer")
    from rl.dpo import DPORecipe, train_dpo

    dpo_dir = OUT / "dpo" / "final"
    if not (dpo_dir / "model.safetensors").exists():
        recipe = load_config(DPORecipe, "configs/dpo.yaml", [
            f"sft_model={model_dir}", f"pairs={OUT / 'pairs' / 'pairs'}", f"output_dir={OUT / 'dpo'}",
            "max_steps=16", "batch_size=8", "lr=2.0e-5", "save_steps=1000", "logging_steps=4"])
        metrics = train_dpo(recipe)
        print(json.dumps({k: metrics[k] for k in ("steps", "pairs", "train_loss", "train_seconds")}))

    step("7. Every configuration of the study, ablations, errors and plots (scripts/eval_all)")
    from scripts import eval_all

    eval_all.main(["--model", str(model_dir), "--dpo-model", str(dpo_dir), "--results", str(OUT / "results"), "--run", "demo",
                   "--data", f"synthetic-test-12={OUT / 'synth-test'}", "--data", f"real-10={REFERENCE / 'samples.jsonl'}",
                   "--retrieval-data", str(OUT / "synth-train"), "--limit", "12", "--n", "6", "--k", "2",
                   "--max-new-tokens", str(MAX_NEW_TOKENS), "--refine", "8", "--quiet"])
    step(f"Done in {time.perf_counter() - t_start:.0f} s")
    print(f"perturbed-ground-truth check on real-10: {json.dumps({k: table[0][k] for k in ('vsr', 'iou_best', 'iou_best_voxel')})}")
    print(f"table: {OUT / 'results' / 'demo' / 'table.md'}\nreport: {OUT / 'results' / 'demo' / 'report.md'}")


if __name__ == "__main__":
    main()
