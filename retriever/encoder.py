"""Bi-encoder towers: any BERT-architecture checkpoint (or a transformers DPR checkpoint) as a text encoder.

An :class:`Encoder` maps token ids to one vector per text, E(x) in R^D, and the retriever scores a
question q against a passage p by the inner product E_Q(q)^T E_P(p) (DPR, Karpukhin et al. 2020, Eq. 1).
Pooling is the DPR checkpoints' pooler output, the [CLS] state, or the masked mean, max or last
token state (sentence-transformers models); then sentence-transformers' Dense layers if any, an
optional linear projection and optional L2 normalisation. Query and passage prompts (e5/bge style)
are prepended on their side. sentence-transformers folders are read and written faithfully
(``retriever.st_folder``); an encoder directory's files are read back by
``retriever.encoder_checkpoint``.

Identity: each encoder has a ``fingerprint`` (SHA-256 of its weights). An index records the
fingerprint of the context encoder that built it; a question encoder is accepted by an index if it
*is* that encoder, was trained against it (``paired_context_fingerprint``) or is paired with it
explicitly: the pairing rule is ``DenseIndex.check_question_encoder``.

Glossary: N texts, L tokens, H hidden size, D output dimension.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import torch
from safetensors.torch import save_file
from torch import nn

from rag.common.atomic import atomic_directory
from rag.common.errors import UserError
from rag.common.model_path import resolve_pretrained
from rag.common.options import NON_NEGATIVE, POSITIVE, check_fields, option

from .encoder_checkpoint import (
    CONFIG_NAME,
    DENSE_NAME,
    PROJECTION_NAME,
    backbone_weights,
    load_added_weights,
    load_backbone,
    load_config_and_tokenizer,
    read_meta,
)
from .lexical import HEAD_NAME, LexicalHead
from .st_folder import DenseLayer, read_folder, write_folder

# sentence-transformers' pooling modes, and "pooler" (DPR checkpoints)
Pooling = Literal["cls", "mean", "max", "lasttoken", "pooler"]
POOLINGS = get_args(Pooling)


@dataclass(frozen=True)
class EncoderConfig:
    """How an :class:`Encoder` turns its backbone's token states into one vector per text."""

    pooling: Pooling = option("cls", "token states to one vector: " + ", ".join(POOLINGS))
    normalize: bool = option(False, "L2-normalise outputs; inner product becomes cosine similarity")
    projection_dim: int = option(
        0, "add a trainable D x H projection after pooling; 0 = none", within=NON_NEGATIVE)
    max_length: int = option(256, "tokens per text; longer texts are truncated", within=POSITIVE)
    lexical_head: bool = option(
        False, "question side only: add a learned bag-of-words vector (retriever.lexical; fitted to "
        "the index's BM25 by ragqa train-retriever --lexical_head)")
    query_prompt: str = option("", 'prepended to every question (e5/bge style, e.g. "query: ")')
    passage_prompt: str = option("", "prepended to every passage (its title, when it has one)")
    dense: tuple = option(
        (), "sentence-transformers Dense layers after pooling: their specs (in_features, "
        "out_features, bias, activation); the weights are in dense.safetensors")

    def __post_init__(self) -> None:
        check_fields(self)


def _checkpoint_config(path: str, meta: dict, hf_config
                       ) -> tuple[EncoderConfig, tuple[DenseLayer, ...] | None]:
    """The checkpoint's own settings, and its Dense layers when they come loaded: from our
    settings file ``meta`` when it has any (Dense layers ``None``: built from their specs, their
    weights loaded after), else inferred (DPR's pooler; a sentence-transformers folder's modules;
    else the defaults)."""
    fields = {f: meta[f] for f in EncoderConfig.__dataclass_fields__ if f in meta}
    if fields:
        return EncoderConfig(**{**fields, "dense": tuple(fields.get("dense", ()))}), None
    if hf_config.model_type == "dpr":
        return EncoderConfig(pooling="pooler"), ()
    folder = read_folder(path)
    if folder is None:
        return EncoderConfig(), ()
    return EncoderConfig(pooling=folder.pooling, normalize=folder.normalize,
                         query_prompt=folder.query_prompt, passage_prompt=folder.passage_prompt,
                         dense=tuple(layer.spec for layer in folder.dense)), folder.dense


def _chosen_config(name_or_path: str, hf_config, saved: EncoderConfig,
                   config: EncoderConfig | None, overrides: dict) -> EncoderConfig:
    """``config`` (default the checkpoint's ``saved`` settings) with ``overrides``; the Dense
    layers stay the checkpoint's. Raises :class:`UserError` for an invalid field or a
    ``max_length`` override beyond the model's position table."""
    base = replace(config or saved, **overrides)
    table = getattr(hf_config, "max_position_embeddings", None)
    if table and overrides.get("max_length", 0) > table:
        raise UserError(f"--max_length {overrides['max_length']} is longer than {name_or_path}'s "
                        f"position table ({table} tokens)")
    if base.dense != saved.dense:  # Dense layers are the checkpoint's, not a setting to change
        base = replace(base, dense=saved.dense)
    return base


class Encoder(nn.Module):
    """One tower of the bi-encoder: ``forward(input_ids, attention_mask) -> (N, D)`` float."""

    def __init__(self, backbone: nn.Module, tokenizer, config: EncoderConfig, name: str = "",
                 paired_context_fingerprint: str | None = None,
                 dense: tuple[DenseLayer, ...] | None = None):
        super().__init__()
        table = getattr(backbone.config, "max_position_embeddings", None)
        if table and config.max_length > table:  # a default longer than this model can read
            config = replace(config, max_length=table)
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config
        self.name = name
        self.paired_context_fingerprint = paired_context_fingerprint
        hidden = backbone.config.hidden_size
        if backbone.config.model_type == "dpr" and getattr(backbone.config, "projection_dim", 0):
            hidden = backbone.config.projection_dim
        if dense is None:  # fresh layers of the configured shapes (weights loaded after)
            dense = tuple(DenseLayer(s["in_features"], s["out_features"], s["bias"], s["activation"])
                          for s in config.dense)
        self.dense = nn.ModuleList(dense)
        if dense:
            hidden = dense[-1].spec["out_features"]
        self.projection = nn.Linear(hidden, config.projection_dim) if config.projection_dim else None
        self.dim = config.projection_dim or hidden
        self.lexical = LexicalHead(tokenizer, self.dim) if config.lexical_head else None
        self._fingerprint: str | None = None

    def embed(self, texts: list[str], titles: list[str] | None = None, forward=None
              ) -> torch.Tensor:
        """Tokenise (:meth:`tokenize`: with titles, passages), move to the encoder's device and
        run: embeddings (N, D), with gradient when grad is on. ``forward`` is the module to call
        (under torch.distributed the prepared, DDP one, so gradients are averaged); default
        this encoder. For inference over many texts, ``retriever.batch_encode.encode_texts``."""
        return self.embed_tokens(self.tokenize(texts, titles), forward)

    def embed_tokens(self, tok: dict[str, torch.Tensor], forward=None) -> torch.Tensor:
        """:meth:`embed` of texts tokenised already (:meth:`tokenize`, e.g. by a loader worker)."""
        device = next(self.parameters()).device
        return (forward or self)(tok["input_ids"].to(device), tok["attention_mask"].to(device))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids (N, L) and mask (N, L) -> embeddings (N, D) in the backbone's dtype."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        if self.config.pooling == "pooler":
            emb = out.pooler_output  # (N, H)
        elif self.config.pooling == "cls":
            emb = out.last_hidden_state[:, 0]  # (N, H)
        elif self.config.pooling == "max":  # padding never wins (sentence-transformers' -1e9)
            keep = attention_mask.unsqueeze(-1).bool()  # (N, L, 1)
            emb = out.last_hidden_state.masked_fill(~keep, -1e9).max(dim=1).values  # (N, H)
        elif self.config.pooling == "lasttoken":  # the last real token (right padding)
            last = attention_mask.sum(1).clamp(min=1) - 1  # (N,)
            emb = out.last_hidden_state[torch.arange(len(last), device=last.device), last]
        else:
            mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)  # (N, L, 1)
            emb = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (N, H)
        for layer in self.dense:
            emb = layer(emb)
        if self.projection is not None:
            emb = self.projection(emb)
        if self.config.normalize:
            emb = nn.functional.normalize(emb, dim=-1)
        if self.lexical is not None:
            emb = emb + self.lexical(input_ids, attention_mask).to(emb.dtype)
        return emb

    def add_lexical_head(self) -> LexicalHead:
        """Give this (question) encoder a lexical head, all zeros (so outputs are unchanged)."""
        if self.lexical is None:
            device = next(self.parameters()).device
            self.lexical = LexicalHead(self.tokenizer, self.dim).to(device)
            self.config = replace(self.config, lexical_head=True)
            self._fingerprint = None
        return self.lexical

    def score_scale(self, override: float = 0.0) -> float:
        """The factor on inner products before a softmax over passages: ``override`` when > 0, else
        20 for L2-normalised outputs (cosines in [-1, 1]; the scale sentence-transformers trains
        them at) and 1 for raw inner products (DPR)."""
        if override > 0:
            return override
        return 20.0 if self.config.normalize else 1.0

    def tokenize(self, texts: list[str], titles: list[str] | None = None,
                 padding: bool = True, passages: bool | None = None) -> dict:
        """Tokenise questions, or passages as DPR does (``[CLS] title [SEP] text [SEP]``).

        Texts with titles are passages (``passages`` says so for texts without), the rest
        questions; each side's prompt is prepended to the first segment. With ``padding`` returns
        (N, L) tensors; without, lists of ids (for length-sorted batching).
        """
        passages = titles is not None if passages is None else passages
        prompt = self.config.passage_prompt if passages else self.config.query_prompt
        if prompt:
            if titles is not None:
                titles = [prompt + t for t in titles]
            else:
                texts = [prompt + t for t in texts]
        kwargs = dict(truncation=True, max_length=self.config.max_length,
                      return_token_type_ids=False)
        if padding:
            kwargs.update(padding=True, return_tensors="pt")
        if titles is not None:
            return self.tokenizer(titles, texts, **kwargs)
        return self.tokenizer(texts, **kwargs)

    @property
    def fingerprint(self) -> str:
        """SHA-256 (first 16 hex digits) of the weights and pooling: the encoder's identity."""
        if self._fingerprint is None:
            # max_length only truncates inputs: hash it at its default, so the same weights keep one
            # identity whatever --max_length built an index (and default fingerprints are unchanged)
            ident = asdict(replace(self.config, max_length=EncoderConfig.max_length))
            for key in ("lexical_head", "query_prompt", "passage_prompt", "dense"):
                if not ident[key]:  # fingerprints from before these settings existed still hold
                    del ident[key]
            h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode())
            for key, tensor in sorted(self.state_dict().items()):
                h.update(key.encode())
                h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def refresh_fingerprint(self) -> None:
        """Forget the cached fingerprint (call after training changes the weights)."""
        self._fingerprint = None

    def identity(self) -> dict:
        """What an index manifest records about the encoder that built it."""
        config = asdict(self.config)
        return {"name": self.name, "fingerprint": self.fingerprint, "dim": self.dim,
                **config, "dense": list(config["dense"])}  # as JSON reads it back

    def save_pretrained(self, out_dir: str | os.PathLike, half: bool = False,
                        backbone_from: str | None = None,
                        paired_context_fingerprint: str | None = None) -> None:
        """Write backbone (safetensors), tokenizer and our config; atomic (temp dir, then rename).

        ``half`` stores float16 weights (loading restores float32); the fingerprint is unchanged.
        ``backbone_from`` (a packaged name, hub id or directory) stores no backbone weights but a
        reference to that model, whose backbone must equal this one's exactly or as float16 rounds
        it (an untrained tower with a trained lexical head or projection: the directory then holds
        only those, and loading reads the reference's own weights). ``paired_context_fingerprint``
        records the context encoder this one was trained against (``Retriever`` passes it).
        """
        if backbone_from is not None:
            self._check_same_backbone(backbone_from)
        with atomic_directory(out_dir, kind="encoder") as tmp:
            fingerprint = self.fingerprint
            if backbone_from is None:
                state = {k: v.half() if half and v.is_floating_point() else v
                         for k, v in self.backbone.state_dict().items()}
                self.backbone.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            if self.projection is not None:
                save_file({k: v.contiguous() for k, v in self.projection.state_dict().items()},
                          str(tmp / PROJECTION_NAME))
            if len(self.dense):
                save_file({k: v.detach().float().contiguous()
                           for k, v in self.dense.state_dict().items()}, str(tmp / DENSE_NAME))
            if self.lexical is not None:
                w = self.lexical.weight.detach()
                save_file({"weight": (w.half() if half else w).contiguous()}, str(tmp / HEAD_NAME))
            meta = {**asdict(self.config), "name": self.name, "fingerprint": fingerprint,
                    "paired_context_fingerprint": (paired_context_fingerprint
                                                   or self.paired_context_fingerprint)}
            if backbone_from is not None:
                meta["backbone_from"] = backbone_from
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
            if backbone_from is None:
                self._write_st_modules(tmp)

    def _write_st_modules(self, out: Path) -> None:
        """sentence-transformers' files (``retriever.st_folder``), so it loads this encoder with
        the same embeddings; skipped for what it cannot express (DPR's pooler, a projection, a
        lexical head)."""
        if self.config.pooling == "pooler" or self.projection is not None or self.lexical is not None:
            return
        write_folder(out, self.config.pooling, self.backbone.config.hidden_size,
                     self.config.normalize, self.config.max_length, list(self.dense),
                     self.config.query_prompt, self.config.passage_prompt)

    def _check_same_backbone(self, source: str) -> None:
        """Raise :class:`UserError` unless ``source``'s weights equal this encoder's backbone;
        then take them (exact where ours were float16-rounded), so that the fingerprint saved is
        the one the directory loads with."""
        from transformers import AutoModel  # lazy: transformers, with a backbone (encoder_checkpoint)

        source_dir = resolve_pretrained(source, config_file=False)
        other = AutoModel.from_pretrained(source_dir, dtype=torch.float32).state_dict()
        own = self.backbone.state_dict()
        for key, value in own.items():
            ours = value.detach().float().cpu()
            # a tower stored in float16 (save_pretrained(half=True)) holds the reference rounded
            if key in other and not (torch.equal(ours, other[key].float())
                                     or torch.equal(ours, other[key].half().float())):
                raise UserError(f"cannot store the backbone as a reference to {source}: its "
                                f"weights differ ({key})")
        self.backbone.load_state_dict({k: other.get(k, v) for k, v in own.items()})
        self.refresh_fingerprint()

    @classmethod
    def from_pretrained(cls, name_or_path: str, config: EncoderConfig | None = None,
                        **overrides) -> Encoder:
        """Load a checkpoint by hub id, local path or packaged name (``all-MiniLM-L6-v2``).

        ``config`` replaces the saved/inferred pooling settings; ``overrides`` change single fields.
        """
        path = resolve_pretrained(name_or_path, config_file=False)
        meta = read_meta(path)
        weights = backbone_weights(path, meta)
        hf_config, tokenizer = load_config_and_tokenizer(name_or_path, path, weights)
        saved, dense = _checkpoint_config(path, meta, hf_config)
        base = _chosen_config(name_or_path, hf_config, saved, config, overrides)
        backbone = load_backbone(hf_config, weights, base.pooling == "pooler")
        enc = cls(backbone, tokenizer, base, name=meta.get("name") or name_or_path,
                  paired_context_fingerprint=meta.get("paired_context_fingerprint"), dense=dense)
        # Dense layers read from a sentence-transformers folder come with their weights
        load_added_weights(path, enc.dense if dense is None else None, enc.projection, enc.lexical)
        return enc
