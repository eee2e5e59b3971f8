"""``img2cad predict IMAGE [IMAGE ...] --out DIR`` and ``img2cad serve``.

``predict`` writes, for every image ``<name>.png``: ``<name>.py`` (the program), ``<name>.step``
and ``<name>.stl`` (exported by the sandbox), ``<name>.compare.png`` (input beside our render) and
``<name>.json`` (chosen candidate, its source and scores, the other candidates), and prints one
line per image. Every input is checked first: a file that is not an image, an empty image or a
blank one stops the run with one line and exit code 2 before anything is decoded. An image whose
``<name>.json`` already records the same input, model files and options is kept, not redone.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from cad.cli import WORKERS, ArgumentParser, guarded, int_in
from img2cad.images import InputError, load_input
from img2cad.shipped import DEFAULT_MODEL

OUTPUTS = (".py", ".step", ".stl", ".compare.png", ".json")
STRATEGIES = ("beam", "bestofn", "rerank", "retrieval")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu")
    return name


def _names(paths: list[Path]) -> list[str]:
    """Output names: the file stems, made unique in input order (x, x-2, ...)."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in p.stem) or "image"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def _line(name: str, record: dict, note: str = "") -> str:
    iou = record.get("silhouette_iou")
    iou_text = f"silhouette IoU {iou:.3f}" if iou is not None else "silhouette IoU -"
    return f"{name}: {record['status']}, {iou_text}, {record['seconds']:.2f} s, {record['chosen']['source']}{note}"


def _write(out: Path, name: str, pred, input_hash: str) -> dict:
    record = {"input_sha256": input_hash, **pred.to_json()}
    (out / f"{name}.py").write_text(pred.chosen.code if pred.chosen.code.endswith("\n") else pred.chosen.code + "\n")
    for fmt in ("step", "stl"):
        target = out / f"{name}.{fmt}"
        if fmt in pred.result.exports:
            target.write_bytes(pred.result.exports[fmt])
        elif target.exists():
            target.unlink()  # a stale solid from an earlier run must not pass for this one
    pred.compare_image().save(out / f"{name}.compare.png")
    tmp = out / f".{name}.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out / f"{name}.json")  # written last: its presence marks a finished image
    return record


def _kept(out: Path, name: str, input_hash: str, options: dict) -> dict | None:
    """The earlier record of this image when input, model and options are unchanged."""
    path = out / f"{name}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    files_there = all((out / f"{name}{ext}").exists() for ext in (".py", ".compare.png"))
    solid_there = not record.get("executable") or all((out / f"{name}.{f}").exists() for f in ("step", "stl"))
    same = record.get("input_sha256") == input_hash and record.get("options") == options
    return record if same and files_there and solid_there else None


def predict_main(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.images]
    for p in paths:  # every input checked before any work
        load_input(p)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: a file, not a folder; choose a folder for the outputs")
    inputs = {p.resolve() for p in paths}
    names = _names(paths)
    clash = [p for n in names for ext in OUTPUTS if (p := (out / f"{n}{ext}").resolve()) in inputs]
    if clash:
        raise InputError(f"{clash[0]}: an input would be overwritten by an output; choose another --out")
    from img2cad.shipped import load_shipped, verify

    verify(args.model)  # a missing or damaged model folder is named before the slow imports
    from tqdm import tqdm

    device = _device(args.device)
    shipped = load_shipped(args.model, device, args.index)
    engine = _engine(args, shipped, device)
    out.mkdir(parents=True, exist_ok=True)
    with engine, tqdm(total=len(paths), desc="predict", unit="img", disable=len(paths) < 2, file=sys.stderr) as bar:
        for path, name in zip(paths, names):
            input_hash = hashlib.sha256(path.read_bytes()).hexdigest()
            record = _kept(out, name, input_hash, engine.options)
            if record is not None:
                tqdm.write(_line(name, record, " (unchanged, kept)"), file=sys.stdout)
            else:
                record = _write(out, name, engine.predict(load_input(path)), input_hash)
                tqdm.write(_line(name, record), file=sys.stdout)
            bar.update(1)
    return 0


def _config(args: argparse.Namespace, shipped, device: str):
    """The model folder's decoding.json with the command line's --strategy, --n, --k, --refine,
    --primitives and --no-prisms on top (with --thorough, those it leaves out come from ``THOROUGH``)."""
    from img2cad.engine import THOROUGH, decode_config

    preset = THOROUGH if args.thorough else {}
    pick = lambda name, given: given if given is not None else preset.get(name)  # noqa: E731
    refine, primitives = pick("refine", args.refine), pick("primitives", args.primitives or None)
    prisms = False if args.no_prisms else None
    strategy = pick("strategy", args.strategy) or decode_config(shipped, device=device).strategy
    if refine and strategy != "rerank":
        raise InputError(f"--refine adjusts the program chosen by rerank, not {strategy}: add --strategy rerank")
    if primitives and strategy != "rerank":
        raise InputError(f"--primitives adds candidates to rerank, not to {strategy}: add --strategy rerank")
    return decode_config(shipped, strategy, args.n, refine, device, pick("k", args.k), primitives, prisms)


def _engine(args: argparse.Namespace, shipped, device: str, thorough: bool = False):
    """The engine decoding with ``_config``; with ``thorough``, also with ``THOROUGH`` (the web app's choice)."""
    from img2cad.engine import THOROUGH, Engine, decode_config

    cfg = _config(args, shipped, device)
    try:
        return Engine(shipped, cfg, workers=args.workers, thorough=decode_config(shipped, device=device, **THOROUGH) if thorough else None)
    except ValueError as exc:  # e.g. a strategy that needs a retrieval index the folder lacks
        raise InputError(str(exc)) from None


def serve_main(args: argparse.Namespace) -> int:
    from img2cad.shipped import load_shipped, verify

    verify(args.model)
    from img2cad.app import serve

    device = _device(args.device)
    return serve(_engine(args, load_shipped(args.model, device, args.index), device, thorough=True), host=args.host, port=args.port)


def parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="img2cad", description="CadQuery programs from pictures of mechanical parts")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder written by scripts/export_model.py")
        p.add_argument("--index", help="retrieval index file replacing the model folder's index.npz")
        p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present, else CPU")
        p.add_argument("--workers", type=WORKERS, default=2, help="sandbox processes")
        p.add_argument("--strategy", choices=STRATEGIES, help="default: the model folder's decoding.json")
        p.add_argument("--n", type=int_in(1, 256), help="samples per image for bestofn / rerank")
        p.add_argument("--k", type=int_in(0, 256), metavar="RETRIEVED",
                       help="nearest training programs added to the candidates (bestofn / rerank; default: the model "
                            "folder's decoding.json)")
        p.add_argument("--refine", type=int_in(0, 10_000), metavar="RENDERS",
                       help="renders spent adjusting the chosen program's numbers against the image (rerank; 0: none; "
                            "default: the model folder's decoding.json)")
        p.add_argument("--primitives", action="store_true",
                       help="rerank: add a box, an L or U section, a cylinder and a tube fit to the image, and the "
                            "profile prisms read off it, to the candidates (slower; helps parts made of one extruded sketch)")
        p.add_argument("--no-prisms", action="store_true",
                       help="leave out the profile prisms that rerank adds to the candidates when the model "
                            "folder's decoding.json says prisms: true")
        p.add_argument("--thorough", action="store_true",
                       help="the slower setting chosen on validation images: rerank with 16 retrieved programs, the "
                            "primitives and prisms, and 48 refinement renders (--strategy, --k, --refine override it)")

    p = sub.add_parser("predict", help="write program, STEP, STL, comparison and candidates for each image")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, help="output folder")
    common(p)
    p.set_defaults(func=predict_main)

    s = sub.add_parser("serve", help="the web app (Gradio) on localhost")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    s.add_argument("--port", type=int_in(1, 65535), default=7860)
    common(s)
    s.set_defaults(func=serve_main)
    return ap


@guarded("run the same command again: finished images are kept")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
