"""The evaluation harness: every configuration, reports, plots, and a cached second run."""
import csv
import json

import pytest
import torch

import scripts.eval_all as eval_all
from sft.image_processing import ImageProcessor
from sft.model import Img2CadConfig, build_model
from sft.tokenizer import train_tokenizer
from tests.conftest import REFERENCE
from tests.test_decoding import TINY


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, reference_rows):
    path = tmp_path_factory.mktemp("model") / "final"
    tok = train_tokenizer([r["cadquery"] for r in reference_rows], vocab_size=300)
    torch.manual_seed(0)
    model = build_model(Img2CadConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **TINY))
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    ImageProcessor(64, 1).save_pretrained(path)
    (path / "training_metrics.json").write_text(json.dumps({"train_seconds": 12.5, "peak_memory_mb": 321.0}))
    return path


def test_plan_covers_the_study_and_runs_shared_configurations_once():
    variants = eval_all.plan(n=6, k=2, ns=(1, 3, 6, 10), dpo=True)
    keys = [v.key for v in variants]
    assert len(keys) == len(set(keys))
    main = [v.labels["main"] for v in variants if "main" in v.labels]
    assert main[0].startswith("retrieval") and "beam 4" in main[1] and main[-1].startswith("+ DPO")
    assert sorted(v.cfg.n for v in variants if "bestofn" in v.labels) == [1, 3, 6, 10]
    assert [v.labels["grammar"].split(":")[0] for v in variants if "grammar" in v.labels] == [
        "none", "validate + repair only", "basic", "full"]
    # none, heuristic, full, full + refinement, full + prisms, full + primitives, full + primitives + refinement
    assert len([v for v in variants if "rerank" in v.labels]) == 7
    assert [v.cfg.primitives for v in variants if "rerank" in v.labels] == [False] * 5 + [True] * 2
    assert [v.cfg.prisms for v in variants if "rerank" in v.labels] == [False] * 4 + [True] + [False] * 2
    # best-of-6 serves the main table and the N ablation from one cache entry
    assert [v for v in variants if v.key == "bestof6"][0].labels.keys() == {"bestofn", "main"}


def test_lookup_bands_compare_each_configuration_with_the_program_it_could_have_copied():
    def record(key, label, ious):
        return {"data": "d", "key": key, "labels": {"main": label}, "rows": [{"id": i, "iou": v} for i, v in ious.items()]}

    lookup = record("retrieval", "retrieval", {"a": 0.3, "b": 0.4, "c": 0.97, "d": 0.99, "e": 0.85})
    beam = record("beam4", "SFT, beam 4", {"a": 0.6, "b": 0.405, "c": None, "d": 0.5, "e": 0.85})
    head, body, rows = eval_all.against_lookup([lookup, beam])
    assert len(body) == len(rows) == 3 and len(head) == len(body[0])  # the lookup is not compared with itself
    low, mid, top = rows
    assert (low["band"], low["ids"], low["better"], low["worse"]) == ([0.0, 0.5], 2, 1, 0)  # 0.405 is a tie
    assert low["lookup_iou"] == pytest.approx(0.35) and low["iou_zero"] == pytest.approx(0.5025)
    assert (mid["band"], mid["ids"], mid["better"], mid["worse"]) == ([0.8, 0.95], 1, 0, 0)
    assert (top["band"], top["ids"], top["better"], top["worse"]) == ([0.95, 1.0], 2, 0, 2)  # a failure counts as 0
    assert top["iou_zero"] == pytest.approx(0.25)


def test_structure_table_splits_each_configuration_by_whether_it_wrote_the_true_structure():
    def record(key, label, rows):
        return {"data": "d", "key": key, "labels": {"main": label},
                "rows": [{"id": i, "iou": v, "same_structure": same} for i, (v, same) in rows.items()]}

    lookup = record("retrieval", "retrieval", {"a": (0.9, True), "b": (0.6, False), "c": (0.7, False)})
    beam = record("beam4", "SFT, beam 4", {"a": (0.5, True), "b": (None, True), "c": (0.8, False)})
    head, body, rows = eval_all.by_structure([lookup, beam])
    assert len(body) == len(rows) == 2 and len(head) == len(body[0])
    true, other = rows
    assert (true["structure"], true["ids"], true["executes"], true["lookup_same"]) == ("true", 2, 1, 1)
    assert true["iou_zero"] == pytest.approx(0.25) and true["lookup_iou"] == pytest.approx(0.75)
    assert (other["ids"], other["iou_zero"], other["lookup_iou"]) == (1, pytest.approx(0.8), pytest.approx(0.7))
    del beam["rows"][0]["same_structure"]  # scored before rows carried it: left out, not counted as another structure
    assert eval_all.by_structure([lookup, beam])[2] == []


def test_eval_all_writes_every_report_and_a_second_run_costs_nothing(tmp_path, model_dir, monkeypatch):
    args = ["--model", str(model_dir), "--data", f"real={REFERENCE / 'samples.jsonl'}",
            "--retrieval-data", str(REFERENCE / "samples.jsonl"), "--results", str(tmp_path), "--run", "t",
            "--limit", "3", "--n", "2", "--k", "1", "--ns", "1,2", "--refine", "4", "--max-new-tokens", "16", "--examples", "3", "--quiet"]
    assert eval_all.main(args) == 0
    out = tmp_path / "t"
    for name in ("table.md", "table.csv", "table.json", "ablations.md", "ablations.json", "errors.md", "errors.json", "paired.json",
                 "lookup_bands.json", "structure.json",
                 "report.md", "plots/iou_hist-real.png", "plots/bestofn.png", "plots/examples-real.png"):
        assert (out / name).stat().st_size > 0, name
    with (out / "table.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["configuration"].split(" ")[0] for r in rows] == ["retrieval", "SFT,", "+", "+", "+", "+"]
    assert rows[-1]["configuration"].startswith("+ primitives + refinement")
    assert all(r["n"] == "3" for r in rows)
    assert rows[0]["VSR"] == "1.000"  # retrieved reference programs all execute
    # the index holds these rows, so the lookup returns each one's own program; 16 tokens end every program early
    assert rows[0]["structure match"] == "1.000" and rows[1]["structure match"] == "0.000"
    assert all(r["training time"] == "SFT 12 s" for r in rows[1:])
    # every configuration of the main table is accounted for
    records = json.loads((out / "table.json").read_text())["records"]
    assert {r["key"] for r in records} == {"retrieval", "beam4", "grammar", "bestof2", "rerank2-k1", "rerank2-k1-primitives-refine4"}
    report = (out / "report.md").read_text()
    assert "## Ablations" in report and "## Against the lookup" in report and "plots/examples-real.png" in report
    assert {r["configuration"] for r in json.loads((out / "lookup_bands.json").read_text())} == {
        r["configuration"] for r in rows[1:]}  # every model row, in one band or more

    before = {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.jsonl")}
    monkeypatch.setattr(eval_all, "predict", lambda *a, **k: pytest.fail("cached configuration decoded again"))
    monkeypatch.setattr(eval_all, "evaluate_pairs", lambda *a, **k: pytest.fail("cached configuration scored again"))
    assert eval_all.main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.jsonl")} == before


def test_another_index_is_not_served_from_the_cache(tmp_path, model_dir, monkeypatch, reference_rows):
    retrieval = tmp_path / "train.jsonl"
    lines = [json.dumps({**r, "image": str(REFERENCE / r["image"])}) + "\n" for r in reference_rows]
    retrieval.write_text("".join(lines))
    args = ["--model", str(model_dir), "--data", f"real={REFERENCE / 'samples.jsonl'}", "--retrieval-data", str(retrieval),
            "--results", str(tmp_path), "--run", "t", "--limit", "3", "--only", "retrieval,beam4", "--max-new-tokens", "8",
            "--examples", "1", "--quiet"]
    decoded = []
    real_predict = eval_all.predict
    monkeypatch.setattr(eval_all, "predict", lambda *a, **k: decoded.append(a[5].strategy) or real_predict(*a, **k))
    assert eval_all.main(args) == 0 and decoded == ["retrieval", "beam"]
    records = json.loads((tmp_path / "t" / "table.json").read_text())["records"]
    assert next(r for r in records if r["key"] == "retrieval")["structure_match"] == 1.0  # each row finds its own program
    retrieval.write_text("".join(lines[3:]))  # the index no longer holds the three test rows
    decoded.clear()
    assert eval_all.main(args) == 0 and decoded == ["retrieval"]  # the plain model's beam 4 reads no index: cached
    entries = (tmp_path / "t" / "cache").glob("*/no-model/retrieval-*/preds.jsonl")
    first, second = sorted(entries, key=lambda f: f.stat().st_mtime)
    assert first.read_text() != second.read_text()  # the lookup over the new index, beside the old one's entry


@pytest.mark.parametrize("stage,seconds,memory,total,peak,detail", [
    ("dpo", 7.0, 500.0, 19.5, 500.0, "SFT 12 s + DPO 7 s"),
    ("grpo", 30.0, 100.0, 42.5, 321.0, "SFT 12 s + GRPO 30 s"),
])
def test_training_info_adds_an_rl_stage_to_its_sft_model(tmp_path, model_dir, stage, seconds, memory, total, peak, detail):
    folder = tmp_path / stage
    folder.mkdir()
    (folder / f"{stage}_metrics.json").write_text(json.dumps({"train_seconds": seconds, "peak_memory_mb": memory}))
    (folder / f"{stage}_config.yaml").write_text(f"sft_model: {model_dir}\n")
    info = eval_all.training_info(folder)
    assert info["train_seconds"] == pytest.approx(total) and info["train_memory_mb"] == peak
    assert info["train_detail"] == detail


def test_training_info_adds_an_sft_run_to_the_run_it_was_initialised_from(tmp_path):
    stage2 = tmp_path / "stage2"
    stage2.mkdir()
    (stage2 / "training_metrics.json").write_text(json.dumps({"train_seconds": 5.0, "init_from_train_seconds": 12.5}))
    info = eval_all.training_info(stage2)
    assert info["train_seconds"] == pytest.approx(17.5) and info["train_detail"] == "SFT 12 s + 5 s"


def test_plan_adds_grpo_rows_when_asked():
    keys = [v.key for v in eval_all.plan(n=6, k=2, grpo=True)]
    assert keys[-2:] == ["grpo-beam4", "grpo-rerank6-k2"]
    assert "grpo-beam4" not in [v.key for v in eval_all.plan(n=6, k=2)]


def test_weights_reach_the_rerank_rows_and_bad_weights_exit_2(tmp_path, capsys):
    w = {**eval_all.DEFAULT_WEIGHTS, **eval_all.parse_weights('{"silhouette": 0, "edges": 1, "pixel": 1}')}
    rows = [v for v in eval_all.plan(n=6, k=4, weights=w) if v.cfg.strategy == "rerank" and "heuristic" not in v.key]
    assert rows and all(v.cfg.weights["edges"] == 1 and v.cfg.weights["silhouette"] == 0 for v in rows)
    default = [v for v in eval_all.plan(n=6, k=4) if v.key == "rerank6-k4"][0]
    assert eval_all.config_key(default) != eval_all.config_key([v for v in rows if v.key == "rerank6-k4"][0])
    assert eval_all.main(["--model", str(tmp_path), "--weights", "[1]", "--results", str(tmp_path / "r")]) == 2
    assert "--weights" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_refine_objective_reaches_the_refinement_row_and_a_bad_one_exits_2(tmp_path, capsys):
    rows = {v.key: v for v in eval_all.plan(n=6, k=4, refine=48, refine_objective={"edge_distance": 1.0})}
    assert rows["rerank6-k4-refine48"].cfg.refine_objective == {"edge_distance": 1.0}
    assert rows["rerank6-k4"].cfg.refine_evaluations == 0
    assert rows["rerank6-k4-primitives-refine48"].cfg.refine_objective == {"edge_distance": 1.0}
    assert eval_all.main(["--model", str(tmp_path), "--refine-objective", '{"iou": 1}', "--results", str(tmp_path / "r")]) == 2
    assert "--refine-objective" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_paired_table_compares_each_configuration_with_beam_4_on_the_ids_both_execute():
    def record(key, label, ious):
        return {"data": "d", "key": key, "labels": {"main": label}, "rows": [{"id": i, "iou": v} for i, v in ious.items()]}

    beam = record("beam4", "SFT, beam 4", {"a": 0.6, "b": 0.8, "c": None, "d": 0.5})
    dpo = record("dpo-beam4", "DPO, beam 4", {"a": 0.7, "b": 0.8, "c": 0.1, "d": None})
    head, body, rows = eval_all.paired_with_beam([beam, dpo])
    assert len(body) == len(rows) == 1 and len(head) == len(body[0])  # beam 4 is not paired with itself
    row = rows[0]
    assert (row["both"], row["only_it"], row["only_beam"]) == (2, 1, 1)
    assert row["beam_iou_both"] == pytest.approx(0.7) and row["iou_both"] == pytest.approx(0.75)
    assert row["beam_iou_zero"] == pytest.approx(1.9 / 4) and row["iou_zero"] == pytest.approx(1.6 / 4)
