"""Retrieval-conditioned generation: the model reads retrieved programs, training draws them
without the image's own program, the index is compact and split-safe, decoding edits neighbours,
preference pairs keep the context their samples were drawn in."""
import json
import numpy as np
import pytest
import torch

from cad.data import DatasetUnavailable, FEATURES, load_gencad
from decoding.predict import DecodeConfig, Predictor
from decoding.retrieval import RetrievalIndex
from sft.data import Examples, RetrievalSpec, attach_edits, attach_neighbours, collate, pack_retrieved
from sft.image_processing import ImageProcessor
from sft.model import Img2CadConfig, Img2CadModel, build_model
from sft.tokenizer import canonical_target, train_tokenizer

TINY = dict(encoder_name="vit_tiny_patch16_224", image_size=64, in_chans=1,
            encoder_kwargs={"depth": 1, "embed_dim": 48, "num_heads": 2},
            decoder={"d_model": 64, "d_kv": 16, "d_ff": 128, "num_decoder_layers": 2, "num_heads": 4, "dropout_rate": 0.0})


def _model(vocab: int = 60, layers: int = 1, **kw) -> Img2CadModel:
    torch.manual_seed(0)
    return Img2CadModel(Img2CadConfig(vocab_size=vocab, retrieval_layers=layers, **TINY, **kw))


def test_plain_model_has_no_t5_encoder_parameters_and_every_parameter_learns():
    plain = _model(layers=0)
    assert not [n for n, _ in plain.named_parameters() if n.startswith("t5.encoder.") and "embed_tokens" not in n]
    for model in (plain, _model(layers=1)):
        ids = torch.randint(3, 60, (2, 6))
        out = model(ids, pixel_values=torch.rand(2, 1, 64, 64), labels=ids,
                    retrieved_ids=torch.randint(3, 60, (2, 5)) if model.retrieval_conditioned else None)
        out.loss.backward()
        assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def test_conditioned_model_reads_the_retrieved_program_and_ignores_padding():
    model = _model().eval()
    px, ids = torch.rand(1, 1, 64, 64), torch.randint(3, 60, (1, 6))
    a = model(ids, pixel_values=px, retrieved_ids=torch.tensor([[5, 6, 7, 1]])).logits
    b = model(ids, pixel_values=px, retrieved_ids=torch.tensor([[9, 9, 8, 1]])).logits
    assert not torch.allclose(a, b, atol=1e-4)  # what was retrieved changes the prediction
    padded = model(ids, pixel_values=px, retrieved_ids=torch.tensor([[5, 6, 7, 1, 0, 0]]),
                   retrieved_attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0]])).logits
    assert torch.allclose(a, padded, atol=1e-5)
    gen = model.generate_programs(px.repeat(2, 1, 1, 1), max_new_tokens=4, num_beams=3,
                                  retrieved_ids=torch.tensor([[5, 6, 7, 1], [9, 9, 8, 1]]))
    assert gen.sequences.shape[0] == 2


def _index(programs: list[str], seed: int = 0) -> RetrievalIndex:
    rng = np.random.default_rng(seed)
    feats = rng.random((len(programs), 4096)).astype(np.float32)
    return RetrievalIndex.from_features(feats, programs, [f"id{i}" for i in range(len(programs))], "blur64", dims=8)


def test_training_neighbours_exclude_the_row_itself_and_rows_with_the_same_program():
    programs = ["a=1", "b=2", "a=1", "c=3", "d=4", "e=5"]
    index = _index(programs)
    nb = index.training_neighbours(3)
    for i, row in enumerate(nb):
        assert i not in row
        assert all(programs[j] != programs[i] for j in row if j >= 0)
    # without the exclusion the nearest row of every row is itself
    idx, _ = index.search(index.vectors.astype(np.float32) / 127.0, 1)
    assert (idx[:, 0] == np.arange(len(programs))).all()


def test_exclusions_name_the_row_of_an_id_and_every_copy_of_its_program():
    programs = ["a=1", "b=2", "a=1", "c=3", "d=4", "e=5"]
    index = _index(programs)
    assert index.exclusions(["id0", "id3", "elsewhere"]) == [{0, 2}, {3}, set()]
    assert index.exclusions(["elsewhere"], ["a=1"]) == [{0, 2}]  # a row outside the index, given its program
    idx, _ = index.search(index.vectors[[0]].astype(np.float32) / 127.0, 3, index.exclusions(["id0"]))
    assert not {0, 2} & set(idx[0].tolist())


def test_collate_draws_neighbours_in_training_and_takes_the_nearest_otherwise():
    ex = Examples(ids=["x", "y"], images=np.zeros((2, 1, 8, 8), np.uint8), tokens=[[0, 5, 1], [0, 6, 1]], codes=["", ""])
    bank = [[10, 1], [11, 1], [12, 1], [13, 1]]
    spec = RetrievalSpec(k=1, none_prob=0.0, eos_id=1, pad_id=0, max_length=16)
    attach_neighbours(ex, np.array([[0, 1, 2], [3, 2, -1]]), bank, spec)
    batch = collate(ex, [0, 1], pad_id=0)
    assert batch["retrieved_ids"].tolist() == [[10, 1], [13, 1]]  # the nearest, in order
    drawn = {tuple(collate(ex, [0], 0, rng=np.random.default_rng(s))["retrieved_ids"][0].tolist()) for s in range(20)}
    assert drawn == {(10, 1), (11, 1), (12, 1)}  # training draws among the pool
    ex.retrieval = RetrievalSpec(k=1, none_prob=1.0, eos_id=1, pad_id=0, max_length=16)
    assert collate(ex, [0, 1], 0, rng=np.random.default_rng(0))["retrieved_ids"].tolist() == [[1], [1]]  # none: a lone EOS
    cut = pack_retrieved([[[10, 11, 12, 1], [13, 1]]], RetrievalSpec(2, 0.0, 1, 0, 3))
    assert cut["retrieved_ids"].tolist() == [[10, 11, 12]]


def test_edit_examples_put_a_perturbed_copy_of_the_target_among_the_retrieved(reference_rows):
    codes = [canonical_target(r["cadquery"]) for r in reference_rows[:2]]
    tok = train_tokenizer(codes, vocab_size=300)
    ex = Examples(ids=["a", "b"], images=np.zeros((2, 1, 8, 8), np.uint8), codes=codes,
                  tokens=[[0] + tok(c, add_special_tokens=False)["input_ids"] + [1] for c in codes])
    bank = [[90010, 1], [90011, 1], [90012, 1]]  # ids no program token has
    attach_neighbours(ex, np.array([[0, 1, 2], [2, 1, 0]]), bank, RetrievalSpec(2, 0.0, tok.eos_token_id, 0, 4096, 1.0))
    attach_edits(ex, tok, variants=2, sigma=0.2, share=1.0, seed=0)
    again = Examples(ids=ex.ids, images=ex.images, tokens=ex.tokens, codes=codes)
    attach_edits(again, tok, variants=2, sigma=0.2, share=1.0, seed=0, workers=2)
    assert again.edits == ex.edits  # seeded, in worker processes too
    for i in range(2):
        texts = [tok.decode(e, skip_special_tokens=True) for e in ex.edits[i]]
        assert texts[0] != texts[1] and all(t != codes[i] for t in texts)
        # the same program with other numbers: the text between the numbers is unchanged
        from cad.programs import structure

        assert all(structure(t) == structure(codes[i]) for t in texts)
    for seed in range(10):  # edit_prob 1: exactly one of the k slots holds an edit, the other a neighbour
        ids = collate(ex, [0, 1], 0, rng=np.random.default_rng(seed))["retrieved_ids"].tolist()
        for i, row in enumerate(ids):
            row = [t for t in row if t != 0]
            assert sum(row[j:j + len(e)] == e for e in ex.edits[i] for j in range(len(row))) == 1
            assert sum(t in (90010, 90011, 90012) for t in row) == 1
    assert collate(ex, [0, 1], 0)["retrieved_ids"][:, :4].tolist() == [[90010, 1, 90011, 1], [90012, 1, 90011, 1]]  # inference: never
    ex.retrieval.edit_prob = 0.0
    for seed in range(10):
        assert all(set(r) <= {90010, 90011, 90012, 1, 0} for r in collate(ex, [0, 1], 0, rng=np.random.default_rng(seed))["retrieved_ids"].tolist())


def _folder_with_splits(tmp_path, reference_rows) -> str:
    from tests.conftest import REFERENCE

    ds = load_gencad(REFERENCE / "samples.jsonl").cast(FEATURES)
    ds.select(range(6)).to_parquet(str(tmp_path / "train-00000.parquet"))
    ds.select(range(6, 10)).to_parquet(str(tmp_path / "test-00000.parquet"))
    return str(tmp_path)


def test_index_is_compact_round_trips_and_refuses_the_test_split(tmp_path, reference_rows):
    folder = _folder_with_splits(tmp_path, reference_rows)
    with pytest.raises(DatasetUnavailable, match="name one"):
        load_gencad(folder)
    with pytest.raises(DatasetUnavailable, match="test split"):
        RetrievalIndex.build(folder, split="test")
    index = RetrievalIndex.build(folder, split="train")
    assert index.vectors.dtype == np.int8 and len(index.programs) == 6 and index.meta["split"] == "train"
    index.save(tmp_path / "index.npz")
    back = RetrievalIndex.load(tmp_path / "index.npz")
    assert back.programs == index.programs and back.ids == index.ids and (back.vectors == index.vectors).all()
    ds = load_gencad(folder, split="train")
    hits = back.query([ds[3]["image"]], k=2)[0]
    assert hits[0][0] == index.programs[3] and hits[0][1] > 0.98


def test_predictor_edits_each_neighbour_set_deterministically(reference_rows, tmp_path):
    from tests.conftest import REFERENCE

    tok = train_tokenizer([r["cadquery"] for r in reference_rows], vocab_size=400)
    torch.manual_seed(0)
    model = build_model(Img2CadConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                      retrieval_layers=1, **TINY)).eval()
    index = RetrievalIndex.from_rows(load_gencad(REFERENCE / "samples.jsonl"), dims=8)
    ds = load_gencad(REFERENCE / "samples.jsonl")
    images = [ds[i]["image"].convert("RGB") for i in range(2)]
    cfg = DecodeConfig(strategy="rerank", n=3, k_retrieval=2, max_new_tokens=12)
    first = Predictor(model, tok, ImageProcessor(64, 1), cfg, index=index).generate(images)
    again = Predictor(model, tok, ImageProcessor(64, 1), cfg, index=index).generate(images)
    assert [[c.code for c in cs] for cs in first] == [[c.code for c in cs] for cs in again]
    assert [c.source for c in first[0]] == ["edit:1", "edit:2", "edit:3", "retrieval", "retrieval"]
    # reranking by weights without a log-probability term does not score the retrieved programs;
    # best-of-N (which ranks by it) and a reranker that weighs it do
    assert all(np.isnan(c.logprob) for c in first[0] if c.source == "retrieval")
    weighed = DecodeConfig(strategy="rerank", n=3, k_retrieval=2, max_new_tokens=12, weights={"logprob": 0.5})
    for scored in (weighed, DecodeConfig(strategy="bestofn", n=3, k_retrieval=2, max_new_tokens=12)):
        cands = Predictor(model, tok, ImageProcessor(64, 1), scored, index=index).generate(images)[0]
        assert all(np.isfinite(c.logprob) and c.logprob < 0 for c in cands if c.source == "retrieval")
    with pytest.raises(ValueError, match="edits retrieved programs"):
        Predictor(model, tok, ImageProcessor(64, 1), DecodeConfig(strategy="beam"))
    plain = Predictor(model, tok, ImageProcessor(64, 1), DecodeConfig(strategy="beam", context_k=0, max_new_tokens=8))
    assert len(plain.generate(images)[0]) == 1  # the plain mode needs no index
    # beam search reads as many retrieved programs as the model was trained with (or context_k), the nearest first
    model.config.retrieval_k = 2
    nearest = [[c for c, _ in h] for h in index.query(images, 2)]
    for context_k, want in ((None, nearest), (1, [h[:1] for h in nearest])):
        beam = Predictor(model, tok, ImageProcessor(64, 1), DecodeConfig(strategy="beam", num_beams=2, max_new_tokens=8,
                                                                          context_k=context_k), index=index)
        assert beam.scale is None  # the programs as indexed (a model without program_scale)
        beam.generate(images)
        assert beam.contexts == want



def _conditioned_model_folder(folder, tok, **config):
    """A tiny random retrieval-conditioned model folder, as sft writes it, indexing the ten reference rows."""
    from tests.conftest import REFERENCE

    torch.manual_seed(0)
    model = build_model(Img2CadConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                      retrieval_layers=1, **TINY, **config))
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    ImageProcessor(64, 1).save_pretrained(folder)
    RetrievalIndex.from_rows(load_gencad(REFERENCE / "samples.jsonl"), dims=8).save(folder / "retrieval_index.npz")
    return folder


def test_decoding_finds_the_index_a_model_folder_saved_under_either_name(tmp_path, reference_rows, capsys):
    from decoding.__main__ import main
    from decoding.retrieval import load_saved_index, saved_index
    from tests.conftest import REFERENCE
    from tests.test_hardening_cli import refuses

    folder = _conditioned_model_folder(tmp_path / "m", train_tokenizer([r["cadquery"] for r in reference_rows], vocab_size=300))
    assert saved_index(folder) == folder / "retrieval_index.npz"  # as python -m sft saves it
    (folder / "retrieval_index.npz").rename(folder / "index.npz")  # as an exported (shipped) folder holds it
    assert saved_index(folder) == folder / "index.npz"
    args = ["--model", str(folder), "--data", str(REFERENCE / "samples.jsonl"), "--limit", "2", "--strategy", "beam",
            "--beams", "1", "--max-new-tokens", "8", "--out", str(tmp_path / "p.jsonl")]
    assert main(args) == 0 and len((tmp_path / "p.jsonl").read_text().splitlines()) == 2
    (folder / "index.npz").unlink()
    assert saved_index(folder) is None
    with pytest.raises(FileNotFoundError, match="retrieval_index.npz or index.npz"):
        load_saved_index(folder)
    refuses(main, [*args[:-1], str(tmp_path / "q.jsonl")], capsys, "needs an index")


def test_conditioned_pairs_keep_their_context_and_dpo_raises_the_margin_in_it(tmp_path, reference_rows):
    import datasets

    from cad.programs import perturb
    from rl.dpo import DPORecipe, train_dpo
    from rl.pairs import main as pairs_main
    from sft.model import load_model
    from tests.conftest import REFERENCE

    rows = reference_rows[:4]
    sft = _conditioned_model_folder(tmp_path / "sft", train_tokenizer([r["cadquery"] for r in rows], vocab_size=300),
                                    retrieval_k=2)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({**r, "image": str(REFERENCE / r["image"])}) + "\n" for r in rows))
    assert pairs_main(["--model", str(sft), "--data", str(data), "--k", "2", "--out", str(tmp_path / "s"), "--sample-only",
                       "--max-new-tokens", "16", "--beam", "2"]) == 0  # the beam program is decoded in the samples' context
    sampled = [json.loads(x) for x in (tmp_path / "s" / "samples.jsonl").read_text().splitlines()]
    assert all(len(s["retrieved"]) == 2 for s in sampled)  # the context the samples were drawn in: retrieval_k programs
    own = {r["deepcad_id"]: canonical_target(r["cadquery"]) for r in rows}  # the index holds these rows:
    for s in sampled:  # a training image is never given, nor offered, its own program
        assert own[s["id"]] not in s["retrieved"]
        assert own[s["id"]] not in [canonical_target(c["code"]) for c in s["candidates"] if c["source"] == "retrieval"]
    assert all([c["source"] for c in s["candidates"]] == ["sample", "sample", "retrieval", "retrieval", "beam"] for s in sampled)
    rng = np.random.default_rng(0)
    context = {s["id"]: s["retrieved"] for s in sampled}
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"id": r["deepcad_id"], "retrieved": context[r["deepcad_id"]], "candidates": [
        {"code": c, "logprob": -1.0} for c in (r["cadquery"], perturb(r["cadquery"], rng, 0.3))]}) + "\n" for r in rows))
    assert pairs_main(["--data", str(data), "--samples", str(samples), "--out", str(tmp_path / "p"), "--margin", "0.5"]) == 0
    pairs = datasets.load_from_disk(str(tmp_path / "p" / "pairs"))
    assert pairs["retrieved"] == [context[i] for i in pairs["id"]]
    train_dpo(DPORecipe(sft_model=str(sft), pairs=str(tmp_path / "p" / "pairs"), output_dir=str(tmp_path / "dpo"),
                        lr=1e-3, batch_size=4, max_steps=6, logging_steps=1, save_steps=6, warmup_steps=0))
    assert (tmp_path / "dpo" / "final" / "retrieval_index.npz").exists()

    def margins(path) -> np.ndarray:
        m, t, proc = load_model(str(path))
        out = []
        for row in pairs:
            px = proc([load_gencad(data)[[r["deepcad_id"] for r in rows].index(row["id"])]["image"].convert("RGB")])
            ctx = [t(c, add_special_tokens=False)["input_ids"] + [t.eos_token_id] for c in
                   [canonical_target(x) for x in row["retrieved"]]]
            ids = [[t(canonical_target(c), add_special_tokens=False)["input_ids"] + [t.eos_token_id]] for c in (row["chosen"], row["rejected"])]
            rid = torch.tensor([sum(ctx, [])] * 2)
            lp = m.score_sequences(px.repeat(2, 1, 1, 1), [i[0] for i in ids], retrieved_ids=rid)
            out.append(float(lp[0] - lp[1]))
        return np.array(out)

    assert (margins(tmp_path / "dpo" / "final") - margins(sft)).mean() > 0


def test_retrieval_use_scores_the_three_contexts(tmp_path, reference_rows):
    from scripts import retrieval_use
    from tests.conftest import REFERENCE

    tok = train_tokenizer([canonical_target(r["cadquery"]) for r in reference_rows], vocab_size=400)
    folder = _conditioned_model_folder(tmp_path / "m", tok, retrieval_k=2)
    out = tmp_path / "use.json"
    assert retrieval_use.main(["--model", str(folder), "--data", str(REFERENCE / "samples.jsonl"), "--limit", "4",
                               "--batch", "3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["rows"] == 4 and report["k"] == 2
    names = ("with_retrieved", "without_retrieved", "with_perturbed_own_program")
    losses = [report[f"loss_{k}"] for k in names]
    assert all(np.isfinite(losses)) and len(set(losses)) == 3  # three different contexts reach the model
    n_num, n_str = report["tokens_numbers"], report["tokens_structure"]
    assert n_num > 0 and n_str > 0
    for k in names:  # the split by token kind covers every predicted token once
        mixed = (n_num * report[f"loss_{k}_numbers"] + n_str * report[f"loss_{k}_structure"]) / (n_num + n_str)
        assert mixed == pytest.approx(report[f"loss_{k}"], rel=1e-4)
    # the numbers the perturbed copy holds: the same tokens, scored in every context
    assert 0 < report["tokens_numbers_the_copy_holds"] <= n_num
    assert all(np.isfinite(report[f"loss_{k}_numbers_the_copy_holds"]) for k in names)


def test_beam_vs_neighbour_scores_both_programs_in_the_context_beam_search_read(tmp_path, reference_rows):
    from scripts import beam_vs_neighbour
    from tests.conftest import REFERENCE

    tok = train_tokenizer([canonical_target(r["cadquery"]) for r in reference_rows], vocab_size=400)
    folder = _conditioned_model_folder(tmp_path / "m", tok, retrieval_k=2)
    # the index holds the reference rows themselves, so each image's nearest program is its own:
    # a "beam program" equal to it must score exactly as the neighbour, another one differently
    rows = reference_rows[:3]
    pred = tmp_path / "beam.jsonl"
    codes = [rows[0]["cadquery"], rows[2]["cadquery"], rows[1]["cadquery"]]
    pred.write_text("".join(json.dumps({"id": r["deepcad_id"], "code": c}) + "\n" for r, c in zip(rows, codes)))
    out = tmp_path / "bvn.json"
    assert beam_vs_neighbour.main(["--model", str(folder), "--data", str(REFERENCE / "samples.jsonl"), "--limit", "3",
                                   "--pred", str(pred), "--batch-size", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    same, other, _ = report["rows"]
    assert same["beam_logprob"] == pytest.approx(same["neighbour_logprob"], abs=1e-3) and same["beam_tokens"] == same["neighbour_tokens"]
    assert other["beam_logprob"] != pytest.approx(other["neighbour_logprob"], abs=1e-3)
    assert all(np.isfinite([r["beam_logprob"], r["neighbour_logprob"]]).all() and r["beam_logprob"] < 0 for r in report["rows"])
    summary = report["summary"]["all"]
    assert summary["ids"] == 3 and summary["neighbour_higher_by_sum"] == sum(
        r["neighbour_logprob"] > r["beam_logprob"] for r in report["rows"])


def test_oracle_structure_writes_the_models_numbers_into_the_true_program(tmp_path, reference_rows):
    from scripts import oracle_structure
    from tests.conftest import REFERENCE

    tok = train_tokenizer([canonical_target(r["cadquery"]) for r in reference_rows], vocab_size=400)
    folder = _conditioned_model_folder(tmp_path / "m", tok)
    train = load_gencad(REFERENCE / "samples.jsonl").select(range(3, 10))  # as for validation images: not indexed
    RetrievalIndex.from_rows(train, dims=4).save(folder / "retrieval_index.npz")
    out = tmp_path / "o.json"
    args = ["--model", str(folder), "--data", str(REFERENCE / "samples.jsonl"), "--limit", "3", "--beams", "2",
            "--max-new-tokens", "1024", "--out", str(out)]
    assert oracle_structure.main([*args, "--bias", "1000"]) == 0
    copied = json.loads(out.read_text())  # a large bias on the true number writes the true program
    assert copied["structure_match"] == 1.0 and copied["numbers_changed_share"] == 0.0
    assert copied["n_valid"] == 3 and copied["iou_best"] > 0.98
    assert oracle_structure.main(args) == 0
    free = json.loads(out.read_text())  # a random model choosing the numbers changes them, never the shape
    assert free["structure_match"] == 1.0 and free["numbers_changed_share"] > 0.2 and len(free["rows"]) == 3


def test_template_decoding_keeps_the_nearest_programs_text_and_rewrites_only_numbers(reference_rows):
    from tests.conftest import REFERENCE
    from cad.programs import NUMBER_RE, bounding_size

    tok = train_tokenizer([r["cadquery"] for r in reference_rows], vocab_size=400)
    torch.manual_seed(0)
    model = build_model(Img2CadConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                      retrieval_layers=1, **TINY)).eval()
    index = RetrievalIndex.from_rows(load_gencad(REFERENCE / "samples.jsonl"), dims=8)
    images = [load_gencad(REFERENCE / "samples.jsonl")[1]["image"].convert("RGB")]

    def decode(bias, strategy="beam", max_new_tokens=1024):
        cfg = DecodeConfig(strategy=strategy, max_new_tokens=max_new_tokens, template_bias=bias, k_retrieval=1)
        predictor = Predictor(model, tok, ImageProcessor(64, 1), cfg, index=index)
        cands = predictor.generate(images)
        return [c[0].code for c in cands], [canonical_target(ctx[0]) for ctx in predictor.contexts]

    free, templates = decode(None, max_new_tokens=40)
    assert all(NUMBER_RE.split(f) != NUMBER_RE.split(t) for f, t in zip(free, templates))  # a random model: not the template
    copied, templates = decode(1000.0)
    assert copied == templates  # a large bias copies the template
    model.config.program_scale = 0.5  # as if trained with program_scale: 0.5
    rescaled, _ = decode(1000.0)  # the model reads (and here copies) the neighbour at that size
    model.config.program_scale = None
    assert bounding_size(rescaled[0]) == pytest.approx(0.5, rel=0.01) and bounding_size(templates[0]) > 0.6
    for strategy in ("beam", "greedy"):
        edited, templates = decode(0.0, strategy)
        assert [NUMBER_RE.split(e) for e in edited] == [NUMBER_RE.split(t) for t in templates]  # the text between numbers
        assert edited != templates  # a random model, free to choose numbers, changes some
        for e, t in zip(edited, templates):
            chosen: dict[str, set] = {}
            for a, b in zip(NUMBER_RE.findall(t), NUMBER_RE.findall(e)):
                chosen.setdefault(a, set()).add(b)
            assert all(len(v) == 1 for v in chosen.values())  # equal numbers stay equal
            assert all(chosen[z] == {z} for z in chosen if abs(float(z)) in (0.0, 1.0))  # 0 and ±1 are kept
    with pytest.raises(ValueError, match="number-aware tokenizer"):
        from decoding.template import number_token_mask

        number_token_mask(type("T", (), {"get_vocab": lambda self: {"a": 0}, "__len__": lambda self: 1})())


COPYABLE = ({5, 6, 7, 1}, {9, 8, 40, 1})  # the tokens each row of _copy_head_case may copy (no padding)


def _copy_head_case():
    """A tiny copy-head model, two images, their retrieved ids (row 0 padded) and decoder inputs."""
    model = _model(copy_head=True).eval()
    px = torch.rand(2, 1, 64, 64)
    ret = torch.tensor([[5, 6, 7, 1, 0], [9, 9, 8, 40, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    return model, px, ret, mask, torch.randint(3, 60, (2, 6))


def _no_padding():
    from transformers import LogitsProcessorList, SuppressTokensLogitsProcessor

    return LogitsProcessorList([SuppressTokensLogitsProcessor([0])])  # an untrained model may write padding


def test_copy_head_with_its_gate_shut_writes_only_retrieved_tokens_and_generation_matches_scoring():
    model, px, ret, mask, ids = _copy_head_case()
    logp = model(ids, pixel_values=px, retrieved_ids=ret, retrieved_attention_mask=mask).logits
    assert torch.allclose(logp.logsumexp(-1), torch.zeros(2, 6), atol=1e-4)  # a distribution, read as logits
    assert torch.allclose(logp, model(ids, pixel_values=px, retrieved_ids=torch.cat([ret, torch.zeros_like(ret)], 1),
                                      retrieved_attention_mask=torch.cat([mask, torch.zeros_like(mask)], 1)).logits,
                          atol=1e-5)  # padding is never copied
    with torch.no_grad():
        model.t5.copy_head.gate.bias.fill_(-30.0)  # the pointer alone
    shut = model(ids, pixel_values=px, retrieved_ids=ret, retrieved_attention_mask=mask).logits.exp()
    for row, allowed in enumerate(COPYABLE):
        outside = [t for t in range(60) if t not in allowed]
        assert shut[row][:, outside].max() < 1e-6 and shut[row][:, sorted(allowed)].sum(-1).min() > 0.999
    with torch.no_grad():
        model.t5.copy_head.gate.bias.fill_(0.0)
    # beams expand the retrieved ids with the encoder states: each row's best beam scores as the
    # model scores that sequence in that row's context
    no_pad = _no_padding()
    gen = model.generate_programs(px, max_new_tokens=5, num_beams=3, retrieved_ids=ret, retrieved_attention_mask=mask,
                                  logits_processor=no_pad)
    seqs = [[t for t in s.tolist() if t != 0] for s in gen.sequences]
    scored = model.score_sequences(px, seqs, retrieved_ids=ret, retrieved_attention_mask=mask)
    assert torch.allclose(gen.logprobs, scored, atol=1e-3)


def test_copy_bias_shifts_decoding_towards_retrieved_tokens_and_leaves_the_model_as_trained():
    model, px, ret, mask, ids = _copy_head_case()
    before = model(ids, pixel_values=px, retrieved_ids=ret, retrieved_attention_mask=mask).logits
    no_pad = _no_padding()
    kw = {"max_new_tokens": 6, "retrieved_ids": ret, "retrieved_attention_mask": mask, "logits_processor": no_pad}
    free = model.generate_programs(px, **kw, copy_bias=-40.0)
    copied = model.generate_programs(px, **kw, copy_bias=40.0)
    for row, allowed in enumerate(COPYABLE):  # the pointer alone: only the row's own tokens
        assert set(copied.sequences[row].tolist()) - {0} <= allowed
    assert any(set(s.tolist()) - {0}.union(*COPYABLE) for s in free.sequences)  # the vocabulary alone
    assert model.t5.copy_head.copy_bias == 0.0  # decoding only: training and scoring see the model as trained
    assert torch.equal(before, model(ids, pixel_values=px, retrieved_ids=ret, retrieved_attention_mask=mask).logits)
    with pytest.raises(ValueError, match="copy head"):
        _model().eval().generate_programs(px, max_new_tokens=2, retrieved_ids=ret, copy_bias=1.0)


def test_copy_head_learns_and_is_added_to_a_model_trained_without_one(tmp_path):
    src = _model()
    src.save_pretrained(tmp_path / "plain")
    model = _model(copy_head=True)
    from sft.train import init_weights
    init_weights(model, str(tmp_path / "plain"))
    theirs = src.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items() if not k.startswith("t5.copy_head."))
    assert model.t5.copy_head.gate.bias.item() == 2.0  # starts by trusting the vocabulary (p = 0.88)
    ids = torch.randint(3, 60, (2, 6))
    out = model(ids, pixel_values=torch.rand(2, 1, 64, 64), labels=ids, retrieved_ids=ids)
    out.loss.backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    reloaded = Img2CadModel.from_pretrained(str(tmp_path / "plain"), copy_head=True)
    assert reloaded.t5.copy_head.gate.bias.item() == 2.0 and reloaded.t5.copy_head.query.weight.std() < 0.2
    with pytest.raises(ValueError, match="copy_head needs retrieval_layers"):
        _model(layers=0, copy_head=True)
