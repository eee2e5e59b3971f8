"""GenCAD-Code datasets: the hub dataset, local copies in its schema, and our synthetic shards.

Schema (``CADCODER/GenCAD-Code``): ``image`` (448x448 render), ``deepcad_id``, ``cadquery``,
``token_count``, ``prompt``, ``hundred_subset``. ``load_gencad`` returns a ``datasets.Dataset``
with exactly these columns, from

* the hub (``source=None``; 147,289 train / 8,204 validation / 7,355 test), or
* a local folder or file: parquet shards (a hub snapshot or ``python -m cad.synth`` output) or a
  JSONL file whose ``image`` fields are paths relative to it (like ``shared/gencad_reference``).

Subsets as the study used them: ``subset="study"`` takes 30K train / 1K test rows after a seeded
shuffle; ``subset="hundred"`` the rows with ``hundred_subset`` set.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import datasets
from PIL import Image

from cad.io import InputError

HUB_ID = "CADCODER/GenCAD-Code"
STUDY_SIZES = {"train": 30_000, "test": 1_000, "validation": 1_000}
FEATURES = datasets.Features({
    "image": datasets.Image(),
    "deepcad_id": datasets.Value("string"),
    "cadquery": datasets.Value("string"),
    "token_count": datasets.Value("int64"),
    "prompt": datasets.Value("string"),
    "hundred_subset": datasets.Value("bool"),
})
DEFAULT_PROMPT = "Generate the CADQuery code needed to create the CAD for the provided image. Just the code, no other words."
_TOKEN_RE = re.compile(r"-?\d+\.\d+(?:e-?\d+)?|\w+|[^\w\s]")


class DatasetUnavailable(InputError, RuntimeError):
    """The dataset cannot be reached or read; the message says how to use a local copy."""


def count_tokens(code: str) -> int:
    """A tokenizer-free length: identifiers, numbers and punctuation marks.

    The hub's ``token_count`` comes from the original tokenizer; rows we build ourselves carry
    this count instead.
    """
    return len(_TOKEN_RE.findall(code))


def _hub_error(exc: Exception) -> DatasetUnavailable:
    return DatasetUnavailable(
        f"could not load '{HUB_ID}' from the Hugging Face hub ({type(exc).__name__}: {str(exc)[:200]}). "
        "Where the hub is reachable, save a local copy with "
        f"`huggingface-cli download {HUB_ID} --repo-type dataset --local-dir DIR` and pass that folder "
        "(--data DIR, or load_gencad(source=DIR)); a JSONL file of rows with image paths works too. "
        "Without any copy, make a synthetic dataset in the same schema: `python -m cad.synth --n N --out DIR`."
    )


def _from_jsonl(path: Path) -> datasets.Dataset:
    rows = {k: [] for k in FEATURES}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetUnavailable(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
        if "cadquery" not in row or "image" not in row:
            raise DatasetUnavailable(f"{path}:{lineno}: a GenCAD row needs 'cadquery' and 'image' fields")
        image_path = (path.parent / row["image"]).resolve()
        rows["image"].append({"path": str(image_path), "bytes": None})
        rows["deepcad_id"].append(str(row.get("deepcad_id", row.get("id", f"line{lineno}"))))
        rows["cadquery"].append(row["cadquery"])
        rows["token_count"].append(int(row.get("token_count") or count_tokens(row["cadquery"])))
        rows["prompt"].append(row.get("prompt", DEFAULT_PROMPT))
        rows["hundred_subset"].append(bool(row.get("hundred_subset", False)))
    return datasets.Dataset.from_dict(rows, features=FEATURES)


def _parquet_files(root: Path, split: str) -> list[str]:
    for pattern in (f"{split}-*.parquet", f"{split}/*.parquet", f"data/{split}-*.parquet", f"data/{split}/*.parquet"):
        files = sorted(root.glob(pattern))
        if files:
            return [str(f) for f in files]
    return []


def _splits_in(root: Path) -> list[str]:
    return sorted({re.sub(r"-\d+(-of-\d+)?\.parquet$", "", f.name) for f in root.glob("*.parquet")}
                  | {f.parent.name for f in root.glob("*/*.parquet")})


def load_gencad(source: str | Path | None = None, split: str | None = None, subset: str | None = None,
                seed: int = 0, limit: int | None = None, allow_test: bool = True) -> datasets.Dataset:
    """GenCAD-Code rows from the hub (``source=None``) or a local copy (see module docstring).

    ``split`` defaults to ``test`` on the hub; in a local folder holding a single split, to that; a
    local folder holding several splits must be given one. ``allow_test=False`` (training, building
    a retrieval index) refuses a test split.
    """
    if source is not None and split is None and Path(source).is_dir():
        found = _splits_in(Path(source))
        if len(found) > 1:
            raise DatasetUnavailable(f"{source}: holds the splits {found}; name one (split=... / --split)")
        split = found[0] if found else None
    split = split or "test"

    def refuse_test() -> None:
        if not allow_test and split == "test":
            raise DatasetUnavailable(f"{source or HUB_ID}: the test split is for final numbers only, never for training "
                                     "or a retrieval index; pass a train or validation split")

    if source is None:
        refuse_test()
        try:
            ds = datasets.load_dataset(HUB_ID, split=split)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the hub gets the same advice
            raise _hub_error(exc) from exc
    else:
        path = Path(source)
        if path.is_file() and path.suffix == ".jsonl":
            ds = _from_jsonl(path)
        elif path.is_file() and path.suffix == ".parquet":
            ds = datasets.Dataset.from_parquet(str(path), features=FEATURES)
        elif path.is_dir():
            files = _parquet_files(path, split)
            if files:
                refuse_test()
                ds = datasets.Dataset.from_parquet(files, features=FEATURES)
            elif (path / "samples.jsonl").exists():
                ds = _from_jsonl(path / "samples.jsonl")
            else:
                raise DatasetUnavailable(f"{path}: no '{split}-*.parquet' shards and no samples.jsonl; "
                                         "pass a GenCAD-Code snapshot, a cad.synth output folder or a JSONL file")
        else:
            raise DatasetUnavailable(f"{path}: not found; pass a folder of parquet shards or a JSONL file of GenCAD rows")
    missing = set(FEATURES) - set(ds.column_names)
    if missing:
        raise DatasetUnavailable(f"{source or HUB_ID}: missing columns {sorted(missing)}; expected the GenCAD-Code schema")
    if subset == "hundred":
        ds = ds.filter(lambda r: bool(r), input_columns="hundred_subset")
    elif subset == "study":
        ds = ds.shuffle(seed=seed)
        ds = ds.select(range(min(STUDY_SIZES.get(split, len(ds)), len(ds))))
    elif subset is not None:
        raise ValueError(f"unknown subset {subset!r}: use 'study', 'hundred' or None")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def undecoded(ds: datasets.Dataset) -> datasets.Dataset:
    """The same rows with images left as bytes/paths, decoded by ``to_image`` where needed, so
    one unreadable image costs one row (reported by its reader) instead of the whole run."""
    return ds.cast_column("image", datasets.Image(decode=False)) if "image" in ds.features else ds


def to_image(value) -> Image.Image:
    """Whatever the image column holds (PIL image, dict with bytes or path, path) as a PIL image."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return Image.open(value["path"])
    if isinstance(value, (str, Path)):
        return Image.open(value)
    raise ValueError(f"cannot read an image from {type(value).__name__}")
