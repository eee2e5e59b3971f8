"""Grammar, repair, constrained decoding, best-of-N selection, reranking, retrieval, the CLI."""
import json
import re

import llguidance
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_fill_holes
from transformers import LogitsProcessorList

from cad.render import render_geometry
from cad.sandbox import ExecOptions
from decoding.constrained import GrammarLogitsProcessor
from decoding.grammar import repair, validate
from decoding.predict import DecodeConfig, Predictor
from decoding.rerank import Candidate
from decoding.retrieval import RetrievalIndex
from sft.image_processing import ImageProcessor
from sft.model import Img2CadConfig, build_model
from sft.tokenizer import canonical_target, train_tokenizer

TINY = dict(encoder_name="vit_tiny_patch16_224", image_size=64, in_chans=1,
            encoder_kwargs={"depth": 1, "embed_dim": 64, "num_heads": 2},
            decoder={"d_model": 64, "d_kv": 16, "d_ff": 128, "num_decoder_layers": 1, "num_heads": 4, "dropout_rate": 0.0})


def test_grammar_accepts_gencad_and_common_api(reference_rows):
    for row in reference_rows:
        assert validate(row["cadquery"]).ok and validate(canonical_target(row["cadquery"])).ok
    assert validate("import cadquery as cq\nsolid = cq.Workplane('XY').box(1, 2, 3).faces('>Z').workplane().hole(0.5)\n").ok
    assert validate("import cadquery as cq\nr = cq.Workplane('XY').rect(2, 1).extrude(1).edges('|Z').fillet(0.1)\nsolid = r.translate((1, 0, 0))\n").ok
    bad = validate("import cadquery as cq\nimport os\n")
    assert not bad.ok and bad.line == 2


def test_repair_fixes_truncated_and_mutated_programs(reference_rows):
    rng = np.random.default_rng(0)
    broken = []
    for row in reference_rows:
        code = row["cadquery"]
        for frac in (0.5, 0.8, 0.95):
            broken.append(code[: int(len(code) * frac)])
        broken.append(code.replace("import cadquery as cq\n", "", 1))
        i = [k for k, ch in enumerate(code) if ch == ")"][int(rng.integers(0, code.count(")")))]
        broken.append(code[:i] + code[i + 1:])
        broken.append("\n".join(ln for ln in code.splitlines() if not ln.startswith("solid=solid")
                                and ln != "solid=solid0"))
    # the rate counts only programs the grammar rejects (a cut at a line end or a dropped
    # `solid=` line can still parse); most mutations must be such, or the test measures nothing
    invalid = [b for b in broken if not validate(b).ok]
    assert len(invalid) >= 0.7 * len(broken)
    fixed = [repair(b) for b in invalid]
    assert sum(f.ok for f in fixed) / len(fixed) >= 0.95
    assert all("solid=" in f.code for f in map(repair, broken) if ".extrude(" in f.code)


@pytest.fixture(scope="module")
def tiny(reference_rows):
    tok = train_tokenizer([r["cadquery"] for r in reference_rows], vocab_size=400)
    cfg = Img2CadConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **TINY)
    torch.manual_seed(0)
    return build_model(cfg).eval(), tok, ImageProcessor(64, 1)


def test_typed_gencad_grammar_accepts_gencad_and_rejects_wrong_arities(reference_rows):
    for row in reference_rows:
        assert validate(row["cadquery"], "gencad").ok and validate(canonical_target(row["cadquery"]), "gencad").ok
    head = "import cadquery as cq\nwp_sketch0=cq.Workplane(cq.Plane(cq.Vector({}),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
    assert validate(head.format("0,0,0"), "gencad").ok
    assert not validate(head.format("0,0,0,0"), "gencad").ok  # the wider grammar takes this
    assert validate(head.format("0,0,0,0"), "cadquery").ok
    assert not validate(head.format("0,0,0") + "solid0=wp_sketch0.extrude(1)\n", "gencad").ok  # no loop added
    assert repair(head.format("0,0,0") + "loop0=wp_sketch0.moveTo(0,0).circle(1)\nsolid0=wp_sketch0.add(loop0).extrude(1",
                  "gencad").code.endswith("extrude(1)\nsolid=solid0\n")


@pytest.mark.parametrize("grammar", ["cadquery", "gencad"])
def test_constrained_outputs_stay_in_the_grammar(tiny, grammar):
    from decoding.grammar import GRAMMARS

    model, tok, _ = tiny
    px = torch.rand(2, 1, 64, 64)
    for kwargs in (dict(), dict(num_beams=3, num_return_sequences=2), dict(do_sample=True, num_return_sequences=3)):
        proc = GrammarLogitsProcessor(tok, GRAMMARS[grammar])
        gen = model.generate_programs(px, max_new_tokens=40, logits_processor=LogitsProcessorList([proc]), **kwargs)
        for seq in gen.sequences.tolist():
            ids = [t for t in seq if t != tok.pad_token_id]
            ids = ids[: ids.index(tok.eos_token_id)] if tok.eos_token_id in ids else ids
            matcher = llguidance.LLMatcher(proc.ll_tokenizer, proc.grammar)
            assert matcher.consume_tokens(ids) and not matcher.is_error()  # a grammatical prefix
            text = tok.decode(ids)
            assert repair(text, grammar).ok  # and cut-off programs complete by repair


FIT_OBJECTIVE = {"silhouette": 1.0, "edge_distance": 1.0, "pixel": 2.0}  # the render terms the fits below climb (the shipped rerank weights)
BOX = "import cadquery as cq\nsolid = cq.Workplane('XY').box({}, {}, {})\n"


def test_bestofn_never_returns_a_failing_program_when_one_executes(pool):
    cfg = DecodeConfig(strategy="bestofn", n=3)
    predictor = Predictor(None, None, None, cfg, pool)
    cands = [Candidate("import cadquery as cq\nsolid = cq.Workplane().rect(1, 1)\n", logprob=-1.0),
             Candidate("import cadquery as cq\nsolid = cq.Workplane(\n", logprob=-0.5),
             Candidate(BOX.format(1, 2, 3), logprob=-9.0)]
    chosen, info = predictor.select(cands, None)
    assert chosen.code == BOX.format(1, 2, 3) and info["n_executable"] == 1
    none_run = [Candidate("solid = 1\n", logprob=-3.0), Candidate("solid = 2\n", logprob=-1.0)]
    assert predictor.select(none_run, None)[0].logprob == -1.0  # fallback: the most likely


def test_rerank_picks_the_candidate_that_renders_like_the_input(pool):
    target = pool.run(BOX.format(3, 1, 0.2), ExecOptions(want_geometry=True))
    image = Image.fromarray(render_geometry(target.geometry))
    cfg = DecodeConfig(strategy="rerank", n=3)
    predictor = Predictor(None, None, None, cfg, pool)
    cands = [Candidate(BOX.format(1, 1, 1), logprob=-1.0, tokens=10),
             Candidate(BOX.format(3.1, 1, 0.2), logprob=-6.0, tokens=10),
             Candidate("import cadquery as cq\nsolid = cq.Workplane().circle(1).extrude(2)\n", logprob=-2.0, tokens=10)]
    chosen, _ = predictor.select(cands, image)
    assert chosen.code == BOX.format(3.1, 1, 0.2)
    assert chosen.scores["silhouette"] > 0.9


def test_the_fits_run_while_the_model_generates(pool, monkeypatch):
    import threading

    predictor = Predictor(None, None, None, DecodeConfig(strategy="rerank", prisms=True), pool)
    fitting, generating = threading.Event(), threading.Event()

    def fits(images):  # each side waits for the other to have started: run one after the other, they time out
        fitting.set()
        assert generating.wait(20)
        return [[(BOX.format(1, 1, 1), None)] for _ in images]

    threads = []

    def model(images, ids=None):
        generating.set()
        threads.append(torch.get_num_threads())
        assert fitting.wait(20)
        return [[Candidate(BOX.format(2, 1, 1), logprob=-1.0)] for _ in images]

    monkeypatch.setattr(predictor, "fit_candidates", fits)
    monkeypatch.setattr(predictor, "model_candidates", model)
    monkeypatch.setattr(Predictor, "device_is_cpu", property(lambda self: True))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cands = predictor.generate([Image.new("RGB", (64, 64), "white")])
        assert threads == [1] and torch.get_num_threads() == 2  # a core left to the fits while the model writes, then given back
    finally:
        torch.set_num_threads(before)
    assert [(c.source, c.code) for c in cands[0]] == [("beam", BOX.format(2, 1, 1)), ("primitive", BOX.format(1, 1, 1))]


def test_retrieval_finds_the_training_image(tmp_path):
    from cad.data import load_gencad, to_image
    from cad.synth import synthesize
    from sft.tokenizer import canonical_target

    synthesize(12, tmp_path / "d", seed=3, workers=2, shard_size=12, size=128, progress=False)
    index = RetrievalIndex.build(tmp_path / "d")
    ds = load_gencad(tmp_path / "d")
    hits = index.query([to_image(ds[5]["image"])], k=2)[0]
    assert hits[0][0] == canonical_target(ds[5]["cadquery"]) and hits[0][1] == pytest.approx(1.0, abs=0.02)
    index.save(tmp_path / "index.npz")
    assert RetrievalIndex.load(tmp_path / "index.npz").programs == index.programs


def test_decoding_cli_writes_every_id_for_every_strategy(tmp_path, tiny, reference_rows):
    from decoding.__main__ import main

    model, tok, proc = tiny
    model.save_pretrained(str(tmp_path / "m"))
    tok.save_pretrained(str(tmp_path / "m"))
    proc.save_pretrained(tmp_path / "m")
    data = tmp_path / "rows.jsonl"
    from tests.conftest import REFERENCE

    data.write_text("".join(json.dumps({**r, "image": str(REFERENCE / r["image"])}) + "\n" for r in reference_rows[:3]))
    ids = [r["deepcad_id"] for r in reference_rows[:3]]
    runs = {"greedy": [], "grammar": [], "bestofn": ["--n", "2"], "rerank": ["--n", "2", "--k-retrieval", "1"],
            "retrieval": []}
    for strategy, extra in runs.items():
        out = tmp_path / f"{strategy}.jsonl"
        argv = ["--model", str(tmp_path / "m"), "--data", str(data), "--strategy", strategy, "--out", str(out),
                "--max-new-tokens", "24", "--batch-size", "2", "--retrieval-data", str(data), *extra]
        assert main(argv) == 0
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        assert sorted(r["id"] for r in rows) == sorted(ids), strategy
    retrieved = [json.loads(x) for x in (tmp_path / "retrieval.jsonl").read_text().splitlines()]
    # the index stores programs in the canonical form the model reads and writes
    assert all(r["code"] == canonical_target(next(g["cadquery"] for g in reference_rows if g["deepcad_id"] == r["id"]))
               for r in retrieved)


def test_model_scores_a_given_program_as_generation_does(tiny):
    """score_sequences (used for retrieved candidates) agrees with the log-prob generate reports."""
    model, tok, _ = tiny
    px = torch.rand(3, 1, 64, 64)
    gen = model.generate_programs(px, max_new_tokens=12)
    seqs = [row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row for row in gen.sequences.tolist()]
    assert torch.allclose(model.score_sequences(px, seqs), gen.logprobs, atol=1e-3)


RECT = ("import cadquery as cq\nwp_sketch0=cq.Workplane(cq.Plane(cq.Vector(0,0,0),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
        "loop0=wp_sketch0.moveTo(0,0).lineTo(1,0).lineTo(1,{h}).lineTo(0,{h}).close()\n"
        "solid0=wp_sketch0.add(loop0).extrude({d})\nsolid=solid0\n")


def _box(d: float, h: float = 0.5) -> str:
    """A 1 x h rectangle extruded by d."""
    return RECT.format(d=d, h=h)


def _image_of(pool, code: str) -> Image.Image:
    return Image.fromarray(render_geometry(pool.run(code, ExecOptions(want_geometry=True)).geometry))


def _prism_pixels(image: Image.Image) -> np.ndarray:
    """``image`` as ``decoding.prism`` reads it (``SIZE_PX`` square, RGB)."""
    from decoding.prism import SIZE_PX

    return np.asarray(image.convert("RGB").resize((SIZE_PX, SIZE_PX), Image.NEAREST))


def test_refinement_moves_a_wrong_depth_towards_the_input(pool):
    from decoding.refine import refine

    image = _image_of(pool, _box(0.6))
    r = refine(_box(0.2), image, pool, max_evaluations=16)
    assert r.score > r.start_score + 0.05 and r.evaluations <= 16
    depth = float(r.code.split(".extrude(")[1].split(")")[0])
    width = max(float(x) for x in re.findall(r"lineTo\(([-\d.e]+),", r.code))
    assert 0.3 < depth / width < 1.0  # the depth against the sketch moved from 0.2 towards the input's 0.6
    same = refine(_box(0.6), image, pool, max_evaluations=8)
    assert same.code == _box(0.6)  # nothing renders closer than the truth


def test_refinement_groups_name_each_number_by_its_role():
    from decoding.refine import parameter_groups

    code = ("wp_sketch0=cq.Workplane(cq.Plane(cq.Vector(0,0,0),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
            "loop0=wp_sketch0.moveTo(0,0).lineTo(2,0).threePointArc((2.5,0.5),(2,1)).close()\n"
            "loop1=wp_sketch0.moveTo(1,0.5).circle(0.25)\n"
            "solid0=wp_sketch0.add(loop0).add(loop1).extrude(0.75)\n")

    def text(groups):
        return [[code[a:b] for a, b in g] for g in parameter_groups(code, groups)]

    assert text(("depth",)) == [["0.75"]]
    assert text(("axes",)) == [["0", "2", "2.5", "2", "1"], ["0", "0", "0.5", "1", "0.5"]]
    assert text(("radii",)) == [["0.25"]]
    assert text(("sketch",)) == [["0", "0", "2", "0", "2.5", "0.5", "2", "1", "1", "0.5", "0.25"]]
    with pytest.raises(ValueError, match="unknown refinement groups"):
        parameter_groups(code, ("twist",))


def test_refinement_fixes_an_aspect_ratio_only_with_the_axes_group(pool):
    from decoding.refine import refine

    image = _image_of(pool, _box(0.3, h=0.4))
    fixed = refine(_box(0.3, h=0.8), image, pool, max_evaluations=24, groups=("axes",))
    assert fixed.score > fixed.start_score + 0.05
    xs, ys = zip(*(map(float, m) for m in re.findall(r"lineTo\(([-\d.e]+),([-\d.e]+)\)", fixed.code)))
    assert 0.2 < max(ys) / max(xs) < 0.7  # the aspect moved from 0.8 towards the input's 0.4
    depth_only = refine(_box(0.3, h=0.8), image, pool, max_evaluations=8, groups=("depth",))
    assert "lineTo(1,0.8).lineTo(0,0.8)" in depth_only.code  # the depth group leaves the sketch alone


def test_refinement_climbs_the_rerankers_own_render_terms_unless_told_otherwise():
    weights = {"logprob": 0.5, "sanity": 0.2, "silhouette": 1.0, "edges": 0.0, "edge_distance": 1.0, "pixel": 2.0}
    cfg = DecodeConfig(strategy="rerank", weights=weights)
    assert Predictor(None, None, None, cfg).refine_objective == {"silhouette": 1.0, "edge_distance": 1.0, "pixel": 2.0}
    told = DecodeConfig(strategy="rerank", weights=weights, refine_objective={"edges": 1.0})
    assert Predictor(None, None, None, told).refine_objective == {"edges": 1.0}
    heuristic = DecodeConfig(strategy="rerank", weights={"logprob": 1.0, "sanity": 0.5})
    assert Predictor(None, None, None, heuristic).refine_objective == {"silhouette": 1.0}
    with pytest.raises(ValueError, match="refine_objective"):
        DecodeConfig(strategy="rerank", refine_objective={"iou": 1.0})  # ground truth is not a render term


def test_repair_drops_zero_length_segments_that_break_the_face(pool):
    code = ("import cadquery as cq\nwp_sketch0=cq.Workplane(cq.Plane(cq.Vector(0,0,0),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
            "loop0=wp_sketch0.moveTo(1.5,0.0).lineTo(1.5,0.0).lineTo(1.5,1.5).lineTo(1.5,1.5).lineTo(0.0,0.0).close()\n"
            "loop1=wp_sketch0.moveTo(1.2,0.3).circle(0.1)\nsolid0=wp_sketch0.add(loop0).add(loop1).extrude(0.2)\nsolid=solid0\n")
    assert not pool.run(code).ok  # OpenCascade: BRep_API: command not done
    fixed = repair(code, "gencad")
    assert fixed.code.count("lineTo") == 2 and "circle(0.1)" in fixed.code
    assert fixed.ok and pool.run(fixed.code).executable
    assert repair(fixed.code, "gencad").code == fixed.code and not repair(fixed.code, "gencad").fixes


def test_repair_keeps_a_two_number_vector_and_never_leaves_a_name_undefined(pool):
    # two real beam-4 outputs of the stage-3 model on GenCAD rows: a second workplane placed by a
    # two-number cq.Vector (valid CadQuery, outside the typed grammar), and a broken definition
    # that later statements use; repair once dropped the first's workplane and kept the users of both
    plane = "cq.Workplane(cq.Plane(cq.Vector({}),cq.Vector(1.0,0.0,0.0),cq.Vector(0.0,1.0,0.0)))"
    base = ("import cadquery as cq\nwp_sketch0=" + plane.format("-0.75,-0.75,0.0") + "\n"
            "loop0=wp_sketch0.moveTo(0.0,0.0).lineTo(1.5,0.0).lineTo(1.5,0.5).lineTo(0.0,0.5).close()\n"
            "solid0=wp_sketch0.add(loop0).extrude(0.2)\nsolid=solid0\n")
    second = ("wp_sketch1=" + plane.format("-0.5,-0.5") + "\nloop1=wp_sketch1.moveTo(0.1,0.1).circle(0.1)\n"
              "solid1=wp_sketch1.add(loop1).extrude(0.6)\nsolid=solid.union(solid1)\n")
    assert pool.run(base + second).executable
    fixed = repair(base + second, "gencad")
    assert fixed.ok and fixed.code.count("\n") == (base + second).count("\n") and "cq.Vector(-0.5,-0.5,0.0)" in fixed.code
    assert pool.run(fixed.code).executable
    assert repair(base + second, "cadquery").code == base + second  # the wide grammar takes it as it is
    broken = base + second.replace("cq.Vector(-0.5,-0.5)", "cq.Vector(-0.5,-0.5,0.0),,1)")
    assert not pool.run(broken).executable
    fixed = repair(broken, "gencad")
    assert fixed.ok and "wp_sketch1" not in fixed.code and "solid1" not in fixed.code
    assert pool.run(fixed.code).executable and fixed.code.startswith(base)


def test_refine_study_variants_parse_or_name_what_is_wrong():
    from scripts.refine_study import parse_variant

    from decoding.refine import FACTORS

    assert parse_variant("a=depth,axes:48") == ("a", ("depth", "axes"), 48, FACTORS, None)
    assert parse_variant('b=radii:8:{"edges": 1}')[4] == {"edges": 1.0}
    assert parse_variant('w=world:24/1.5,0.5:{"edges": 1}')[3:] == ((1.5, 0.5), {"edges": 1.0})
    for bad in ("depth:48", "c=twist:48", "d=depth:0", "e=depth", 'f=depth:8:{"iou": 1}', "g=world:8/", "h=world:8/2,x",
                "i=world:8/0"):
        with pytest.raises(ValueError, match="variant"):
            parse_variant(bad)


BRACKET = (  # a base plate on XY and a wall on a GenCAD-style XZ plane (normal -y, float-noise directions)
    "import cadquery as cq\n"
    "wp_sketch0=cq.Workplane(cq.Plane(cq.Vector(-0.5,-0.25,0.0),cq.Vector(1.0,0.0,0.0),cq.Vector(0.0,0.0,1.0)))\n"
    "loop0=wp_sketch0.moveTo(0.0,0.0).lineTo(1.0,0.0).lineTo(1.0,0.5).lineTo(0.0,0.5).close()\n"
    "solid0=wp_sketch0.add(loop0).extrude(0.1)\nsolid=solid0\n"
    "wp_sketch1=cq.Workplane(cq.Plane(cq.Vector(-0.5,0.25,0.1),cq.Vector(1.0,6.123233995736766e-17,-6.123233995736766e-17),"
    "cq.Vector(6.123233995736766e-17,-1.0,6.123233995736766e-17)))\n"
    "loop1=wp_sketch1.moveTo(0.0,0.0).lineTo(1.0,0.0).lineTo(1.0,0.6).lineTo(0.0,0.6).close()\n"
    "solid1=wp_sketch1.add(loop1).extrude(0.08)\nsolid=solid.union(solid1)\n")


def test_stretching_along_a_world_axis_scales_the_whole_part_along_it(pool):
    from cad.programs import stretch_spans
    from decoding.refine import _scaled, parameter_groups

    base = pool.run(BRACKET)
    assert base.ok and base.n_solids == 1
    extent = np.subtract(base.bbox[3:], base.bbox[:3])
    spans = stretch_spans(BRACKET)
    for axis in range(3):
        stretched = pool.run(_scaled(BRACKET, spans[axis], 1.5))
        assert stretched.ok and stretched.n_solids == 1  # the wall stays on the plate
        expected = extent * np.where(np.arange(3) == axis, 1.5, 1.0)
        assert np.allclose(np.subtract(stretched.bbox[3:], stretched.bbox[:3]), expected, atol=1e-3)
        assert stretched.volume == pytest.approx(base.volume * 1.5, rel=1e-3)
    assert len(parameter_groups(BRACKET, ("world",))) == 3


def test_primitives_fit_the_proportions_of_a_box_a_channel_and_a_tube_from_their_renders(pool):
    from cad.geometry import best_iou
    from decoding.primitives import box, cylinder, fit_primitives, section, section_points

    objective = FIT_OBJECTIVE
    channel = section(0, section_points("U", 1, (0.15, 0.18)), (1.5, 0.6, 0.5))  # both walls 0.09 thick
    # a bar, a plate 1/62 of its length thick, a channel with thin walls and a tube
    for truth, kind in ((box((1.5, 0.1, 0.06)), "box"), (box((1.5, 0.3, 0.024)), "box"), (channel, "section"),
                        (cylinder(1, 0.5, 1.5, bore=0.5), "tube")):
        gt = pool.run(truth, ExecOptions(want_geometry=True))
        fits = dict(zip(("box", "section", "cylinder", "tube"), fit_primitives(_image_of(pool, truth), pool, objective)))
        pred = pool.run(fits[kind], ExecOptions(want_geometry=True))
        assert best_iou(pred.geometry, gt.geometry).iou > 0.85, (kind, fits[kind])
        assert max(np.subtract(pred.bbox[3:], pred.bbox[:3])) == pytest.approx(1.5, rel=1e-3)  # GenCAD's size
    with pytest.raises(ValueError, match="primitives"):
        DecodeConfig(strategy="beam", primitives=True)


HEXAGON = ("import cadquery as cq\nwp=cq.Workplane(cq.Plane(cq.Vector(0,0,0),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
           "loop0=wp.moveTo(0.6,0).lineTo(0.3,0.52).lineTo(-0.3,0.52).lineTo(-0.6,0).lineTo(-0.3,-0.52)"
           ".lineTo(0.3,-0.52).close()\nloop1=wp.moveTo(0.2,0).circle(0.1)\nloop2=wp.moveTo(-0.25,0.1).circle(0.12)\n"
           "solid=wp.add(loop0).add(loop1).add(loop2).extrude(0.25)\n")  # a hexagon plate with two holes, along z


BOSSED_PLATE = ("import cadquery as cq\nwp0=cq.Workplane(cq.Plane(cq.Vector(0,0,0),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
                "solid=wp0.add(wp0.moveTo(0,0).lineTo(1.4,0).lineTo(1.4,1.0).lineTo(0,1.0).close()).extrude(0.15)\n"
                "wp1=cq.Workplane(cq.Plane(cq.Vector(0.5,0.35,0.15),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
                "solid=solid.union(wp1.add(wp1.moveTo(0,0).lineTo(0.4,0).lineTo(0.4,0.3).lineTo(0,0.3).close()).extrude(0.12))\n")


BLOCK_ON_DISC = ("import cadquery as cq\nwp0=cq.Workplane(cq.Plane(cq.Vector(0,0,0),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
                 "solid=wp0.add(wp0.moveTo(0,0).circle(0.7)).extrude(0.25)\n"
                 "wp1=cq.Workplane(cq.Plane(cq.Vector(-0.15,-0.4,0.25),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
                 "solid=solid.union(wp1.add(wp1.moveTo(0,0).lineTo(0.3,0).lineTo(0.3,0.8).lineTo(0,0.8).close()).extrude(0.45))\n")


def test_prisms_read_an_outline_with_holes_and_the_depth_off_the_render(pool):
    from cad.geometry import best_iou
    from decoding.prism import fit_prisms

    objective = FIT_OBJECTIVE
    # a T section with a round hole, extruded along world -y; HEXAGON
    tee = ("import cadquery as cq\nwp=cq.Workplane(cq.Plane(cq.Vector(0,0.4,0),cq.Vector(1,0,0),cq.Vector(0,-1,0)))\n"
           "loop0=wp.moveTo(0,0).lineTo(0.3,0).lineTo(0.3,0.6).lineTo(0.7,0.6).lineTo(0.7,0.8).lineTo(-0.4,0.8)"
           ".lineTo(-0.4,0.6).lineTo(0,0.6).close()\nloop1=wp.moveTo(0.15,0.3).circle(0.08)\n"
           "solid=wp.add(loop0).add(loop1).extrude(0.9)\n")
    for truth, holes in ((tee, 1), (HEXAGON, 2)):
        gt = pool.run(truth, ExecOptions(want_geometry=True))
        fits = fit_prisms(_image_of(pool, truth), pool, objective)
        assert fits and fits[0].count(".circle(") == holes  # the best cap's prism, holes written as circles
        pred = pool.run(fits[0], ExecOptions(want_geometry=True))
        assert best_iou(pred.geometry, gt.geometry).iou > 0.9, fits[0]
        assert max(np.subtract(pred.bbox[3:], pred.bbox[:3])) == pytest.approx(1.5, rel=1e-3)  # GenCAD's size


def _chords(centre, r: float, start: float, stop: float, sagitta: float = 1.0) -> np.ndarray:
    """Points on a circle from angle ``start`` to ``stop`` (degrees) whose chords stand ``sagitta``
    from it, as Douglas-Peucker leaves a curved edge's pixels (the last point left out)."""
    step = 2 * np.degrees(np.arccos(1 - sagitta / r))
    a = np.radians(np.linspace(start, stop, int(np.ceil(abs(stop - start) / step)) + 1)[:-1])
    return np.asarray(centre) + r * np.column_stack([np.cos(a), np.sin(a)])


def test_corners_read_off_a_curved_edge_are_written_as_one_arc():
    from decoding.prism import _loop, arcs

    # a slot (two half circles of 40 pixels joined by lines), the first corner inside an arc
    slot = np.vstack([_chords((100, 0), 40, -30, 90), _chords((0, 0), 40, 90, 270), _chords((100, 0), 40, 270, 330)])
    polygon, found = arcs(slot)
    assert len(found) == 2 and len(polygon) == len(slot)
    for i, (j, mid) in found.items():
        centre = np.array([100, 0]) if polygon[i][0] > 50 else np.array([0, 0])
        assert j - i >= 4 and np.hypot(*(mid - centre)) == pytest.approx(40, abs=0.2)
        assert np.hypot(*(polygon[i:j + 1] - centre).T) == pytest.approx(40, abs=0.01)  # every corner in between on it
    assert _loop(slot, 1.0, np.zeros(2)).count(".threePointArc(") == 2
    # corners that lie on a circle but whose edges stand off it (an octagon nut), or on none
    octagon = _chords((0, 0), 30, 0, 360, sagitta=30 * (1 - np.cos(np.pi / 8)))
    chamfered = np.array([[5, 0], [95, 0], [100, 5], [100, 45], [95, 50], [5, 50], [0, 45], [0, 5]], float)
    rectangle = np.array([[0, 0], [80, 0], [80, 40], [0, 40]], float)
    for polygon in (octagon, chamfered, rectangle):
        assert arcs(polygon)[1] == {} and np.array_equal(arcs(polygon)[0], polygon)
        assert ".threePointArc(" not in _loop(polygon, 1.0, np.zeros(2))


def test_an_outline_is_read_without_the_small_steps_in_its_straight_edges():
    from decoding.prism import _without_steps

    # a 200 x 80 rectangle whose bottom edge steps down 2 pixels halfway (a nibbled edge)
    nibbled = np.array([[0, 0], [100, 0], [104, 2], [200, 2], [200, 80], [0, 80]], float)
    assert np.array_equal(_without_steps(nibbled), nibbled[[0, 3, 4, 5]])
    # a real step (an L: 20 pixels), a chamfer, and the corners along a curve (all turning one way) stay
    ell = np.array([[0, 0], [100, 0], [100, 20], [200, 20], [200, 80], [0, 80]], float)
    chamfered = np.array([[5, 0], [95, 0], [100, 5], [100, 45], [95, 50], [5, 50], [0, 45], [0, 5]], float)
    slot = np.vstack([_chords((100, 0), 40, -90, 90), _chords((0, 0), 40, 90, 270)])
    for polygon in (ell, chamfered, slot):
        assert np.array_equal(_without_steps(polygon), polygon)


SLOT = ("import cadquery as cq\nwp=cq.Workplane(cq.Plane(cq.Vector(0,0,0),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
        "solid=wp.add(wp.moveTo(0.13,0).lineTo(0.67,0).threePointArc((0.8,0.13),(0.67,0.26)).lineTo(0.13,0.26)"
        ".threePointArc((0,0.13),(0.13,0)).close()).extrude(0.7)\n")  # a block with round ends (GenCAD's synth3 000031)


def test_a_prism_with_round_ends_is_read_with_arcs(pool):
    """The round ends of a slot-shaped block are written as arcs: its render shows no edges where
    chords would meet on the round faces, and it fits the true part closer than its chords do."""
    from cad.geometry import best_iou
    from decoding.prism import fit_prisms

    gt = pool.run(SLOT, ExecOptions(want_geometry=True))
    fit = fit_prisms(_image_of(pool, SLOT), pool, FIT_OBJECTIVE, quick=True)[0]
    assert fit.count(".threePointArc(") == 2, fit
    chords = re.sub(r"\.threePointArc\(\(([^)]*)\),\(([^)]*)\)\)", r".lineTo(\1).lineTo(\2)", fit)  # each arc by two chords
    ious = [best_iou(pool.run(c, ExecOptions(want_geometry=True)).geometry, gt.geometry).iou for c in (fit, chords)]
    assert ious[0] > 0.97 and ious[0] > ious[1] + 0.005, ious


BLOCK = ("import cadquery as cq\nwp0=cq.Workplane(cq.Plane(cq.Vector(0,0,0),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
         "solid=wp0.add(wp0.moveTo(0,0).lineTo(0.8,0).lineTo(0.8,0.6).lineTo(0,0.6).close()).extrude(0.5)\n")
ROD = ("wp1=cq.Workplane(cq.Plane(cq.Vector(0.8,0.3,0.25),cq.Vector(0,1,0),cq.Vector(1,0,0)))\n"
       "solid=solid.union(wp1.add(wp1.moveTo(0,0).circle(0.015)).extrude(1.2))\n")  # a thin rod out of the block's side


def test_a_prism_is_drawn_where_the_picture_shows_it(pool):
    """A prism read off a picture carries the frame that draws it where the picture shows it: for a
    block alone that is where the window fit draws it; for a block whose thin rod widens the
    picture, the block's prism fit to the window alone is drawn too large, and the reranker's
    terms come from its own frame (``framed``), with how far the window fit of its box would draw
    it from there (``framing_error``)."""
    from cad.render import frame_offset, silhouette
    from decoding.prism import framed_prisms
    from reward.score import candidate_terms, mask_iou

    objective = FIT_OBJECTIVE
    for code, rod in ((BLOCK, False), (BLOCK + ROD, True)):
        image = _image_of(pool, code)
        target = silhouette(np.asarray(image))
        fits = framed_prisms(image, pool, objective, quick=True)
        assert fits
        result = pool.run(fits[0][0], ExecOptions(want_geometry=True))
        placed = mask_iou(silhouette(render_geometry(result.geometry, frame=fits[0][1])), target)
        fitted = mask_iou(silhouette(render_geometry(result.geometry)), target)
        terms = candidate_terms(fits[0][0], result, objective, image=image, frame=fits[0][1])
        if not rod:
            assert placed > 0.97 and abs(placed - fitted) < 0.02, (placed, fitted)
        else:
            assert placed > 0.9 > fitted + 0.2, (placed, fitted)  # the rod is a sliver of the picture
            assert terms["framed"] == 1.0 and terms["silhouette"] == pytest.approx(placed)
            assert "framed" not in candidate_terms(fits[0][0], result, objective, image=image)  # no frame: the window fit
            # the block's own box, fit to the window, would be drawn larger than the rod's picture shows it
            assert terms["framing_error"] == pytest.approx(frame_offset(result.geometry, fits[0][1])) and terms["framing_error"] > 10
            weighed = candidate_terms(fits[0][0], result, {**objective, "framing_error": -1.0}, image=image, frame=fits[0][1])
            assert weighed["framed"] == 0.0 and weighed["framing_error"] == 0.0  # so costly a frame loses to the window fit
            from decoding.refine import refine

            placed_start = refine(fits[0][0], image, pool, 1, objective=objective, frame=fits[0][1]).start_score
            assert placed_start > refine(fits[0][0], image, pool, 1, objective=objective).start_score + 0.5  # refined in its frame


THIN_PLATE = ("import cadquery as cq\nwp=cq.Workplane(cq.Plane(cq.Vector(0,0,0),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
              "solid=wp.add(wp.moveTo(0,0).lineTo(1.46,0).lineTo(1.46,0.29).lineTo(0,0.29).close()).extrude(0.0234)\n")
# a thin plate (GenCAD's 00946705): its end face swept along the length covers the silhouette a
# little better than its top face swept down, but only the top face's outline is read well


def test_quick_prisms_are_the_best_caps(pool):
    from cad.geometry import best_iou
    from decoding.prism import QUICK_PRISMS, fit_prisms

    objective = FIT_OBJECTIVE
    image = _image_of(pool, HEXAGON)
    quick, full = fit_prisms(image, pool, objective, quick=True), fit_prisms(image, pool, objective)
    assert [q.count(".circle(") for q in quick[:2]] == [2, 0] and quick == full[:len(quick)]  # with its holes and without
    quick = fit_prisms(_image_of(pool, BOSSED_PLATE), pool, objective, quick=True)
    assert sum(".union(" in q for q in quick) >= 1  # and with its boss (a second cap with a top in a hole may stand one too)
    gt = pool.run(THIN_PLATE, ExecOptions(want_geometry=True))
    quick = fit_prisms(_image_of(pool, THIN_PLATE), pool, objective, quick=True)
    ious = [best_iou(pool.run(q, ExecOptions(want_geometry=True)).geometry, gt.geometry).iou for q in quick]
    assert QUICK_PRISMS == 3 and ious[0] < max(ious) - 0.05, ious  # the end face's prism first, the top face's better
    assert max(ious) > 0.93, ious  # its outline read on the drawn line (grown into eight neighbours: 3% too wide, 0.90)
    image = _image_of(pool, BLOCK_ON_DISC)  # no cap alone sweeps to the silhouette: the union only, quick or not
    quick, full = fit_prisms(image, pool, objective, quick=True), fit_prisms(image, pool, objective)
    assert quick == full and full and all(".union(" in q for q in full)  # the union (and the block standing as a boss)
    with pytest.raises(ValueError, match="prisms"):
        DecodeConfig(strategy="beam", prisms=True)


PLATE_BESIDE_PLATE = (  # synthetic validation row synth2-00000-000261: a plate, a thin plate beside it and a hairline rod
    "import cadquery as cq\n"
    "wp0=cq.Workplane(cq.Plane(cq.Vector(-0.703125,-0.7109375,-0.671875),cq.Vector(1.0,0.0,0.0),cq.Vector(0.0,-1.0,6.123233995736766e-17)))\n"
    "solid=wp0.add(wp0.moveTo(1.37109375,0.0).lineTo(1.37109375,0.959765625).lineTo(0.0,0.959765625).lineTo(0.0,0.0).close()).extrude(0.1015625)\n"
    "wp1=cq.Workplane(cq.Plane(cq.Vector(0.66796875,-0.78125,-0.5078125),cq.Vector(6.123233995736766e-17,1.0,0.0),"
    "cq.Vector(1.0,-6.123233995736766e-17,6.123233995736766e-17)))\n"
    "solid=solid.union(wp1.add(wp1.moveTo(0.010824424342105263,0.010824424342105263).circle(0.010824424342105263)).extrude(0.78125))\n"
    "wp2=cq.Workplane(cq.Plane(cq.Vector(0.66796875,-0.80078125,-0.6015625),cq.Vector(6.123233995736766e-17,1.0,0.0),"
    "cq.Vector(1.0,-6.123233995736766e-17,6.123233995736766e-17)))\n"
    "solid=solid.union(wp2.add(wp2.moveTo(0.028865131578947368,0.0).lineTo(0.028865131578947368,0.4979235197368421)"
    ".lineTo(0.0,0.4979235197368421).lineTo(0.0,0.0).close()).extrude(0.5234375))\n")


def test_a_face_swept_about_as_well_along_two_axes_is_read_in_the_plane_where_its_outline_is_regular(pool):
    import cv2

    from cad.geometry import best_iou
    from decoding.prism import AXIS_REGULAR, AXIS_TIE, Cap, _likeliest, _regularity, fit_prisms, plane_basis, screen_vector

    # a rectangle in the plane of axis 1 (y), as drawn on the screen: read in that plane it is regular,
    # in the planes of x and z a slanted parallelogram
    u, v = (screen_vector(e) for e in plane_basis(1)[:2])
    corners = np.array([200, 200]) + np.array([[0, 0], u * 80, u * 80 + v * 60, v * 60])
    region = np.zeros((448, 448), np.uint8)
    cv2.fillConvexPoly(region, np.round(corners).astype(np.int32), 1)
    caps = [Cap(region.astype(bool), axis, fit) for axis, fit in ((0, 0.978), (1, 0.976), (2, 0.975))]
    assert _likeliest(caps).axis == 1 and AXIS_TIE >= 0.002
    assert _likeliest([caps[0], Cap(caps[1].region, 1, 0.978 - 2 * AXIS_TIE)]).axis == 0  # a clearly better sweep wins
    assert _likeliest([]) is None
    assert _regularity(np.array([[0, 0], [4, 0], [4, 3], [0, 3]], float)) == 1.0 and _regularity((0.0, 0.0, 1.0)) == 1.0
    assert _regularity(np.array([[0, 0], [4, 2], [4, 5], [0, 3]], float)) < 1 - AXIS_REGULAR
    objective = FIT_OBJECTIVE
    gt = pool.run(PLATE_BESIDE_PLATE, ExecOptions(want_geometry=True))
    unions = [q for q in fit_prisms(_image_of(pool, PLATE_BESIDE_PLATE), pool, objective, quick=True) if ".union(" in q]
    assert len(unions) == 1  # the thin plate's face read in the x plane, swept along x, scored 0.28
    assert best_iou(pool.run(unions[0], ExecOptions(want_geometry=True)).geometry, gt.geometry).iou > 0.9


def test_no_second_cap_is_looked_for_when_one_cap_leaves_too_little_to_add(monkeypatch):
    import decoding.prism as prism

    def find_caps(*args, **kwargs):
        raise AssertionError("second caps looked for")

    monkeypatch.setattr(prism, "find_caps", find_caps)
    assert prism.UNION_GAIN_REGULAR <= prism.UNION_GAIN
    cap = prism.Cap(np.ones((4, 4), bool), 2, 1.0 - prism.UNION_GAIN_REGULAR + 0.001)  # a second cap would need an IoU above 1
    assert prism._union([cap], None, [], None, None, None, None, None, {}) == []


# A block with a bar standing out of its front face: the bar adds 0.03-0.05 to the block's sweep.
BAR_OUT_OF_BLOCK = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(-0.64, -0.13, -0.64), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, -1.0, 0.0)))\n"
    "solid = wp0.add(wp0.moveTo(0.0, 0.0).lineTo(1.375, 0.0).lineTo(1.375, 1.29).lineTo(0.0, 1.29).close()).extrude(0.6)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(0.2, -0.73, 0.2), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, -1.0, 0.0)))\n"
    "solid = solid.union(wp1.add(wp1.moveTo(0.0, 0.0).lineTo(0.46, 0.0).lineTo(0.46, 0.34).lineTo(0.0, 0.34).close()).extrude(1.0))\n")


def _fit_ious(pool, code: str, image: Image.Image, keep) -> list[float]:
    """The Best IoU against ``code``'s solid of the quick prism fits of ``image`` that ``keep`` picks."""
    from cad.geometry import best_iou
    from decoding.prism import fit_prisms

    gt = pool.run(code, ExecOptions(want_geometry=True)).geometry
    objective = FIT_OBJECTIVE
    return [best_iou(pool.run(q, ExecOptions(want_geometry=True)).geometry, gt).iou
            for q in fit_prisms(image, pool, objective, quick=True) if keep(q)]


def _fit_ious_without(pool, monkeypatch, code: str, keep, name: str, value) -> tuple[list[float], list[float]]:
    """``_fit_ious`` of ``code``'s picture, then the same with ``decoding.prism``'s ``name`` set to
    ``value`` (the part under test switched off)."""
    import decoding.prism as prism

    image = _image_of(pool, code)
    found = _fit_ious(pool, code, image, keep)
    monkeypatch.setattr(prism, name, value)
    return found, _fit_ious(pool, code, image, keep)


def test_a_bar_standing_out_of_a_block_is_read_as_a_union_of_two_regular_prisms(pool, monkeypatch):
    import decoding.prism as prism

    image = _image_of(pool, BAR_OUT_OF_BLOCK)
    unions = _fit_ious(pool, BAR_OUT_OF_BLOCK, image, lambda q: ".union(" in q)
    assert unions and max(unions) > 0.9  # the union (the bar may also stand as a boss)
    monkeypatch.setattr(prism, "UNION_GAIN_REGULAR", prism.UNION_GAIN)  # regular outlines held to the general gain
    monkeypatch.setattr(prism, "MIN_BOSSED_FIT", prism.MIN_FIT)  # and the bar not stood as a boss on the block ...
    monkeypatch.setattr(prism, "_dented_caps", lambda *args: [])  # ... nor on a cap swept with its dents
    assert not _fit_ious(pool, BAR_OUT_OF_BLOCK, image, lambda q: ".union(" in q)


# A block with a rod out of its back face and a bar out of its right side: three prisms, none of
# whose caps is another's.
ROD_AND_BAR_OUT_OF_BLOCK = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(-0.58, -0.37, 0.12), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, -1.0, 0.0)))\n"
    "solid = wp0.add(wp0.moveTo(0.0, 0.0).lineTo(1.05, 0.0).lineTo(1.05, 0.44).lineTo(0.0, 0.44).close()).extrude(0.5)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(-0.38, -0.86, 0.32), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, -1.0, 0.0)))\n"
    "solid = solid.union(wp1.add(wp1.moveTo(0.11, 0.0).circle(0.11)).extrude(0.625))\n"
    "wp2 = cq.Workplane(cq.Plane(cq.Vector(0.47, -0.64, 0.21), cq.Vector(0.0, 1.0, 0.0), cq.Vector(1.0, 0.0, 0.0)))\n"
    "solid = solid.union(wp2.add(wp2.moveTo(0.0, 0.0).lineTo(0.23, 0.0).lineTo(0.23, 0.12).lineTo(0.0, 0.12).close()).extrude(0.45))\n")


def test_a_block_with_a_rod_and_a_bar_standing_out_of_it_is_read_as_a_union_of_three_prisms(pool, monkeypatch):
    import decoding.prism as prism

    image = _image_of(pool, ROD_AND_BAR_OUT_OF_BLOCK)
    three = _fit_ious(pool, ROD_AND_BAR_OUT_OF_BLOCK, image, lambda q: q.count(".union(") == 2)
    two = _fit_ious(pool, ROD_AND_BAR_OUT_OF_BLOCK, image, lambda q: q.count(".union(") == 1)
    assert len(three) == 1 and three[0] > 0.9 and three[0] > max(two) + 0.1
    monkeypatch.setattr(prism, "THIRD_REGULAR", 1.01)  # no outline is this regular: no third body
    assert not _fit_ious(pool, ROD_AND_BAR_OUT_OF_BLOCK, image, lambda q: q.count(".union(") == 2)


def test_a_corner_hidden_behind_another_body_is_where_its_seen_edges_meet():
    from decoding.prism import _extended

    square_cut = np.array([[0, 0], [7, 0], [7, 3], [10, 3], [10, 10], [0, 10]], float)  # a post hides x >= 7, y <= 3
    hidden = np.zeros((20, 20), bool)
    hidden[0:4, 7:12] = True
    for start in range(len(square_cut)):  # wherever the outline starts
        assert sorted(map(tuple, _extended(np.roll(square_cut, start, 0), hidden).tolist())) == [(0, 0), (0, 10), (10, 0), (10, 10)]
    chord = np.array([[0, 0], [7, 0], [10, 3], [10, 10], [0, 10]], float)
    hidden[0, :] = False  # the corner the seen edges make is in sight: the outline is as drawn
    assert np.array_equal(_extended(chord, hidden), chord)


def test_a_regular_polygon_partly_hidden_behind_another_body_is_completed():
    import decoding.prism as prism

    to_plane = prism._to_plane(2)
    angles = np.radians(np.arange(6) * 60.0)
    hexagon = np.column_stack([300 + 100 * np.cos(angles), -100 + 100 * np.sin(angles)])  # corners on +-x, sides along x at y = -100 +- 86.6
    ys, xs = np.mgrid[0:448, 0:448]
    u, v = ((np.stack([xs, ys], -1) + 0.5) @ to_plane.T).transpose(2, 0, 1)
    hidden = (v >= -60) & (u >= 210) & (u <= 390)  # a boss in front of the back of the face, where corners 1 and 2 are
    # the seen outline: along the hexagon's sides up to the boss (y = -55 on the plane), along the boss behind it
    seen = np.vstack([hexagon[:1], [[374.0, -55.0], [226.0, -55.0]], hexagon[3:]])
    screen = prism._on_screen(seen, to_plane)
    assert (screen >= 0).all() and (screen < 448).all()
    regular = prism._regular(screen, hidden, to_plane)
    assert regular is not None and len(regular) == 6
    assert np.abs(np.sort(regular, 0) - np.sort(hexagon, 0)).max() < 1.0, regular
    assert prism._regular(screen, np.zeros_like(hidden), to_plane) is None  # nothing hidden: the outline is as seen
    stretched = seen.copy()
    stretched[[0, 1, 5], 0] += 14.0  # the right-hand corners moved out: no one apothem fits the seen sides
    assert prism._regular(prism._on_screen(stretched, to_plane), hidden, to_plane) is None
    square = np.array([[250.0, -150.0], [350.0, -150.0], [350.0, -40.0], [250.0, -40.0]])
    assert prism._regular(prism._on_screen(square, to_plane), hidden, to_plane) is None  # its sides are every other side of an octagon whose corners would be in sight


# A hexagonal nut under a round boss that hides the back of its top face (GenCAD 00540970's kind).
NUT_UNDER_BOSS = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "nut = wp0.add(wp0.moveTo(0.74, 0.0).lineTo(0.37, 0.6409).lineTo(-0.37, 0.6409).lineTo(-0.74, 0.0)"
    ".lineTo(-0.37, -0.6409).lineTo(0.37, -0.6409).close()).extrude(0.5)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.5), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = nut.union(wp1.add(wp1.moveTo(0.0, 0.0).circle(0.6)).extrude(0.25))\n")


def test_a_nut_under_a_boss_is_read_with_its_whole_hexagon(pool, monkeypatch):
    union, seen_only = _fit_ious_without(pool, monkeypatch, NUT_UNDER_BOSS, lambda q: ".union(" in q, "REGULAR_SIDES", ())
    assert union and seen_only and max(union) > 0.88 and max(union) > max(seen_only) + 0.03, (union, seen_only)


def test_a_pixel_staircase_beside_a_hidden_edge_makes_no_spike(monkeypatch):
    import decoding.prism as prism

    # the end of a beam's face at 256 px (bicubic): a 5 px step of the staircase, then the hidden side
    beam = np.array([[421, 104], [417, 104], [235, 209], [229, 214], [230, 239], [235, 239], [420, 132]], float)
    hidden = np.zeros((448, 448), bool)
    hidden[214:238, 226:233] = True  # the side from (229, 214) to (230, 239) behind another body ...
    hidden[238:243, 190:230] = True  # ... which also hides where the step's line meets the bottom edge's
    assert np.array_equal(prism._extended(beam, hidden), beam)
    monkeypatch.setattr(prism, "MIN_CORNER_EDGE", 5.0)
    assert [199.0, 239.0] in prism._extended(beam, hidden).round(1).tolist()  # else the step's direction makes a spike 30 px out


def test_a_straight_edge_seen_alone_is_no_circle(monkeypatch):
    import decoding.prism as prism

    def arc(degrees: float, radius: float) -> np.ndarray:
        t = np.radians(np.linspace(90.0 - degrees / 2, 90.0 + degrees / 2, 60))
        return np.column_stack([radius * np.cos(t), radius * np.sin(t)])

    assert prism._circle(arc(100.0, 40.0), width=40.0) is not None  # a round boss's rim, half hidden in a contour 40 px wide
    edge = arc(12.0, 400.0)  # 84 px of a face's edge, within 1.5 px of a straight line, the rest of the face hidden
    assert np.abs(edge[:, 1] - np.polyval(np.polyfit(edge[:, 0], edge[:, 1], 1), edge[:, 0])).max() < 1.5
    assert prism._circle(edge, width=90.0) is None
    monkeypatch.setattr(prism, "CIRCLE_EXTENT", np.inf)
    assert prism._circle(edge, width=90.0) is not None  # else the edge fits a circle 800 px across


# An L block with a post standing on it, which hides the L's inner corner.
POST_ON_L_BLOCK = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, -0.37, -0.43), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = wp0.add(wp0.moveTo(0.0, 0.0).lineTo(1.5, 0.0).lineTo(1.5, 0.37).lineTo(0.48, 0.37).lineTo(0.48, 1.12)"
    ".lineTo(0.0, 1.12).close()).extrude(0.48)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(-0.72, 0.02, 0.05), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = solid.union(wp1.add(wp1.moveTo(0.0, 0.0).lineTo(0.24, 0.0).lineTo(0.24, 0.64).lineTo(0.0, 0.64).close()).extrude(0.86))\n")


def test_the_outline_of_a_face_partly_hidden_by_a_post_keeps_its_hidden_corner(pool, monkeypatch):
    extended, cut = _fit_ious_without(pool, monkeypatch, POST_ON_L_BLOCK, lambda q: ".union(" in q,
                                      "_extended", lambda polygon, hidden, corner_edge=None: polygon)  # the outline cut where the post hides it
    assert max(extended) > 0.9 and max(extended) > max(cut) + 0.1  # the union of the two prisms (the post also stands as a boss)


# A plate with a post standing near its back corner, which the post hides (GenCAD 000049's kind).
POST_BEFORE_PLATE_CORNER = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, -0.5, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "plate = wp0.add(wp0.moveTo(0.0, 0.0).lineTo(1.5, 0.0).lineTo(1.5, 1.0).lineTo(0.0, 1.0).close()).extrude(0.2)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(-0.6, 0.1, 0.2), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = plate.union(wp1.add(wp1.moveTo(0.0, 0.0).lineTo(0.3, 0.0).lineTo(0.3, 0.3).lineTo(0.0, 0.3).close()).extrude(0.6))\n")


def test_a_corner_of_a_cap_hidden_behind_a_boss_is_restored(pool, monkeypatch):
    import decoding.prism as prism

    fill = prism._fill_holes
    monkeypatch.setattr(prism, "_union", lambda *args: [])  # the post stood as a boss only: a union standing on the plate (_snapped) restores the corner too
    restored, chord = _fit_ious_without(pool, monkeypatch, POST_BEFORE_PLATE_CORNER, lambda q: q.count("Workplane(") == 2,
                                        "_fill_holes", lambda cap, body, inner, tops=(), regions=(), background=None: fill(cap, body, inner))  # the bosses hide nothing
    assert max(restored) > 0.95 and max(restored) > max(chord) + 0.03, (restored, chord)


def test_a_rounded_corner_behind_a_boss_keeps_its_arc():
    import decoding.prism as prism

    angles = np.radians(np.arange(-90, 1, 10))
    arc = np.column_stack([200 + 40 * np.cos(angles), 140 + 40 * np.sin(angles)])  # chords 7 px long
    outline = np.vstack([[[100, 100]], arc, [[240, 240], [100, 240]]]).astype(float)
    hidden = np.zeros((448, 448), bool)
    hidden[90:128, 170:236] = True  # a boss in front of the top edge's end and most of the arc
    assert np.array_equal(prism._extended(outline, hidden, prism.BOSS_CORNER_EDGE), outline)
    assert len(prism._extended(outline, hidden)) < len(outline)  # the shorter default takes a chord for a side: a corner where the arc was


def test_a_hole_that_shows_no_background_is_not_cut_through():
    import decoding.prism as prism

    plate = np.zeros((448, 448), bool)
    plate[150:300, 150:300] = True
    plate[200:250, 200:250] = False  # a hole in the cap's region: a hole through the plate, or bosses standing there
    background = np.zeros_like(plate)  # all of it drawn: what stands in the hole hides the background
    closed = prism._closed_holes(plate, 2, 20.0, background)
    assert closed.sum() == 50 * 50 and not (closed & plate).any()
    background[200:250, 200:250] = True  # the background seen through it: a hole through
    assert not prism._closed_holes(plate, 2, 20.0, background).any()
    assert not prism._closed_holes(plate, 2, 5000.0, np.zeros_like(plate)).any()  # its openings do not overlap on the screen: nothing tells


# An L block with a post standing on its front edge, which splits the block's top face in two, a
# hole under the post and one beside it (the program of validation row 000187, seed 2, rounded).
POST_SPLITS_TOP_FACE = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, -0.34765625, -0.58203125), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "block = wp0.add(wp0.moveTo(0.0, 0.0).lineTo(1.5, 0.0).lineTo(1.5, 0.3651).lineTo(0.6118, 0.3651).lineTo(0.6118, 0.7599)"
    ".lineTo(0.0, 0.7599).close()).add(wp0.moveTo(0.4441, 0.148).circle(0.0789)).add(wp0.moveTo(1.0559, 0.148).circle(0.0789))"
    ".extrude(0.7265625)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(-0.61328125, -0.12890625, 0.14453125), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "block = block.union(wp1.add(wp1.moveTo(0.1974, 0.0).circle(0.1974)).extrude(0.515625))\n"
    "wp2 = cq.Workplane(cq.Plane(cq.Vector(0.22265625, -0.18359375, 0.14453125), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = block.cut(wp2.add(wp2.moveTo(0.1086, 0.0).circle(0.1086)).extrude(-0.7265625))\n")


def test_a_face_a_post_splits_in_two_is_read_as_one_cap(pool, monkeypatch):
    joined, apart = _fit_ious_without(pool, monkeypatch, POST_SPLITS_TOP_FACE, lambda q: q.count("Workplane(") == 2,
                                      "_beside_bosses", lambda cap, shadow, regions: np.zeros_like(cap.region))
    assert joined and max(joined) > 0.9 and max(joined) > max(apart or [0.0]) + 0.05, (joined, apart)


# A ring with a bar standing on its front face across its hole (GenCAD 000014's kind): the bar's
# top and the hole are one hole of the ring's face, and the background shows beside the bar.
BAR_ACROSS_RING = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(-0.68, 0.44, 0.03), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, -1.0, 0.0)))\n"
    "solid = wp0.add(wp0.moveTo(0.68, 0.0).circle(0.68)).add(wp0.moveTo(0.68, 0.0).circle(0.4)).extrude(0.285)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(-0.47, 0.16, 0.02), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, -1.0, 0.0)))\n"
    "solid = solid.union(wp1.add(wp1.moveTo(0.0, 0.0).lineTo(0.81, 0.0).lineTo(0.81, 0.21).lineTo(0.0, 0.21).close()).extrude(0.36))\n")


def test_a_hole_a_boss_stands_across_is_still_cut(pool, monkeypatch):
    import decoding.prism as prism

    monkeypatch.setattr(prism, "_union", lambda *args: [])  # the bar stood as a boss, not a union of prisms
    cut, filled = _fit_ious_without(pool, monkeypatch, BAR_ACROSS_RING, lambda q: q.count("Workplane(") >= 2,
                                    "_open_beside", lambda cap, shadow, tops, background: np.zeros_like(cap.region))
    assert cut and max(cut) > 0.65 and max(cut) > max(filled or [0.0]) + 0.1, (cut, filled)


def test_overlapping_circle_holes_keep_the_larger():
    import decoding.prism as prism

    square = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]])
    holes = [(0.0, 0.0, 5.0), (1.0, 0.0, 6.0), (20.0, 0.0, 2.0), square]
    kept = prism._apart(holes)
    assert kept[0] == (1.0, 0.0, 6.0) and kept[1] == (20.0, 0.0, 2.0) and kept[2] is square and len(kept) == 3


# A plate with a slot cut through it whose far sides are closed by walls 0.002 thick (GenCAD
# 000105's program): the background shows through the slot, inside the silhouette.
PLATE_WITH_WALLED_SLOT = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(-0.1015625, -0.53515625, 0.4296875), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = wp0.add(wp0.moveTo(0.0, 0.0).lineTo(0.30859375, 0.0).lineTo(0.30859375, 0.16394).lineTo(0.0, 0.16394).close()).extrude(0.04296875)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(0.03125, -0.46484375, 0.47265625), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = solid.cut(wp1.add(wp1.moveTo(0.0, 0.0).lineTo(0.173584, 0.0).lineTo(0.173584, 0.091614).lineTo(0.0, 0.091614).close()).extrude(-0.04296875))\n")


def test_the_background_beside_a_cap_is_not_asked_of_its_sweep(pool):
    import decoding.prism as prism

    image = _image_of(pool, PLATE_WITH_WALLED_SLOT)
    pixels = _prism_pixels(image)
    caps = prism.find_caps(pixels, prism.planar_regions(pixels))
    top = max((c for c in caps if c.axis == 2), key=lambda c: int(c.region.sum()))  # the top face: an L beside the slot
    assert top.fit >= prism.MIN_FIT, top.fit  # 0.78 with the background seen through the slot counted
    ends = [c.fit for c in caps if c.axis != 2 and c.index != top.index]
    assert top.fit > max(ends) - 0.1, (top.fit, ends)  # the end face swept across the slot is no longer far ahead
    assert max(_fit_ious(pool, PLATE_WITH_WALLED_SLOT, image, lambda q: "circle" not in q)) > 0.9  # the L prism


# A plate with two posts standing on its top and a rod out of its end (GenCAD 000170's program):
# bosses on two faces of one prism.
POSTS_AND_ROD_ON_PLATE = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, -0.39453125, 0.34765625), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = wp0.add(wp0.moveTo(1.5, 0.0).lineTo(1.5, 0.97895).lineTo(0.0, 0.97895).lineTo(0.0, 0.0).close()).extrude(0.3359375)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(-0.47265625, 0.125, 0.68359375), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = solid.union(wp1.add(wp1.moveTo(0.18947, 0.0).circle(0.18947)).extrude(0.23046875))\n"
    "wp2 = cq.Workplane(cq.Plane(cq.Vector(0.75, -0.1484375, 0.4140625), cq.Vector(0.0, 1.0, 0.0), cq.Vector(1.0, 0.0, 0.0)))\n"
    "solid = solid.union(wp2.add(wp2.moveTo(0.07895, 0.07895).circle(0.07895)).extrude(0.453125))\n"
    "wp3 = cq.Workplane(cq.Plane(cq.Vector(0.40625, 0.2109375, 0.68359375), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = solid.union(wp3.add(wp3.moveTo(0.11053, 0.0).circle(0.11053)).extrude(0.4296875))\n")


def test_bosses_on_two_faces_of_one_prism_stand_together(pool, monkeypatch):
    both, one = _fit_ious_without(pool, monkeypatch, POSTS_AND_ROD_ON_PLATE, lambda q: True, "BOSSED_CAPS", 1)
    assert max(both) > 0.95 and max(both) > max(one) + 0.1, (max(both), max(one))  # the posts alone on the plate: 0.92


# A plate with a block standing across its top face (validation row 000323's program): the block
# splits the plate's top into two regions, neither of which holds the block's top in a hole.
BLOCK_ACROSS_PLATE = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(-0.6640625, 0.01953125, 0.3046875), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = wp0.add(wp0.moveTo(0.58203125, 0.0).lineTo(0.58203125, 0.14168).lineTo(0.0, 0.14168).lineTo(0.0, 0.0).close()).extrude(0.0546875)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(-0.484375, 0.0234375, 0.359375), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = solid.union(wp1.add(wp1.moveTo(0.25272, 0.0).lineTo(0.25272, 0.07658).lineTo(0.0, 0.07658).lineTo(0.0, 0.0).close()).extrude(0.07421875))\n")


def test_a_face_a_boss_splits_in_two_still_holds_it(pool, monkeypatch):
    split, apart = _fit_ious_without(pool, monkeypatch, BLOCK_ACROSS_PLATE, lambda q: True, "SPLIT_LINES", 99)
    assert max(split) > 0.95 and max(apart) < 0.7, (max(split), max(apart))


# A block with two long bars standing out of its end face at the face's edge (validation row
# 000375's program): the bars bite into the face's outline, so its sweep alone fits too little.
BARS_AT_A_FACE_EDGE = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(-0.7109375, -0.640625, -0.3515625), cq.Vector(0.0, 1.0, 0.0), cq.Vector(1.0, 0.0, 0.0)))\n"
    "solid = wp0.add(wp0.moveTo(1.21484, 0.0).lineTo(1.21484, 0.95909).lineTo(0.0, 0.95909).lineTo(0.0, 0.0).close()).extrude(0.90234375)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(0.19140625, -0.59375, -0.22265625), cq.Vector(0.0, 1.0, 0.0), cq.Vector(1.0, 0.0, 0.0)))\n"
    "solid = solid.union(wp1.add(wp1.moveTo(0.40921, 0.0).lineTo(0.40921, 0.12788).lineTo(0.0, 0.12788).lineTo(0.0, 0.0).close()).extrude(1.77734375))\n"
    "wp2 = cq.Workplane(cq.Plane(cq.Vector(0.19140625, -0.26171875, -0.1796875), cq.Vector(0.0, 1.0, 0.0), cq.Vector(1.0, 0.0, 0.0)))\n"
    "solid = solid.union(wp2.add(wp2.moveTo(0.31970, 0.0).lineTo(0.31970, 0.20461).lineTo(0.0, 0.20461).lineTo(0.0, 0.0).close()).extrude(1.73828125))\n")


def test_bosses_biting_into_a_face_stand_on_it(pool, monkeypatch):
    import decoding.prism as prism

    image = _image_of(pool, BARS_AT_A_FACE_EDGE)
    pixels = _prism_pixels(image)
    caps = prism.find_caps(pixels, prism.planar_regions(pixels))
    drawn = prism.silhouette(pixels)
    dented = prism._dented_caps(caps, pixels, prism.planar_regions(pixels), drawn, binary_fill_holes(drawn))
    assert dented and dented[0].fit >= prism.MIN_BOSSED_FIT > max(c.fit for c in caps if c.index == dented[0].index and c.axis == dented[0].axis)
    found, without = _fit_ious_without(pool, monkeypatch, BARS_AT_A_FACE_EDGE, lambda q: True, "_dented_caps", lambda *args: [])
    assert max(found) > 0.9 and max(found) > max(without) + 0.05, (max(found), max(without))


def test_split_faces_join_only_regions_with_edges_on_two_lines():
    from decoding.prism import _split_faces

    drawn = np.ones((60, 100), bool)
    left, right, below = (np.zeros_like(drawn) for _ in range(3))
    left[20:40, 5:30] = True
    right[20:40, 60:95] = True  # the same band beyond a gap: top and bottom edges on two lines
    below[45:55, 62:90] = True  # lower down: no edge on a line of the others'
    joined = _split_faces([left, right, below], drawn)
    assert len(joined) == 1 and (joined[0] == (left | right)).all()
    assert not _split_faces([left, right], drawn & ~np.pad(np.ones((60, 30), bool), ((0, 0), (30, 40))))  # background between them


# A thin plate with two low discs standing side by side on its face and a square boss (validation
# row 000507's program, less two cuts the picture does not show): the discs' feet are one hole of the
# face, and the nearer disc swept alone to cover that hole passes over the farther one's top.
DISCS_SIDE_BY_SIDE = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(0.55859375, -0.75, -0.41015625), cq.Vector(0.0, 1.0, 0.0), cq.Vector(1.0, 0.0, 0.0)))\n"
    "solid = wp0.add(wp0.moveTo(1.5, 0.0).lineTo(1.5, 0.50526).lineTo(0.0, 0.50526).lineTo(0.0, 0.0).close()).extrude(0.04296875)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(0.6015625, -0.6953125, -0.19140625), cq.Vector(0.0, 1.0, 0.0), cq.Vector(1.0, 0.0, 0.0)))\n"
    "solid = solid.union(wp1.add(wp1.moveTo(0.11053, 0.0).circle(0.11053)).extrude(0.03125))\n"
    "wp2 = cq.Workplane(cq.Plane(cq.Vector(0.6015625, -0.44140625, -0.26953125), cq.Vector(0.0, 1.0, 0.0), cq.Vector(1.0, 0.0, 0.0)))\n"
    "solid = solid.union(wp2.add(wp2.moveTo(0.12632, 0.0).circle(0.12632)).extrude(0.03515625))\n"
    "wp3 = cq.Workplane(cq.Plane(cq.Vector(0.6015625, 0.04296875, -0.23046875), cq.Vector(0.0, 1.0, 0.0), cq.Vector(1.0, 0.0, 0.0)))\n"
    "solid = solid.union(wp3.add(wp3.moveTo(0.18947, 0.0).lineTo(0.18947, 0.18947).lineTo(0.0, 0.18947).lineTo(0.0, 0.0).close()).extrude(0.03515625))\n")


def test_bosses_side_by_side_are_swept_clear_of_each_others_tops(pool):
    import decoding.prism as prism

    image = _image_of(pool, DISCS_SIDE_BY_SIDE)
    pixels = _prism_pixels(image)
    regions, flat = prism.planar_regions(pixels), prism.flat_pixels(pixels)
    plate = max((c for c in prism.find_caps(pixels, regions) if c.index == 1), key=lambda c: c.fit)
    tops = prism._inner_faces(plate, prism._cap_holes(plate, regions, flat), -1)
    assert len(tops) == 3, [int(t.face.sum()) for t in tops]  # the square boss and both discs
    assert max(_fit_ious(pool, DISCS_SIDE_BY_SIDE, image, lambda q: q.count(".union(") == 3)) > 0.85


# A block with a square pocket in its top face, too deep for its far end to show beside its opening.
BLOCK_WITH_DEEP_POCKET = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(-0.5, -0.5, -0.5), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = wp0.add(wp0.moveTo(0.0, 0.0).lineTo(1.0, 0.0).lineTo(1.0, 0.8).lineTo(0.0, 0.8).close()).extrude(1.0)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(-0.15, -0.1, 0.5), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = solid.cut(wp1.add(wp1.moveTo(0.0, 0.0).lineTo(0.3, 0.0).lineTo(0.3, 0.3).lineTo(0.0, 0.3).close()).extrude(-0.25))\n")


def test_a_pockets_opening_is_not_cut_through_the_prism(pool):
    image = _image_of(pool, BLOCK_WITH_DEEP_POCKET)
    prisms = _fit_ious(pool, BLOCK_WITH_DEEP_POCKET, image, lambda q: q.count("Workplane(") == 1)
    pocketed = _fit_ious(pool, BLOCK_WITH_DEEP_POCKET, image, lambda q: ".cut(" in q)
    assert pocketed and max(pocketed) > 0.95  # the floor is seen: the pocket is found
    assert prisms and min(prisms) > 0.9, prisms  # and no prism cuts its opening through (0.84)


# A block with two tall posts standing on it: the block's cap swept alone covers 0.75 of the silhouette.
POSTS_ON_BLOCK = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(-0.5, -0.17, -0.4), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = wp0.add(wp0.moveTo(0.0, 0.0).lineTo(1.0, 0.0).lineTo(1.0, 0.35).lineTo(0.0, 0.35).close()).extrude(0.4)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(-0.2, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = solid.union(wp1.add(wp1.moveTo(0.0, 0.0).circle(0.08)).extrude(0.5))\n"
    "wp2 = cq.Workplane(cq.Plane(cq.Vector(0.25, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = solid.union(wp2.add(wp2.moveTo(0.0, 0.0).circle(0.08)).extrude(0.9))\n")


def test_posts_too_tall_for_their_base_to_fit_alone_still_stand_on_it(pool, monkeypatch):
    import decoding.prism as prism

    monkeypatch.setattr(prism, "_union", lambda *args: [])  # the bosses alone, not a union of prisms
    image = _image_of(pool, POSTS_ON_BLOCK)
    pixels = _prism_pixels(image)
    assert prism.MIN_BOSSED_FIT <= prism.find_caps(pixels, prism.planar_regions(pixels))[0].fit < prism.MIN_FIT
    bossed = _fit_ious(pool, POSTS_ON_BLOCK, image, lambda q: ".union(" in q)
    assert len(bossed) == 1 and bossed[0] > 0.9
    monkeypatch.setattr(prism, "MIN_BOSSED_FIT", prism.MIN_FIT)  # only caps that fit alone stand bosses
    assert not _fit_ious(pool, POSTS_ON_BLOCK, image, lambda q: ".union(" in q)


# A plate with a block and a post standing side by side: their feet hide one patch of the plate.
BLOCK_AND_POST_SIDE_BY_SIDE = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(-0.6, -0.4, -0.1), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = wp0.add(wp0.moveTo(0.0, 0.0).lineTo(1.2, 0.0).lineTo(1.2, 0.8).lineTo(0.0, 0.8).close()).extrude(0.1)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(-0.35, -0.15, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = solid.union(wp1.add(wp1.moveTo(0.0, 0.0).lineTo(0.35, 0.0).lineTo(0.35, 0.3).lineTo(0.0, 0.3).close()).extrude(0.15))\n"
    "wp2 = cq.Workplane(cq.Plane(cq.Vector(0.15, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = solid.union(wp2.add(wp2.moveTo(0.0, 0.0).circle(0.15)).extrude(0.2))\n")


def test_bosses_standing_side_by_side_in_one_hole_all_stand(pool, monkeypatch):
    import decoding.prism as prism

    image = _image_of(pool, BLOCK_AND_POST_SIDE_BY_SIDE)
    three = _fit_ious(pool, BLOCK_AND_POST_SIDE_BY_SIDE, image, lambda q: q.count("Workplane(") == 3)
    assert three and max(three) > 0.9
    monkeypatch.setattr(prism, "TOPS_PER_HOLE", 1)  # one top per hole: neither covers the patch alone
    assert max(_fit_ious(pool, BLOCK_AND_POST_SIDE_BY_SIDE, image, lambda q: True)) < 0.5


# A block with a deep square pocket in its right (+x) face: the pocket's near walls hide most of its floor
# (a sliver of it is seen).
BLOCK_WITH_DEEP_POCKET = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, -0.6, -0.35), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = wp0.add(wp0.moveTo(0.0, 0.0).lineTo(1.5, 0.0).lineTo(1.5, 1.2).lineTo(0.0, 1.2).close()).extrude(0.75)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(0.75, -0.2, -0.25), cq.Vector(0.0, 1.0, 0.0), cq.Vector(1.0, 0.0, 0.0)))\n"
    "solid = solid.cut(wp1.add(wp1.moveTo(0.0, 0.0).lineTo(0.4, 0.0).lineTo(0.4, 0.45).lineTo(0.0, 0.45).close()).extrude(-0.3))\n")


def test_a_deep_pocket_whose_walls_hide_its_floor_is_cut_to_its_depth(pool, monkeypatch):
    import decoding.prism as prism

    image = _image_of(pool, BLOCK_WITH_DEEP_POCKET)
    cut = _fit_ious(pool, BLOCK_WITH_DEEP_POCKET, image, lambda q: ".cut(" in q)
    assert cut and max(cut) > 0.95, cut
    monkeypatch.setattr(prism, "HIDDEN_FLOOR", 1.0)  # a floor must be seen whole: the opening is read as a hole through
    assert not _fit_ious(pool, BLOCK_WITH_DEEP_POCKET, image, lambda q: ".cut(" in q)
    assert max(_fit_ious(pool, BLOCK_WITH_DEEP_POCKET, image, lambda q: True)) < 0.95


# A cup whose floor has five holes (GenCAD 00387732's kind): the middle one touches the four round it, so
# the floor region holds one hole of several arcs and one apart, and its near wall hides part of the holes
# beside it (notches in the floor's seen edge).
CUP_WITH_HOLED_FLOOR = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "ring = wp0.add(wp0.moveTo(0.0, 0.0).circle(0.75)).add(wp0.moveTo(0.0, 0.0).circle(0.64)).extrude(0.4)\n"
    "floor = wp0.add(wp0.moveTo(0.0, 0.0).circle(0.64)).add(wp0.moveTo(0.0, 0.0).circle(0.2))"
    ".add(wp0.moveTo(0.37, 0.0).circle(0.17)).add(wp0.moveTo(-0.37, 0.0).circle(0.17))"
    ".add(wp0.moveTo(0.0, 0.37).circle(0.17)).add(wp0.moveTo(0.0, -0.37).circle(0.17)).extrude(0.16)\n"
    "solid = ring.union(floor)\n")


def test_holes_through_a_pocket_floor_that_touch_or_hide_behind_its_wall_are_cut_as_circles(pool, monkeypatch):
    cut, polygons = _fit_ious_without(pool, monkeypatch, CUP_WITH_HOLED_FLOOR, lambda q: ".cut(" in q,
                                      "ARC_POINTS", 10 ** 6)  # no circle is looked for along the floor's contour
    assert cut and polygons and max(cut) > max(polygons) + 0.05, (cut, polygons)


# A post extruded symmetrically from its middle (GenCAD's both=True): its side is split there, a line drawn round it.
POST_BOTH_WAYS = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = wp0.add(wp0.moveTo(0.0, 0.0).circle(0.4)).add(wp0.moveTo(0.15, 0.0).circle(0.08)).extrude(0.6, both=True)\n")


def test_a_symmetric_extrusion_is_chosen_with_the_line_round_its_middle(pool):
    from decoding.prism import framed_prisms
    from decoding.rerank import Candidate, combined_score
    from reward.score import RenderTarget

    objective = FIT_OBJECTIVE
    for code, both in ((POST_BOTH_WAYS, True), (POST_BOTH_WAYS.replace("extrude(0.6, both=True)", "extrude(1.2)"), False)):
        image = _image_of(pool, code)
        target = RenderTarget.of(image)
        candidates = [Candidate(q, source="primitive", frame=frame) for q, frame in framed_prisms(image, pool, objective, quick=True)]
        for c in candidates:
            c.result = pool.run(c.code, ExecOptions(want_geometry=True))
            combined_score(c, target)
        chosen = max(candidates, key=lambda c: c.total)
        assert ("both=True" in chosen.code) == both, (both, [(c.total, "both=True" in c.code) for c in candidates])


def test_the_coarse_to_fine_grid_finds_the_best_of_all_where_the_score_is_smooth():
    from decoding.prism import DEPTH_STEPS, _best_coarse_to_fine

    values = np.arange(DEPTH_STEPS, dtype=float)
    for peak in (0, 3, 6, 7, 12, 4.6):  # odd peaks lie between two coarse points
        tried = []

        def score(v: float) -> float:
            tried.append(v)
            return -abs(v - peak)

        assert _best_coarse_to_fine(values, score) == round(peak)
        assert len(tried) <= (DEPTH_STEPS + 1) // 2 + 2 and len(set(tried)) == len(tried)  # 9 of 13, none twice


# A plate with a block and a disc standing on it beside a hole through it (validation row 000049's
# program): the hole lies in the block's hole in the plate's face, and lengthens the block's sweep.
BLOCK_BESIDE_A_HOLE = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(-0.578125, -0.484375, -0.40234375), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, -1.0, 0.0)))\n"
    "solid = wp0.add(wp0.moveTo(1.05078, 0.0).lineTo(1.05078, 0.88487).lineTo(0.0, 0.88487).lineTo(0.0, 0.0).close())"
    ".add(wp0.moveTo(0.39819, 0.40925).circle(0.13273)).extrude(0.125)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(0.0078125, -0.609375, -0.13671875), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, -1.0, 0.0)))\n"
    "solid = solid.union(wp1.add(wp1.moveTo(0.15485, 0.0).circle(0.15485)).extrude(0.14453125))\n"
    "wp2 = cq.Workplane(cq.Plane(cq.Vector(-0.546875, -0.609375, -0.34765625), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, -1.0, 0.0)))\n"
    "solid = solid.union(wp2.add(wp2.moveTo(0.37607, 0.0).lineTo(0.37607, 0.36501).lineTo(0.0, 0.36501).lineTo(0.0, 0.0).close()).extrude(0.125))\n")


def test_a_boss_beside_a_hole_through_its_face_stands_at_its_own_height(pool, monkeypatch):
    climbed, kept = _fit_ious_without(pool, monkeypatch, BLOCK_BESIDE_A_HOLE, lambda q: q.count(".union(") == 2, "BOSS_CLIMB", 0.0)
    assert climbed and kept and max(climbed) > 0.8 and max(climbed) > max(kept) + 0.1, (climbed, kept)


# A block with a slab standing out of its front face and a peg standing on the slab (validation row
# 000417's program): the slab's back is hidden by the block, and a slab that runs on into the block
# renders alike; the program has it start on the block's face.
SLAB_ON_A_BLOCK = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, -0.67578125, -0.30078125), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, -1.0, 0.0)))\n"
    "solid = wp0.add(wp0.moveTo(1.5, 0.0).lineTo(1.5, 0.33984).lineTo(0.0, 0.33984).lineTo(0.0, 0.0).close()).extrude(0.16015625)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(-0.7109375, -0.8359375, -0.21875), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, -1.0, 0.0)))\n"
    "solid = solid.union(wp1.add(wp1.moveTo(0.70898, 0.0).lineTo(0.70898, 0.04102).lineTo(0.0, 0.04102).lineTo(0.0, 0.0).close())"
    ".extrude(0.26171875))\n"
    "wp2 = cq.Workplane(cq.Plane(cq.Vector(-0.453125, -0.8359375, -0.0859375), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, -1.0, 0.0)))\n"
    "solid = solid.union(wp2.add(wp2.moveTo(0.06445, 0.0).circle(0.06445)).extrude(0.18359375))\n")


def _union_needs(pool, monkeypatch, code: str, name: str) -> None:
    """The unions fit to ``code``'s picture score above 0.85, and 0.1 above those fit with
    ``decoding.prism``'s ``name`` switched off (it returns None)."""
    on, off = _fit_ious_without(pool, monkeypatch, code, lambda q: ".union(" in q, name, lambda *args: None)
    assert on and off and max(on) > 0.85 and max(on) > max(off) + 0.1, (on, off)


def test_a_body_whose_back_is_hidden_stands_on_a_face_of_the_others(pool, monkeypatch):
    _union_needs(pool, monkeypatch, SLAB_ON_A_BLOCK, "_snapped")


def test_face_levels_are_the_planes_of_faces_square_to_the_axis(pool):
    from decoding.prism import Body, _execute, _face_levels, plane_basis

    square = np.array([[30.0, 30.0], [50.0, 30.0], [50.0, 42.0], [30.0, 42.0]])  # 20 by 12, a hole in it
    for axis in range(3):
        g = _execute(Body(axis, square, ((40.0, 36.0, 3.0),), 10.0, (5.0, 5.0, 5.0)), pool)
        x_dir, y_dir, _ = plane_basis(axis)
        for along, width in ((axis, 10.0), (int(np.argmax(np.abs(x_dir))), 20.0), (int(np.argmax(np.abs(y_dir))), 12.0)):
            levels = _face_levels(g, along)  # the hole's wall is curved: only the two flat ends count
            assert len(levels) == 2 and np.isclose(levels[1] - levels[0], width, atol=2e-3), (axis, along, levels)
        assert np.isclose(_face_levels(g, axis), 5.0, atol=2e-3).any()  # the cap lies in the plane through the shift


# A block with a bar running out of its back face (validation row 000169's program, without its
# pocket and hole): the bar's top and side are its caps, the block hides its foot, and a bar moved
# along the view direction keeps its outline; only where it reaches the block's face does the
# picture's framing (the window fit of the whole part's bounding box) come out right.
BAR_OUT_OF_THE_BACK = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(-0.47265625, -0.1171875, -0.05859375), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 1.0, 0.0)))\n"
    "solid = wp0.add(wp0.moveTo(0.609375, 0.0).lineTo(0.609375, 0.3999).lineTo(0.0, 0.3999).lineTo(0.0, 0.0).close()).extrude(0.6015625)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(-0.2265625, 0.484375, -0.12890625), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 1.0, 0.0)))\n"
    "solid = solid.union(wp1.add(wp1.moveTo(0.31421, 0.0).lineTo(0.31421, 0.16187).lineTo(0.0, 0.16187).lineTo(0.0, 0.0).close())"
    ".extrude(1.03515625))\n")


def test_a_bar_whose_foot_is_hidden_reaches_the_face_it_runs_out_of(pool, monkeypatch):
    _union_needs(pool, monkeypatch, BAR_OUT_OF_THE_BACK, "_reaching")


def test_the_framing_error_is_how_far_the_window_fit_moves_a_mesh(pool):
    from cad.render import RIGHT, UP, VIEW_DIR
    from decoding.primitives import _stretched
    from decoding.prism import SIZE_PX, Body, _execute, _framing_error

    square = np.array([[0.0, 0.0], [120.0, 0.0], [120.0, 50.0], [0.0, 50.0]])
    g = _execute(Body(2, square, (), 80.0), pool)
    v = np.asarray(g.vertices)
    lo, hi = v.min(0), v.max(0)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    screen = np.stack([corners @ RIGHT, -(corners @ UP)], axis=1)
    ext = screen.max(0) - screen.min(0)
    scale = min(400 / ext[0], 300 / ext[1])  # GenCAD's window: 400 by 300 pixels of 448
    centre = (lo + hi) / 2 * scale
    fitted = _stretched(g, scale, (SIZE_PX / 2 - centre @ RIGHT) * RIGHT - (SIZE_PX / 2 + centre @ UP) * UP)
    assert _framing_error(fitted) < 1e-6  # drawn where the window fit draws it
    for t in (-40.0, 25.0):
        assert _framing_error(_stretched(fitted, 1.0, t * VIEW_DIR)) < 1e-6  # the view direction moves nothing on the screen
    assert np.isclose(_framing_error(_stretched(fitted, 1.0, 7.0 * RIGHT)), 7.0)  # seven pixels to the right of the window
    assert _framing_error(_stretched(fitted, 0.8, 0.0)) > 10.0  # too small: the window fit enlarges it


def test_places_that_render_alike_are_told_apart_by_their_framing_where_the_bodies_explain_it():
    from decoding.prism import FRAMING_SLACK, FRAMING_TRUST, _framed_pick

    best = ("best", (3.9, 6.0))  # (fit, framing error in pixels)
    assert _framed_pick([best, ("framed", (3.9 - FRAMING_SLACK / 2, 0.5))]) == "framed"
    assert _framed_pick([best, ("worse", (3.9 - 2 * FRAMING_SLACK, 0.5))]) == "best"  # it renders clearly worse
    assert _framed_pick([best, ("unexplained", (3.9 - FRAMING_SLACK / 2, FRAMING_TRUST + 1.0))]) == "best"  # no place frames it: the fit decides
    assert _framed_pick([("first", (1.0, 9.0)), ("second", (1.0, 9.0))]) == "first"


def test_a_height_best_at_the_grids_end_climbs_on_while_the_fit_improves():
    from decoding.prism import _climbed

    grid = 10.0 * np.exp(np.linspace(-0.15, 0.15, 7))
    bounds = 10.0 * np.exp([-0.6, 0.6])
    ratio = grid[1] / grid[0]
    for peak, expected in ((10.0, 10.0), (7.0, 10.0 * np.exp(-0.15) / ratio ** 4), (13.5, 10.0 * np.exp(0.15) * ratio ** 3),
                           (3.0, None), (30.0, None)):
        tried = []

        def score(v: float) -> float:
            tried.append(v)
            return -abs(np.log(v / peak))

        got = _climbed(grid, score, bounds)
        if expected is None:  # the peak lies beyond the bounds: the climb stops at the last step within them
            assert bounds[0] <= got <= bounds[1] and (got * ratio > bounds[1] or got / ratio < bounds[0]), (peak, got)
        else:
            assert np.isclose(got, expected), (peak, got, expected)
        assert len(set(tried)) == len(tried)  # no height scored twice
    flat = _climbed(grid, lambda v: 0.0, bounds)
    assert flat == grid[0]  # a tie at the end does not climb: each step must fit better


def test_a_raised_boss_is_the_boss_executed_at_that_height(pool):
    from decoding.prism import Body, _along, _execute, _raised

    square = np.array([[30.0, 30.0], [50.0, 30.0], [50.0, 42.0], [30.0, 42.0]])
    for axis in range(3):
        boss = lambda h: Body(axis, square, ((40.0, 36.0, 3.0),), h, tuple(h * _along(axis)))  # noqa: E731 - a tube
        start = _execute(boss(10.0), pool)
        for height in (6.5, 14.0):
            moved, executed = _raised(start, axis, 10.0, height), _execute(boss(height), pool)
            for a, b in ((moved.vertices, executed.vertices), (moved.edges, executed.edges)):
                a, b = (np.asarray(x).reshape(-1, 3) for x in (a, b))
                assert a.shape == b.shape and np.allclose(np.sort(a, 0), np.sort(b, 0), atol=1e-6), (axis, height)


def test_prisms_join_a_block_standing_on_a_disc(pool):
    from cad.geometry import best_iou
    from decoding.prism import fit_prisms

    truth = BLOCK_ON_DISC
    gt = pool.run(truth, ExecOptions(want_geometry=True))
    fits = [c for c in fit_prisms(_image_of(pool, truth), pool, FIT_OBJECTIVE)
            if ".union(" in c]
    union = next(q for q in fits if q.count(".circle(") == 1)  # the disc, half hidden by the block, is still a circle
    pred = pool.run(union, ExecOptions(want_geometry=True))
    assert pred.n_solids == 1 and best_iou(pred.geometry, gt.geometry).iou > 0.8, union


def _prism_ious(pool, truth: str) -> dict[str, float]:
    """The prism candidates read off the render of ``truth``, with their Best IoU against it."""
    from cad.geometry import best_iou
    from decoding.prism import fit_prisms

    gt = pool.run(truth, ExecOptions(want_geometry=True))
    fits = fit_prisms(_image_of(pool, truth), pool, FIT_OBJECTIVE)
    return {c: best_iou(pool.run(c, ExecOptions(want_geometry=True)).geometry, gt.geometry).iou for c in fits}


def test_prisms_read_a_pallet_whose_end_face_is_thin_strips(pool):
    """The end face of a pallet (a thin deck on three legs) is a few pixels wide: its sweep must
    still cover the silhouette, and the prism read off it must beat the box around it."""
    truth = ("import cadquery as cq\nwp=cq.Workplane(cq.Plane(cq.Vector(0,0,0),cq.Vector(1,0,0),cq.Vector(0,-1,0)))\n"
             "loop0=wp.moveTo(0.04,0).lineTo(0.04,0.06).lineTo(0.3,0.06).lineTo(0.3,0).lineTo(0.33,0).lineTo(0.33,0.06)"
             ".lineTo(0.59,0.06).lineTo(0.59,0).lineTo(0.63,0).lineTo(0.63,0.075).lineTo(0,0.075).lineTo(0,0).close()\n"
             "solid=wp.add(loop0).extrude(0.75)\n")
    ious = _prism_ious(pool, truth)
    assert max(ious.values()) > 0.6, ious  # the box around it: 0.24


def test_prisms_stand_a_boss_on_the_cap_it_hides_a_patch_of(pool):
    """A short block on a wide plate (BOSSED_PLATE) adds too little to the silhouette to be read as a second cap,
    but it leaves a hole in the plate's cap with its top inside: the boss candidate puts it back."""
    iou = _prism_ious(pool, BOSSED_PLATE)
    bossed = max((c for c in iou if ".union(" in c), key=iou.get)  # the plate's cap with the block (the side face's: 0.11)
    assert pool.run(bossed, ExecOptions(want_geometry=True)).n_solids == 1, iou
    assert iou[bossed] > 0.85 and iou[bossed] > max(iou.values()) - 1e-9, iou  # the plate alone: 0.79


def test_prisms_stand_a_boss_in_each_hole_of_the_cap(pool):
    """A block and a cylinder standing apart on one plate each leave their own hole in the plate's
    cap: the boss candidate stands both on it (three sketches, one solid)."""
    truth = ("import cadquery as cq\nwp0=cq.Workplane(cq.Plane(cq.Vector(0,0,0),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
             "solid=wp0.add(wp0.moveTo(0,0).lineTo(1.4,0).lineTo(1.4,1.0).lineTo(0,1.0).close()).extrude(0.15)\n"
             "wp1=cq.Workplane(cq.Plane(cq.Vector(0.2,0.3,0.15),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
             "solid=solid.union(wp1.add(wp1.moveTo(0,0).lineTo(0.4,0).lineTo(0.4,0.3).lineTo(0,0.3).close()).extrude(0.15))\n"
             "wp2=cq.Workplane(cq.Plane(cq.Vector(1.0,0.5,0.15),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
             "solid=solid.union(wp2.add(wp2.moveTo(0,0).circle(0.15)).extrude(0.2))\n")
    iou = _prism_ious(pool, truth)
    bossed = [c for c in iou if c.count(".union(") == 2]
    assert len(bossed) == 1 and pool.run(bossed[0], ExecOptions(want_geometry=True)).n_solids == 1, iou
    assert iou[bossed[0]] > 0.85 and iou[bossed[0]] > max(iou.values()) - 1e-9, iou


def test_prisms_cut_a_pocket_with_a_hole_in_its_floor_into_the_cap(pool):
    """A pocket in a thick plate opens a hole in the plate's cap with its floor inside: the pocket
    candidate cuts it back to the depth of the render, and the hole seen in the floor through."""
    truth = ("import cadquery as cq\nwp0=cq.Workplane(cq.Plane(cq.Vector(0,0,0),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
             "solid=wp0.add(wp0.moveTo(0,0).lineTo(1.4,0).lineTo(1.4,1.0).lineTo(0,1.0).close()).extrude(0.3)\n"
             "wp1=cq.Workplane(cq.Plane(cq.Vector(0.3,0.25,0.3),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
             "solid=solid.cut(wp1.add(wp1.moveTo(0,0).lineTo(0.7,0).lineTo(0.7,0.5).lineTo(0,0.5).close()).extrude(-0.15))\n"
             "wp2=cq.Workplane(cq.Plane(cq.Vector(0.5,0.62,0.15),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
             "solid=solid.cut(wp2.add(wp2.moveTo(0,0).circle(0.1)).extrude(-0.15))\n")
    iou = _prism_ious(pool, truth)
    pocketed = [c for c in iou if ".cut(" in c]
    assert len(pocketed) == 1 and pocketed[0].count(".cut(") == 2 and pocketed[0].count(".circle(") == 1, iou
    assert pool.run(pocketed[0], ExecOptions(want_geometry=True)).n_solids == 1
    assert iou[pocketed[0]] > 0.9 and iou[pocketed[0]] > max(iou.values()) - 1e-9, iou


def test_prisms_stand_bosses_and_cut_pockets_on_one_cap(pool):
    """A block standing on a plate and a pocket cut into it beside the block: one candidate has
    both on the plate's prism."""
    truth = ("import cadquery as cq\nwp0=cq.Workplane(cq.Plane(cq.Vector(0,0,0),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
             "solid=wp0.add(wp0.moveTo(0,0).lineTo(1.4,0).lineTo(1.4,1.0).lineTo(0,1.0).close()).extrude(0.25)\n"
             "wp1=cq.Workplane(cq.Plane(cq.Vector(0.15,0.3,0.25),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
             "solid=solid.union(wp1.add(wp1.moveTo(0,0).lineTo(0.4,0).lineTo(0.4,0.4).lineTo(0,0.4).close()).extrude(0.15))\n"
             "wp2=cq.Workplane(cq.Plane(cq.Vector(0.8,0.25,0.25),cq.Vector(1,0,0),cq.Vector(0,0,1)))\n"
             "solid=solid.cut(wp2.add(wp2.moveTo(0,0).lineTo(0.45,0).lineTo(0.45,0.5).lineTo(0,0.5).close()).extrude(-0.12))\n")
    iou = _prism_ious(pool, truth)
    both = [c for c in iou if ".union(" in c and ".cut(" in c]
    assert len(both) == 1 and pool.run(both[0], ExecOptions(want_geometry=True)).n_solids == 1, iou
    assert iou[both[0]] > 0.9 and iou[both[0]] > max(iou.values()) - 1e-9, iou


def test_a_pockets_moved_floor_is_the_pocket_cut_to_that_depth(pool):
    """The pocket depth fit moves the floor of one executed mesh (``_deepened``): the result is the
    mesh CadQuery makes at that depth, walls, the hole through the floor and drawn edges included."""
    import trimesh

    from cad.render import render_geometry
    from decoding.prism import Body, _deepened, _execute

    base = Body(2, np.array([[0.0, 0.0], [120.0, 0.0], [120.0, 80.0], [0.0, 80.0]]), (), 30.0)
    opening = np.array([[20.0, 20.0], [70.0, 20.0], [70.0, 60.0], [20.0, 60.0]])

    def pocket(depth: float) -> list[Body]:
        return [base, Body(2, opening, (), depth + 1.0, (0.0, 0.0, 1.0), cut=True),
                Body(2, (45.0, 40.0, 8.0), (), 31.0, (0.0, 0.0, 1.0 - depth), cut=True)]  # through the floor

    moved, made = _deepened(_execute(pocket(10.0), pool), 2, opening, 10.0, 18.0), _execute(pocket(18.0), pool)
    volume = [trimesh.Trimesh(g.vertices, g.triangles).volume for g in (moved, made)]
    assert volume[0] == pytest.approx(volume[1], rel=1e-6) and volume[0] < 120 * 80 * 30 - 50 * 40 * 17
    a, b = (render_geometry(g) for g in (moved, made))
    assert (a != b).any(-1).mean() < 1e-3


def test_the_flat_part_of_a_half_shaded_region_is_a_planar_region():
    """A planar face that meets a curved one along an edge drawn too faintly to part them (one
    region, half flat grey, half shaded) still gives its flat half as a region."""
    from cad.render import GENCAD_STYLE
    from decoding.prism import planar_regions

    pixels = np.full((448, 448, 3), 255, np.uint8)
    pixels[100:300, 100:300] = 40  # the outline, drawn (below 60 in every channel)
    pixels[102:298, 102:200] = GENCAD_STYLE.face_rgb  # the planar face
    pixels[102:298, 200:298] = np.array(GENCAD_STYLE.face_rgb) + 25  # the curved face's shading, no line between
    regions = planar_regions(pixels)
    flat = np.zeros((448, 448), bool)
    flat[102:298, 102:200] = True
    assert any(np.array_equal(r, flat) for r in regions), [int(r.sum()) for r in regions]


def test_the_second_body_is_searched_where_it_meets_the_first():
    from types import SimpleNamespace

    from decoding.prism import _meet, _meeting

    a = SimpleNamespace(vertices=np.array([[0, 0, 0], [1, 1, 0.2]], float))  # a thin plate
    b = SimpleNamespace(vertices=np.array([[3, -2, 3], [3.3, -1.7, 3.2]], float))  # a small block away from it
    view = np.array([1.0, -1.0, 1.0]) / np.sqrt(3)
    low, high = _meeting(a, b, view)
    for t in np.linspace(low, high, 7):
        assert _meet(a, SimpleNamespace(vertices=b.vertices + t * view))
    for t in (low - 1e-3, high + 1e-3):
        assert not _meet(a, SimpleNamespace(vertices=b.vertices + t * view))
    assert _meeting(a, SimpleNamespace(vertices=b.vertices + [0, 5, 5]), view) is None  # off the line of sight


def test_the_sweeps_running_iou_is_the_iou_of_what_it_swept():
    """sweep keeps the IoU up to date from the pixels each step adds; it must give what sweeping
    the whole mask and measuring the IoU after every step gives, off the frame's edges too."""
    from decoding.prism import sweep
    from reward.score import mask_iou

    def reference(region, target, direction, base):
        step = direction / np.abs(direction).max()
        swept, h, w = region | base, *region.shape
        best = (mask_iou(swept, target), 0, swept.copy())
        for t in range(1, int(np.hypot(*target.shape))):
            dx, dy = int(round(t * step[0])), int(round(t * step[1]))
            moved = np.zeros_like(region)
            if abs(dx) < w and abs(dy) < h:
                moved[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = region[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
            swept |= moved
            iou = mask_iou(swept, target)
            if iou > best[0]:
                best = (iou, t, swept.copy())
            elif iou < best[0] - 0.05:
                break
        return best

    rng = np.random.default_rng(0)
    for _ in range(20):
        region, target, base = (np.zeros((60, 80), bool) for _ in range(3))
        y, x = rng.integers(0, 50), rng.integers(0, 70)
        region[y:y + rng.integers(2, 12), x:x + rng.integers(2, 12)] = True
        target[rng.integers(0, 30):rng.integers(30, 60), rng.integers(0, 40):rng.integers(40, 80)] = True
        base[20:25, 30:50] = rng.random() < 0.5
        direction = rng.normal(size=2)
        got, want = sweep(region, target, direction, base), reference(region, target, direction, base)
        assert got[:2] == want[:2] and np.array_equal(got[2], want[2])
    for _ in range(40):  # a small target the region passes while the IoU is still low: sweep stops there early
        region, target, base = (np.zeros((60, 80), bool) for _ in range(3))
        region[rng.integers(0, 50):, rng.integers(0, 70):][:rng.integers(2, 10), :rng.integers(2, 10)] = True
        y, x = rng.integers(0, 56), rng.integers(0, 76)
        target[y:y + rng.integers(1, 5), x:x + rng.integers(1, 5)] = True
        direction = rng.normal(size=2)
        got, want = sweep(region, target, direction, base), reference(region, target, direction, base)
        assert got[:2] == want[:2] and np.array_equal(got[2], want[2])


def test_holes_filled_on_the_regions_box_is_binary_fill_holes():
    from scipy.ndimage import binary_fill_holes

    from decoding.prism import _holes_filled

    rng = np.random.default_rng(1)
    for _ in range(30):
        region = np.zeros((50, 70), bool)
        y, x, h, w = rng.integers(0, 40), rng.integers(0, 60), rng.integers(3, 20), rng.integers(3, 20)
        region[y:y + h, x:x + w] = True  # a frame (cut by the image's edge at times) around random pixels
        inner = region[y + 1:y + h - 1, x + 1:x + w - 1]
        inner[...] = rng.random(inner.shape) < 0.6
        assert np.array_equal(_holes_filled(region), binary_fill_holes(region))
    assert not _holes_filled(np.zeros((5, 5), bool)).any()


def test_fill_holes_is_binary_fill_holes():
    from scipy.ndimage import binary_fill_holes

    from decoding.prism import fill_holes

    rng = np.random.default_rng(2)
    for _ in range(200):  # random masks: holes of every shape, some joined to the border only diagonally
        mask = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.uniform(0.2, 0.9)
        assert np.array_equal(fill_holes(mask), binary_fill_holes(mask))
    ring = np.ones((5, 5), bool)
    ring[2, 2] = False
    assert fill_holes(ring).all() and not fill_holes(~ring)[0, 0]


# A block with a post standing on its top face: the post's top lies above the face, outside it.
POST_ON_BLOCK = (
    "import cadquery as cq\n"
    "wp0 = cq.Workplane(cq.Plane(cq.Vector(-0.5, -0.5, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = wp0.add(wp0.moveTo(0.0, 0.0).lineTo(1.0, 0.0).lineTo(1.0, 0.8).lineTo(0.0, 0.8).close()).extrude(0.4)\n"
    "wp1 = cq.Workplane(cq.Plane(cq.Vector(-0.4, 0.2, 0.4), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n"
    "solid = solid.union(wp1.add(wp1.moveTo(0.07, 0.0).circle(0.07)).extrude(0.9))\n")


def test_a_post_whose_top_stands_above_the_face_it_stands_on_is_a_boss(pool, monkeypatch):
    import decoding.prism as prism

    image = _image_of(pool, POST_ON_BLOCK)
    two = _fit_ious(pool, POST_ON_BLOCK, image, lambda q: q.count("Workplane(") == 2)
    assert len(two) == 1 and two[0] > 0.9
    monkeypatch.setattr(prism, "_standing_tops", lambda *args: [])  # only tops inside the face's hole
    assert not _fit_ious(pool, POST_ON_BLOCK, image, lambda q: q.count("Workplane(") == 2)
