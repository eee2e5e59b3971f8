"""The main job, end to end on CPU with no network: ``make demo`` (``python -m scripts.demo``).

1. Metrics: the ten real GenCAD-Code rows scored against perturbed copies of their own programs
   (sandbox execution, exact and voxel Best IoU, error classes).
2. Renderer: our renders of the ten ground-truth programs against the real images.
3. Data: a small synthetic GenCAD-style train set and a held-out test set.
4. SFT: the tiny recipe trained for a few minutes.
5. Decoding and evaluation: greedy and beam-4 predictions on the synthetic test set and on the
   ten real images for each strategy (retrieval, beam 4, grammar, best-of-N, rerank), scored by
   ``reward.evaluate``; the table is printed and saved.

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


def evaluate_predictions(pool: SandboxPool, preds: Path, gt_rows: list[tuple[str, str]]) -> dict:
    by_id = {}
    for line in preds.read_text().splitlines():
        row = json.loads(line)
        by_id[row["id"]] = row["code"]
    summary, _ = evaluate_pairs([(i, by_id.get(i), code) for i, code in gt_rows], pool, progress=False)
    return summary


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

    step("5. Decoding strategies and evaluation")
    from cad.data import load_gencad
    from decoding.predict import DecodeConfig, predict
    from decoding.retrieval import RetrievalIndex
    from sft.model import load_model

    model, tok, proc = load_model(str(model_dir))
    index = RetrievalIndex.build(OUT / "synth-train")
    test = load_gencad(OUT / "synth-test", limit=24)
    datasets_ = {
        "synthetic-test-24": ([{"id": r["deepcad_id"], "image": r["image"]} for r in test],
                              [(r["deepcad_id"], r["cadquery"]) for r in test]),
        "real-10": ([{"id": r["deepcad_id"], "image": str(REFERENCE / r["image"])} for r in rows],
                    [(r["deepcad_id"], r["cadquery"]) for r in rows]),
    }
    strategies = {
        "retrieval (nearest training image)": DecodeConfig(strategy="retrieval"),
        "baseline: beam 4": DecodeConfig(strategy="beam"),
        "+ grammar (constrained + repair)": DecodeConfig(strategy="grammar"),
        "+ best-of-4 with execution": DecodeConfig(strategy="bestofn", n=4, grammar=True, repair=True),
        "+ rerank (render-compare, 2 retrieved)": DecodeConfig(strategy="rerank", n=4, grammar=True, repair=True, k_retrieval=2),
    }
    with SandboxPool(2) as pool:
        for name, (inputs, gts) in datasets_.items():
            for label, cfg in strategies.items():
                cfg.max_new_tokens = 320
                preds = OUT / "preds" / f"{name}-{cfg.strategy}.jsonl"
                stats = predict(model, tok, proc, inputs, preds, cfg, pool, index, progress=False)
                s = evaluate_predictions(pool, preds, gts)
                table.append({"data": name, "model": f"tiny SFT, {label}" if cfg.strategy != "retrieval" else label,
                              **s, "s_per_image": stats["seconds_per_image"]})
                print(f"{name:18s} {label:40s} VSR {s['vsr']:.3f}  IoU {s['iou_best'] if s['iou_best'] is not None else '-'}", flush=True)

    lines = ["| data | model / strategy | n | VSR | Executable | Best IoU (exact) | s / image |", "|---|---|---|---|---|---|---|"]
    for r in table:
        iou = "-" if r.get("iou_best") is None else f"{r['iou_best']:.3f}"
        spi = r.get("s_per_image", "-")
        lines.append(f"| {r['data']} | {r['model']} | {r['n']} | {r['vsr']:.3f} | {r['exec_rate']:.3f} | {iou} | {spi} |")
    report = "\n".join(lines) + "\n"
    (OUT / "table.md").write_text(report)
    (OUT / "table.json").write_text(json.dumps(table, indent=2))
    step(f"Results (table in {OUT / 'table.md'}; {time.perf_counter() - t_start:.0f} s)")
    print(report)


if __name__ == "__main__":
    main()
