"""RAG decoding: what both decoders share, their settings, their result and special tokens.

Lewis et al. 2020, section 2.4, with the search rules of transformers' ``generate``:

- RAG-Token (``rag.decode_token``): greedy or beam search on the marginal next-token
  distribution, step for step as ``RagTokenForGeneration.generate``;
- RAG-Sequence (``rag.decode_sequence``): beam search per passage, then the hypotheses ranked by
  log p(y|x) (eq. 1), as ``RagSequenceForGeneration.generate`` (thorough) or by its "fast"
  approximation.

Both read a ``rag.config.DecodeConfig`` and return :class:`RagDecoded`; the decoder start, forced
BOS/EOS and padding come from the generator's generation config (:func:`special_tokens`).

Glossary: B questions, R returned sequences per question (in :meth:`SpecialTokens.process`: the
rows of a search step), T output length, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel

from .config import DecodeConfig


@dataclass(frozen=True)
class RagDecoded:
    """Decoded hypotheses, best first.

    ``sequences``: (B, R, T) int64, each starting with the decoder start symbol, padded after EOS.
    ``scores``: (B, R) float. RAG-Sequence: log p(y|x) (eq. 1; fast decoding's approximation of it).
    RAG-Token: the search score, i.e. the sum of processed marginal log-probs, divided by
    generated_len**length_penalty for beam search.
    """

    sequences: Tensor
    scores: Tensor


@dataclass(frozen=True)
class SpecialTokens:
    """Special tokens from the generator's generation config (:func:`special_tokens`)."""

    start: int
    pad: int
    bos: int | None
    eos: Tensor  # (E,) int64
    forced_bos: int | None
    forced_eos: Tensor | None  # (E',) int64

    @property
    def n_start(self) -> int:
        """Symbols before the answer proper: the decoder start, and a forced BOS if any."""
        return 1 + (self.forced_bos is not None)

    def process(self, scores: Tensor, cur_len: int, config: DecodeConfig) -> Tensor:
        """Min-length, forced-BOS and forced-EOS masks on (R, V) scores, in transformers' order."""
        if cur_len < config.min_length:
            scores = scores.index_fill(1, self.eos, -float("inf"))
        if self.forced_bos is not None and cur_len == 1:
            scores = torch.full_like(scores, -float("inf"))
            scores[:, self.forced_bos] = 0.0
        if self.forced_eos is not None and cur_len == config.max_length - 1:
            scores = torch.full_like(scores, -float("inf"))
            scores[:, self.forced_eos] = 0.0
        return scores


def special_tokens(generator: PreTrainedModel, device: torch.device) -> SpecialTokens:
    """The generator's special tokens, id lists as tensors on ``device``."""
    gc = generator.generation_config

    def ids(value: int | list[int] | None) -> Tensor | None:
        if value is None:
            return None
        return torch.tensor([value] if isinstance(value, int) else list(value), device=device)

    eos = ids(gc.eos_token_id)
    if eos is None or gc.decoder_start_token_id is None:
        raise ValueError("the generator's generation_config needs eos and decoder_start token ids")
    pad = gc.pad_token_id if gc.pad_token_id is not None else int(eos[0])
    return SpecialTokens(
        gc.decoder_start_token_id,
        pad,
        gc.bos_token_id,
        eos,
        gc.forced_bos_token_id,
        ids(gc.forced_eos_token_id),
    )
