"""Preference pairs: scoring, pairing rules, the dataset on disk, and the sampling step."""
import json

import datasets
import numpy as np

from cad.programs import perturb
from rl.pairs import main


def test_pairs_from_given_samples(tmp_path, reference_rows):
    from tests.conftest import REFERENCE

    rows = reference_rows[:3]
    rng = np.random.default_rng(0)
    samples = tmp_path / "samples.jsonl"
    with samples.open("w") as f:
        for r in rows:
            cands = [r["cadquery"], perturb(r["cadquery"], rng, 0.3), "import cadquery as cq\nsolid = cq.Workplane(\n"]
            f.write(json.dumps({"id": r["deepcad_id"], "candidates": [{"code": c, "logprob": -1.0} for c in cands]}) + "\n")
        # an id without ground truth is ignored
        f.write(json.dumps({"id": rows[0]["deepcad_id"] + "x", "candidates": []}) + "\n")
    out = tmp_path / "pairs"
    assert main(["--data", str(REFERENCE / "samples.jsonl"), "--samples", str(samples), "--out", str(out), "--margin", "0.5"]) == 0
    ds = datasets.load_from_disk(str(out / "pairs"))
    assert "image" not in ds.column_names and "image_ref" in ds.column_names
    assert len(ds) >= 3
    assert all(c > r for c, r in zip(ds["chosen_reward"], ds["rejected_reward"]))
    assert all(c == g for c, i in zip(ds["chosen"], ds["id"]) for g in [next(x["cadquery"] for x in rows if x["deepcad_id"] == i)])
    # each image has one pair whose rejected program does not execute
    for i in set(ds["id"]):
        assert any(not e for e, j in zip(ds["rejected_executed"], ds["id"]) if j == i)
    # resuming re-uses the scored ids and rebuilds the same dataset
    assert main(["--data", str(REFERENCE / "samples.jsonl"), "--samples", str(samples), "--out", str(out), "--margin", "0.5"]) == 0
    assert len(datasets.load_from_disk(str(out / "pairs"))) == len(ds)


def test_include_reference_pairs_ground_truth_over_failing_samples(tmp_path, reference_rows):
    from tests.conftest import REFERENCE

    rows = reference_rows[:2]
    samples = tmp_path / "samples.jsonl"
    broken = ["import cadquery as cq\nsolid = cq.Workplane(\n", "import cadquery as cq\nsolid = 1\n"]
    samples.write_text("".join(json.dumps({"id": r["deepcad_id"], "candidates": [{"code": c, "logprob": -1.0} for c in broken]}) + "\n"
                               for r in rows))
    args = ["--data", str(REFERENCE / "samples.jsonl"), "--samples", str(samples), "--margin", "0.5"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "pairs").exists()  # all failing: nothing to learn
    assert main([*args, "--out", str(tmp_path / "ref"), "--include-reference"]) == 0
    ds = datasets.load_from_disk(str(tmp_path / "ref" / "pairs"))
    assert sorted(set(ds["id"])) == sorted(r["deepcad_id"] for r in rows)
    assert all(c == next(r["cadquery"] for r in rows if r["deepcad_id"] == i) for c, i in zip(ds["chosen"], ds["id"]))
    assert not any(ds["rejected_executed"])


def test_sampling_step_writes_k_candidates_per_image(tmp_path, reference_rows):
    import torch

    from sft.image_processing import ImageProcessor
    from sft.model import Img2CadConfig, build_model
    from sft.tokenizer import train_tokenizer
    from tests.conftest import REFERENCE
    from tests.test_decoding import TINY

    tok = train_tokenizer([r["cadquery"] for r in reference_rows], vocab_size=300)
    torch.manual_seed(0)
    model = build_model(Img2CadConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **TINY))
    model.save_pretrained(str(tmp_path / "m"))
    tok.save_pretrained(str(tmp_path / "m"))
    ImageProcessor(64, 1).save_pretrained(tmp_path / "m")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({**r, "image": str(REFERENCE / r["image"])}) + "\n" for r in reference_rows[:2]))
    out = tmp_path / "out"
    assert main(["--model", str(tmp_path / "m"), "--data", str(data), "--k", "3", "--out", str(out), "--sample-only"]) == 0
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [len(x["candidates"]) for x in lines] == [3, 3]
    # --beam adds the beam program to the same samples; the rows made without it are redone, not served
    args = ["--model", str(tmp_path / "m"), "--data", str(data), "--k", "3", "--out", str(out), "--sample-only", "--max-new-tokens", "24"]
    assert main(args) == 0
    plain = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert main([*args, "--beam", "2"]) == 0
    beamed = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [[c["source"] for c in x["candidates"]] for x in beamed] == [["sample"] * 3 + ["beam"]] * 2
    assert [x["candidates"][:3] for x in beamed] == [x["candidates"] for x in plain]


def test_pairing_rules():
    from reward.score import Reward
    from rl.pairs import make_pairs

    r = lambda total, ex, iou: Reward(total, ex, True, iou)  # noqa: E731
    assert make_pairs(["a", "b"], [r(-1, False, 0), r(-1, False, 0)], 0.5) == []  # all failing
    assert make_pairs(["a", "b"], [r(6, True, 0.99), r(6, True, 0.97)], 0.5) == []  # all near-perfect
    pairs = make_pairs(["a", "b", "c", "d"], [r(5, True, 0.8), r(-1, False, 0), r(2, True, 0.3), r(4.8, True, 0.78)], 0.5)
    assert pairs[0] == (0, 1)  # the non-executable rejected comes first
    assert (0, 2) in pairs and (0, 3) not in pairs  # 4.8 is within the margin of 5


def test_pairing_options_choose_among_sources_reject_the_beam_first_and_can_skip_failures():
    from reward.score import Reward
    from rl.pairs import make_pairs

    r = lambda total, ex, iou: Reward(total, ex, True, iou)  # noqa: E731
    codes = ["retr", "s1", "beam", "fail", "s2"]
    rewards = [r(6, True, 0.9), r(5, True, 0.7), r(4, True, 0.5), r(-1, False, 0), r(2, True, 0.2)]
    sources = ["retrieval", "sample", "beam", "sample", "sample"]
    assert make_pairs(codes, rewards, 0.5, sources=sources)[0] == (0, 3)  # any source may be chosen
    pairs = make_pairs(codes, rewards, 0.5, sources=sources, chosen_from={"sample", "beam"})
    assert pairs == [(1, 3), (1, 2)]  # the best of the model's own; the beam program before the worse s2
    assert make_pairs(codes, rewards, 0.5, sources=sources, chosen_from={"sample", "beam"}, executed_only=True) == [(1, 2), (1, 4)]
    assert make_pairs(codes, rewards, 0.5, sources=sources, chosen_from={"reference"}) == []  # no allowed candidate
    # the model's own programs all fail: no pair prefers one failing program to another
    only = [r(6, True, 0.9), r(0.5, False, 0), r(0, False, 0)]
    assert make_pairs(["retr", "s1", "s2"], only, 0.5, sources=["retrieval", "sample", "sample"], chosen_from={"sample"}) == []


def test_pairing_options_re_pair_stored_rewards_and_changed_candidates_are_scored_again(tmp_path, reference_rows):
    from tests.conftest import REFERENCE

    rows = reference_rows[:2]
    rng = np.random.default_rng(0)
    samples = tmp_path / "samples.jsonl"

    def write(extra: str = "") -> None:
        with samples.open("w") as f:
            for r in rows:
                cands = [(r["cadquery"], "retrieval"), (perturb(r["cadquery"], rng, 0.05), "sample"),
                         ("import cadquery as cq\nsolid = cq.Workplane('XY').box(3, 0.2, 0.2)\n" + extra, "sample"),
                         ("import cadquery as cq\nsolid = cq.Workplane(\n", "sample")]
                f.write(json.dumps({"id": r["deepcad_id"], "candidates": [{"code": c, "logprob": -1.0, "source": s}
                                                                           for c, s in cands]}) + "\n")

    write()
    scored = tmp_path / "p" / "scored.jsonl"
    args = ["--data", str(REFERENCE / "samples.jsonl"), "--samples", str(samples), "--out", str(tmp_path / "p"), "--margin", "0.5"]
    assert main(args) == 0
    first = datasets.load_from_disk(str(tmp_path / "p" / "pairs"))
    assert "retrieval" in first["chosen_source"] and not all(first["rejected_executed"])
    stored = scored.read_text()
    assert all(len(json.loads(x)["candidates"]) == 4 for x in stored.splitlines())  # every candidate's reward is kept
    assert main([*args, "--chosen-from", "sample", "--executed-only"]) == 0
    second = datasets.load_from_disk(str(tmp_path / "p" / "pairs"))
    assert len(second) and set(second["chosen_source"]) == {"sample"} and all(second["rejected_executed"])
    assert scored.read_text() == stored  # re-paired from the stored rewards: nothing scored again
    # a smaller limit builds its dataset from its own ids only
    assert main([*args, "--chosen-from", "sample", "--executed-only", "--limit", "1"]) == 0
    assert set(datasets.load_from_disk(str(tmp_path / "p" / "pairs"))["id"]) == {rows[0]["deepcad_id"]}
    # other candidates for the same ids: their stored rewards are stale and are scored again
    write(extra="# changed\n")
    assert main(args) == 0
    assert all("# changed" in json.loads(x)["candidates"][2]["code"] for x in scored.read_text().splitlines())
