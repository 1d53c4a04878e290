"""Load and save the BART generator (model + tokenizer) as an ordinary transformers directory.

A generator directory holds ``config.json``, ``model.safetensors``, ``generation_config.json``
and the tokenizer files; ``BartForConditionalGeneration.from_pretrained`` and
``AutoTokenizer.from_pretrained`` read it without any code from this package. :func:`load_generator`
adds one thing: it applies ``config.layer_norm_eps`` when present (see
:func:`apply_layer_norm_eps`), which BART's modules ignore.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoTokenizer,
    BartForConditionalGeneration,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
)

from rag.common.atomic import atomic_directory
from rag.common.errors import UserError, loading
from rag.common.model_path import resolve_pretrained, weights_file

from .copy import COPY_HEAD_KEYS, CopyBartForConditionalGeneration
from .span import SPAN_HEAD_KEYS, has_span_head

logger = logging.getLogger(__name__)

__all__ = [
    "apply_layer_norm_eps",
    "load_generator",
    "load_pretrained_config",
    "save_generator",
]


def load_pretrained_config(name_or_path: str | os.PathLike) -> PreTrainedConfig:
    """Read the config of a local directory or hub id; any failure becomes a :class:`UserError`."""
    source = resolve_pretrained(name_or_path)
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"cannot load a model config from {source!r}: {err}") from err


def apply_layer_norm_eps(model: nn.Module, eps: float | None = None) -> nn.Module:
    """Set ``eps`` on every ``nn.LayerNorm`` of ``model`` (in place) and return ``model``.

    BART builds its layer norms with PyTorch's default ``eps=1e-5`` and has no config option for it.
    A BART warm-started from BERT (``eps=1e-12``) records BERT's value as ``config.layer_norm_eps``;
    with ``eps=None`` that value is used, and a model without it is left unchanged.
    """
    if eps is None:
        eps = getattr(getattr(model, "config", None), "layer_norm_eps", None)
    if eps is None:
        return model
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = float(eps)
    return model


def load_generator(
    name_or_path: str | os.PathLike, dtype: torch.dtype | str | None = None
) -> tuple[BartForConditionalGeneration, PreTrainedTokenizerBase]:
    """Load a BART generator and its tokenizer from a local directory or a hub id.

    A directory whose ``config.json`` has ``copy_head: true`` loads as
    :class:`generator.copy.CopyBartForConditionalGeneration`; any other BART as
    ``BartForConditionalGeneration``.

    Args:
        name_or_path: directory written by :func:`save_generator` / ``save_pretrained``, or a hub id
            such as ``"facebook/bart-large"`` (needs network access or a warm cache).
        dtype: parameter dtype; ``None`` means ``torch.float32`` (safe for training), ``"auto"``
            keeps the dtype the weights were stored in.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode on the CPU, with ``config.layer_norm_eps``
        applied when the config has one.

    Raises:
        UserError: the path is missing, is not a model directory, holds a non-BART model, or a
            copy generator whose copy head weights are missing or mis-shaped.
    """
    config = load_pretrained_config(name_or_path)
    if config.model_type != "bart":
        raise UserError(
            f"{name_or_path} holds a {config.model_type!r} model; expected 'bart' "
            "(warm-start one from BERT with scripts/make_starter_generator.py)"
        )
    source = resolve_pretrained(name_or_path)
    copy_head = bool(getattr(config, "copy_head", False))
    cls = CopyBartForConditionalGeneration if copy_head else BartForConditionalGeneration
    try:
        with loading(weights_file(Path(source))):
            model, info = cls.from_pretrained(
                source, config=config, dtype=torch.float32 if dtype is None else dtype,
                output_loading_info=True,
            )
        with loading(source):
            tokenizer = AutoTokenizer.from_pretrained(source)
    except UserError as err:
        if copy_head and "mismatched" in str(err):
            _check_copy_head(Path(source), {"mismatched_keys": ["a weight of the wrong shape"]})
        raise
    if copy_head:
        _check_copy_head(Path(source), info)
    if has_span_head(model):
        _check_head(Path(source), info, SPAN_HEAD_KEYS, "span")
    apply_layer_norm_eps(model)
    model.eval()
    return model, tokenizer


def _check_copy_head(source: Path, info: dict) -> None:
    """Raise :class:`UserError` when a copy generator's weights lack (parts of) its copy head or
    hold them in the wrong shape (``from_pretrained`` would silently initialise them at random)."""
    _check_head(source, info, COPY_HEAD_KEYS, "copy")


def _check_head(source: Path, info: dict, keys: tuple[str, ...], name: str) -> None:
    """:func:`_check_copy_head` for the head whose weights are ``keys`` (``name``: "copy", "span")."""
    bad = [k for k in info.get("missing_keys", ()) if k in keys]
    bad += [str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys", ())]
    if bad:
        weights = source / "model.safetensors"
        raise UserError(f"{weights if weights.exists() else source}: the {name} head is incomplete "
                        f"or has the wrong shape ({', '.join(sorted(bad))}); config.json says "
                        f"{name}_head is true")


def save_generator(
    model: BartForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` (safetensors) and ``tokenizer`` to ``out_dir`` atomically; return its path.

    Everything is written to a fresh directory next to ``out_dir`` and renamed into place, so
    readers never see a half-written model. An existing ``out_dir`` is replaced only when it is
    empty or is a model directory (has a ``config.json``); anything else raises :class:`UserError`.

    Args:
        dtype: store floating-point weights in this dtype (e.g. ``torch.float16`` halves the size);
            ``None`` keeps the model's dtype. The model itself is not changed.
    """
    out = Path(out_dir).expanduser().resolve()
    if out.exists():
        if not out.is_dir():
            raise UserError(f"cannot save the generator to {out}: it is a file")
        if any(out.iterdir()) and not (out / "config.json").is_file():
            raise UserError(
                f"refusing to replace {out}: it is not empty and is not a model directory"
            )
    with atomic_directory(out) as tmp:
        state_dict = None if dtype is None else _cast_state_dict(model, dtype)
        model.save_pretrained(tmp, state_dict=state_dict)
        if dtype is not None:
            # save_pretrained records the in-memory dtype; record the stored one instead
            config = copy.deepcopy(model.config)
            config.dtype = str(dtype).removeprefix("torch.")
            config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    logger.info("saved generator to %s", out)
    return out


def _cast_state_dict(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with floating tensors cast to ``dtype``; tied tensors stay shared, so
    ``save_pretrained`` still stores them once."""
    cast: dict[tuple[int, torch.Size], torch.Tensor] = {}
    out = {}
    for key, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            out[key] = tensor
            continue
        ident = (tensor.data_ptr(), tensor.shape)
        if ident not in cast:
            cast[ident] = tensor.detach().to(dtype)
        out[key] = cast[ident]
    return out
