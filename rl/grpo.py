"""Online RL with TRL's GRPOTrainer: ``python -m rl.grpo --config configs/grpo.yaml [--resume] [key=value ...]``.

Each step samples ``num_generations`` programs per training image from the policy, executes them
in the sandbox and scores them with the terms of ``reward.score`` (the reward of the reranker
and of the preference pairs), one TRL reward function per term so TensorBoard shows each:

* ``executed`` (1 when the program leaves a valid solid) and ``grammatical`` (it parses);
* ``iou``: exact Best IoU against the row's ground-truth program, on rows that have one;
* ``silhouette``: render-and-compare against the input image (``reward.score.render_compare``),
  on rows without a program (or on every row with ``render_with_program``). Rows need no
  ``cadquery`` at all: a JSONL file of ``{"id", "image"}`` lines (``cadquery`` optional) or a
  dataset whose ``cadquery`` is empty trains on the images alone.

The weighted sum (``reward_weights``) is GRPO's reward; advantages are relative to the other
samples of the same image. GRPO rather than RLOO: both are TRL trainers with the same rollout and
reward-function machinery, but GRPOTrainer also has the loss variants that remove the length
bias (``loss_type`` dapo, dr_grpo) and the group normalisation of the online-RL recipe of
cadrille (a GRPO variant), which this stage follows.

How TRL drives the image-to-program model (TRL 1.16.0, pinned: the two private overrides below
are checked by ``tests/test_grpo.py``):

* generation is TRL's public ``rollout_func``: the prompt of a row is its id, and the rollout
  samples with ``Img2CadModel.generate_programs`` from the row's image. Programs of a chunk of
  ``generation_chunk`` images execute in the sandbox pool (``workers`` processes) while the next
  chunk generates; the reward then reads the pool's cache.
* the causal-LM interface, as in ``rl.dpo``: token ids are ``prompt + completion`` where the
  prompt is ``[decoder start]``, preceded for a retrieval-conditioned model
  (``retrieval_layers > 0``) by the tokens of the row's retrieved programs (the k nearest in the
  model's ``retrieval_index.npz``, the row itself and copies of its program excluded).
  ``_get_per_token_logps_and_entropies`` is overridden to split that prompt off, call
  ``forward(..., pixel_values, retrieved_ids)`` and score the completion under the sampling
  temperature (TRL's fused LM head, patched onto the model at start, is not used);
  ``_generate_and_score_completions`` is wrapped to add each completion's ``pixel_values``.
  TRL computes reference and old log-probabilities inside generation without the image, so
  ``beta`` (KL to the SFT model) must stay 0 and ``num_iterations`` 1 (TRL's defaults; the
  clipped ratio still guards the update).

Checkpoints every ``save_steps``, ``--resume``; the final model goes to ``OUTPUT_DIR/final`` with
``grpo_metrics.json`` (mean reward of the first and last logged steps among them).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import trl
from PIL import Image
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from cad.cli import guarded
from cad.config import ConfigError, recipe_from_argv, to_yaml
from cad.data import load_gencad, to_image, undecoded
from cad.io import InputError, read_jsonl, require_model_dir
from cad.sandbox import ExecOptions, SandboxPool
from decoding.retrieval import RUN_INDEX as INDEX_NAME, saved_index
from reward.score import RenderTarget, candidate_terms
from sft.model import load_model, per_token_outputs
from sft.train import peak_memory_mb, resolve_precision

TRL_VERSION = "1.16.0"  # the private methods overridden below are those of this version
TERMS = ("executed", "grammatical", "iou", "silhouette")


@dataclass
class GRPORecipe:
    sft_model: str = "outputs/sft/final"
    data: str = "data/synth-train"  # GenCAD rows (cadquery optional), or a JSONL of {"id", "image"[, "cadquery"]}
    split: str | None = "train"
    limit: int | None = None
    output_dir: str = "outputs/grpo"
    num_generations: int = 8  # samples per image (the group)
    batch_size: int = 16  # completions per process and step: a multiple of num_generations
    grad_accum: int = 1
    max_steps: int = 200
    max_minutes: float | None = None  # also stop after this much training time (comparisons at equal wall-clock)
    lr: float = 1e-5
    warmup_steps: int = 10
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    epsilon: float = 0.2  # PPO-style clipping of the probability ratio
    loss_type: str = "dapo"  # TRL's: grpo, dr_grpo, dapo, bnpo, ...
    scale_rewards: str = "group"  # group, batch or none
    beta: float = 0.0  # KL coefficient: only 0 is supported (see the module docstring)
    num_iterations: int = 1
    reward_weights: dict = field(default_factory=lambda: {"executed": 1.0, "grammatical": 0.5, "iou": 5.0, "silhouette": 5.0})
    render_with_program: bool = False  # also score rows that have a program by render-and-compare
    workers: int = 2  # sandbox processes
    timeout: float = 5.0  # seconds per program
    generation_chunk: int = 4  # images sampled at once; their programs execute while the next chunk samples
    logging_steps: int = 10
    save_steps: int = 100
    seed: int = 0
    precision: str = "auto"  # auto, no, bf16


def check_recipe(cfg: GRPORecipe) -> None:
    """Refuse settings this stage cannot honour, naming the key and what to do."""
    if cfg.num_generations < 2:
        raise ConfigError("num_generations must be at least 2: GRPO compares samples of the same image")
    if cfg.batch_size % cfg.num_generations:
        raise ConfigError(f"batch_size ({cfg.batch_size}) must be a multiple of num_generations ({cfg.num_generations})")
    if cfg.beta != 0.0 or cfg.num_iterations != 1:
        raise ConfigError("beta must be 0 and num_iterations 1: TRL computes reference and old log-probabilities "
                          "without the image (see rl/grpo.py); the clipped ratio (epsilon) limits each update")
    unknown = set(cfg.reward_weights) - set(TERMS)
    if unknown:
        raise ConfigError(f"reward_weights: unknown term(s) {sorted(unknown)}; use {list(TERMS)}")
    if not any(cfg.reward_weights.get(t) for t in TERMS):
        raise ConfigError("reward_weights: every weight is 0; give at least one term a weight")
    if cfg.max_minutes is not None and cfg.max_minutes <= 0:
        raise ConfigError("max_minutes must be positive (or null for no time limit)")
    if cfg.generation_chunk < 1 or cfg.workers < 1:
        raise ConfigError("generation_chunk and workers must be at least 1")


def load_rows(source: str, split: str | None, limit: int | None) -> tuple[list[dict], list[str]]:
    """``{"id", "image", "program"}`` rows (program None when the row has none) and the ids skipped
    because their image cannot be read."""
    path = Path(source)
    if path.is_file() and path.suffix == ".jsonl":
        rows = []
        for lineno, item, error in read_jsonl(path):
            if error:
                raise InputError(error)
            if not item.get("image"):
                raise InputError(f"{path}:{lineno}: a row needs an 'image' path (and optionally 'id' and 'cadquery')")
            rows.append({"id": str(item.get("id", item.get("deepcad_id", f"line{lineno}"))),
                         "image": {"path": str((path.parent / item["image"]).resolve()), "bytes": None},
                         "program": item.get("cadquery") or None})
    else:
        ds = undecoded(load_gencad(source, split=split, limit=limit, allow_test=False))
        rows = [{"id": str(r["deepcad_id"]), "image": r["image"], "program": r["cadquery"] or None} for r in ds]
    rows = rows[:limit] if limit else rows
    good, skipped = [], []
    for r in rows:
        try:
            to_image(r["image"])  # reads the header only
            good.append(r)
        except Exception as exc:  # noqa: BLE001 - one unreadable image costs its row, named
            skipped.append(f"{r['id']}: {type(exc).__name__}: {exc}")
    if not good:
        raise InputError(f"{source}: no row with a readable image")
    return good, skipped


class CadEnvironment:
    """Sampling, execution and reward of one process's rollouts.

    ``begin`` receives the rows of TRL's generation batch; ``rollout`` (TRL's ``rollout_func``)
    samples; ``reward_functions`` are TRL reward functions, one per reward term, that share one
    scoring of the batch (``terms``)."""

    def __init__(self, rows: list[dict], tokenizer, processor, cfg: GRPORecipe, pool: SandboxPool,
                 index=None, retrieval_k: int = 0, max_retrieved_length: int = 512, scale: float | None = None) -> None:
        self.rows, self.tok, self.proc, self.cfg, self.pool = rows, tokenizer, processor, cfg, pool
        self.opts = ExecOptions(timeout=cfg.timeout, want_geometry=True)
        self.index, self.retrieval_k, self.max_retrieved_length = index, retrieval_k, max_retrieved_length
        self.scale = scale  # the model's program_scale: retrieved programs are read at that size
        self.executor = ThreadPoolExecutor(1)
        self.pending: list[Future] = []
        self.batch: list[int] = []
        self._images: dict[int, Image.Image] = {}
        self._prompts: dict[int, list[int]] = {}
        self._scored: tuple | None = None
        self.start_id: int | None = None

    # ---- per batch ------------------------------------------------------------------------
    def begin(self, rows: list[int]) -> None:
        self.batch = list(rows)
        self._images = {r: self._images[r] for r in set(rows) if r in self._images}
        self._scored = None

    def image(self, row: int) -> Image.Image:
        if row not in self._images:
            self._images[row] = to_image(self.rows[row]["image"]).convert("RGB")
        return self._images[row]

    def pixel_values(self, rows: list[int]) -> torch.Tensor:
        cache = {r: self.proc([self.image(r)])[0] for r in set(rows)}
        return torch.stack([cache[r] for r in rows])

    def retrieved_tokens(self, row: int) -> list[int]:
        """The tokens of the row's retrieved programs as the model reads them (empty for a plain model)."""
        if self.index is None:
            return []
        if row not in self._prompts:
            from sft.data import RetrievalSpec, choose_neighbours, pack_retrieved, program_tokens

            r = self.rows[row]
            exclude = self.index.exclusions([r["id"]], [r["program"]])
            idx, _ = self.index.search(self.index.embed([self.image(row)]), self.retrieval_k, exclude)
            pool = [program_tokens(self.tok, self.index.programs[j], scale=self.scale) for j in idx[0] if j >= 0]
            spec = RetrievalSpec(self.retrieval_k, 0.0, self.tok.eos_token_id, self.tok.pad_token_id, self.max_retrieved_length)
            packed = pack_retrieved([choose_neighbours(pool, spec, None)], spec)
            self._prompts[row] = packed["retrieved_ids"][0][packed["retrieved_attention_mask"][0].bool()].tolist()
        return self._prompts[row]

    # ---- sampling (TRL's rollout_func) ------------------------------------------------------
    def rollout(self, prompts: list, trainer) -> dict:
        if len(prompts) != len(self.batch):
            raise RuntimeError("rl.grpo: the rollout did not receive the rows of its batch (TRL changed?)")
        model = trainer.accelerator.unwrap_model(trainer.model)
        self.start_id = model.config.decoder_start_token_id
        positions: dict[int, list[int]] = {}
        for pos, row in enumerate(self.batch):
            positions.setdefault(row, []).append(pos)
        completions: list[list[int]] = [[] for _ in self.batch]
        was_training = model.training
        model.eval()
        try:
            unique = list(positions)
            for lo in range(0, len(unique), self.cfg.generation_chunk):
                chunk = unique[lo:lo + self.cfg.generation_chunk]
                n = max(len(positions[r]) for r in chunk)
                device = next(model.parameters()).device
                kwargs = {}
                if self.index is not None:
                    ids = [self.retrieved_tokens(r) for r in chunk]
                    width = max(len(t) for t in ids)
                    rid = torch.full((len(chunk), width), self.tok.pad_token_id, dtype=torch.long)
                    mask = torch.zeros_like(rid)
                    for i, t in enumerate(ids):
                        rid[i, :len(t)], mask[i, :len(t)] = torch.tensor(t), 1
                    kwargs = {"retrieved_ids": rid.to(device), "retrieved_attention_mask": mask.to(device)}
                gen = model.generate_programs(self.pixel_values(chunk).to(device), max_new_tokens=self.cfg.max_new_tokens,
                                              do_sample=True, num_return_sequences=n, temperature=self.cfg.temperature,
                                              top_p=self.cfg.top_p, **kwargs)
                seqs = gen.sequences.tolist()
                codes = []
                for i, r in enumerate(chunk):
                    for j, pos in enumerate(positions[r]):
                        completions[pos] = self._trim(seqs[i * n + j])
                        codes.append(self.tok.decode(completions[pos], skip_special_tokens=True))
                # execute this chunk while the next one samples; the reward reads the pool's cache
                self.pending.append(self.executor.submit(self.pool.run_many, list(dict.fromkeys(codes)), self.opts))
        finally:
            model.train(was_training)
        prompt_ids = [self.retrieved_tokens(r) + [self.start_id] for r in self.batch]
        return {"prompt_ids": prompt_ids, "completion_ids": completions, "logprobs": None}

    def _trim(self, seq: list[int]) -> list[int]:
        """Up to and including the first EOS (the whole sequence when it was cut by the length limit)."""
        eos = self.tok.eos_token_id
        return seq[:seq.index(eos) + 1] if eos in seq else seq

    # ---- reward ---------------------------------------------------------------------------
    def terms(self, rows: list[int], completions: list[str]) -> list[dict]:
        """Every completion's reward terms (``reward.score.candidate_terms``), computed once per batch."""
        key = (tuple(rows), tuple(completions))
        if self._scored is not None and self._scored[0] == key:
            return self._scored[1]
        for fut in self.pending:
            fut.result()
        self.pending.clear()
        results = dict(zip(dict.fromkeys(completions), self.pool.imap(list(dict.fromkeys(completions)), self.opts)))
        references: dict[int, object] = {}
        for r in set(rows):
            program = self.rows[r]["program"]
            gt = self.pool.run(program, self.opts) if program else None
            references[r] = gt.geometry if gt is not None and gt.executable else None
        w = self.cfg.reward_weights
        out = []
        targets: dict[int, RenderTarget] = {}  # each row's image prepared once for all its completions
        for r, code in zip(rows, completions):
            has_gt = references[r] is not None
            weights = {"executed": 1.0, "grammatical": 1.0, "iou": float(has_gt),
                       "silhouette": float(not has_gt or self.cfg.render_with_program)}
            weights = {t: v for t, v in weights.items() if v and w.get(t)}
            if weights.get("silhouette") and r not in targets:
                targets[r] = RenderTarget.of(self.image(r))
            t = candidate_terms(code, results[code], weights, image=targets.get(r) if weights.get("silhouette") else None,
                                reference=references[r])
            if weights.get("iou"):
                t.setdefault("iou", 0.0)
            if weights.get("silhouette"):
                t.setdefault("silhouette", 0.0)
            out.append(t)
        self._scored = (key, out)
        return out

    def reward_functions(self) -> list:
        """One TRL reward function per weighted term: the term's value, or None where it does not
        apply (no ground truth for ``iou``; a program, without ``render_with_program``, for
        ``silhouette``), which TRL leaves out of the sum."""
        funcs = []
        for term in TERMS:
            if not self.cfg.reward_weights.get(term):
                continue

            def reward(prompts, completions, row, term=term, **_):
                return [t.get(term) for t in self.terms(list(row), list(completions))]

            reward.__name__ = term
            funcs.append(reward)
        return funcs

    def close(self) -> None:
        self.executor.shutdown(wait=True)


class TimeLimit(TrainerCallback):
    """Stop training once ``minutes`` of it have passed (checked after every step)."""

    def __init__(self, minutes: float) -> None:
        self.seconds, self.start = minutes * 60.0, time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.start >= self.seconds:
            control.should_training_stop = control.should_save = True
        return control


class Img2CadGRPOTrainer(GRPOTrainer):
    """GRPOTrainer for the image-to-program model (TRL 1.16.0; see the module docstring)."""

    def __init__(self, *args, environment: CadEnvironment, **kwargs):
        self.environment = environment
        super().__init__(*args, rollout_func=environment.rollout, **kwargs)

    def _generate_and_score_completions(self, inputs):
        rows = [x["row"] for x in inputs]
        self.environment.begin(rows)
        output = super()._generate_and_score_completions(inputs)
        output["pixel_values"] = self.environment.pixel_values(rows).to(self.accelerator.device)
        return output

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, pixel_values=None, **_):
        """Per-token log-probs (and entropies) of the completions: the prompt columns before the
        decoder start are the retrieved programs' tokens, the image comes as ``pixel_values``."""
        if pixel_values is None:
            raise RuntimeError("rl.grpo: the model was called without its images (beta > 0 or num_iterations > 1?)")
        start = input_ids.size(1) - logits_to_keep - 1  # the decoder start token's column (prompts are left-padded)
        size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for lo in range(0, input_ids.size(0), size):
            rows = slice(lo, lo + size)
            ids, mask = input_ids[rows, start:], attention_mask[rows, start:]
            extra = {}
            if start > 0:
                extra = {"retrieved_ids": input_ids[rows, :start], "retrieved_attention_mask": attention_mask[rows, :start]}
            with self.accelerator.autocast():
                logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values[rows], **extra).logits
            # the sampled distribution is the tempered one, as TRL scores it
            out = per_token_outputs(logits / self.temperature, ids.masked_fill(mask == 0, -100))
            logps.append(out.log_probs[:, -logits_to_keep:])
            if compute_entropy:
                entropies.append(out.entropy[:, -logits_to_keep:])
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None


def check_trl() -> None:
    if trl.__version__ != TRL_VERSION:
        raise RuntimeError(f"rl.grpo overrides private methods of TRL {TRL_VERSION}'s GRPOTrainer; found TRL "
                           f"{trl.__version__}: install trl=={TRL_VERSION} or port Img2CadGRPOTrainer")


def build_environment(cfg: GRPORecipe, model, tokenizer, processor, rows: list[dict], pool: SandboxPool) -> CadEnvironment:
    index, k, max_len = None, 0, 512
    if getattr(model.config, "retrieval_layers", 0):
        from decoding.retrieval import RetrievalIndex

        path = saved_index(cfg.sft_model)
        if path is None:
            raise InputError(f"{cfg.sft_model}: a retrieval-conditioned model needs the {INDEX_NAME} it was trained with")
        index, k, max_len = RetrievalIndex.load(path), int(model.config.retrieval_k), int(model.config.max_retrieved_length)
    return CadEnvironment(rows, tokenizer, processor, cfg, pool, index, k, max_len, getattr(model.config, "program_scale", None))


def train_grpo(cfg: GRPORecipe, resume: bool = False) -> dict:
    check_trl()
    check_recipe(cfg)
    model, tokenizer, processor = load_model(require_model_dir(cfg.sft_model, "sft_model"))
    model.train()
    rows, skipped = load_rows(cfg.data, cfg.split, cfg.limit)
    if skipped:
        print(f"warning: {len(skipped)} rows with unreadable images skipped (first: {skipped[0]})", file=sys.stderr)
    dataset = datasets.Dataset.from_dict({"prompt": [r["id"] for r in rows], "row": list(range(len(rows)))})
    precision = resolve_precision(cfg.precision)
    w = cfg.reward_weights
    args = GRPOConfig(
        output_dir=cfg.output_dir, learning_rate=cfg.lr, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps,
        logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, seed=cfg.seed, num_generations=cfg.num_generations,
        max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, epsilon=cfg.epsilon,
        loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards, beta=cfg.beta, num_iterations=cfg.num_iterations,
        reward_weights=[w[t] for t in TERMS if w.get(t)], report_to=["tensorboard"], remove_unused_columns=False,
        bf16=precision == "bf16", use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False,
        dataloader_num_workers=0, log_completions=False,
    )
    t0 = time.perf_counter()
    with SandboxPool(cfg.workers) as pool:
        env = build_environment(cfg, model, tokenizer, processor, rows, pool)
        try:
            trainer = Img2CadGRPOTrainer(model=model, reward_funcs=env.reward_functions(), args=args, train_dataset=dataset,
                                         processing_class=tokenizer, environment=env,
                                         callbacks=[TimeLimit(cfg.max_minutes)] if cfg.max_minutes else None)
            last = None
            if resume:
                ckpts = sorted(Path(cfg.output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
                last = str(ckpts[-1]) if ckpts else None
            result = trainer.train(resume_from_checkpoint=last)
        finally:
            env.close()
    out = Path(cfg.output_dir) / "final"
    trainer.save_model(str(out))  # every process takes part; the main one writes
    rewards = [(h["step"], h["reward"]) for h in trainer.state.log_history if "reward" in h]
    metrics = {"steps": result.global_step, "images": len(rows), "images_without_program": sum(r["program"] is None for r in rows),
               "skipped_unreadable": len(skipped), "train_seconds": round(time.perf_counter() - t0, 1),
               "peak_memory_mb": peak_memory_mb(), "processes": trainer.accelerator.num_processes,
               "reward_first": rewards[0][1] if rewards else None, "reward_last": rewards[-1][1] if rewards else None,
               "train_loss": result.training_loss}
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(str(out))
        processor.save_pretrained(out)
        own_index = saved_index(cfg.sft_model)
        if own_index:  # a retrieval-conditioned model keeps the index it was trained with
            shutil.copy(own_index, out / INDEX_NAME)
        (out / "grpo_metrics.json").write_text(json.dumps(metrics, indent=2))
        (out / "grpo_config.yaml").write_text(to_yaml(cfg))
    trainer.accelerator.wait_for_everyone()
    return metrics


@guarded("rerun with --resume to continue from the last checkpoint")
def main(argv: list[str] | None = None) -> int:
    parsed = recipe_from_argv(GRPORecipe, "python -m rl.grpo", "Online RL (TRL GRPO) of the SFT model with the shared reward",
                              "configs/grpo.yaml", argv)
    if parsed is None:
        return 2
    metrics = train_grpo(*parsed)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
