"""The preference chain end to end on CPU: sample, score, pair, a few TRL DPO steps."""
import json

import numpy as np
import torch

from cad.data import to_image
from cad.programs import perturb
from rl.dpo import DPORecipe, train_dpo
from rl.pairs import main as pairs_main
from sft.image_processing import ImageProcessor
from sft.model import Img2CadConfig, build_model, load_model
from sft.tokenizer import canonical_target, train_tokenizer
from tests.conftest import REFERENCE
from tests.test_decoding import TINY


def _sequence_logps(model, proc, tok, image_paths, codes):
    px = proc([to_image(p).convert("RGB") for p in image_paths])
    out = []
    for i, code in enumerate(codes):
        ids = [model.config.decoder_start_token_id] + tok(canonical_target(code), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([ids])
        with torch.no_grad():
            res = model(input_ids=ids, pixel_values=px[i:i + 1], labels=ids, fused_lm_head=True)
        out.append(float(res.log_probs.sum()))
    return np.array(out)


def test_sample_score_pair_and_dpo_raise_the_margin(tmp_path, reference_rows):
    rows = reference_rows[:4]
    tok = train_tokenizer([r["cadquery"] for r in rows], vocab_size=300)
    torch.manual_seed(0)
    model = build_model(Img2CadConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **TINY))
    sft = tmp_path / "sft"
    model.save_pretrained(str(sft))
    tok.save_pretrained(str(sft))
    ImageProcessor(64, 1).save_pretrained(sft)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({**r, "image": str(REFERENCE / r["image"])}) + "\n" for r in rows))
    # sampling from the (untrained) policy works, then candidates with a known ranking are scored
    assert pairs_main(["--model", str(sft), "--data", str(data), "--k", "2", "--out", str(tmp_path / "s"), "--sample-only"]) == 0
    rng = np.random.default_rng(0)
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"id": r["deepcad_id"], "candidates": [
        {"code": c, "logprob": -1.0} for c in (r["cadquery"], perturb(r["cadquery"], rng, 0.3), "import cadquery as cq\nsolid = cq.Workplane(\n")]}) + "\n"
        for r in rows))
    assert pairs_main(["--data", str(data), "--samples", str(samples), "--out", str(tmp_path / "p"), "--margin", "0.5"]) == 0
    import datasets

    pairs = datasets.load_from_disk(str(tmp_path / "p" / "pairs"))
    metrics = train_dpo(DPORecipe(sft_model=str(sft), pairs=str(tmp_path / "p" / "pairs"), output_dir=str(tmp_path / "dpo"),
                                  lr=1e-3, batch_size=4, max_steps=6, logging_steps=1, save_steps=3, warmup_steps=0))
    assert metrics["steps"] == 6
    before, tok0, proc = load_model(str(sft))
    after, _, _ = load_model(str(tmp_path / "dpo" / "final"))
    imgs = pairs["image_ref"]
    margin_before = _sequence_logps(before, proc, tok0, imgs, pairs["chosen"]) - _sequence_logps(before, proc, tok0, imgs, pairs["rejected"])
    margin_after = _sequence_logps(after, proc, tok0, imgs, pairs["chosen"]) - _sequence_logps(after, proc, tok0, imgs, pairs["rejected"])
    assert (margin_after - margin_before).mean() > 0  # chosen-over-rejected margin rises on the training pairs
    assert any((tmp_path / "dpo").glob("checkpoint-*"))
    assert list((tmp_path / "dpo").rglob("events.out.tfevents*"))  # TensorBoard logs


def test_dpo_reads_pairs_at_the_models_program_scale_as_sft_does(reference_rows):
    import datasets

    from rl.dpo import tokenize_pairs
    from sft.data import program_tokens

    codes = [r["cadquery"] for r in reference_rows[:3]]
    tok = train_tokenizer(codes, vocab_size=400)
    pairs = datasets.Dataset.from_dict({"chosen": codes[:2], "rejected": codes[1:3], "retrieved": [[codes[2]], [codes[0]]]})
    scaled = tokenize_pairs(pairs, tok, 0, max_retrieved=4096, scale=1.5)
    for row, chosen, rejected, retrieved in zip(scaled, codes[:2], codes[1:3], [codes[2], codes[0]]):
        assert row["chosen_ids"] == program_tokens(tok, chosen, scale=1.5)  # the tokens SFT trained on
        assert row["rejected_ids"] == program_tokens(tok, rejected, scale=1.5)
        assert row["retrieved_ids"] == program_tokens(tok, retrieved, scale=1.5)
    plain = tokenize_pairs(pairs, tok, 0)
    assert plain[0]["chosen_ids"] == program_tokens(tok, codes[0]) != scaled[0]["chosen_ids"]
