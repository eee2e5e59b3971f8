"""Tokenizer, model interfaces, image conversion, overfitting and exact resume."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cad.config import ConfigError, load_config
from sft.config import SFTConfig
from sft.image_processing import ImageProcessor
from sft.model import Img2CadConfig, build_model, load_model
from sft.tokenizer import canonical_target, train_tokenizer

TINY = dict(encoder_name="vit_tiny_patch16_224", image_size=64, in_chans=1,
            encoder_kwargs={"depth": 2, "embed_dim": 96, "num_heads": 3},
            decoder={"d_model": 128, "d_kv": 32, "d_ff": 256, "num_decoder_layers": 2, "num_heads": 4, "dropout_rate": 0.0})


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from cad.synth import synthesize

    from cad.data import FEATURES, load_gencad

    pool_dir = tmp_path_factory.mktemp("synth48")
    synthesize(48, pool_dir, seed=11, workers=2, shard_size=48, size=128, progress=False)
    ds = load_gencad(pool_dir)
    shortest = np.argsort([len(c) for c in ds["cadquery"]])[:16]
    path = tmp_path_factory.mktemp("synth16")
    ds.select(shortest.tolist()).cast(FEATURES).to_parquet(str(path / "train-00000.parquet"))
    return path


def test_tokenizer_round_trips_and_isolates_numbers(reference_rows):
    tok = train_tokenizer([r["cadquery"] for r in reference_rows], vocab_size=1000)
    for row in reference_rows:
        text = canonical_target(row["cadquery"])
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        pieces = tok.convert_ids_to_tokens(ids)
        assert "0.75" in pieces or "0.0" in pieces  # numbers are whole tokens
    lengths = [len(tok(canonical_target(r["cadquery"]))["input_ids"]) for r in reference_rows]
    assert np.mean(lengths) < 150


def test_causal_interface_and_generation():
    model = build_model(Img2CadConfig(vocab_size=300, **TINY)).eval()
    px = torch.randn(2, 1, 64, 64)
    ids = torch.randint(3, 300, (2, 7))
    ids[:, 0] = 0
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=px, labels=ids)
    assert out.logits.shape == (2, 7, 300) and torch.isfinite(out.loss)
    # position t predicts token t+1: the loss equals cross-entropy of logits[:, :-1] against ids[:, 1:]
    ref = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 300), ids[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, ref)
    for kwargs, rows in ((dict(), 2), (dict(num_beams=4, num_return_sequences=2), 4), (dict(do_sample=True, num_return_sequences=3), 6)):
        gen = model.generate_programs(px, max_new_tokens=6, **kwargs)
        assert gen.sequences.shape[0] == rows and gen.logprobs.shape == (rows,)
        assert (gen.logprobs <= 0).all()


@pytest.mark.parametrize("mode,size", [("RGBA", (30, 20)), ("L", (448, 448)), ("P", (64, 64)), ("I;16", (50, 50)), ("1", (1, 1)), ("RGB", (1, 1))])
def test_images_of_any_mode_are_converted(mode, size):
    img = Image.new(mode, size)
    for channels in (1, 3):
        arr = ImageProcessor(32, channels).to_array(img)
        assert arr.shape == (channels, 32, 32) and arr.dtype == np.uint8


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config(SFTConfig, "configs/sft_tiny.yaml", ["lr=0.01", "decoder.d_model=64", "max_steps=5"])
    assert cfg.lr == 0.01 and cfg.decoder["d_model"] == 64 and cfg.decoder["num_decoder_layers"] == 2
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(SFTConfig, "configs/sft_tiny.yaml", ["learning_rate=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(SFTConfig, None, ["lr"])


def _cfg(tmp_path, data, **kw) -> SFTConfig:
    base = dict(train_data=str(data), val_data=str(data), tokenizer_vocab_size=400, batch_size=16, lr=2e-3,
                warmup_steps=20, max_steps=800, log_every=10, eval_every=1000, sample_every=1000, save_every=1000,
                sample_n=4, output_dir=str(tmp_path / "out"), mixed_precision="no", **TINY)
    base.update(kw)
    return SFTConfig(**base)


def test_tiny_model_overfits_16_pairs(tmp_path, tiny_data):
    from cad.data import load_gencad
    from sft.train import train

    metrics = train(_cfg(tmp_path, tiny_data))
    assert metrics["train_rows"] == 16
    model, tok, proc = load_model(str(tmp_path / "out" / "final"))
    ds = load_gencad(tiny_data)
    from cad.data import to_image

    px = proc([to_image(im) for im in ds["image"]])
    gen = model.generate_programs(px, max_new_tokens=300)
    decoded = tok.batch_decode(gen.sequences, skip_special_tokens=True)
    targets = [canonical_target(c) for c in ds["cadquery"]]
    exact = sum(d == t for d, t in zip(decoded, targets))
    assert exact >= 14, f"only {exact}/16 reproduced exactly"
    card = (tmp_path / "out" / "final" / "README.md").read_text()
    assert "Metrics" in card and "train_rows" in card


def test_resume_gives_the_same_weights(tmp_path, tiny_data):
    from sft.train import train

    kw = dict(max_steps=6, save_every=2, warmup_steps=2, augment_shift=2,
              decoder={**TINY["decoder"], "dropout_rate": 0.1})
    train(_cfg(tmp_path / "a", tiny_data, **kw))
    first = train(_cfg(tmp_path / "b", tiny_data, **kw), interrupt_after=3)
    assert first == {"interrupted_at": 3}
    train(_cfg(tmp_path / "b", tiny_data, **kw), resume=True)
    a = load_file(str(tmp_path / "a" / "out" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "out" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    metrics = json.loads((tmp_path / "b" / "out" / "final" / "training_metrics.json").read_text())
    assert metrics["steps"] == 6


def test_batches_prepared_by_workers_train_the_same_weights(tmp_path, tiny_data):
    from sft.train import train

    kw = dict(max_steps=4, warmup_steps=1, augment_shift=2, batch_size=4)
    train(_cfg(tmp_path / "here", tiny_data, **kw))
    train(_cfg(tmp_path / "workers", tiny_data, num_workers=2, **kw))
    a = load_file(str(tmp_path / "here" / "out" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "workers" / "out" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_init_from_starts_from_a_model_folder_and_refuses_another_architecture(tmp_path, tiny_data):
    from sft.train import train

    train(_cfg(tmp_path / "first", tiny_data, max_steps=3, warmup_steps=1))
    src = tmp_path / "first" / "out" / "final"
    train(_cfg(tmp_path / "again", tiny_data, max_steps=1, warmup_steps=5, init_from=str(src)))  # step 0 has lr 0
    a, b = load_file(str(src / "model.safetensors")), load_file(str(tmp_path / "again" / "out" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "again" / "out" / "tokenizer" / "tokenizer.json").read_text() == (src / "tokenizer.json").read_text()
    other = {**TINY["decoder"], "num_decoder_layers": 1}
    with pytest.raises(ConfigError, match="num_decoder_layers|decoder"):
        train(_cfg(tmp_path / "other", tiny_data, max_steps=1, init_from=str(src), decoder=other))


def test_lora_mode_trains_adapters_and_saves_a_plain_model(tmp_path, tiny_data):
    from sft.train import train

    metrics = train(_cfg(tmp_path, tiny_data, max_steps=3, train_mode="lora", lora_r=4, lora_alpha=8))
    full = sum(p.numel() for p in build_model(Img2CadConfig(vocab_size=500, **TINY)).parameters())
    assert 0 < metrics["trainable_parameters"] < full / 2
    model, _, _ = load_model(str(tmp_path / "out" / "final"))
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_bad_rows_are_reported_and_skipped(tiny_data):
    import datasets

    from cad.data import FEATURES, load_gencad
    from sft.data import build_examples

    ds = load_gencad(tiny_data).select(range(3))
    rows = ds.to_dict()
    rows["cadquery"][1] = "   "
    rows["image"][2] = {"bytes": b"not a png", "path": None}
    bad = datasets.Dataset.from_dict(rows, features=FEATURES)
    tok = train_tokenizer(rows["cadquery"][:1], vocab_size=300)
    ex = build_examples(bad, ImageProcessor(32, 1), tok, 256, True, tok.pad_token_id)
    assert len(ex) == 1
    assert [s["id"] for s in ex.skipped] == [rows["deepcad_id"][1], rows["deepcad_id"][2]]
    assert "empty program" in ex.skipped[0]["reason"] and "unreadable image" in ex.skipped[1]["reason"]


def test_examples_prepared_in_worker_processes_equal_those_prepared_in_one_and_the_bank_reads_them(tiny_data):
    import datasets

    from cad.data import FEATURES, load_gencad
    from sft.data import add_retrieval, build_examples, program_tokens

    ds = load_gencad(tiny_data)
    rows = ds.to_dict()
    rows["cadquery"][3] = ""
    rows["image"][5] = {"bytes": b"not a png", "path": None}
    ds = datasets.Dataset.from_dict(rows, features=FEATURES)
    tok = train_tokenizer(rows["cadquery"], vocab_size=300)
    one = build_examples(ds, ImageProcessor(32, 1), tok, 40, True, tok.pad_token_id, scale=1.5)
    many = build_examples(ds, ImageProcessor(32, 1), tok, 40, True, tok.pad_token_id, scale=1.5, workers=3)
    assert len(one) == 14 and one.truncated > 0
    assert one.ids == many.ids and one.codes == many.codes and one.tokens == many.tokens
    assert np.array_equal(one.images, many.images) and one.truncated == many.truncated
    reasons = lambda ex: [(s["id"], s["reason"].split(":")[0]) for s in ex.skipped]  # noqa: E731
    assert reasons(one) == reasons(many) == [(rows["deepcad_id"][3], "empty program"), (rows["deepcad_id"][5], "unreadable image")]
    empty = build_examples(ds.select([]), ImageProcessor(32, 1), tok, 40, True, tok.pad_token_id)
    clean = load_gencad(tiny_data)  # the index reads every image
    add_retrieval(clean, clean.select([]), one, empty, tok, True, 2, 3, 0.0, 512, "blur64", 16, scale=1.5)
    whole = {tuple(program_tokens(tok, c, True, 1.5)) for c in clean["cadquery"]}
    assert all(len(one.neighbours[i]) == 3 and {tuple(t) for t in one.neighbours[i]} <= whole for i in range(len(one)))


def test_schedule_without_a_budget_is_the_usual_cosine():
    from transformers import get_cosine_schedule_with_warmup

    from sft.train import Progress

    p = Progress(max_steps=50, warmup_steps=5, max_minutes=None)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = get_cosine_schedule_with_warmup(opt, 5, 50).lr_lambdas[0]
    for step in range(51):
        assert p.lr_factor(step) == pytest.approx(ref(step), abs=1e-9), step
    assert not p.done(49) and p.done(50)


def test_a_time_budget_decays_the_rate_with_time_and_stops_training(tmp_path, tiny_data):
    from sft.train import Progress, train

    p = Progress(max_steps=1000, warmup_steps=0, max_minutes=1.0)
    p.seconds = 30.0  # half the budget spent at step 10 of 1000
    assert p.fraction(10) == pytest.approx(0.5) and p.lr_factor(10) == pytest.approx(0.5)
    p.seconds = 60.0
    assert p.done(11) and p.lr_factor(11) == pytest.approx(0.0)
    metrics = train(_cfg(tmp_path, tiny_data, max_steps=10_000, max_minutes=1e-4, warmup_steps=0))
    assert metrics["stopped_by"] == "max_minutes" and metrics["steps"] < 10_000
    assert (tmp_path / "out" / "final" / "model.safetensors").exists()


def test_stop_by_fits_the_time_budget_to_a_deadline_whatever_preparation_took(tmp_path, tiny_data):
    import time

    from sft.train import Progress, train

    p = Progress(max_steps=1000, warmup_steps=0, max_minutes=1.0)
    p.limit(30.0)  # a deadline nearer than the budget shortens it ...
    p.seconds = 15.0
    assert p.fraction(10) == pytest.approx(0.5) and not p.done(10) and p.by_deadline
    p.limit(120.0)  # ... a later one leaves it
    p.seconds = 30.0
    assert p.done(11)
    unbudgeted = Progress(max_steps=1000, warmup_steps=0, max_minutes=None)
    unbudgeted.limit(20.0)
    unbudgeted.seconds = 20.0
    assert unbudgeted.done(5)
    # a deadline already past when training starts: one step, then the model is saved
    metrics = train(_cfg(tmp_path, tiny_data, max_steps=10_000, stop_by=time.time(), warmup_steps=0))
    assert metrics["steps"] == 1 and metrics["stopped_by"] == "stop_by"
    assert (tmp_path / "out" / "final" / "model.safetensors").exists()


def test_program_scale_rescales_targets_and_is_recorded_in_the_model_config(tiny_data):
    from cad.data import load_gencad
    from cad.programs import bounding_size
    from sft.config import SFTConfig
    from sft.data import build_examples, program_tokens
    from sft.train import model_config

    ds = load_gencad(tiny_data).select(range(4))
    tok = train_tokenizer(ds["cadquery"], vocab_size=300)
    plain = build_examples(ds, ImageProcessor(32, 1), tok, 512, True, tok.pad_token_id)
    scaled = build_examples(ds, ImageProcessor(32, 1), tok, 512, True, tok.pad_token_id, scale=1.5)
    assert [round(bounding_size(c), 2) for c in scaled.codes] == [1.5] * 4
    assert any(abs(bounding_size(c) - 1.5) > 0.05 for c in plain.codes)  # the data's own sizes vary
    assert tok.decode(program_tokens(tok, ds[0]["cadquery"], scale=1.5), skip_special_tokens=True) == scaled.codes[0]
    assert model_config(SFTConfig(program_scale=1.5), tok).program_scale == 1.5
