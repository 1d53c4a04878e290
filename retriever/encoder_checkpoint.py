"""An encoder directory read back: its file names, our settings file, the transformers config,
tokenizer and backbone, and the weights of the layers an encoder adds over its backbone.

:meth:`retriever.encoder.Encoder.from_pretrained` composes these (and decides the settings);
:meth:`~retriever.encoder.Encoder.save_pretrained` writes the same files. A directory is one of
three kinds: ours (``ragqa_encoder.json``, perhaps with a projection, Dense layers, a lexical head,
or a ``backbone_from`` reference instead of backbone weights), a transformers DPR checkpoint, or
any other BERT-architecture checkpoint (a sentence-transformers folder among them).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from rag.common.errors import UserError, loading
from rag.common.model_path import resolve_pretrained, weights_file

from .lexical import HEAD_NAME, LexicalHead

CONFIG_NAME = "ragqa_encoder.json"
PROJECTION_NAME = "projection.safetensors"
DENSE_NAME = "dense.safetensors"


def read_meta(path: str) -> dict:
    """Our settings file in directory ``path`` as saved (``{}`` for a checkpoint without one)."""
    meta_file = Path(path) / CONFIG_NAME
    return json.loads(meta_file.read_text()) if meta_file.is_file() else {}


def backbone_weights(path: str, meta: dict) -> str:
    """The directory (or hub id) holding the backbone's weights: ``path`` itself, or the model
    its ``backbone_from`` names."""
    if meta.get("backbone_from"):  # the backbone's weights are another model's
        return resolve_pretrained(meta["backbone_from"], config_file=False)
    return path


def load_config_and_tokenizer(name_or_path: str, path: str, weights: str):
    """The backbone's transformers config (from ``weights``) and the tokenizer (from ``path``).

    Raises :class:`UserError` when either cannot be read, or when the config is a
    sequence-to-sequence model's (a generator given as an encoder).
    """
    # lazy: transformers (most of a second), loaded with the first encoder, not with retriever.encoder
    from transformers import AutoConfig, AutoTokenizer

    try:
        hf_config = AutoConfig.from_pretrained(weights)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise UserError(f"{name_or_path}: cannot load encoder ({str(err).splitlines()[0]})"
                        ) from None
    if getattr(hf_config, "is_encoder_decoder", False):  # a generator given as an encoder
        raise UserError(f"{name_or_path}: a {hf_config.model_type} sequence-to-sequence model "
                        "(a generator), not an encoder: give a BERT-like encoder directory")
    return hf_config, tokenizer


def load_backbone(hf_config, weights: str, pooler: bool) -> nn.Module:
    """The transformers model under an encoder, float32: DPR's own classes for a DPR checkpoint,
    else ``AutoModel`` (BERT-family models without the pooler they build, unless ``pooler``).
    An error reading the weights becomes one :class:`UserError` naming the file."""
    # lazy: transformers, as in load_config_and_tokenizer
    from transformers import AutoModel, DPRContextEncoder, DPRQuestionEncoder
    from transformers.utils import logging as hf_logging

    with loading(weights_file(weights)):
        if hf_config.model_type == "dpr":
            archs = hf_config.architectures or []
            model_cls = DPRContextEncoder if "DPRContextEncoder" in archs else DPRQuestionEncoder
            return model_cls.from_pretrained(weights, dtype=torch.float32)
        level = hf_logging.get_verbosity()  # the pooler weights left out on purpose are
        hf_logging.set_verbosity_error()  # not worth transformers' "unexpected keys" report
        try:
            return AutoModel.from_pretrained(weights, add_pooling_layer=pooler, dtype=torch.float32)
        except TypeError:  # models without a pooler take no add_pooling_layer
            return AutoModel.from_pretrained(weights, dtype=torch.float32)
        finally:
            hf_logging.set_verbosity(level)


def load_added_weights(path: str, dense: nn.ModuleList | None, projection: nn.Linear | None,
                       lexical: LexicalHead | None) -> None:
    """Load, in place, the weights directory ``path`` holds for the layers an encoder adds over
    its backbone (``None``: nothing to load for that part).

    Dense layers need ``dense.safetensors`` (when there are any) and the lexical head its file;
    a projection without ``projection.safetensors`` keeps its fresh initialisation (a projection
    asked for by an override). Raises :class:`UserError` for a missing or mismatched file.
    """
    folder = Path(path)
    if dense is not None and len(dense):
        dense_file = folder / DENSE_NAME
        if not dense_file.is_file():
            raise UserError(f"{path}: config names Dense layers but {DENSE_NAME} is missing")
        try:
            dense.load_state_dict(load_file(str(dense_file)))
        except RuntimeError as err:
            raise UserError(f"{dense_file}: does not match the Dense layers of "
                            f"{CONFIG_NAME} ({str(err).splitlines()[0]})") from None
    if projection is not None and (folder / PROJECTION_NAME).is_file():
        projection.load_state_dict(load_file(str(folder / PROJECTION_NAME)))
    if lexical is not None:
        head = folder / HEAD_NAME
        if not head.is_file():
            raise UserError(f"{path}: config names a lexical head but {HEAD_NAME} is missing")
        lexical.weight.data.copy_(load_file(str(head))["weight"].float())
