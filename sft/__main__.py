"""``accelerate launch -m sft --config configs/sft_baseline.yaml [--resume] [key=value ...]`` (or ``python -m sft``)."""
import json
import sys

from cad.cli import guarded
from cad.config import recipe_from_argv
from sft.config import SFTConfig


@guarded("rerun with --resume to continue from the last checkpoint")
def main(argv: list[str] | None = None) -> int:
    parsed = recipe_from_argv(SFTConfig, "python -m sft", "Supervised fine-tuning of the image-to-CadQuery model",
                              "configs/sft_baseline.yaml", argv)
    if parsed is None:
        return 2
    from sft.train import train

    metrics = train(parsed[0], resume=parsed[1])
    from accelerate import PartialState

    if PartialState().is_main_process:  # one report however many processes ran
        print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
