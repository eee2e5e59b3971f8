"""Pack a GenCAD-schema dataset into the few tens of megabytes a remote GPU machine can be sent, and unpack it there.

    python -m scripts.pack_renders pack data/synth-train --split train --size 128 --channels 1 --out train.pack.xz
    python -m scripts.pack_renders unpack train.pack.xz --out data/synth-train-128 [--workers 16]

``pack`` turns each image into exactly the array the model reads (``sft.image_processing.
ImageProcessor`` at ``--size`` / ``--channels``) and stores all of them as one uint8 array beside
the other columns (JSON), xz-compressed as a whole: the renders are mostly white and alike, so
this is about half the size of per-image PNGs. ``unpack`` writes GenCAD-schema parquet shards
(``<split>-NNNNN.parquet``, PNG images) under the same split name, in the same row order and with
the same ids, so ``cad.data.load_gencad`` reads it and a retrieval index built on the original
rows still matches; ``ImageProcessor.to_array`` of an unpacked image is the array that was packed.
Unreadable images are named on stderr, skipped and listed in the pack's header.
"""
from __future__ import annotations

import argparse
import io
import json
import lzma
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cad.data import FEATURES, load_gencad, to_image, undecoded
from cad.io import InputError, check_output_dir, check_output_file
from sft.image_processing import ImageProcessor

MAGIC = b"img2cad-pack-1\n"
SHARD = 5000


def pack(source: str, split: str, size: int, channels: int, out: Path) -> dict:
    """Write the pack file; returns its header (source, split, size, channels, rows, skipped)."""
    ds = undecoded(load_gencad(source, split=split))
    processor = ImageProcessor(size, channels)
    images, rows, skipped = [], [], []
    for row in tqdm(ds, desc=f"pack {split}", unit="row"):
        try:
            images.append(processor.to_array(to_image(row["image"])))
        except Exception as exc:  # noqa: BLE001 - an unreadable image is named and skipped
            skipped.append({"id": str(row["deepcad_id"]), "reason": f"{type(exc).__name__}: {exc}"})
            print(f"skipped {row['deepcad_id']}: unreadable image ({exc})", file=sys.stderr)
            continue
        rows.append({k: row[k] for k in FEATURES if k != "image"})
    header = {"source": str(source), "split": split, "size": size, "channels": channels, "rows": len(rows),
              "skipped": skipped}
    arr = np.stack(images) if images else np.zeros((0, channels, size, size), np.uint8)
    meta = json.dumps({"header": header, "rows": rows}).encode()
    with lzma.open(out, "wb", preset=9 | lzma.PRESET_EXTREME) as f:
        f.write(MAGIC + len(meta).to_bytes(8, "little") + meta)
        f.write(arr.tobytes())
    return header


def _png(arr: np.ndarray) -> bytes:
    img = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _write_shard(path: str, images: np.ndarray, rows: list[dict]) -> int:
    import datasets

    cols = {k: [r[k] for r in rows] for k in FEATURES if k != "image"}
    cols["image"] = [{"bytes": _png(a), "path": None} for a in images]
    datasets.Dataset.from_dict(cols, features=FEATURES).to_parquet(path)
    return len(rows)


def read_pack(path: str | Path) -> tuple[dict, list[dict], np.ndarray]:
    """Header, rows (all columns but the image) and images (N, C, S, S) of a pack file."""
    with lzma.open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise InputError(f"{path}: not an img2cad pack file (python -m scripts.pack_renders pack ...)")
        meta = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        h = meta["header"]
        images = np.frombuffer(f.read(), np.uint8).reshape(-1, h["channels"], h["size"], h["size"])
    if len(images) != h["rows"] or len(meta["rows"]) != h["rows"]:
        raise InputError(f"{path}: truncated pack ({len(images)} images for {h['rows']} rows); pack it again")
    return h, meta["rows"], images


def unpack(path: str | Path, out: Path, workers: int = 1) -> dict:
    """Write the GenCAD-schema shards of a pack file; returns its header."""
    header, rows, images = read_pack(path)
    split = header["split"]
    starts = range(0, len(rows), SHARD)
    paths = [str(out / f"{split}-{i:05d}.parquet") for i in range(len(starts))]
    with ProcessPoolExecutor(max(workers, 1)) as pool:
        jobs = [pool.submit(_write_shard, p, images[s:s + SHARD], rows[s:s + SHARD]) for p, s in zip(paths, starts)]
        written = sum(j.result() for j in tqdm(jobs, desc=f"unpack {split}", unit="shard"))
    (out / f"{split}-info.json").write_text(json.dumps({**header, "unpacked_from": str(path), "written": written}, indent=2))
    return header


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scripts.pack_renders", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="dataset -> one xz pack file")
    p.add_argument("source", help="GenCAD-schema folder or JSONL")
    p.add_argument("--split", required=True, help="split to pack (its name is kept)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels, as the recipe reads it")
    p.add_argument("--channels", type=int, choices=(1, 3), default=1)
    p.add_argument("--out", required=True, help="pack file to write")
    u = sub.add_parser("unpack", help="pack file -> GenCAD-schema parquet folder")
    u.add_argument("pack", help="a file written by 'pack'")
    u.add_argument("--out", required=True, help="output folder")
    u.add_argument("--workers", type=int, default=1, help="processes writing shards (1-256)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "pack":
            if not 8 <= args.size <= 1024:
                raise InputError(f"--size {args.size}: give a side between 8 and 1024 pixels")
            header = pack(args.source, args.split, args.size, args.channels, check_output_file(args.out, args.source))
        else:
            if not 1 <= args.workers <= 256:
                raise InputError(f"--workers {args.workers}: give 1 to 256")
            if not Path(args.pack).is_file():
                raise InputError(f"{args.pack}: no such pack file")
            header = unpack(args.pack, check_output_dir(args.out, args.pack), args.workers)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in header.items() if k != "skipped"} | {"skipped": len(header["skipped"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
