"""A copy-augmented BART: the decoder may point at a token of its input instead of generating one.

At each decoder step t the next-token distribution mixes BART's vocabulary distribution with a copy
distribution (a pointer-generator, See et al. 2017, eqs. 8-9, with a shared vocabulary):

    a_t(i)  = softmax_i((W_q h_t + b_q) . (W_k e_i + b_k) / sqrt(D) + f [x_{i-1} = y_{t-1}])  pointer
    p_copy(v) = sum_{i : x_i = v} a_t(i)                                               scattered
    g_t     = sigmoid( w . [h_t ; sum_i a_t(i) e_i] + b )                               gate
    p(v)    = g_t * p_vocab(v) + (1 - g_t) * p_copy(v)

h_t is the decoder state, e_i the encoder state of input token x_i (question-aware: the encoder reads
passage and question together), and f a learned weight on "x_i follows the token just read", which
lets the pointer walk along a span once it has found its start. Special tokens and padding are never
pointed at. WordPiece has no out-of-vocabulary words, so p stays a distribution over the shared
vocabulary.

The forward returns log p as ``logits`` (normalised: log_softmax leaves it unchanged), so RAG's
likelihoods, label smoothing and every decoder in :mod:`rag.decode` marginalise it exactly. It
needs the encoder's input ids: ``input_ids`` as usual, or ``source_ids`` when only
``encoder_outputs`` are passed (``generate``); :func:`source_kwargs` builds that argument.

Glossary: N rows (question, passage pairs), S decoder steps, L input length, D hidden size,
V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BartConfig, BartForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.models.bart.modeling_bart import shift_tokens_right

from .span import SpanHead, has_span_head

__all__ = [
    "COPY_HEAD_KEYS",
    "CopyBartForConditionalGeneration",
    "CopyLMOutput",
    "copyable",
    "has_copy_head",
    "source_kwargs",
]

COPY_HEAD_KEYS = ("copy_head.query.weight", "copy_head.query.bias", "copy_head.key.weight",
                  "copy_head.key.bias", "copy_head.gate.weight", "copy_head.gate.bias",
                  "copy_head.follow")


def has_copy_head(model: nn.Module) -> bool:
    """Whether ``model`` is a copy-augmented generator (its forward wants the input ids)."""
    return isinstance(model, CopyBartForConditionalGeneration)


def source_kwargs(model: nn.Module, input_ids: Tensor) -> dict[str, Tensor]:
    """``{"source_ids": input_ids}`` for a copy generator, ``{}`` for any other model: the extra
    argument a forward or ``generate`` call needs when it passes ``encoder_outputs`` only."""
    return {"source_ids": input_ids} if has_copy_head(model) else {}


def copyable(config, source_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """(N, L) bool: input tokens an answer may copy: attended to and not a special token (pad,
    BOS, EOS or the decoder start symbol of ``config``)."""
    special = [t for t in (config.pad_token_id, config.bos_token_id, config.eos_token_id,
                           config.decoder_start_token_id) if t is not None]
    ok = ~torch.isin(source_ids, torch.tensor(special, device=source_ids.device))
    if attention_mask is not None:
        ok &= attention_mask.bool()
    return ok


@dataclass
class CopyLMOutput(Seq2SeqLMOutput):
    """``Seq2SeqLMOutput`` whose ``logits`` are log p (N, S, V), plus the copy path's parts:
    ``pointer_logp`` (N, S, L) log a_t(i) (-inf at tokens never pointed at) and ``gate_logit``
    (N, S), the logit of g_t."""

    pointer_logp: Tensor | None = None
    gate_logit: Tensor | None = None


class CopyHead(nn.Module):
    """Pointer, gate and follow weight of the copy path (module doc); no vocabulary-sized weights."""

    def __init__(self, d_model: int, follow_init: float = 2.0):
        super().__init__()
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.gate = nn.Linear(2 * d_model, 1)
        self.follow = nn.Parameter(torch.tensor(float(follow_init)))

    def forward(self, hidden: Tensor, enc: Tensor, pointable: Tensor, follows: Tensor
                ) -> tuple[Tensor, Tensor]:
        """Pointer log-probs and gate logits.

        Args:
            hidden: (N, S, D) decoder states; enc: (N, L, D) encoder states.
            pointable: (N, L) bool, input tokens that may be copied.
            follows: (N, S, L) bool, whether x_{i-1} is the token the decoder read at step t.

        Returns:
            ``(pointer_logp (N, S, L), gate_logit (N, S))``; a row with nothing pointable gets
            pointer -inf everywhere and gate logit +inf (all mass on the vocabulary).
        """
        D = hidden.shape[-1]
        # (W_q h + b_q) . (W_k e_i + b_k) = u . e_i + const(t) with u = W_k^T (W_q h + b_q); the
        # constant cancels in the softmax over i, so the keys W_k e_i are never formed: a decoder
        # step costs O(D^2 + L D) per row instead of O(L D^2)
        u = self.query(hidden) @ self.key.weight  # (N, S, D)
        scores = torch.einsum("nsd,nld->nsl", u, enc) / math.sqrt(D)
        scores = scores + self.follow * follows.to(scores.dtype)
        scores = scores.masked_fill(~pointable[:, None, :], -float("inf"))
        any_ok = pointable.any(dim=1)  # (N,)
        safe = torch.where(any_ok[:, None, None], scores, torch.zeros_like(scores))
        pointer = torch.log_softmax(safe, dim=-1)  # (N, S, L)
        pointer = pointer.masked_fill(~pointable[:, None, :], -float("inf"))
        context = torch.einsum("nsl,nld->nsd", pointer.exp(), enc)  # (N, S, D)
        gate = self.gate(torch.cat([hidden, context], dim=-1))[..., 0]  # (N, S)
        gate = torch.where(any_ok[:, None], gate, torch.full_like(gate, float("inf")))
        return pointer, gate


def copy_logprobs(pointer_logp: Tensor, source_ids: Tensor, vocab_size: int) -> Tensor:
    """log p_copy (N, S, V): the pointer's mass scattered onto the input's token ids.

    Tokens that do not occur among the pointable inputs get -inf (no copy mass).
    """
    N, S, L = pointer_logp.shape
    index = source_ids[:, None, :].expand(N, S, L)
    probs = pointer_logp.new_zeros(N, S, vocab_size).scatter_add_(2, index, pointer_logp.exp())
    # where() keeps log(0) out of the backward pass
    return torch.where(probs > 0, probs.clamp_min(1e-38).log(), -float("inf"))


def mix(vocab_logp: Tensor, copy_logp: Tensor, gate_logit: Tensor) -> Tensor:
    """log(g p_vocab + (1 - g) p_copy) for (..., V) or gathered (...,) log-probs; gate (...)."""
    if vocab_logp.dim() == gate_logit.dim() + 1:
        gate_logit = gate_logit[..., None]
    # log(1 - g) <= 0, so the sum below is never inf - inf
    log_g, log_1mg = F.logsigmoid(gate_logit), F.logsigmoid(-gate_logit)
    copy_part = log_1mg + copy_logp
    return torch.logaddexp(log_g + vocab_logp, copy_part)


def mixture_logprobs(vocab_logits: Tensor, pointer_logp: Tensor, source_ids: Tensor,
                     gate_logit: Tensor) -> Tensor:
    """log p = log(g p_vocab + (1 - g) p_copy) over the whole vocabulary, (N, S, V) float32.

    Equals ``mix(log_softmax(vocab_logits), copy_logprobs(...), gate_logit)`` but touches the
    (N, S, V) tensor only for log g + log p_vocab: the copy term changes at most L entries per
    step (the input's token ids), which are computed on (N, S, L) and added in place of a dense
    p_copy. Each id is written once (at its first position), so gradients are not repeated; the
    pointer mass of an id is gathered at its first position, in O(L) per step (not O(L^2)).

    Args:
        vocab_logits: (N, S, V); pointer_logp: (N, S, L); source_ids: (N, L); gate_logit: (N, S).
    """
    N, S, L = pointer_logp.shape
    base = torch.log_softmax(vocab_logits.float(), dim=-1) + F.logsigmoid(gate_logit.float())[..., None]
    head = first_positions(source_ids)[:, None, :].expand(N, S, L)  # (N, S, L)
    mass = torch.zeros_like(pointer_logp, dtype=torch.float32).scatter_add(
        2, head, pointer_logp.float().exp())  # (N, S, L) each id's pointer mass at its head
    p_copy = mass.gather(2, head)  # (N, S, L) p_copy(x_m)
    log_copy = torch.where(p_copy > 0, p_copy.clamp_min(1e-38).log(), -float("inf"))
    index = source_ids[:, None, :].expand(N, S, L)
    at = base.gather(2, index)  # (N, S, L) log g + log p_vocab(x_m)
    mixed = mix(at - F.logsigmoid(gate_logit.float())[..., None], log_copy, gate_logit.float())
    first = head[:, 0] == torch.arange(L, device=head.device)  # (N, L) first position of each id
    return base.scatter_add(2, index, (mixed - at) * first[:, None, :].float())


def first_positions(ids: Tensor) -> Tensor:
    """(N, L) long: for each position, the first position in its row holding the same id."""
    N, L = ids.shape
    sorted_ids, order = ids.sort(dim=1, stable=True)  # equal ids adjacent, in position order
    starts = torch.ones_like(sorted_ids, dtype=torch.bool)
    starts[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    slot = torch.arange(L, device=ids.device).expand(N, L)
    group_start = torch.where(starts, slot, 0).cummax(dim=1).values  # (N, L) slot of group head
    return torch.empty_like(order).scatter_(1, order, order.gather(1, group_start))


class CopyBartForConditionalGeneration(BartForConditionalGeneration):
    """BART with a copy path (module doc). ``config.copy_head = True`` marks its directories."""

    def __init__(self, config: BartConfig):
        super().__init__(config)
        self.copy_head = CopyHead(config.d_model, getattr(config, "copy_follow_init", 2.0))
        config.copy_head = True
        if getattr(config, "span_head", False):  # a reader's start/end head (generator.span)
            self.span_head = SpanHead(config.d_model)
        self.post_init()

    def add_span_head(self) -> None:
        """Give the model a freshly initialised span head (``generator.span``) if it has none;
        ``config.span_head = True`` then marks its directory."""
        if not has_span_head(self):
            self.config.span_head = True
            param = next(self.parameters())
            self.span_head = SpanHead(self.config.d_model).to(param.device, param.dtype)
            self._init_weights(self.span_head.proj)

    @classmethod
    def from_bart(cls, bart: BartForConditionalGeneration) -> CopyBartForConditionalGeneration:
        """A copy generator holding ``bart``'s weights and a freshly initialised copy head."""
        config = bart.config.__class__.from_dict(bart.config.to_dict())
        model = cls(config)
        missing, unexpected = model.load_state_dict(bart.state_dict(), strict=False)
        if unexpected or set(missing) - set(COPY_HEAD_KEYS) - {"lm_head.weight"}:
            raise ValueError(f"cannot wrap the BART: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        model.generation_config = bart.generation_config
        return model.to(next(bart.parameters()).dtype)

    def follows(self, source_ids: Tensor, decoder_input_ids: Tensor) -> Tensor:
        """(N, S, L) bool: x_{i-1} equals the decoder's input token at step t (not the start)."""
        prev = F.pad(source_ids[:, :-1], (1, 0), value=-1)  # (N, L) the token before each x_i
        hit = prev[:, None, :] == decoder_input_ids[:, :, None]  # (N, S, L)
        return hit & decoder_input_ids.ne(self.config.decoder_start_token_id)[:, :, None]

    def copy_parts(self, hidden: Tensor, enc: Tensor, attention_mask: Tensor | None,
                   source_ids: Tensor, decoder_input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """``(pointer_logp (N, S, L), gate_logit (N, S))`` for decoder states (N, S, D)."""
        return self.copy_head(hidden, enc, copyable(self.config, source_ids, attention_mask),
                              self.follows(source_ids, decoder_input_ids))

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                decoder_input_ids: Tensor | None = None, encoder_outputs=None, cache=None,
                use_cache: bool | None = None, source_ids: Tensor | None = None,
                decoder_attention_mask: Tensor | None = None, labels: Tensor | None = None,
                **kwargs) -> CopyLMOutput:
        """log p of the mixture as ``logits`` (N, S, V); see :class:`CopyLMOutput`.

        ``labels`` (N, S) gives the mean token NLL as ``loss`` (-100 ignored), like BART's.
        ``cache`` is the decoder's KV cache (``generate`` passes it so).
        """
        source = source_ids if source_ids is not None else input_ids
        if source is None:
            raise ValueError("the copy generator needs the encoder input ids "
                             "(input_ids, or source_ids with encoder_outputs)")
        if encoder_outputs is None:
            encoder_outputs = self.model.encoder(input_ids=input_ids, attention_mask=attention_mask)
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        if decoder_input_ids is None and labels is not None:
            decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id,
                                                   self.config.decoder_start_token_id)
        out = self.model(attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                         encoder_outputs=encoder_outputs, cache=cache,
                         decoder_attention_mask=decoder_attention_mask, use_cache=use_cache)
        hidden, enc = out.last_hidden_state, encoder_outputs.last_hidden_state
        logp, pointer, gate = self.output_logprobs(hidden, enc, attention_mask, source,
                                                   decoder_input_ids)
        loss = None
        if labels is not None:
            loss = F.nll_loss(logp.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return CopyLMOutput(loss=loss, logits=logp, cache=out.cache,
                            encoder_last_hidden_state=enc, pointer_logp=pointer, gate_logit=gate)

    def output_logprobs(self, hidden: Tensor, enc: Tensor, attention_mask: Tensor | None,
                        source_ids: Tensor, decoder_input_ids: Tensor
                        ) -> tuple[Tensor, Tensor, Tensor]:
        """``(log p (N, S, V) of the mixture, pointer_logp (N, S, L), gate_logit (N, S))`` from
        decoder states ``hidden`` (N, S, D) over encoder states ``enc`` (N, L, D)."""
        vocab_logits = self.lm_head(hidden) + self.final_logits_bias.to(hidden.device)
        pointer, gate = self.copy_parts(hidden, enc, attention_mask, source_ids, decoder_input_ids)
        return mixture_logprobs(vocab_logits, pointer, source_ids, gate), pointer, gate

    def target_logprobs(self, hidden: Tensor, vocab_logp_target: Tensor, enc: Tensor,
                        attention_mask: Tensor, source_ids: Tensor, decoder_input_ids: Tensor,
                        targets: Tensor) -> Tensor:
        """log p(target) of the mixture from decoder states, without a (N, S, V) tensor.

        Args:
            hidden: (N, S, D); vocab_logp_target: (N, S) log p_vocab(target); enc: (N, L, D);
            attention_mask, source_ids: (N, L); decoder_input_ids, targets: (N, S).

        Returns:
            (N, S) float.
        """
        pointer, gate = self.copy_parts(hidden, enc, attention_mask, source_ids, decoder_input_ids)
        same = source_ids[:, None, :] == targets[:, :, None]  # (N, S, L)
        copy_t = torch.logsumexp(pointer.masked_fill(~same, -float("inf")), dim=-1)  # (N, S)
        return mix(vocab_logp_target, copy_t, gate)

