"""How ``img2cad predict`` holds up when the picture is not GenCAD's exact render: the reference
rows' images (or a dataset's validation rows, ``--data``) as they are, saved as JPEG (quality 85),
halved to 224 px (also saved as JPEG), shrunk to 256 px (bicubic) and to 320 px, enlarged to
800 px (bicubic), with the part tinted orange and with the colours inverted (light on black), each
read by ``img2cad.images.load_input`` and decoded by the shipped model's default
(``img2cad.engine.Engine``), then scored against the rows' programs (exact Best IoU).

    python scripts/input_robustness.py --out docs/results/input_robustness-real10.json
    python scripts/input_robustness.py --copies 224px,jpeg85 --out /tmp/robustness.json  # some copies only
    python scripts/input_robustness.py --data data/synth-val --split validation --offset 128 --limit 64 --out /tmp/r.json  # rows 128-191
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cad.sandbox import SandboxPool  # noqa: E402
from img2cad.images import NORMALISE_VERSION, load_input  # noqa: E402
from reward.evaluate import evaluate_pairs  # noqa: E402
from scripts._common import add_row_arguments, machine, row_picture, rows_of, write_json  # noqa: E402

COPIES = {
    "as_is": lambda im: (im, "png"),
    "jpeg85": lambda im: (im, "jpg"),
    "224px": lambda im: (im.resize((224, 224), Image.LANCZOS), "png"),
    "224px_jpeg85": lambda im: (im.resize((224, 224), Image.LANCZOS), "jpg"),
    "256px_bicubic": lambda im: (im.resize((256, 256), Image.BICUBIC), "png"),
    "320px": lambda im: (im.resize((320, 320), Image.LANCZOS), "png"),
    "800px": lambda im: (im.resize((800, 800), Image.BICUBIC), "png"),
    "tinted": lambda im: (Image.fromarray(_tinted(np.asarray(im))), "png"),
    "inverted": lambda im: (ImageOps.invert(im), "png"),
}


def _tinted(a: np.ndarray) -> np.ndarray:
    """A render's part in orange (its channels scaled by 1, 0.55 and 0.3), the background kept."""
    part = (a < 250).any(-1, keepdims=True)
    return np.where(part, a * np.array([1.0, 0.55, 0.3]), a).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_row_arguments(ap)
    ap.add_argument("--copies", default=",".join(COPIES), help="comma-separated copies to run (default: all)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    names = [c for c in args.copies.split(",") if c]
    unknown = [c for c in names if c not in COPIES]
    if unknown:
        ap.error(f"--copies: unknown {', '.join(unknown)}; choose from {', '.join(COPIES)}")
    from img2cad.engine import Engine, decode_config
    from img2cad.shipped import DEFAULT_MODEL, load_shipped

    rows = rows_of(ap, args)
    shipped = load_shipped(args.model or DEFAULT_MODEL)
    cfg = decode_config(shipped)
    result = {"benchmark": "input_robustness", "command": "python " + " ".join(sys.argv), "model": shipped.name,
              "normalise_version": NORMALISE_VERSION, "decoding": cfg.strategy, "n": len(rows), "machine": machine(),
              "copies": {}}
    with tempfile.TemporaryDirectory() as tmp, Engine(shipped, cfg, workers=args.workers) as engine, \
            SandboxPool(args.workers) as pool:
        for name in names:
            make = COPIES[name]
            pairs, seconds = [], 0.0
            for row in tqdm(rows, desc=name, unit="img"):
                img, ext = make(row_picture(row))
                path = Path(tmp) / f"{row['deepcad_id']}-{name}.{ext}"
                img.save(path, **({"quality": 85} if ext == "jpg" else {}))
                t0 = time.perf_counter()
                pred = engine.predict(load_input(path))
                seconds += time.perf_counter() - t0
                pairs.append((row["deepcad_id"], pred.chosen.code, row["cadquery"]))
            summary, scored = evaluate_pairs(pairs, pool, progress=False)
            result["copies"][name] = {"iou_best": summary["iou_best"], "vsr": summary["vsr"],
                                      "seconds_per_image": round(seconds / len(rows), 3),
                                      "iou": {r["id"]: None if r["iou"] is None else round(r["iou"], 4) for r in scored}}
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
