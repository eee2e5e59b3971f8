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
    # targets and retrieved programs rescaled so that their bounding box's largest side is this
    # (cad.programs.normalize_scale; a render fits the part to the frame, so the size is not in the image)
    program_scale: float | None = None
    max_target_length: int = 512
    augment_shift: int = 0  # random translation in pixels (0: off)

    # model
    encoder_name: str = "vit_base_patch16_224"
    image_size: int = 224
    in_chans: int = 3
    encoder_kwargs: dict = field(default_factory=dict)
    decoder: dict = field(default_factory=dict)  # T5 decoder shape; defaults to CodeT5-small's
    pretrained: bool = False
    init_from: str | None = None  # a model folder (sft final/ or a shipped model) whose weights start training
    allow_random_init: bool = False  # pretrained: true and weights unreachable -> an error unless this is set
    # retrieval-conditioned generation (sft/model.py): the model reads the programs of the nearest
    # training images (decoding.retrieval) and writes the target; 0 layers = the plain model
    retrieval_layers: int = 0  # T5 encoder blocks over the retrieved programs
    retrieval_k: int = 1  # retrieved programs per example
    retrieval_pool: int = 4  # training draws them at random among this many nearest (others excluded: itself, same program)
    retrieval_none_prob: float = 0.1  # share of training examples given no retrieved program (the plain mode)
    # edit examples (sft/data.py): a share of training examples read a perturbed copy of their own
    # program among the retrieved ones (each number scaled by 1 + N(0, sigma) with probability share)
    retrieval_edit_prob: float = 0.0
    retrieval_edit_sigma: float = 0.15
    retrieval_edit_share: float = 0.7
    retrieval_edit_variants: int = 2
    retrieval_embedding: str = "blur64"  # decoding.retrieval.EMBEDDINGS
    retrieval_dims: int = 128
    max_retrieved_length: int = 512  # tokens of all retrieved programs together
    # pointer-generator copy head over the retrieved tokens (sft/model.py CopyHead); init_from may be
    # a model without one (the head then starts from its initialisation)
    copy_head: bool = False
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
    # wall-clock budget in minutes (null: none): training stops when it is spent, and the cosine
    # schedule follows whichever of steps and time is further along; the steps reached are in
    # training_metrics.json (rerun with that max_steps and no budget for a run that repeats exactly)
    max_minutes: float | None = None
    # a Unix time (seconds) by which training ends (null: none): the time budget shrinks to what is
    # left of it when training starts, so a fixed window holds however long preparation took
    stop_by: float | None = None
    grad_clip: float = 1.0
    mixed_precision: str = "auto"  # auto (bf16 on a GPU that has it), no, bf16, fp16
    # processes that prepare the data (when above 1: images, programs, edit copies) and the batches
    # ahead of the training step (0: the training process does both)
    num_workers: int = 0
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


def refuse_random_init(cfg: SFTConfig, loaded: list[str], wanted: list[str]) -> None:
    """A recipe that asks for pretrained weights (``pretrained: true``) must get them: a LoRA on a
    random decoder behind a frozen random encoder learns nothing useful. Raises a ConfigError
    naming what could not be loaded, unless ``allow_random_init`` is set."""
    from cad.config import ConfigError

    missing = [w for w in wanted if w not in loaded]
    if cfg.pretrained and missing and not cfg.allow_random_init:
        raise ConfigError(f"pretrained: true, but no pretrained weights could be loaded for {', '.join(missing)} "
                          "(no hub access?): point encoder_name / the decoder at a local copy, or train from "
                          "scratch (configs/sft_cpu_small.yaml, or train_mode=full pretrained=false), or pass "
                          "allow_random_init=true to train on random weights anyway")
