"""Training throughput and peak memory: samples/s of full training steps for a recipe's model.

    python scripts/bench_train.py [--config configs/sft_tiny.yaml] [--steps 20] [--batch 32]
                                  [--tokens 90] [--precision no|bf16] [--out results/bench_train.json]

Random images and token ids of the recipe's shapes (vocabulary of the number-aware tokenizer),
so the figure is the model's cost alone. On a GPU use e.g. configs/sft_baseline.yaml with
--batch 64 --tokens 512 --precision bf16 train_mode=full pretrained=false.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cad.config import load_config  # noqa: E402
from scripts._common import machine, write_json  # noqa: E402
from sft.config import SFTConfig  # noqa: E402
from sft.model import Img2CadConfig, build_model  # noqa: E402
from sft.tokenizer import SPECIAL_TOKENS, number_tokens  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/sft_tiny.yaml")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=90)
    ap.add_argument("--precision", default="no", choices=("no", "bf16"))
    ap.add_argument("--out", default="results/bench_train.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(SFTConfig, args.config, args.overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vocab = len(number_tokens()) + cfg.tokenizer_vocab_size + len(SPECIAL_TOKENS)
    model = build_model(Img2CadConfig(encoder_name=cfg.encoder_name, image_size=cfg.image_size, in_chans=cfg.in_chans,
                                      encoder_kwargs=cfg.encoder_kwargs, decoder=cfg.decoder, vocab_size=vocab)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    px = torch.rand(args.batch, cfg.in_chans, cfg.image_size, cfg.image_size, device=device)
    ids = torch.randint(3, vocab, (args.batch, args.tokens), device=device)
    ids[:, 0] = 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step() -> None:
        with autocast:
            loss = model(input_ids=ids, pixel_values=px, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    write_json(args.out, {
        "benchmark": "train", "machine": machine(), "device": str(device), "config": args.config,
        "overrides": args.overrides, "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "batch": args.batch, "target_tokens": args.tokens, "precision": args.precision, "steps": args.steps,
        "samples_per_s": round(args.batch * args.steps / seconds, 2), "seconds_per_step": round(seconds / args.steps, 4),
        "peak_memory_mb": round(peak, 1), "threads": torch.get_num_threads(),
    })


if __name__ == "__main__":
    main()
