"""Issue 11: the model-side command lines (decoding, rl.pairs, rl.dpo, sft) refuse bad input with one
line, resume only rows decoded from the same image and options, and skip unreadable images by name."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from cad.render import render_geometry
from cad.sandbox import ExecOptions
from tests.conftest import ROOT
from tests.test_decoding import TINY
from tests.test_hardening_cli import refuses

BOX = "import cadquery as cq\nsolid = cq.Workplane('XY').box({}, {}, {})\n"
SIZES = [(1, 1, 1), (3, 1, 1), (1, 2, 3), (2, 2, 0.5)]


@pytest.fixture(scope="module")
def images(pool, tmp_path_factory) -> Path:
    """A folder of GenCAD-style renders of boxes, one per size."""
    d = tmp_path_factory.mktemp("img")
    for k, res in enumerate(pool.run_many([BOX.format(*s) for s in SIZES], ExecOptions(want_geometry=True))):
        Image.fromarray(render_geometry(res.geometry)).save(d / f"box{k}.png")
    return d


def dataset(folder: Path, images: Path, broken: int | None = None) -> Path:
    """A JSONL dataset of the boxes (GenCAD rows with image paths); image ``broken`` is garbage."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, s in enumerate(SIZES):
        img = folder / f"box{k}.png"
        img.write_bytes(b"not a png" if k == broken else (images / f"box{k}.png").read_bytes())
        rows.append({"deepcad_id": f"box{k}", "cadquery": BOX.format(*s), "image": img.name})
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "rows.jsonl"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny untrained model saved as python -m sft saves one."""
    from sft.image_processing import ImageProcessor
    from sft.model import Img2CadConfig, build_model
    from sft.tokenizer import train_tokenizer

    tok = train_tokenizer([BOX.format(*s) for s in SIZES] * 4, vocab_size=300)
    cfg = Img2CadConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **TINY)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    d = tmp_path_factory.mktemp("model")
    model.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    ImageProcessor(64, 1).save_pretrained(d)
    return d


def decode(model_dir: Path, data: Path, out: Path, strategy: str, capsys) -> dict:
    from decoding.__main__ import main

    capsys.readouterr()
    assert main(["--model", str(model_dir), "--data", str(data), "--strategy", strategy, "--out", str(out),
                 "--max-new-tokens", "6", "--batch-size", "3"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# ---- decoding --------------------------------------------------------------------------------

def test_decoding_rerun_with_another_strategy_decodes_again(tmp_path, images, model_dir, capsys):
    data, out = dataset(tmp_path / "d", images), tmp_path / "preds.jsonl"
    assert decode(model_dir, data, out, "greedy", capsys)["decoded"] == len(SIZES)
    again = decode(model_dir, data, out, "greedy", capsys)
    assert again["decoded"] == 0  # same options: resumed, nothing redone
    other = decode(model_dir, data, out, "beam", capsys)
    assert other["decoded"] == len(SIZES)
    rows = lines(out)
    assert [r["id"] for r in rows] == [f"box{k}" for k in range(len(SIZES))]
    assert all(r["strategy"] == "beam" for r in rows)  # no line of the greedy run is served
    assert again["kept"] == len(SIZES) and other["kept"] == 0


def test_decoding_keeps_input_order_and_decodes_a_fixed_image_again(tmp_path, images, model_dir, capsys):
    data, out = dataset(tmp_path / "d", images, broken=1), tmp_path / "preds.jsonl"
    first = decode(model_dir, data, out, "greedy", capsys)
    assert first["unreadable"] == 1
    rows = lines(out)
    assert [r["id"] for r in rows] == [f"box{k}" for k in range(len(SIZES))]  # the unreadable row in its place
    assert "unreadable image" in rows[1]["error"] and all("error" not in r for i, r in enumerate(rows) if i != 1)
    dataset(tmp_path / "d", images)  # the image is fixed
    second = decode(model_dir, data, out, "greedy", capsys)
    assert second["decoded"] == 1 and second["unreadable"] == 0
    rows = lines(out)
    assert [r["id"] for r in rows] == [f"box{k}" for k in range(len(SIZES))] and all("error" not in r for r in rows)


def test_decoding_refuses_bad_input_in_one_line(tmp_path, images, model_dir, capsys):
    from decoding.__main__ import main

    data = dataset(tmp_path / "d", images)
    before = data.read_bytes()
    base = ["--data", str(data), "--out", str(tmp_path / "o.jsonl")]
    refuses(main, ["--model", str(tmp_path / "no-model"), *base], capsys, "no such folder")
    refuses(main, ["--model", str(data.parent), *base], capsys, "not a model folder")
    refuses(main, ["--model", str(model_dir), "--data", str(data), "--out", str(data)], capsys, "input")
    refuses(main, ["--model", str(model_dir), "--data", str(data), "--out", str(tmp_path)], capsys, "is a folder")
    for bad in (["--temperature", "0"], ["--top-p", "1.5"], ["--n", "0"], ["--beams", "0"], ["--batch-size", "0"],
                ["--limit", "-1"], ["--max-new-tokens", "0"], ["--canonical-grid", "x"]):
        refuses(main, ["--model", str(model_dir), *base, *bad], capsys, bad[0])
    refuses(main, ["--model", str(model_dir), *base, "--weights", "{silhouette: 2"], capsys, "--weights")
    refuses(main, ["--model", str(model_dir), *base, "--copy-bias", "1"], capsys, "--copy-bias")  # no copy head
    refuses(main, ["--model", str(model_dir), *base, "--strategy", "rerank", "--weights", '{"critic": 1}'], capsys,
            "critic.safetensors")  # a weighed critic the folder does not have
    for objective in ('{"iou": 1}', "{}", "[1]"):
        refuses(main, ["--model", str(model_dir), *base, "--refine-objective", objective], capsys, "--refine-objective")
    assert data.read_bytes() == before and not (tmp_path / "o.jsonl").exists()


# ---- rl.pairs, rl.dpo ------------------------------------------------------------------------

def test_pairs_skips_an_unreadable_image_and_names_it(tmp_path, images, model_dir, capsys):
    from rl.pairs import main

    data = dataset(tmp_path / "d", images, broken=2)
    capsys.readouterr()
    assert main(["--model", str(model_dir), "--data", str(data), "--k", "2", "--max-new-tokens", "6",
                 "--out", str(tmp_path / "p"), "--sample-only"]) == 0
    assert [r["id"] for r in lines(tmp_path / "p" / "samples.jsonl")] == ["box0", "box1", "box3"]
    err = capsys.readouterr().err
    assert "1 unreadable images skipped" in err and "box2" in err


def test_a_missing_model_folder_is_one_line(tmp_path, images, capsys):
    from rl.dpo import main as dpo
    from rl.pairs import main as pairs

    data = dataset(tmp_path / "d", images)
    refuses(pairs, ["--model", str(tmp_path / "none"), "--data", str(data), "--out", str(tmp_path / "p")], capsys,
            "no such folder")
    refuses(dpo, ["--config", "configs/dpo.yaml", f"sft_model={tmp_path / 'none'}", f"output_dir={tmp_path / 'o'}"],
            capsys, "sft_model")
    refuses(pairs, ["--model", str(tmp_path), "--data", str(data), "--out", str(tmp_path / "p"), "--k", "0"], capsys, "--k")


# ---- sft -------------------------------------------------------------------------------------

def test_recipe_overrides_are_type_checked(tmp_path, capsys):
    from cad.config import ConfigError, load_config
    from sft.__main__ import main
    from sft.config import SFTConfig

    with pytest.raises(ConfigError, match="batch_size='four': expected an integer"):
        load_config(SFTConfig, "configs/sft_tiny.yaml", ["batch_size=four"])
    with pytest.raises(ConfigError, match="pretrained='maybe'"):
        load_config(SFTConfig, "configs/sft_tiny.yaml", ["pretrained=maybe"])
    assert load_config(SFTConfig, "configs/sft_tiny.yaml", ["lr=1e-3"]).lr == 1e-3  # YAML reads 1e-3 as text
    refuses(main, ["--config", "configs/sft_tiny.yaml", "batch_size=four", f"output_dir={tmp_path / 'o'}"], capsys,
            "batch_size='four'")
    assert not (tmp_path / "o").exists()


def test_sft_with_a_missing_data_folder_is_one_line(tmp_path, capsys):
    from sft.__main__ import main

    refuses(main, ["--config", "configs/sft_tiny.yaml", f"train_data={tmp_path / 'nothing'}",
                   f"output_dir={tmp_path / 'o'}"], capsys, "nothing")


def test_sft_refuses_pretrained_true_without_weights_unless_allowed(tmp_path, images):
    data = dataset(tmp_path / "d", images)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "sft", "--config", "configs/sft_tiny.yaml", "pretrained=true", f"train_data={data}",
           "max_steps=1", "val_size=1", "eval_every=1000", "sample_every=1000", "save_every=1000"]
    done = subprocess.run(cmd + [f"output_dir={tmp_path / 'a'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "pretrained: true, but no pretrained weights" in last and "allow_random_init=true" in last
    assert "Traceback" not in done.stderr
    allowed = subprocess.run(cmd + [f"output_dir={tmp_path / 'b'}", "allow_random_init=true"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert (tmp_path / "b" / "final" / "config.json").exists()
