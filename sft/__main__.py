"""``accelerate launch -m sft --config configs/sft_baseline.yaml [--resume] [key=value ...]`` (or ``python -m sft``)."""
import argparse
import json
import sys

from cad.config import ConfigError, load_config
from sft.config import SFTConfig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sft", description="Supervised fine-tuning of the image-to-CadQuery model")
    ap.add_argument("--config", default="configs/sft_baseline.yaml", help="YAML recipe")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(SFTConfig, args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from sft.train import train

    metrics = train(cfg, resume=args.resume)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
