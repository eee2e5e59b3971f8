"""DPO with TRL: ``python -m rl.dpo --config configs/dpo.yaml [key=value ...]``.

TRL 1.x's ``DPOTrainer`` drives causal LMs only. The image-to-program model is driven through
its causal-LM-shaped interface:

* each pair becomes ``prompt_ids = [decoder start]`` and ``chosen_ids`` / ``rejected_ids`` = the
  canonical program tokens plus ``</s>``; the image is the real prompt, so the collator
  (``ImagePreferenceCollator``) loads ``image_ref`` and adds ``pixel_values``, duplicated for the
  chosen and rejected halves of TRL's batch;
* ``Img2CadModel.forward(..., fused_lm_head=True)`` returns TRL's per-token log-probabilities
  itself. TRL's ``add_fused_lm_head`` would reach the decoder through ``base_model`` and
  ``get_output_embeddings`` and miss T5's tied-embedding rescaling, so ``Img2CadDPOTrainer``
  leaves models that already speak the contract unpatched.

The reference is the frozen SFT policy: an explicit frozen copy in full mode, TRL's PEFT
mechanism (adapters disabled) in LoRA mode. ``beta``, ``loss_type`` (sigmoid, ipo, robust, plus
an ``sft`` term with ``sft_weight``) come from the recipe; TensorBoard logs rewards/chosen,
rewards/rejected, margins and accuracies; checkpoints every ``save_steps``; ``--resume``.
Under ``accelerate launch`` each process takes ``batch_size`` pairs a step (TRL's Trainer
shards the data and averages the logged loss); the main process alone writes ``final/``.
"""
from __future__ import annotations

import copy
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import trl.trainer.dpo_trainer as dpo_module
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from cad.cli import guarded
from cad.config import recipe_from_argv, to_yaml
from cad.io import require_model_dir
from cad.programs import normalize_scale
from cad.data import to_image
from decoding.retrieval import RUN_INDEX, saved_index
from sft.data import RetrievalSpec, pack_retrieved
from sft.model import Img2CadModel, load_model
from sft.tokenizer import canonical_target
from sft.train import peak_memory_mb, resolve_precision


@dataclass
class DPORecipe:
    sft_model: str = "outputs/sft/final"
    pairs: str = "outputs/pairs/pairs"
    output_dir: str = "outputs/dpo"
    beta: float = 0.1
    loss_type: list = field(default_factory=lambda: ["sigmoid"])  # sigmoid, ipo, robust; add "sft" for an SFT term
    sft_weight: float = 0.0
    label_smoothing: float = 0.0  # robust DPO's assumed label noise
    train_mode: str = "full"  # full (frozen copy as reference) or lora (PEFT reference)
    lora_r: int = 16
    lora_alpha: int = 32
    lr: float = 5e-6
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 200
    warmup_steps: int = 10
    max_length: int = 512
    logging_steps: int = 10
    save_steps: int = 100
    seed: int = 0
    precision: str = "auto"  # auto, no, bf16
    canonical_grid: int | None = 256  # must match the SFT model's targets (null: 3 decimals throughout)


class ImagePreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator plus the images, stacked for [chosen; rejected]."""

    def __init__(self, processor, eos_token_id: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.processor = processor
        self.retrieval_ids = (eos_token_id, kwargs.get("pad_token_id", 0))

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        pixels = self.processor([to_image({"bytes": e.get("image_bytes"), "path": e["image_ref"]}).convert("RGB")
                                 for e in examples])
        batch["pixel_values"] = torch.cat([pixels, pixels], dim=0)
        if examples and "retrieved_ids" in examples[0]:  # a retrieval-conditioned model: the same context for both halves
            eos, pad = self.retrieval_ids
            spec = RetrievalSpec(1, 0.0, eos, pad, 1 << 30)
            packed = pack_retrieved([[list(e["retrieved_ids"])] for e in examples], spec)
            for key, value in packed.items():
                batch[key] = torch.cat([value, value], dim=0)
        return batch


class Img2CadDPOTrainer(DPOTrainer):
    """DPOTrainer for pre-tokenised image preference data and a model with native per-token log-probs."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        missing = {"prompt_ids", "chosen_ids", "rejected_ids", "image_ref"} - set(dataset.column_names)
        if missing:
            raise ValueError(f"{dataset_name} dataset lacks {sorted(missing)}: build it with rl.dpo.tokenize_pairs")
        return dataset

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt_ids", "chosen_ids", "rejected_ids", "image_ref", "image_bytes", "retrieved_ids"]


_trl_add_fused_lm_head = dpo_module.add_fused_lm_head


def _add_fused_lm_head(model, *args, **kwargs):
    if isinstance(model, Img2CadModel):
        return  # forward(fused_lm_head=True) is native, see the module docstring
    return _trl_add_fused_lm_head(model, *args, **kwargs)


dpo_module.add_fused_lm_head = _add_fused_lm_head


def tokenize_pairs(pairs: datasets.Dataset, tokenizer, start_id: int, grid: int | None = 256,
                   max_retrieved: int | None = None, scale: float | None = None) -> datasets.Dataset:
    """TRL's token columns; with ``max_retrieved`` (a retrieval-conditioned model) also
    ``retrieved_ids``: the programs the pair's samples were conditioned on, as the model reads them.
    ``scale``: the model's ``program_scale``; every program is rescaled to it, as in SFT (a chosen
    retrieved training program comes at its own size)."""
    def encode(row):
        def ids(code: str) -> list[int]:
            code = normalize_scale(code, scale) if scale else code
            return tokenizer(canonical_target(code, grid), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

        out = {"prompt_ids": [start_id], "chosen_ids": ids(row["chosen"]), "rejected_ids": ids(row["rejected"])}
        if max_retrieved is not None:
            out["retrieved_ids"] = [t for code in (row.get("retrieved") or []) for t in ids(code)][:max_retrieved]
        return out

    return pairs.map(encode, desc="tokenize pairs")


def train_dpo(cfg: DPORecipe, resume: bool = False) -> dict:
    model, tokenizer, processor = load_model(require_model_dir(cfg.sft_model, "sft_model"))
    model.train()
    if not Path(cfg.pairs).exists():
        raise ValueError(f"{cfg.pairs}: no preference pairs; run python -m rl.pairs first (it writes none when no "
                         "image gave a pair: sample more, or pass --include-reference)")
    pairs = datasets.load_from_disk(cfg.pairs)
    if len(pairs) == 0:
        raise ValueError(f"{cfg.pairs}: no preference pairs; run python -m rl.pairs first")
    conditioned = bool(getattr(model.config, "retrieval_layers", 0))
    train = tokenize_pairs(pairs, tokenizer, model.config.decoder_start_token_id, cfg.canonical_grid,
                           model.config.max_retrieved_length if conditioned else None,
                           getattr(model.config, "program_scale", None))
    precision = resolve_precision(cfg.precision)
    loss_types = list(cfg.loss_type)
    weights = [1.0] * len(loss_types)
    if cfg.sft_weight > 0 and "sft" not in loss_types:
        loss_types.append("sft")
        weights.append(cfg.sft_weight)
    args = DPOConfig(
        output_dir=cfg.output_dir, beta=cfg.beta, loss_type=loss_types, loss_weights=weights,
        label_smoothing=cfg.label_smoothing, learning_rate=cfg.lr, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps,
        logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, seed=cfg.seed, max_length=cfg.max_length,
        report_to=["tensorboard"], remove_unused_columns=False, bf16=precision == "bf16",
        # TRL turns gradient checkpointing on by default; the timm + T5 model does not support it
        use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False, dataloader_num_workers=0,
        precompute_ref_log_probs=False,
    )
    peft_config, ref_model = None, None
    if cfg.train_mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                 target_modules=r"t5\.decoder\.block\.\d+\.layer\.\d+\.(SelfAttention|EncDecAttention)\.(q|k|v|o)")
    else:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    collator = ImagePreferenceCollator(processor, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                       max_length=cfg.max_length)
    trainer = Img2CadDPOTrainer(model=model, ref_model=ref_model, args=args, data_collator=collator,
                                train_dataset=train, processing_class=tokenizer, peft_config=peft_config)
    last = None
    if resume:
        ckpts = sorted(Path(cfg.output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        last = str(ckpts[-1]) if ckpts else None
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    out = Path(cfg.output_dir) / "final"
    main_process = trainer.accelerator.is_main_process
    if cfg.train_mode == "lora":
        if main_process:
            trainer.model.merge_and_unload().save_pretrained(str(out))
            tokenizer.save_pretrained(str(out))
    else:
        trainer.save_model(str(out))  # every process takes part (sharded weights are gathered); the main one writes
    metrics = {"train_loss": result.training_loss, "steps": result.global_step, "pairs": len(train),
               "train_seconds": round(time.perf_counter() - t0, 1), "peak_memory_mb": peak_memory_mb(),
               "processes": trainer.accelerator.num_processes,
               **{k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}}
    if main_process:
        processor.save_pretrained(out)
        own_index = saved_index(cfg.sft_model)
        if own_index:  # a retrieval-conditioned model keeps the index it was trained with
            shutil.copyfile(own_index, out / RUN_INDEX)
        (out / "dpo_metrics.json").write_text(json.dumps(metrics, indent=2))
        (out / "dpo_config.yaml").write_text(to_yaml(cfg))
    trainer.accelerator.wait_for_everyone()
    return metrics


@guarded("rerun with --resume to continue from the last checkpoint")
def main(argv: list[str] | None = None) -> int:
    parsed = recipe_from_argv(DPORecipe, "python -m rl.dpo", "DPO of the SFT model on preference pairs (TRL)",
                              "configs/dpo.yaml", argv)
    if parsed is None:
        return 2
    metrics = train_dpo(*parsed)
    from accelerate import PartialState

    if PartialState().is_main_process:  # one report however many processes ran
        print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
