"""The SFT recipe: every knob of ``python -m sft`` (see configs/sft_*.yaml)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SFTConfig:
    # data: a local GenCAD-schema folder/JSONL (cad.data.load_gencad), or null for the hub
    train_data: str | None = "data/synth-train"
    train_split: str | None = None
    val_data: str | None = None  # null: hold out val_size rows of the training data
    val_split: str | None = None
    val_size: int = 256
    max_train_samples: int | None = None
    canonical: bool = True  # train on cad.programs.canonicalize(code, 3 decimals)
    max_target_length: int = 512
    augment_shift: int = 0  # random translation in pixels (0: off)

    # model
    encoder_name: str = "vit_base_patch16_224"
    image_size: int = 224
    in_chans: int = 3
    encoder_kwargs: dict = field(default_factory=dict)
    decoder: dict = field(default_factory=dict)  # T5 decoder shape; defaults to CodeT5-small's
    pretrained: bool = False
    tokenizer: str = "number_bpe"  # or a CodeT5 name/path (falls back to number_bpe offline)
    tokenizer_vocab_size: int = 1000

    # training
    train_mode: str = "full"  # full or lora
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list = field(default_factory=lambda: ["q", "k", "v", "o"])
    freeze_encoder: bool | None = None  # null: frozen exactly when pretrained
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_steps: int = 1000
    grad_clip: float = 1.0
    mixed_precision: str = "auto"  # auto (bf16 on a GPU that has it), no, bf16, fp16
    seed: int = 0

    # logging, evaluation, checkpoints
    output_dir: str = "outputs/sft"
    log_every: int = 10
    eval_every: int = 200
    sample_every: int = 200  # greedy-decode a few validation images and execute them
    sample_n: int = 8
    save_every: int = 200
    keep_checkpoints: int = 2
    early_stopping_patience: int | None = None  # evaluations without validation-loss improvement
