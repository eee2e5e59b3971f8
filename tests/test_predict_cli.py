"""``img2cad predict``: the five files per image, determinism, input normalisation, clear errors,
the shipped folder's hash checks, the export script and the sandbox's STEP / STL export."""
import io
import json
import shutil

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from cad.sandbox import ExecOptions
from img2cad.cli import main
from img2cad.images import SIZE, load_input, normalise
from tests.conftest import REFERENCE
from tests.test_decoding import TINY

IMAGES = ["00144800_0.png", "00387732_0.png"]
_BUILT: dict = {}


def build_shipped(tmp_path_factory) -> dict:
    """A tiny random model and a retrieval index of the ten reference rows, exported with
    scripts/export_model.py (built once per session; the browser test uses it too)."""
    if "model" in _BUILT:
        return _BUILT
    from decoding.retrieval import RetrievalIndex
    from scripts.export_model import main as export_main
    from sft.image_processing import ImageProcessor
    from sft.model import Img2CadConfig, build_model
    from sft.tokenizer import train_tokenizer

    path = REFERENCE / "samples.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not found: set GENCAD_REFERENCE to the gencad_reference folder")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    root = tmp_path_factory.mktemp("shipped")
    final = root / "final"
    tok = train_tokenizer([r["cadquery"] for r in rows], vocab_size=300)
    torch.manual_seed(0)
    model = build_model(Img2CadConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **TINY))
    model.save_pretrained(str(final))
    tok.save_pretrained(str(final))
    ImageProcessor(64, 1).save_pretrained(final)
    (final / "training_metrics.json").write_text(json.dumps({"train_seconds": 1.5, "train_rows": len(rows)}))
    index = RetrievalIndex.from_rows([{"image": str(REFERENCE / r["image"]), "cadquery": r["cadquery"], "deepcad_id": r["deepcad_id"]}
                                      for r in rows], dims=8, progress=False)
    index.save(root / "index.npz")
    decoding = json.dumps({"strategy": "rerank", "n": 2, "k_retrieval": 2, "max_new_tokens": 48})
    ev = root / "eval.json"
    ev.write_text(json.dumps({"command": "python scripts/demo_shipped.py", "machine": {"device": "cpu"},
                              "rows": [{"data": "real-10", "n": 10, "vsr": 0.9, "exec_rate": 0.8, "iou_best": 0.61,
                                        "iou_best_voxel": 0.55, "seconds_per_image": 3.2}]}))
    args = ["--model", str(final), "--index", str(root / "index.npz"), "--name", "tiny", "--decoding", decoding, "--eval", str(ev)]
    assert export_main([*args, "--out-root", str(root / "models")]) == 0
    _BUILT.update(root=root, model=root / "models" / "tiny", args=args)
    return _BUILT


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    return build_shipped(tmp_path_factory)


def _one_error_line(capsys, *needles):
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in out.err, out.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_predict_writes_five_files_per_image_and_is_deterministic(shipped, tmp_path, capsys, pool, monkeypatch):
    images = [str(REFERENCE / "images" / n) for n in IMAGES]
    common = ["--model", str(shipped["model"]), "--device", "cpu", "--workers", "1"]
    assert main(["predict", *images, "--out", str(tmp_path / "a"), *common]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("00144800_0: ok, silhouette IoU")
    for name in (n[:-4] for n in IMAGES):
        out = tmp_path / "a"
        record = json.loads((out / f"{name}.json").read_text())
        code = (out / f"{name}.py").read_text()
        assert record["chosen"]["code"].strip() == code.strip() and record["status"] == "ok"
        assert record["chosen"]["source"] in {"sample", "retrieval"} and len(record["candidates"]) == record["decoding"]["n_candidates"]
        assert all({"source", "status", "scores", "code"} <= set(c) for c in record["candidates"])
        assert pool.run(code).executable  # the written program runs as is
        assert (out / f"{name}.step").read_bytes().startswith(b"ISO-10303-21;")
        mesh = trimesh.load(io.BytesIO((out / f"{name}.stl").read_bytes()), file_type="stl")
        assert mesh.volume == pytest.approx(record["volume"], rel=0.02)
        compare = Image.open(out / f"{name}.compare.png")
        assert compare.width > 2 * SIZE and record["silhouette_iou"] > 0.9
    # the same image and options, another name and folder: the same samples, scores and choice
    shutil.copyfile(images[0], tmp_path / "renamed.png")
    assert main(["predict", str(tmp_path / "renamed.png"), "--out", str(tmp_path / "b"), *common]) == 0
    a, b = (json.loads(p.read_text()) for p in (tmp_path / "a" / "00144800_0.json", tmp_path / "b" / "renamed.json"))
    assert a["candidates"] == b["candidates"] and a["chosen"] == b["chosen"]
    assert any(c["source"] == "sample" for c in a["candidates"])
    capsys.readouterr()
    # unchanged input, model and options: kept; other options: redone
    assert main(["predict", images[0], "--out", str(tmp_path / "a"), *common]) == 0
    assert "(unchanged, kept)" in capsys.readouterr().out
    import decoding.predict

    monkeypatch.setattr(decoding.predict, "DECODING_VERSION", decoding.predict.DECODING_VERSION + 1)  # new decoding code: redone
    assert main(["predict", images[0], "--out", str(tmp_path / "a"), *common]) == 0
    assert "kept" not in capsys.readouterr().out
    monkeypatch.undo()
    import img2cad.engine

    monkeypatch.setattr(img2cad.engine, "NORMALISE_VERSION", img2cad.engine.NORMALISE_VERSION + 1)  # new input normalisation: redone
    assert main(["predict", images[0], "--out", str(tmp_path / "a"), *common]) == 0
    assert "kept" not in capsys.readouterr().out
    monkeypatch.undo()
    assert main(["predict", images[0], "--out", str(tmp_path / "a"), *common, "--strategy", "retrieval"]) == 0
    out = capsys.readouterr().out
    assert "kept" not in out and json.loads((tmp_path / "a" / "00144800_0.json").read_text())["chosen"]["source"] == "retrieval"
    retrieved = lambda record: sum(c["source"] == "retrieval" for c in record["candidates"])  # noqa: E731
    assert retrieved(a) == 2  # decoding.json's k_retrieval
    assert main(["predict", images[0], "--out", str(tmp_path / "c"), *common, "--k", "1"]) == 0
    assert retrieved(json.loads((tmp_path / "c" / "00144800_0.json").read_text())) == 1


def test_the_model_folders_prisms_are_rerank_candidates_only():
    from types import SimpleNamespace

    from img2cad.engine import decode_config

    folder = SimpleNamespace(decoding={"strategy": "rerank", "k_retrieval": 2, "prisms": True})  # decoding.json
    assert decode_config(folder).prisms
    assert not decode_config(folder, strategy="beam").prisms  # beam adds no candidates: the folder's prisms go
    assert not decode_config(folder, prisms=False).prisms  # --no-prisms
    assert _config_of(["--no-prisms"], folder).prisms is False and _config_of([], folder).prisms


def _config_of(argv: list[str], folder):
    from img2cad.cli import _config, parser

    return _config(parser().parse_args(["predict", "x.png", "--out", "o", *argv]), folder, "cpu")


def test_serve_takes_the_decoding_options_predict_takes(shipped, monkeypatch, capsys):
    import img2cad.app

    served = []

    def fake_serve(engine, host, port):  # everything but Gradio's server (the browser test runs that)
        served.append((engine.cfg, host, port, engine.thorough))
        engine.close()
        return 0

    monkeypatch.setattr(img2cad.app, "serve", fake_serve)
    model = ["--model", str(shipped["model"]), "--device", "cpu", "--workers", "1"]
    assert main(["serve", *model, "--port", "7999"]) == 0
    assert (served[-1][0].k_retrieval, served[-1][0].refine_evaluations, served[-1][2]) == (2, 0, 7999)  # decoding.json
    assert main(["serve", *model, "--k", "1", "--refine", "8", "--n", "3"]) == 0
    cfg = served[-1][0]
    assert (cfg.strategy, cfg.k_retrieval, cfg.refine_evaluations, cfg.n) == ("rerank", 1, 8, 3)
    assert not cfg.primitives  # decoding.json
    assert main(["serve", *model, "--primitives"]) == 0 and served[-1][0].primitives
    capsys.readouterr()
    assert main(["serve", *model, "--strategy", "beam", "--refine", "8"]) == 2
    _one_error_line(capsys, "--refine", "--strategy rerank")
    assert main(["serve", *model, "--strategy", "beam", "--primitives"]) == 2
    _one_error_line(capsys, "--primitives", "--strategy rerank")
    assert len(served) == 3
    # --thorough: THOROUGH where the command line is silent; the app's second config is THOROUGH
    thorough = served[-1][3]
    assert (thorough.strategy, thorough.k_retrieval, thorough.refine_evaluations, thorough.primitives) == ("rerank", 16, 48, True)
    assert main(["serve", *model, "--thorough", "--k", "3"]) == 0
    cfg = served[-1][0]
    assert (cfg.strategy, cfg.k_retrieval, cfg.refine_evaluations, cfg.primitives) == ("rerank", 3, 48, True)
    assert main(["serve", *model, "--thorough", "--strategy", "beam"]) == 2
    _one_error_line(capsys, "--refine", "--strategy rerank")


def _blank(path, mode="RGB", colour=(255, 255, 255)):
    Image.new(mode, (300, 200), colour).save(path)
    return path


@pytest.mark.parametrize("kind", ["text", "empty", "blank", "transparent", "missing"])
def test_bad_inputs_stop_with_one_line_and_exit_2(kind, tmp_path, capsys):
    bad = tmp_path / f"bad-{kind}.png"
    if kind == "text":
        bad.write_text("not a picture")
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "blank":
        _blank(bad, colour=(200, 30, 30))
    elif kind == "transparent":
        _blank(bad, "RGBA", (10, 10, 10, 0))
    good = REFERENCE / "images" / IMAGES[0]
    if not good.exists():
        pytest.skip("reference images not found")
    # the inputs are checked first: the missing model folder is never reached
    rc = main(["predict", str(good), str(bad), "--out", str(tmp_path / "out"), "--model", str(tmp_path / "no-model")])
    assert rc == 2
    expected = {"text": "not an image", "empty": "empty file", "blank": "nothing drawn", "transparent": "nothing drawn",
                "missing": "no such file"}[kind]
    _one_error_line(capsys, bad.name, expected)
    assert not (tmp_path / "out").exists()  # checked before any work


def test_missing_model_names_the_command_to_get_one(tmp_path, capsys):
    image = REFERENCE / "images" / IMAGES[0]
    if not image.exists():
        pytest.skip("reference images not found")
    assert main(["predict", str(image), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "nowhere")]) == 2
    _one_error_line(capsys, "no model at", "scripts/export_model.py")


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_damaged_model_folder_names_the_file(damage, shipped, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(shipped["model"], folder)
    target = folder / ("model.safetensors" if damage == "corrupt" else "tokenizer.json")
    if damage == "corrupt":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    image = REFERENCE / "images" / IMAGES[0]
    assert main(["predict", str(image), "--out", str(tmp_path / "o"), "--model", str(folder)]) == 2
    _one_error_line(capsys, target.name, "corrupt" if damage == "corrupt" else "is missing")


def test_export_is_reproducible_fp16_with_a_filled_card_and_a_size_limit(shipped, tmp_path, capsys):
    from safetensors import safe_open

    from scripts.export_model import main as export_main

    assert export_main([*shipped["args"], "--out-root", str(tmp_path)]) == 0
    again, first = (json.loads((d / "manifest.json").read_text()) for d in (tmp_path / "tiny", shipped["model"]))
    assert again["files"] == first["files"]  # same inputs, byte-identical files
    with safe_open(str(shipped["model"] / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    card = (shipped["model"] / "MODEL_CARD.md").read_text()
    assert "| real-10 | 10 | 0.900 | 80.0 | 0.610 | 0.550 | 3.20 | cpu |" in card and "10 training programs" in card
    capsys.readouterr()
    assert export_main([*shipped["args"], "--out-root", str(tmp_path / "small"), "--max-mb", "0.5"]) == 2
    _one_error_line(capsys, "over --max-mb")
    assert not (tmp_path / "small" / "tiny").exists()


def _reference(name: str) -> Image.Image:
    path = REFERENCE / "images" / name
    if not path.exists():
        pytest.skip("reference images not found")
    return Image.open(path).convert("RGB")


def _sil_iou(a: Image.Image, b: Image.Image) -> float:
    sa, sb = ((np.asarray(x.convert("RGB")) < 250).any(-1) for x in (a, b))
    return float((sa & sb).sum() / (sa | sb).sum())


def test_training_style_renders_pass_unchanged_and_other_pictures_are_normalised(tmp_path):
    ref = _reference(IMAGES[0])  # a plate: its silhouette fills the 4:3 window like its bounding box
    assert np.array_equal(np.asarray(load_input(REFERENCE / "images" / IMAGES[0])), np.asarray(ref))
    a = np.asarray(ref).astype(float)
    part = (a < 250).any(-1)
    rng = np.random.default_rng(0)
    dark = np.where(part[..., None], 255 - a, [20, 30, 40])  # light part on a dark background
    colour = np.where(part[..., None], a * [1.0, 0.55, 0.3], 255) + rng.normal(0, 5, a.shape)  # tinted, noisy photo
    big = np.full((900, 1400, 3), 235.0)  # small, off-centre, on a grey canvas
    big[500:724, 100:324] = np.asarray(Image.fromarray(np.where(part[..., None], a, 235).astype(np.uint8)).resize((224, 224)))
    rgba = np.dstack([a, np.where(part, 255, 0)]).astype(np.uint8)  # transparent background
    ys, xs = np.nonzero(part)
    tight = np.asarray(ref)[ys.min():ys.max() + 1, xs.min():xs.max() + 1]  # cropped to the part
    for name, arr in {"dark": dark, "colour": colour, "big": big, "rgba": rgba, "tight": tight}.items():
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        img.save(tmp_path / f"{name}.png")
        out = load_input(tmp_path / f"{name}.png")
        arr_out = np.asarray(out)
        assert out.size == (SIZE, SIZE) and out.mode == "RGB"
        assert (arr_out[..., 0] == arr_out[..., 1]).all(), name  # grey levels
        assert arr_out[0, 0].tolist() == [255, 255, 255], name  # white background
        assert _sil_iou(out, ref) > 0.93, name
    assert np.array_equal(np.asarray(normalise(Image.fromarray(colour.clip(0, 255).astype(np.uint8)))),
                          np.asarray(load_input(tmp_path / "colour.png")))  # deterministic


def test_a_render_of_a_part_off_the_images_centre_passes_unchanged(pool):
    """The renderer fits the projected corners of the part's bounding box to the window, so an L
    (its missing corner projects to the image's left) lies off the image's centre. Such a render
    is used as it is, not cropped, enlarged and redrawn (26% of the validation renders)."""
    from cad.render import render_geometry
    from img2cad.images import part_mask

    code = 'import cadquery as cq\nsolid = cq.Workplane("XY").polyline([(0, 0), (1, 0), (1, 0.2), (0.2, 0.2), (0.2, 1), (0, 1)]).close().extrude(0.3)\n'
    render = render_geometry(pool.run(code, ExecOptions(want_geometry=True)).geometry)
    xs = np.nonzero(part_mask(render)[0].any(0))[0]
    assert abs((xs[0] + xs[-1] + 1) / 2 - SIZE / 2) > 0.1 * SIZE  # the part is well off the centre
    assert np.array_equal(np.asarray(normalise(Image.fromarray(render))), render)


def test_jpeg_and_resized_renders_come_back_in_the_renderers_palette():
    """A JPEG of a render, an enlarged copy and a tinted one normalise to the render's own faces and lines:
    the planar grey where the render has it (what the profile fits read) and its one-pixel
    black lines, not the noise, blur and overshoot of the copies."""
    from scipy.ndimage import binary_dilation

    from decoding.prism import flat_pixels
    from reward.score import drawn_lines

    ref = _reference(IMAGES[0])
    r = np.asarray(ref)
    buf = io.BytesIO()
    ref.save(buf, "JPEG", quality=85)
    tinted = np.where((r < 250).any(-1, keepdims=True), r * np.array([1.0, 0.55, 0.3]), r).astype(np.uint8)
    copies = {"jpeg": Image.open(io.BytesIO(buf.getvalue())), "800 px": ref.resize((800, 800), Image.BICUBIC),
              "tinted": Image.fromarray(tinted)}
    for name, copy in copies.items():
        out = np.asarray(normalise(copy))
        flat, flat_ref = flat_pixels(out), flat_pixels(r)
        assert (flat & flat_ref).sum() / (flat | flat_ref).sum() > 0.93, name  # 0.71 for the JPEG left as it is
        lines, lines_ref = drawn_lines(out), drawn_lines(r)
        assert (lines_ref & binary_dilation(lines)).sum() > 0.98 * lines_ref.sum(), name  # every line kept
        assert (lines & ~binary_dilation(lines_ref)).sum() < 0.02 * lines.sum(), name  # and no others
        assert ((out < 250).any(-1) != (r < 250).any(-1)).sum() < 0.001 * r[..., 0].size, name  # same silhouette


def test_a_halved_render_keeps_its_planar_faces_apart():
    """A render halved to 224 px and normalised back: its lines fade in places when enlarged, and
    a gap would merge two faces into one region (or leave a small face, a prism's cap, only its
    flat middle). Every planar face the profile fits would read off the render is found again."""
    from cad.render import silhouette
    from decoding.prism import planar_regions

    for name in ("00002718_0.png", "00211465_0.png", "00461826_0.png"):  # 0.05-0.82 before the faded lines were kept
        ref = _reference(name)
        r = np.asarray(ref)
        faces = [f for f in planar_regions(r) if f.sum() >= 0.01 * silhouette(r).sum()]
        again = planar_regions(np.asarray(normalise(ref.resize((224, 224), Image.LANCZOS))))
        for face in faces:
            assert max((face & f).sum() / (face | f).sum() for f in again) > 0.85, name


@pytest.mark.parametrize("script", ["input_robustness", "candidate_oracle"])
def test_the_scripts_on_dataset_rows_take_validation_rows_and_refuse_a_test_split(script, tmp_path, capsys):
    import importlib

    from cad.data import FEATURES, load_gencad
    from scripts._common import dataset_rows

    rows = load_gencad(REFERENCE / "samples.jsonl").cast(FEATURES)
    rows.select(range(3)).to_parquet(str(tmp_path / "validation-00000.parquet"))
    rows.select(range(3, 5)).to_parquet(str(tmp_path / "test-00000.parquet"))
    assert [r["deepcad_id"] for r in dataset_rows(str(tmp_path), "validation", 2)] == rows["deepcad_id"][:2]
    assert [r["deepcad_id"] for r in dataset_rows(str(tmp_path), "validation", 1, offset=1)] == rows["deepcad_id"][1:2]
    assert [r["deepcad_id"] for r in dataset_rows(str(tmp_path), "validation", None, offset=2)] == rows["deepcad_id"][2:3]
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(f"scripts.{script}").main(["--data", str(tmp_path), "--split", "test", "--out", str(tmp_path / "r.json")])
    assert stop.value.code == 2 and "final numbers only" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_the_candidate_oracle_sets_the_chosen_programs_iou_beside_the_best_candidates():
    from scripts.candidate_oracle import sketches, summarise

    two = "import cadquery as cq\na = cq.Workplane(cq.Plane((0, 0, 0)))\nb = cq.Workplane(cq.Plane((0, 0, 1)))\n"
    assert sketches(two) == 2 and sketches("import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)\n") == 1
    rows = [{"id": "a", "sketches": 1, "chosen_source": "retrieval", "chosen_iou": 0.5, "oracle_source": "primitive", "oracle_iou": 0.9},
            {"id": "b", "sketches": 1, "chosen_source": "primitive", "chosen_iou": 0.8, "oracle_source": "primitive", "oracle_iou": 0.8},
            {"id": "c", "sketches": 2, "chosen_source": "edit:1", "chosen_iou": 0.6, "oracle_source": "retrieval", "oracle_iou": 0.62}]
    s = summarise(rows, gap=0.05)
    assert (s["iou_chosen"], s["iou_oracle"]) == (round(1.9 / 3, 4), round(2.32 / 3, 4))
    assert s["oracle_sources"] == {"primitive": 2, "retrieval": 1}
    assert s["by_sketches"] == {"1": {"n": 2, "iou_chosen": 0.65, "iou_oracle": 0.85},
                                "2": {"n": 1, "iou_chosen": 0.6, "iou_oracle": 0.62}}
    assert [r["id"] for r in s["rerank_losses"]] == ["a"]  # c's best beats its chosen by 0.02 only
    framed = [dict(r, chosen_framing_error=e) for r, e in zip(rows, (0.5, 3.0, None))]  # c was drawn by the window fit
    assert summarise(framed, gap=0.05)["by_framing_error"] == {"[0, 2)": {"n": 1, "iou_chosen": 0.5}, "[2, 4)": {"n": 1, "iou_chosen": 0.8},
                                                               "[4, inf)": {"n": 0, "iou_chosen": None}}


def test_sandbox_exports_step_and_stl_from_the_child(pool):
    code = "import cadquery as cq\nsolid = cq.Workplane().box(1, 2, 3).faces('>Z').hole(0.5)\n"
    res = pool.run(code, ExecOptions(export=("step", "stl")))
    assert res.ok and set(res.exports) == {"step", "stl"} and res.geometry is None
    assert res.exports["step"].startswith(b"ISO-10303-21;") and b"MANIFOLD_SOLID_BREP" in res.exports["step"]
    mesh = trimesh.load(io.BytesIO(res.exports["stl"]), file_type="stl")
    assert mesh.is_watertight and mesh.volume == pytest.approx(res.volume, rel=0.01)
    both = pool.run(code, ExecOptions(export=("stl",), want_geometry=True))
    assert both.geometry is not None and list(both.exports) == ["stl"]
    assert pool.run("x = 1\n", ExecOptions(export=("step", "stl"))).exports == {}
