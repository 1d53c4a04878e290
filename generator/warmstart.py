"""Warm-start a BART encoder-decoder from a BERT checkpoint ("BERT2BERT", Rothe et al., 2020).

Rothe, Narayan and Severyn (2020), "Leveraging Pre-trained Checkpoints for Sequence Generation
Tasks", initialise both halves of a transformer encoder-decoder from BERT. BERT and BART are both
post-LN transformers with biased projections and GELU feed-forward blocks, so every BERT weight has
a BART slot of the same shape:

    BERT (``BertModel``)                         BART (encoder, and decoder with the first n layers)
    embeddings.word_embeddings                   model.shared (= embed_tokens = lm_head, tied)
    embeddings.position_embeddings[p]            embed_positions.weight[p + 2]  (+ token type 0)
    embeddings.LayerNorm                         layernorm_embedding
    layer.i.attention.self.{query,key,value}     layers.i.self_attn.{q,k,v}_proj
    layer.i.attention.output.dense               layers.i.self_attn.out_proj
    layer.i.attention.output.LayerNorm           layers.i.self_attn_layer_norm
    layer.i.intermediate.dense                   layers.i.fc1
    layer.i.output.dense                         layers.i.fc2
    layer.i.output.LayerNorm                     layers.i.final_layer_norm

Three details make the BART encoder reproduce BERT's ``last_hidden_state`` exactly:

* BART has no token-type embeddings; BERT adds ``token_type_embeddings[0]`` to every token of a
  single-segment input, so that row is folded into the position table.
* ``BartLearnedPositionalEmbedding`` looks position ``p`` up at row ``p + 2`` (a fairseq leftover);
  rows 0 and 1 are never read and are set to zero.
* BART's layer norms use PyTorch's ``eps=1e-5`` with no config option, BERT's use ``1e-12``. The
  BERT value is set on the modules and stored as ``config.layer_norm_eps``;
  :func:`generator.model.load_generator` re-applies it. Plain ``from_pretrained`` ignores it, which
  moves all-MiniLM-L6-v2's encoder output by about 1e-3 relative: no longer BERT's exact states,
  but harmless once fine-tuning starts.

Special tokens follow BART's layout with BERT's tokens: ``bos=[CLS]``, ``eos=[SEP]``, ``pad=[PAD]``
and ``decoder_start=[SEP]`` (BART starts decoding from ``eos``), so the BERT tokenizer's targets
``[CLS] ... [SEP]`` play the part of BART's ``<s> ... </s>``.

Glossary: V vocabulary, P max positions, D hidden size.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import torch
from torch import Tensor
from transformers import (
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertModel,
    PreTrainedTokenizerBase,
)

from rag.common.errors import UserError
from rag.common.model_path import resolve_pretrained

from .model import apply_layer_norm_eps, load_pretrained_config, save_generator

logger = logging.getLogger(__name__)

__all__ = [
    "CrossAttentionInit",
    "bart_config_from_bert",
    "bert_to_bart_state_dict",
    "warm_start_bart",
]

CrossAttentionInit = Literal["random", "copy_self"]

POSITION_OFFSET = 2  # BartLearnedPositionalEmbedding.offset

# BART layer module -> BERT layer module (both relative to one layer)
_LAYER_MAP = {
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.out_proj": "attention.output.dense",
    "self_attn_layer_norm": "attention.output.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "final_layer_norm": "output.LayerNorm",
}
_CROSS_ATTENTION = ("encoder_attn.q_proj", "encoder_attn.k_proj", "encoder_attn.v_proj",
                    "encoder_attn.out_proj", "encoder_attn_layer_norm")  # fmt: skip
# tied to model.shared.weight, so bert_to_bart_state_dict leaves them out
_TIED = frozenset({"model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
                   "lm_head.weight"})


def bart_config_from_bert(
    bert_config: BertConfig,
    tokenizer: PreTrainedTokenizerBase,
    *,
    encoder_layers: int | None = None,
    decoder_layers: int | None = None,
) -> BartConfig:
    """Derive the BART config whose modules have the shapes of ``bert_config``'s.

    ``encoder_layers`` / ``decoder_layers`` default to BERT's depth; a smaller number takes BERT's
    first layers. Token ids come from ``tokenizer`` (see the module docstring for the mapping).

    Raises:
        UserError: a layer count out of range, a tokenizer without [CLS]/[SEP]/[PAD], a tokenizer
            larger than BERT's vocabulary, or a BERT variant the mapping does not cover.
    """
    depth = bert_config.num_hidden_layers
    encoder_layers = depth if encoder_layers is None else encoder_layers
    decoder_layers = depth if decoder_layers is None else decoder_layers
    for name, n in (("encoder_layers", encoder_layers), ("decoder_layers", decoder_layers)):
        if not 1 <= n <= depth:
            raise UserError(f"{name}={n} is out of range: the BERT checkpoint has {depth} layers")
    if getattr(bert_config, "position_embedding_type", "absolute") != "absolute":
        raise UserError("only BERT checkpoints with absolute position embeddings can be mapped")
    if not isinstance(bert_config.hidden_act, str):
        raise UserError(f"unsupported BERT activation {bert_config.hidden_act!r}")
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    if None in (cls_id, sep_id, pad_id):
        raise UserError("the BERT tokenizer must define [CLS], [SEP] and [PAD] tokens")
    if len(tokenizer) > bert_config.vocab_size:
        raise UserError(
            f"the tokenizer has {len(tokenizer)} tokens but BERT's embedding only "
            f"{bert_config.vocab_size} rows"
        )
    return BartConfig(
        vocab_size=bert_config.vocab_size,
        max_position_embeddings=bert_config.max_position_embeddings,
        d_model=bert_config.hidden_size,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=bert_config.num_attention_heads,
        decoder_attention_heads=bert_config.num_attention_heads,
        encoder_ffn_dim=bert_config.intermediate_size,
        decoder_ffn_dim=bert_config.intermediate_size,
        activation_function=bert_config.hidden_act,
        dropout=bert_config.hidden_dropout_prob,
        attention_dropout=bert_config.attention_probs_dropout_prob,
        activation_dropout=0.0,  # BERT has no dropout inside the feed-forward block
        init_std=bert_config.initializer_range,
        scale_embedding=False,  # BERT does not scale its embeddings by sqrt(D)
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        bos_token_id=cls_id,
        eos_token_id=sep_id,
        decoder_start_token_id=sep_id,
        forced_eos_token_id=sep_id,
        layer_norm_eps=bert_config.layer_norm_eps,  # read by apply_layer_norm_eps, not by BART
    )


def bert_to_bart_state_dict(
    bert_state: dict[str, Tensor], config: BartConfig, *, copy_cross_attention: bool = False
) -> dict[str, Tensor]:
    """Map a ``BertModel`` state dict onto ``BartForConditionalGeneration`` keys.

    Returns every BART tensor except the tied copies of ``model.shared.weight`` and, unless
    ``copy_cross_attention``, the decoder's cross-attention (``encoder_attn*``). Tensors may share
    storage with ``bert_state``; ``load_state_dict`` copies them.
    """
    emb = "embeddings."
    word = bert_state[emb + "word_embeddings.weight"]  # (V, D)
    # BERT adds token type 0 to every token of a single-segment input; BART has no token types
    pos = (
        bert_state[emb + "position_embeddings.weight"]
        + bert_state[emb + "token_type_embeddings.weight"][0]
    )  # (P, D)
    pos = torch.cat([pos.new_zeros(POSITION_OFFSET, pos.shape[1]), pos])  # (P + 2, D)

    out = {
        "model.shared.weight": word,
        "final_logits_bias": word.new_zeros(1, word.shape[0]),  # (1, V)
    }
    for side, n_layers in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        prefix = f"model.{side}."
        out[prefix + "embed_positions.weight"] = pos
        out[prefix + "layernorm_embedding.weight"] = bert_state[emb + "LayerNorm.weight"]
        out[prefix + "layernorm_embedding.bias"] = bert_state[emb + "LayerNorm.bias"]
        for i in range(n_layers):
            for bart_name, bert_name in _LAYER_MAP.items():
                for param in ("weight", "bias"):
                    tensor = bert_state[f"encoder.layer.{i}.{bert_name}.{param}"]
                    out[f"{prefix}layers.{i}.{bart_name}.{param}"] = tensor
                    if side == "decoder" and copy_cross_attention:
                        cross_name = bart_name.replace("self_attn", "encoder_attn")
                        out[f"{prefix}layers.{i}.{cross_name}.{param}"] = tensor
    return out


def _init_cross_attention(model: BartForConditionalGeneration, std: float, seed: int) -> None:
    """Re-initialise the decoder's cross-attention from ``seed``: N(0, std) weights, zero biases,
    identity layer norms (BERT's own initialisation), independent of the global RNG."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            attn = layer.encoder_attn
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
                proj.weight.copy_(
                    torch.randn(proj.weight.shape, generator=generator, dtype=torch.float32) * std
                )
                proj.bias.zero_()
            layer.encoder_attn_layer_norm.reset_parameters()


def _load_bert(name_or_path: str | os.PathLike) -> tuple[BertModel, PreTrainedTokenizerBase]:
    """Load a BERT checkpoint (float32) and its tokenizer; raise UserError if unusable."""
    config = load_pretrained_config(name_or_path)
    if config.model_type != "bert":
        raise UserError(
            f"{name_or_path} holds a {config.model_type!r} model; expected a BERT model"
        )
    source = resolve_pretrained(name_or_path)
    try:
        bert, info = BertModel.from_pretrained(
            source,
            config=config,
            dtype=torch.float32,
            output_loading_info=True,
        )
        # BART's forward takes no token_type_ids, so the tokenizer must not return them
        tokenizer = AutoTokenizer.from_pretrained(
            source, model_input_names=["input_ids", "attention_mask"]
        )
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load BERT from {name_or_path!r}: {err}") from err
    missing = sorted(k for k in info["missing_keys"] if not k.startswith("pooler."))
    if missing:
        raise UserError(f"{name_or_path} lacks BERT weights, e.g. {missing[:3]}")
    return bert, tokenizer


def warm_start_bart(
    bert_name_or_path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    decoder_layers: int | None = None,
    encoder_layers: int | None = None,
    cross_attention: CrossAttentionInit = "random",
    seed: int = 0,
    save_dtype: torch.dtype | None = None,
) -> tuple[BartForConditionalGeneration, PreTrainedTokenizerBase]:
    """Build a ``BartForConditionalGeneration`` whose weights come from a BERT checkpoint.

    Args:
        bert_name_or_path: BERT directory or hub id (``BertModel`` weights, with or without heads).
        out_dir: when given, the model and tokenizer are saved there (:func:`save_generator`), as a
            directory that plain ``BartForConditionalGeneration`` / ``AutoTokenizer`` load.
        decoder_layers, encoder_layers: depth of each stack (default BERT's); a stack with n
            layers takes BERT's first n.
        cross_attention: how to initialise the decoder's encoder-decoder attention, which has no
            BERT counterpart.

            * ``"random"`` (default): N(0, ``initializer_range``) weights, zero biases and an
              identity layer norm, drawn from ``seed``. This is Rothe et al.'s BERT2BERT recipe,
              the one whose fine-tuned quality the paper measures, and it adds nothing the data
              must unlearn.
            * ``"copy_self"``: copy each decoder layer's (BERT) self-attention and its layer norm.
              Encoder states are BERT states, so the copied projections already produce
              meaningful queries/keys at step 0; a common alternative that may converge faster.
        seed: seed of the random cross-attention (the result is otherwise deterministic).
        save_dtype: dtype of the weights written to ``out_dir`` (e.g. ``torch.float16``); the
            returned model stays float32.

    Returns:
        ``(model, tokenizer)``: the float32 model in eval mode on the CPU, with
        ``lm_head.weight`` tied to ``model.shared.weight`` and BERT's layer-norm epsilon applied;
        the BERT tokenizer with ``bos_token=[CLS]`` and ``eos_token=[SEP]`` set, returning only
        ``input_ids`` and ``attention_mask``.

    Raises:
        UserError: an unreadable or non-BERT checkpoint, or an invalid option.
    """
    if cross_attention not in ("random", "copy_self"):
        raise UserError(f"cross_attention must be 'random' or 'copy_self', not {cross_attention!r}")
    bert, tokenizer = _load_bert(bert_name_or_path)
    config = bart_config_from_bert(
        bert.config, tokenizer, encoder_layers=encoder_layers, decoder_layers=decoder_layers
    )
    tokenizer.bos_token = tokenizer.cls_token
    tokenizer.eos_token = tokenizer.sep_token
    model = _bart_from_bert(bert, config, cross_attention, seed)
    logger.info(
        "warm-started BART (%d encoder / %d decoder layers, cross-attention %s) from %s",
        config.encoder_layers,
        config.decoder_layers,
        cross_attention,
        bert_name_or_path,
    )
    if out_dir is not None:
        save_generator(model, tokenizer, out_dir, dtype=save_dtype)
    return model, tokenizer


def _bart_from_bert(
    bert: BertModel, config: BartConfig, cross_attention: CrossAttentionInit, seed: int
) -> BartForConditionalGeneration:
    """A ``BartForConditionalGeneration`` of ``config`` holding ``bert``'s weights, its
    cross-attention initialised as ``cross_attention`` says (from ``seed`` when random), ties
    checked and BERT's layer-norm epsilon applied; in eval mode."""
    model = BartForConditionalGeneration(config)
    state = bert_to_bart_state_dict(
        bert.state_dict(), config, copy_cross_attention=cross_attention == "copy_self"
    )
    _load_mapped(model, state, cross_attention_mapped=cross_attention == "copy_self")
    if cross_attention == "random":
        _init_cross_attention(model, config.init_std, seed)
    _check_tied(model)
    apply_layer_norm_eps(model)
    model.eval()
    return model


def _load_mapped(
    model: BartForConditionalGeneration, state: dict[str, Tensor], *, cross_attention_mapped: bool
) -> None:
    """Load the mapped BERT weights ``state`` into ``model``; raise ``RuntimeError`` unless they
    fill every tensor but the tied copies of ``model.shared`` and (unless
    ``cross_attention_mapped``) the decoder's cross-attention."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    untouched = {k for k in missing if k not in _TIED and ".encoder_attn" not in k}
    if unexpected or untouched or (cross_attention_mapped and len(missing) != len(_TIED)):
        raise RuntimeError(f"BERT->BART mapping is incomplete: {sorted(untouched)} {unexpected}")


def _check_tied(model: BartForConditionalGeneration) -> None:
    """The LM head and both token embeddings must be one tensor with ``model.shared``."""
    shared = model.model.shared.weight
    for module in (
        model.lm_head,
        model.model.encoder.embed_tokens,
        model.model.decoder.embed_tokens,
    ):
        if module.weight.data_ptr() != shared.data_ptr():
            raise RuntimeError("BART's LM head / token embeddings are not tied to model.shared")
