"""SFT training loop: ``accelerate launch -m sft --config configs/sft_baseline.yaml [key=value ...]``.

One Accelerator drives mixed precision, gradient accumulation, TensorBoard and any number of
processes (``accelerate launch --config_file configs/accelerate/...``). Batches come from an
in-memory permutation seeded by (seed, epoch), so the data order is a function of the step alone
and ``--resume`` (which restores model, optimiser, scheduler and RNG states from the last
checkpoint) continues exactly as an uninterrupted run would.

With several processes each takes every world-th row of the step's global batch
(``batch_size`` rows per process); the scheduler advances once per optimiser step, so the
learning rate follows the same schedule over ``max_steps`` whatever the number of processes;
validation is split across the processes and reduced; the main process alone writes
``config.yaml``, the tokenizer, checkpoint bookkeeping, logs and the final model.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from tqdm import tqdm
from torch.optim.lr_scheduler import LambdaLR

from cad.config import to_yaml
from cad.data import load_gencad
from decoding.retrieval import RUN_INDEX as INDEX_NAME
from sft.config import SFTConfig, refuse_random_init
from sft.data import Examples, add_retrieval, attach_edits, build_examples, collate
from sft.image_processing import ImageProcessor
from sft.model import Img2CadConfig, Img2CadModel, build_model
from sft.tokenizer import build_tokenizer

log = logging.getLogger("sft")


def model_config(cfg: SFTConfig, tokenizer) -> Img2CadConfig:
    return Img2CadConfig(
        encoder_name=cfg.encoder_name, image_size=cfg.image_size, in_chans=cfg.in_chans,
        encoder_kwargs=cfg.encoder_kwargs, decoder=cfg.decoder, pretrained=cfg.pretrained,
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        retrieval_layers=cfg.retrieval_layers, retrieval_k=cfg.retrieval_k, max_retrieved_length=cfg.max_retrieved_length,
        program_scale=cfg.program_scale, copy_head=cfg.copy_head,
    )


def load_splits(cfg: SFTConfig):
    train = load_gencad(cfg.train_data, split=cfg.train_split, allow_test=False)
    if cfg.val_data is not None:
        val = load_gencad(cfg.val_data, split=cfg.val_split, allow_test=False)
    else:
        n_val = min(cfg.val_size, max(len(train) // 10, 1))
        split = train.train_test_split(test_size=n_val, seed=cfg.seed, shuffle=True)
        train, val = split["train"], split["test"]
    if cfg.max_train_samples is not None:
        train = train.select(range(min(cfg.max_train_samples, len(train))))
    return train, val


class Progress:
    """How far training is, in [0, 1]: optimiser steps over ``max_steps`` or, with a time budget
    (``max_minutes``), the share of it spent, whichever is further. All processes hold the same
    seconds (the slowest one's, see ``sync``), so they follow one learning rate and stop together."""

    def __init__(self, max_steps: int, warmup_steps: int, max_minutes: float | None):
        self.max_steps, self.warmup, self.budget_s = max_steps, warmup_steps, (max_minutes or 0) * 60
        self.seconds = 0.0
        self.by_deadline = False  # the budget is the time left to a deadline (``limit``)

    def limit(self, seconds: float) -> None:
        """Cap the time budget at ``seconds`` of training (a budget where there was none)."""
        self.by_deadline = self.by_deadline or not self.budget_s or seconds < self.budget_s
        self.budget_s = min(self.budget_s, seconds) if self.budget_s else seconds

    def sync(self, accelerator: Accelerator, seconds: float) -> None:
        if self.budget_s:
            t = torch.tensor([seconds], dtype=torch.float64, device=accelerator.device)
            self.seconds = float(accelerator.reduce(t, "max")[0]) if accelerator.num_processes > 1 else seconds

    def fraction(self, step: int) -> float:
        by_steps = (step - self.warmup) / max(self.max_steps - self.warmup, 1)
        return min(max(by_steps, self.seconds / self.budget_s if self.budget_s else 0.0), 1.0)

    def done(self, step: int) -> bool:
        return step >= self.max_steps or (self.budget_s > 0 and self.seconds >= self.budget_s)

    def lr_factor(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps``, then a cosine to zero at the end of training."""
        if step < self.warmup:
            return step / max(self.warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * self.fraction(step)))


def init_weights(model: Img2CadModel, path: str) -> None:
    """Start from the weights of the model folder ``path`` (same architecture; any stored dtype)."""
    from cad.config import ConfigError

    try:
        source = Img2CadModel.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"init_from={path}: not a model folder written by sft, rl.dpo or scripts.export_model ({exc})") from exc
    mine, theirs = model.config, source.config
    differ = [k for k in ("encoder_name", "image_size", "in_chans", "encoder_kwargs", "vocab_size", "retrieval_layers")
              if getattr(mine, k) != getattr(theirs, k)]
    differ += [f"decoder.{k}" for k, v in mine.decoder.items() if k != "dropout_rate" and theirs.decoder.get(k, v) != v]
    try:
        if not differ:
            # a copy head may be added to a model trained without one: only its weights are missing
            missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
            new_head = mine.copy_head and not theirs.copy_head
            missing = [k for k in missing if not (new_head and k.startswith("t5.copy_head."))]
            if missing or unexpected:
                differ.append(f"parameters missing {missing[:3]} or unexpected {unexpected[:3]}")
    except RuntimeError as exc:  # shapes
        differ.append(str(exc).splitlines()[0])
    if differ:
        raise ConfigError(f"init_from={path}: its architecture differs from this recipe's in {', '.join(differ)}; "
                          "use the recipe it was trained with")
    log.info("initialised from %s", path)


class StepBatches(torch.utils.data.IterableDataset):
    """The micro-batches of every optimiser step from ``first`` on, for this process. A batch is a
    function of (seed, step) alone (the row order of the step's epoch and its augmentation RNG), so
    the training process or any number of DataLoader workers yield the same batches in order."""

    def __init__(self, ex: Examples, cfg: SFTConfig, world: int, rank: int, pad: int, first: int):
        self.ex, self.cfg, self.world, self.rank, self.pad, self.first = ex, cfg, world, rank, pad, first
        self.steps_per_epoch = max(len(ex) // (cfg.batch_size * cfg.grad_accum * world), 1)

    def batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        cfg, world = self.cfg, self.world
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(len(self.ex), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)).numpy()
        rng = np.random.default_rng([cfg.seed, step])
        out = []
        for micro in range(cfg.grad_accum):
            lo = (in_epoch * cfg.grad_accum + micro) * cfg.batch_size * world
            idx = perm[lo:lo + cfg.batch_size * world][self.rank::world]
            if len(idx) == 0:
                idx = perm[: cfg.batch_size]
            out.append(collate(self.ex, idx, self.pad, cfg.augment_shift, rng))
        return out

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        step = self.first + worker  # the DataLoader takes one item from each worker in turn
        while True:
            yield step, self.batches(step)
            step += workers


def step_batches(source: StepBatches, num_workers: int):
    """An iterator of (step, micro-batches): prepared by ``num_workers`` background processes, or here."""
    if num_workers <= 0:
        return iter(source)
    loader = torch.utils.data.DataLoader(source, batch_size=None, num_workers=num_workers, prefetch_factor=4)
    return iter(loader)


def cadquery_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("cadquery") is not None


def token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    pred = logits[:, :-1].argmax(-1)
    tgt = labels[:, 1:]
    mask = tgt != -100
    return float((pred[mask] == tgt[mask]).float().mean()) if mask.any() else 0.0


@torch.no_grad()
def validation_loss(model, ex: Examples, pad_id: int, batch_size: int, accelerator: Accelerator) -> float:
    """Token-weighted mean loss over all validation rows. Process r scores batches r, r + world, ...;
    every process runs the same number of forward passes (a spare one scores a batch with weight 0,
    as sharded models gather weights in forward), and the sums are reduced, so all ranks agree."""
    model.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    starts = list(range(0, len(ex), batch_size))
    sums = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for i in range(math.ceil(len(starts) / world)):
        j = i * world + rank
        start = starts[j] if j < len(starts) else 0
        batch = collate(ex, list(range(start, min(start + batch_size, len(ex)))), pad_id)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        out = model(**batch)
        if j < len(starts):
            n = int((batch["labels"][:, 1:] != -100).sum())
            sums += torch.tensor([float(out.loss) * n, n], dtype=torch.float64, device=accelerator.device)
    sums = accelerator.reduce(sums, "sum")
    model.train()
    return float(sums[0] / max(float(sums[1]), 1.0))


def mean_over_processes(accelerator: Accelerator, values: list[float]) -> float:
    """The mean of ``values`` averaged over all processes (every process must call it)."""
    t = torch.tensor([float(np.mean(values))], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(t, "mean")[0])


def shared_tokenizer(accelerator: Accelerator, cfg: SFTConfig, programs, tok_dir: Path, resume: bool):
    """The main process builds and saves the tokenizer (or takes ``init_from``'s, or, on resume,
    keeps the saved one); the others load what it saved."""
    tokenizer = None
    with accelerator.main_process_first():
        if accelerator.is_main_process and not (resume and tok_dir.exists()):
            if cfg.init_from:  # the weights come with their tokenizer
                from transformers import PreTrainedTokenizerFast

                tokenizer = PreTrainedTokenizerFast.from_pretrained(cfg.init_from)
                tokenizer.save_pretrained(str(tok_dir))
            else:
                tokenizer = build_tokenizer(cfg.tokenizer, programs, cfg.tokenizer_vocab_size, tok_dir)
        if tokenizer is None:
            from transformers import PreTrainedTokenizerFast

            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    return tokenizer


@torch.no_grad()
def sample_programs(model, ex: Examples, tokenizer, n: int, device, max_new_tokens: int) -> list[str]:
    model.eval()
    idx = list(range(min(n, len(ex))))
    batch = collate(ex, idx, tokenizer.pad_token_id)
    retrieved = {k: v.to(device) for k, v in batch.items() if k.startswith("retrieved_")}
    gen = model.generate_programs(batch["pixel_values"].to(device), max_new_tokens=max_new_tokens, **retrieved)
    model.train()
    return tokenizer.batch_decode(gen.sequences, skip_special_tokens=True)


def execution_rates(codes: list[str]) -> dict:
    from cad.sandbox import default_pool

    results = default_pool().run_many(codes)
    n = max(len(results), 1)
    return {"vsr": sum(r.ok for r in results) / n, "exec_rate": sum(r.executable for r in results) / n}


def _checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))


def train(cfg: SFTConfig, resume: bool = False, interrupt_after: int | None = None) -> dict:
    """Run SFT; ``interrupt_after`` stops right after that step's checkpoint (to test resuming)."""
    out = Path(cfg.output_dir)
    precision = resolve_precision(cfg.mixed_precision)
    # the scheduler is stepped below once per optimiser step; accelerate's own stepping would
    # advance it once per process per step (the schedule would end after max_steps / processes)
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum,
                              log_with="tensorboard", project_dir=str(out), step_scheduler_with_optimizer=False)
    set_seed(cfg.seed)
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.ERROR,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        (out / "config.yaml").write_text(to_yaml(cfg))

    train_ds, val_ds = load_splits(cfg)
    tokenizer = shared_tokenizer(accelerator, cfg, train_ds["cadquery"], out / "tokenizer", resume)
    processor = ImageProcessor(cfg.image_size, cfg.in_chans)
    mcfg = model_config(cfg, tokenizer)
    if cfg.pretrained and not cfg.allow_random_init:  # refuse LoRA on random weights (sft.config.refuse_random_init)
        refuse_random_init(cfg, Img2CadModel(mcfg).load_pretrained_parts(), [mcfg.encoder_name, mcfg.pretrained_decoder])
    start = mcfg.decoder_start_token_id
    train_ex = build_examples(train_ds, processor, tokenizer, cfg.max_target_length, cfg.canonical, start, "train rows",
                              cfg.program_scale, cfg.num_workers)
    val_ex = build_examples(val_ds, processor, tokenizer, cfg.max_target_length, cfg.canonical, start, "val rows",
                            cfg.program_scale, cfg.num_workers)
    if len(train_ex) == 0:
        raise ValueError(f"{cfg.train_data}: no usable training rows (skipped: {train_ex.skipped[:3]})")
    if cfg.retrieval_layers:
        add_retrieval(train_ds, val_ds, train_ex, val_ex, tokenizer, cfg.canonical, cfg.retrieval_k, cfg.retrieval_pool,
                      cfg.retrieval_none_prob, cfg.max_retrieved_length, cfg.retrieval_embedding, cfg.retrieval_dims,
                      out / INDEX_NAME if accelerator.is_main_process else None,
                      {"source": str(cfg.train_data), "split": cfg.train_split}, cfg.program_scale)
        if cfg.retrieval_edit_prob > 0:
            train_ex.retrieval = dataclasses.replace(train_ex.retrieval, edit_prob=cfg.retrieval_edit_prob)
            attach_edits(train_ex, tokenizer, cfg.retrieval_edit_variants, cfg.retrieval_edit_sigma,
                         cfg.retrieval_edit_share, cfg.seed, cfg.num_workers)

    model = build_model(mcfg)
    if cfg.init_from:
        init_weights(model, cfg.init_from)
    freeze = cfg.pretrained if cfg.freeze_encoder is None else cfg.freeze_encoder
    if freeze:
        model.encoder.requires_grad_(False)
    if cfg.train_mode == "lora":
        from peft import LoraConfig, get_peft_model

        names = "|".join(cfg.lora_target_modules)
        targets = rf"t5\.decoder\.block\.\d+\.layer\.\d+\.(SelfAttention|EncDecAttention)\.({names})"
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, modules_to_save=["proj"] if freeze else None)
        model = get_peft_model(model, lora)
    elif cfg.train_mode != "full":
        raise ValueError(f"train_mode must be 'full' or 'lora', got {cfg.train_mode!r}")
    if cfg.train_mode == "lora" and accelerator.distributed_type == DistributedType.FSDP:
        raise ValueError("train_mode=lora under FSDP is not supported: launch LoRA runs with "
                         "configs/accelerate/ddp_8gpu.yaml (the adapters are small)")
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    progress = Progress(cfg.max_steps, cfg.warmup_steps, cfg.max_minutes)
    scheduler = LambdaLR(optimizer, progress.lr_factor)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accelerator.init_trackers("tensorboard")
    writer = accelerator.get_tracker("tensorboard").writer if accelerator.is_main_process else None

    state = {"step": 0, "best_val": math.inf, "bad_evals": 0, "train_seconds": 0.0}
    ckpts = _checkpoints(out)
    if resume and ckpts:
        accelerator.load_state(str(ckpts[-1]))
        state.update(json.loads((ckpts[-1] / "trainer_state.json").read_text()))
        log.info("resumed from %s at step %d", ckpts[-1], state["step"])

    # the main process samples from the unwrapped model alone: not possible where weights are
    # sharded; executing the samples needs CadQuery (absent on a GPU machine that only trains)
    sampling = accelerator.distributed_type != DistributedType.FSDP and cadquery_installed()
    if not sampling:
        log.info("in-training sampling is off (FSDP or no CadQuery here); decode final/ with python -m decoding afterwards")
    world, rank = accelerator.num_processes, accelerator.process_index
    pad = tokenizer.pad_token_id
    batches = step_batches(StepBatches(train_ex, cfg, world, rank, pad, state["step"]), cfg.num_workers)
    metrics: dict = {}
    t_start = time.perf_counter()
    samples_seen = 0
    bar = tqdm(total=cfg.max_steps, initial=state["step"], desc="sft", unit="step", disable=not accelerator.is_main_process)
    model.train()
    if cfg.stop_by is not None:  # this run's share of the budget ends at stop_by (the same on every process)
        left = torch.tensor([cfg.stop_by - time.time()], dtype=torch.float64, device=accelerator.device)
        left = float(accelerator.reduce(left, "min")[0]) if accelerator.num_processes > 1 else float(left[0])
        progress.limit(state["train_seconds"] + max(left, 1e-3))
        log.info("stop_by: %.0f s of training left in this run", max(left, 0.0))
    progress.sync(accelerator, state["train_seconds"])
    while not progress.done(state["step"]):
        got, micro_batches = next(batches)
        assert got == state["step"], f"batch of step {got} arrived at step {state['step']}"
        losses, accs = [], []
        for batch in micro_batches:
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.accumulate(model):
                out_ = model(**batch)
                accelerator.backward(out_.loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)  # the prepared (maybe sharded) ones
                optimizer.step()
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    scheduler.step()  # once per optimiser step, whatever the number of processes
                optimizer.zero_grad()
            losses.append(float(out_.loss.detach()))
            accs.append(token_accuracy(out_.logits.detach(), batch["labels"]))
            samples_seen += len(batch["input_ids"]) * world
        state["step"] += 1
        step = state["step"]
        bar.update(1)
        progress.sync(accelerator, state["train_seconds"] + time.perf_counter() - t_start)
        last = progress.done(step)
        if step % cfg.log_every == 0 or last:
            loss, acc = mean_over_processes(accelerator, losses), mean_over_processes(accelerator, accs)
            accelerator.log({"train/loss": loss, "train/token_accuracy": acc, "train/lr": scheduler.get_last_lr()[0],
                             "train/grad_norm": float(grad_norm) if grad_norm is not None else 0.0}, step=step)
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}")
        if len(val_ex) and (step % cfg.eval_every == 0 or last):
            vl = validation_loss(model, val_ex, pad, cfg.batch_size, accelerator)
            accelerator.log({"val/loss": vl}, step=step)
            metrics["val_loss"] = vl
            if vl < state["best_val"] - 1e-4:
                state["best_val"], state["bad_evals"] = vl, 0
            else:
                state["bad_evals"] += 1
        if len(val_ex) and sampling and accelerator.is_main_process and (step % cfg.sample_every == 0 or last):
            codes = sample_programs(accelerator.unwrap_model(model), val_ex, tokenizer, cfg.sample_n,
                                    accelerator.device, cfg.max_target_length)
            rates = execution_rates(codes)
            accelerator.log({"val/sample_vsr": rates["vsr"], "val/sample_exec_rate": rates["exec_rate"]}, step=step)
            metrics.update({"sample_vsr": rates["vsr"], "sample_exec_rate": rates["exec_rate"]})
            if writer is not None and codes:
                writer.add_text("val/sample_program", "```\n" + codes[0] + "\n```", step)
        stop = cfg.early_stopping_patience is not None and state["bad_evals"] >= cfg.early_stopping_patience
        if step % cfg.save_every == 0 or last or stop or step == interrupt_after:
            state["train_seconds"] += time.perf_counter() - t_start
            t_start = time.perf_counter()
            ck = out / "checkpoints" / f"step-{step}"
            accelerator.save_state(str(ck))
            if accelerator.is_main_process:
                (ck / "trainer_state.json").write_text(json.dumps(state))
                for old in _checkpoints(out)[: -cfg.keep_checkpoints]:
                    shutil.rmtree(old, ignore_errors=True)
        if interrupt_after is not None and step >= interrupt_after:
            accelerator.end_training()
            return {"interrupted_at": step}
        if stop:
            log.info("early stopping at step %d (validation loss did not improve %d times)", step, state["bad_evals"])
            break
    bar.close()
    del batches  # stops the workers
    state["train_seconds"] += time.perf_counter() - t_start
    accelerator.wait_for_everyone()
    metrics.update({
        "steps": state["step"], "stopped_by": ("max_steps" if state["step"] >= cfg.max_steps else
                                               ("stop_by" if progress.by_deadline else "max_minutes")
                                               if progress.done(state["step"]) else "early_stopping"),
        "train_seconds": round(state["train_seconds"], 1),
        "samples_per_s_this_run": round(samples_seen / max(state["train_seconds"], 1e-9), 2),
        "trainable_parameters": n_trainable, "train_rows": len(train_ex), "val_rows": len(val_ex),
        "skipped_rows": len(train_ex.skipped) + len(val_ex.skipped), "truncated_programs": train_ex.truncated,
        "mean_target_tokens": float(np.mean([len(t) for t in train_ex.tokens])),
        "peak_memory_mb": peak_memory_mb(), "processes": accelerator.num_processes,
    })
    if cfg.init_from:  # the run this one continues, for the total training time
        metrics["init_from"] = cfg.init_from
        prior = Path(cfg.init_from) / "training_metrics.json"
        if prior.exists():
            p = json.loads(prior.read_text())
            metrics["init_from_train_seconds"] = (p.get("train_seconds") or 0) + (p.get("init_from_train_seconds") or 0)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    state_dict = accelerator.get_state_dict(model) if fsdp else None  # gathered from the shards by every process
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        if cfg.train_mode == "lora":
            final = final.merge_and_unload()
        save_final(final, tokenizer, processor, cfg, metrics, out / "final", state_dict)
    accelerator.end_training()
    return metrics


def resolve_precision(precision: str) -> str:
    """'auto' means bf16 on a GPU that has it, else full precision."""
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return precision


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def save_final(model: Img2CadModel, tokenizer, processor: ImageProcessor, cfg: SFTConfig, metrics: dict, path: Path,
               state_dict: dict | None = None) -> None:
    """Model (safetensors + config; ``state_dict`` when the weights were gathered from shards),
    tokenizer, image processor and a model card."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), state_dict=state_dict)
    tokenizer.save_pretrained(str(path))
    processor.save_pretrained(path)
    if cfg.retrieval_layers and (Path(cfg.output_dir) / INDEX_NAME).exists():  # the index the model was trained with
        shutil.copyfile(Path(cfg.output_dir) / INDEX_NAME, path / INDEX_NAME)
    (path / "training_metrics.json").write_text(json.dumps(metrics, indent=2))
    (path / "sft_config.yaml").write_text(to_yaml(cfg))
    card = [
        "# img2cad SFT model", "",
        f"Image ({cfg.image_size} px, {cfg.in_chans} channel(s)) to CadQuery program: {cfg.encoder_name} encoder, "
        f"T5 decoder {model.config.decoder}, tokenizer `{cfg.tokenizer}` ({len(tokenizer)} tokens).", "",
        "## Data", f"- train: `{cfg.train_data}` ({metrics.get('train_rows')} rows), validation: "
        f"`{cfg.val_data or 'held out from train'}` ({metrics.get('val_rows')} rows); canonical targets: {cfg.canonical}", "",
        "## Metrics", "```json", json.dumps(metrics, indent=2), "```", "",
        "## Config", "```yaml", to_yaml(cfg).rstrip(), "```", "",
        "Load with `sft.load_model(path)`; decode with `python -m decoding --model PATH ...`.",
    ]
    (path / "README.md").write_text("\n".join(card) + "\n")
