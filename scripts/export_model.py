"""Package a trained model for ``img2cad``: ``python scripts/export_model.py --model DIR --index FILE``.

Writes ``models/<name>/`` (``--out-root``): the model in fp16 safetensors with its config, the
tokenizer, the image processor config, the retrieval index (``--index FILE`` as written by
``decoding.retrieval``, or built from ``--retrieval-data DIR``), ``decoding.json`` (the default
``DecodeConfig`` of ``img2cad predict``; ``--decoding`` overrides fields), ``MODEL_CARD.md`` filled
from the training metrics next to the model and the measured results passed with ``--eval``
(JSON written by ``scripts/demo_shipped.py``), and ``manifest.json`` (sha256 of every file).
The folder is assembled beside the target and swapped in at the end; the same inputs give the same
files. Refuses a folder larger than ``--max-mb`` (40 MB).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from img2cad.shipped import CARD, DECODING, INDEX, ShippedModelError, load_index, write_manifest  # noqa: E402
from scripts.demo_shipped import markdown_table  # noqa: E402


def _json_arg(text: str | None) -> dict:
    """Inline JSON or the path of a JSON file."""
    if not text:
        return {}
    return json.loads(Path(text).read_text()) if Path(text).is_file() else json.loads(text)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def model_card(name: str, config: dict, training: dict, recipe: dict, decoding: dict, index, evals: list[dict],
               commands: list[str], files: dict, source: str) -> str:
    dec = config.get("decoder", {})
    params = config.get("_parameters")
    card = [
        f"# {name}", "",
        "Picture of a mechanical part to the CadQuery program that builds it (GenCAD-Code style), for "
        "`img2cad predict` and `img2cad serve`.", "",
        "## Input it was trained for", "",
        "Renders in GenCAD-Code's style: 448 x 448, white background, flat grey faces, 1-pixel black edges, one "
        "isometric view from (1, -1, 1), the projected corners of the part's bounding box fit to a centred 400 x 300 window. Other pictures "
        "are normalised to that (`img2cad.images`): grey levels on white, part centred and fit to the window.", "",
        "## Model", "",
        f"- encoder `{config.get('encoder_name')}` ({config.get('image_size')} px, {config.get('in_chans')} channel(s), "
        f"{config.get('encoder_kwargs')}), T5 decoder d_model {dec.get('d_model')}, {dec.get('num_decoder_layers')} layers, "
        f"{dec.get('num_heads')} heads; retrieval layers {config.get('retrieval_layers', 0)}"
        f"{'; copy head' if config.get('copy_head') else ''}; vocabulary {config.get('vocab_size')}",
        f"- parameters: {params if params is not None else '-'}; weights stored in fp16 (loaded as float32 on the CPU)",
        f"- exported from `{source}`", "",
        "## Training", "",
        f"- data: `{recipe.get('train_data', '-')}` ({training.get('train_rows', '-')} rows), validation "
        f"`{recipe.get('val_data') or 'held out from train'}` ({training.get('val_rows', '-')} rows)",
        f"- recipe: train_mode {recipe.get('train_mode', '-')}, pretrained {recipe.get('pretrained', '-')}, "
        f"steps {training.get('steps', recipe.get('max_steps', '-'))}, batch {recipe.get('batch_size', '-')}, lr {recipe.get('lr', '-')}",
        f"- training time: {training.get('train_seconds', '-')} s; peak memory {training.get('peak_memory_mb', '-')} MB; "
        f"hardware: {training.get('hardware', '-')}",
    ]
    card += [f"- command: `{c}`" for c in commands]
    card += ["", "## Measured results", ""]
    for ev in evals:
        card += markdown_table(ev.get("rows", []), ev.get("machine", {}).get("device", "-"))
        card += ["", f"Measured by `{ev.get('command', 'python -m scripts.demo_shipped')}` "
                     f"({ev.get('machine', {}).get('cpus', '-')} CPUs).", ""]
    if not evals:
        card.append("Not measured yet: run `make demo` and export again with `--eval outputs/demo-shipped/results.json`.")
    n_index = len(index.programs) if index is not None else 0
    card += ["", "## Retrieval index", "",
             f"{n_index} training programs, embedding `{getattr(index, 'embedding', '-')}`, "
             f"meta {json.dumps(getattr(index, 'meta', {}), sort_keys=True)}" if index is not None else "none",
             "", "## Decoding defaults (`decoding.json`)", "", "```json", json.dumps(decoding, indent=2, sort_keys=True), "```",
             "", "## Files", "", "| file | bytes |", "|---|---|"]
    card += [f"| `{f}` | {b:,} |" for f, b in files.items()]
    card += ["", "Loading checks every file against `manifest.json` (sha256)."]
    return "\n".join(card) + "\n"


def export(model_dir: Path, out: Path, name: str, index_file: Path | None, retrieval_data: str | None,
           decoding: dict, evals: list[dict], commands: list[str], hardware: str | None, max_mb: float) -> dict:
    import torch
    from transformers import PreTrainedTokenizerFast

    from decoding.predict import DecodeConfig
    from sft.image_processing import ImageProcessor
    from sft.model import Img2CadModel

    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model = Img2CadModel.from_pretrained(str(model_dir)).to(torch.float16)
    model.save_pretrained(str(staging))
    PreTrainedTokenizerFast.from_pretrained(str(model_dir)).save_pretrained(str(staging))
    ImageProcessor.from_pretrained(model_dir).save_pretrained(staging)
    index = None
    if index_file is not None:
        index = load_index(index_file)
        shutil.copyfile(index_file, staging / INDEX)
    elif retrieval_data:
        from decoding.retrieval import RetrievalIndex

        index = RetrievalIndex.build(retrieval_data)
        index.save(staging / INDEX)
    # a generous sandbox timeout: on a loaded machine a tight one turns good candidates into timeouts,
    # and the choice would depend on the load
    dec = dataclasses.asdict(DecodeConfig(**{"strategy": "rerank", "repair": True, "k_retrieval": 4 if index is not None else 0,
                                             "timeout": 20.0, **decoding}))
    dec.pop("device")
    if (dec["strategy"] == "retrieval" or dec["k_retrieval"]) and index is None:
        raise ShippedModelError("these decoding options use retrieval: pass --index FILE or --retrieval-data DIR")
    (staging / DECODING).write_text(json.dumps(dec, indent=2, sort_keys=True) + "\n")
    training = {**_read_json(model_dir / "training_metrics.json"), **_read_json(model_dir / "dpo_metrics.json")}
    if hardware:
        training["hardware"] = hardware
    recipe = {}
    for cfg_name in ("sft_config.yaml", "dpo_config.yaml"):
        if (model_dir / cfg_name).is_file():
            import yaml

            recipe.update(yaml.safe_load((model_dir / cfg_name).read_text()) or {})
    files = {p.name: p.stat().st_size for p in sorted(staging.iterdir()) if p.is_file()}
    config = {**json.loads((staging / "config.json").read_text()), "_parameters": sum(p.numel() for p in model.parameters())}
    (staging / CARD).write_text(model_card(name, config, training, recipe, dec, index, evals, commands, files, str(model_dir)))
    manifest = write_manifest(staging, name)
    total = sum(f["bytes"] for f in manifest["files"].values())
    if total > max_mb * 2**20:
        shutil.rmtree(staging)
        raise ShippedModelError(f"the exported folder would hold {total / 2**20:.1f} MB, over --max-mb {max_mb:g}; "
                                "use a smaller model or index (fewer --dims / rows)")
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return {"out": str(out), "bytes": total, "files": {k: v["bytes"] for k, v in manifest["files"].items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/export_model.py", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="an SFT or DPO output folder (final/)")
    ap.add_argument("--index", help="retrieval index file (.npz) written by decoding.retrieval")
    ap.add_argument("--retrieval-data", help="training data to build the index from (instead of --index)")
    ap.add_argument("--name", default="img2cad-small")
    ap.add_argument("--out-root", default="models")
    ap.add_argument("--decoding", help="DecodeConfig fields for decoding.json (JSON text or file)")
    ap.add_argument("--eval", action="append", default=[], help="measured results (scripts/demo_shipped.py JSON); repeatable")
    ap.add_argument("--command", action="append", default=[], help="a command that made the model, for the card; repeatable")
    ap.add_argument("--hardware", help="training hardware, for the card (e.g. '2-core CPU')")
    ap.add_argument("--max-mb", type=float, default=40.0)
    args = ap.parse_args(argv)
    model_dir = Path(args.model)
    out = Path(args.out_root) / args.name
    if not (model_dir / "config.json").is_file():
        print(f"error: {model_dir}: no config.json; pass a model folder written by python -m sft or rl.dpo (final/)", file=sys.stderr)
        return 2
    if out.resolve() == model_dir.resolve() or (args.index and Path(args.index).resolve().is_relative_to(out.resolve())):
        print(f"error: {out}: the export would overwrite its own input; choose another --name or --out-root", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # an error is one line on stderr, with no loading bar before it
    try:
        evals = [_json_arg(e) for e in args.eval]
        summary = export(model_dir, out, args.name, Path(args.index) if args.index else None, args.retrieval_data,
                         _json_arg(args.decoding), evals, args.command, args.hardware, args.max_mb)
    except (ShippedModelError, json.JSONDecodeError, TypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
