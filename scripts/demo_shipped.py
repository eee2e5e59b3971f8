"""The shipped system out of the box: ``make demo`` (``python -m scripts.demo_shipped``).

Runs the shipped model folder (``models/img2cad-small``, or ``--model``) with its default decoding
(and, with ``--thorough``, then with ``img2cad.engine.THOROUGH``: rows named ``<data> thorough``)
on the ten real GenCAD-Code reference images and the first ``--synthetic-limit`` held-out
synthetic images (``data/synth-test``, when present). For every image it writes the comparison
picture, the program and the STEP file; then it scores the programs against the ground truth
(``reward.evaluate``: VSR, Executable %, Best IoU exact and voxel), prints the table, and writes
``results.json`` (what ``scripts/export_model.py --eval`` puts in the model card) and a Markdown
gallery ``gallery.md`` to ``--out`` (``outputs/demo-shipped``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from scripts._common import REFERENCE, machine

MODEL_MISSING_HINT = "`make demo-pipeline` runs the training-pipeline demo without it"


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown_table(rows: list[dict], device: str | None = None) -> list[str]:
    """The results table (also the model card's): one row per data set."""
    head = "| data | n | VSR | Executable % | Best IoU (exact) | Best IoU (voxel) | s / image |" + (" device |" if device else "")
    lines = [head, "|---" * (7 + bool(device)) + "|"]
    for r in rows:
        lines.append(f"| {r['data']} | {r['n']} | {_fmt(r.get('vsr'))} | {_fmt(100 * r['exec_rate'] if r.get('exec_rate') is not None else None, 1)} "
                     f"| {_fmt(r.get('iou_best'))} | {_fmt(r.get('iou_best_voxel'))} | {_fmt(r.get('seconds_per_image'), 2)} |"
                     + (f" {device} |" if device else ""))
    return lines


def datasets(synthetic: str | None, limit: int) -> dict[str, list[dict]]:
    """``{name: [{"id", "image", "code"}]}``: the reference rows and held-out synthetic rows."""
    from cad.data import load_gencad, undecoded

    sets = {}
    path = REFERENCE / "samples.jsonl"
    if path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        sets[f"real-{len(rows)}"] = [{"id": r["deepcad_id"], "image": str(REFERENCE / r["image"]), "code": r["cadquery"]} for r in rows]
    else:
        print(f"note: {path} not found (set GENCAD_REFERENCE); no reference images", flush=True)
    if synthetic and limit > 0 and Path(synthetic).exists():
        ds = undecoded(load_gencad(synthetic, limit=limit))
        sets[f"synthetic-{len(ds)}"] = [{"id": r["deepcad_id"], "image": r["image"], "code": r["cadquery"]} for r in ds]
    elif synthetic and limit > 0:
        print(f"note: no held-out synthetic set at {synthetic} (make data); reference images only", flush=True)
    return sets


def run(args: argparse.Namespace) -> int:
    from img2cad.shipped import ShippedModelError, load_shipped, verify

    try:
        verify(args.model)
    except ShippedModelError as exc:
        print(f"error: {exc}; {MODEL_MISSING_HINT}", file=sys.stderr)
        return 2
    from cad.data import to_image
    from img2cad.engine import THOROUGH, Engine, decode_config
    from img2cad.images import InputError, normalise
    from reward.evaluate import evaluate_pairs

    shipped = load_shipped(args.model, args.device)
    sets = datasets(args.synthetic, args.synthetic_limit)
    if not sets:
        print("error: no images to run on: set GENCAD_REFERENCE or pass --synthetic DIR", file=sys.stderr)
        return 2
    out = Path(args.out)
    t_start = time.perf_counter()
    cfg = decode_config(shipped, device=args.device)
    thorough = decode_config(shipped, device=args.device, **THOROUGH) if args.thorough else None
    summary_rows, per_image, gallery = [], [], ["# img2cad demo gallery", "",
                                                f"Model `{shipped.name}`, decoding `{cfg.strategy}`; input | our render.", ""]
    runs = [(name, rows, False) for name, rows in sets.items()] + [(f"{name} thorough", rows, True) for name, rows in sets.items() if thorough]
    with Engine(shipped, cfg, workers=args.workers, thorough=thorough) as engine:
        for name, rows, is_thorough in runs:
            folder = out / name.replace(" ", "-")
            folder.mkdir(parents=True, exist_ok=True)
            pairs, seconds = [], []
            gallery += [f"## {name}", "", "| id | status | Best IoU | input / prediction |", "|---|---|---|---|"]
            for r in rows:
                try:
                    pred = engine.predict(normalise(to_image(r["image"]), r["id"]), thorough=is_thorough)
                except (InputError, OSError, ValueError) as exc:  # counted as a failure, never dropped
                    pairs.append((r["id"], None, r["code"]))
                    per_image.append({"data": name, "id": r["id"], "status": "unreadable", "error": str(exc)})
                    continue
                seconds.append(pred.seconds)
                pred.compare_image().save(folder / f"{r['id']}.compare.png")
                (folder / f"{r['id']}.py").write_text(pred.chosen.code)
                if "step" in pred.result.exports:
                    (folder / f"{r['id']}.step").write_bytes(pred.result.exports["step"])
                pairs.append((r["id"], pred.chosen.code, r["code"]))
                per_image.append({"data": name, "id": r["id"], "status": pred.status, "source": pred.chosen.source,
                                  "silhouette_iou": pred.iou, "seconds": round(pred.seconds, 3)})
                print(f"{name} {r['id']}: {pred.status}, {pred.chosen.source}, {pred.seconds:.2f} s", flush=True)
            scores, rows_scored = evaluate_pairs(pairs, engine.pool, iou="both", progress=False)
            by_id = {row["id"]: row for row in rows_scored}
            for item in per_image:
                if item["data"] == name and item["id"] in by_id:
                    item["iou"], item["iou_voxel"] = by_id[item["id"]]["iou"], by_id[item["id"]].get("iou_voxel")
                    iou = _fmt(item["iou"])
                    gallery.append(f"| {item['id']} | {item['status']} | {iou} | ![{item['id']}]({folder.name}/{item['id']}.compare.png) |")
            gallery.append("")
            summary_rows.append({"data": name, "n": scores["n"], "vsr": scores["vsr"], "exec_rate": scores["exec_rate"],
                                 "iou_best": scores["iou_best"], "iou_best_voxel": scores.get("iou_best_voxel"),
                                 "n_valid": scores["n_valid"],
                                 "seconds_per_image": round(sum(seconds) / len(seconds), 3) if seconds else None})
    device = args.device
    table = markdown_table(summary_rows)
    result = {"command": "python -m scripts.demo_shipped " + " ".join(sys.argv[1:]), "model": str(args.model),
              "model_fingerprint": shipped.fingerprint, "machine": {**machine(), "device": device},
              "decoding": dataclasses.asdict(cfg), "thorough": dataclasses.asdict(thorough) if thorough else None, "seconds": round(time.perf_counter() - t_start, 1), "rows": summary_rows,
              "per_image": per_image}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gallery.md").write_text("\n".join(gallery + ["## Summary", ""] + table) + "\n")
    print("\n" + "\n".join(table))
    print(f"\n{result['seconds']} s in all; pictures, programs, STEP files and gallery.md in {out}; numbers in {out / 'results.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scripts.demo_shipped", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: models/img2cad-small)")
    ap.add_argument("--synthetic", default="data/synth-test", help="held-out synthetic data (cad.synth folder)")
    ap.add_argument("--synthetic-limit", type=int, default=6)
    ap.add_argument("--out", default="outputs/demo-shipped")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--thorough", action="store_true", help="then run every set again with img2cad predict --thorough's setting")
    args = ap.parse_args(argv)
    if args.model is None:
        from img2cad.shipped import DEFAULT_MODEL

        args.model = DEFAULT_MODEL
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
