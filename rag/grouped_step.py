"""One decoder step of RAG-Token beam search with cross-attention grouped by passage.

In RAG-Token beam search each (question, beam, passage) is a decoder row, and the N beams of a
question read the same K passages, so their cross-attention keys and values are the same. A
transformers decoder attends row by row: every row holds its own copy of its passage's keys and
values (N copies, all read at every step). Cross-attention does not depend on where a query sits,
so the N beams' queries can as well be N queries of one row per passage, attending to one copy:
:class:`GroupedStep` runs the decoder that way, with the decoder layer's own modules in BART's
order (self-attention, cross-attention, feed-forward, each followed by its residual and layer
norm). Self-attention stays per beam, with the usual KV cache.

Only for BART's own decoder layer in eval mode (:func:`can_group`); anything else takes the
ordinary forward.

Glossary: B questions, N beams, K passages per question, L context length, D hidden size,
V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import EncoderDecoderCache, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bart.modeling_bart import BartDecoderLayer

from generator.copy import has_copy_head


def can_group(generator: PreTrainedModel) -> bool:
    """Whether :class:`GroupedStep` can run ``generator``'s decoder: BART decoder layers (whose
    order it follows), in eval mode (it applies no dropout)."""
    decoder = generator.get_decoder()
    return not generator.training and all(type(layer) is BartDecoderLayer
                                          for layer in decoder.layers)


class GroupedStep:
    """The decoder over rows ordered (B, N, K) that share their passages' cross-attention.

    Args:
        generator: a BART-family seq2seq LM (:func:`can_group`).
        cache: the cache of the first step, run on (B*K) rows by the ordinary forward: its
            cross-attention part holds each passage's keys and values and is kept as it is; its
            self-attention part is fanned out to the (B*N*K) beam rows (``fan_out``); the
            search reorders that part between steps, as it does the ordinary cache's.
        mask: (B*K, L) the passages' attention mask.
        beams: N; passages: K.
    """

    def __init__(self, generator: PreTrainedModel, cache: EncoderDecoderCache, fan_out: Tensor,
                 mask: Tensor, beams: int, passages: int):
        self.generator, self.decoder = generator, generator.get_decoder()
        self.N, self.K = beams, passages
        self.cache = cache
        cache.self_attention_cache.batch_select_indices(fan_out)  # (B*N*K) rows
        keys = cache.cross_attention_cache.layers[0].keys  # (B*K, H, L, d): kept as they are
        BK, L, D = keys.shape[0], keys.shape[2], generator.config.d_model
        self.cross_mask = create_bidirectional_mask(  # (B*K) rows of N queries over L positions
            config=self.decoder.config, inputs_embeds=keys.new_zeros(BK, beams, D),
            attention_mask=mask, encoder_hidden_states=keys.new_zeros(BK, L, D))

    def hidden(self, inputs: Tensor) -> Tensor:
        """Decoder states (B*N*K, 1, D) for the next tokens ``inputs`` (B*N*K, 1)."""
        dec, N, K = self.decoder, self.N, self.K
        past = self.cache.self_attention_cache.get_seq_length()
        positions = torch.arange(1, device=inputs.device) + past
        embeds = dec.embed_tokens(inputs)  # (B*N*K, 1, D)
        hidden = embeds + dec.embed_positions(inputs, past, position_ids=positions).to(embeds)
        hidden = dec.layernorm_embedding(hidden)
        D = hidden.shape[-1]
        for layer in dec.layers:
            attended, _ = layer.self_attn(hidden, cache=self.cache, attention_mask=None)
            hidden = layer.self_attn_layer_norm(hidden + attended)
            # (B, N, K, D) -> (B*K, N, D): a passage's N beams as N queries of one row
            grouped = hidden.view(-1, N, K, D).transpose(1, 2).reshape(-1, N, D)
            # key_value_states marks cross-attention; the keys and values come from the cache
            attended, _ = layer.encoder_attn(grouped, key_value_states=grouped,
                                             attention_mask=self.cross_mask, cache=self.cache)
            attended = attended.view(-1, K, N, D).transpose(1, 2).reshape(-1, 1, D)  # back
            hidden = layer.encoder_attn_layer_norm(hidden + attended)
            ffn = layer.fc2(layer.activation_fn(layer.fc1(hidden)))
            hidden = layer.final_layer_norm(hidden + ffn)
        return hidden

    def logprobs(self, hidden: Tensor, inputs: Tensor, enc: Tensor | None, mask: Tensor | None,
                 source_ids: Tensor | None) -> Tensor:
        """(B*N*K, V) next-token log-probs of each row from its decoder state ``hidden``
        (B*N*K, 1, D): the log-softmax of the LM head's logits, or a copy generator's mixture,
        which reads the rows' own ``enc`` (B*N*K, L, D), ``mask`` and ``source_ids`` (B*N*K, L)."""
        gen = self.generator
        if has_copy_head(gen):
            return gen.output_logprobs(hidden, enc, mask, source_ids, inputs)[0][:, -1]
        logits = gen.lm_head(hidden) + gen.final_logits_bias.to(hidden.device)
        return torch.log_softmax(logits[:, -1], dim=-1)
