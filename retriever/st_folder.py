"""sentence-transformers folders, read and written faithfully.

A sentence-transformers model is a folder with ``modules.json`` listing its modules in order, each
in a sub-folder with its own config: Transformer (the backbone, at the folder's root), Pooling,
any number of Dense layers (``activation(W x + b)``), Normalize. Query and passage prompts
(e5/bge style: ``"query: "``, ``"passage: "``) live in ``config_sentence_transformers.json``.

:func:`read_folder` turns such a folder into the settings an :class:`~retriever.encoder.Encoder`
needs (pooling, normalisation, prompts, Dense layers with their weights). What it cannot reproduce
exactly (another module type, several pooling modes at once, a residual Dense, pooling that leaves
the prompt out) is refused with one line rather than loaded differently. :func:`write_folder`
writes the same files for an encoder we save, so sentence-transformers reloads it with the same
embeddings. Both of Pooling's key formats are read: the old ``pooling_mode_mean_tokens: true`` and
sentence-transformers 6's ``pooling_mode: "mean"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rag.common.errors import UserError, loading

# sentence-transformers' pooling modes, in its old config keys and in its newer "pooling_mode" values
ST_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
              "pooling_mode_max_tokens": "max", "pooling_mode_lasttoken": "lasttoken",
              "cls": "cls", "mean": "mean", "max": "max", "lasttoken": "lasttoken"}
OLD_KEYS = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens",
            "max": "pooling_mode_max_tokens", "lasttoken": "pooling_mode_lasttoken"}
ACTIVATIONS = ("Tanh", "Identity", "ReLU", "GELU", "Sigmoid", "SiLU")  # Dense's, by torch.nn name
MODULES_FILE, PROMPTS_FILE = "modules.json", "config_sentence_transformers.json"
DENSE_WEIGHTS = "model.safetensors"


class DenseLayer(nn.Module):
    """sentence-transformers' Dense module: ``activation(linear(x))``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation: str = "Tanh"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise UserError(f"Dense activation {activation!r} is not supported (one of "
                            f"{', '.join(ACTIVATIONS)})")
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation = getattr(nn, activation)()
        self.spec = {"in_features": in_features, "out_features": out_features, "bias": bias,
                     "activation": activation}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(x))


@dataclass(frozen=True)
class Folder:
    """What :func:`read_folder` found: settings for ``EncoderConfig`` and the Dense layers."""

    pooling: str = "cls"
    normalize: bool = False
    query_prompt: str = ""
    passage_prompt: str = ""
    dense: tuple[DenseLayer, ...] = ()


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not readable JSON ({type(err).__name__})") from None
    if not isinstance(data, dict | list):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _kind(module: dict) -> str:
    """A module's type by its class name (sentence-transformers moved them between versions)."""
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def read_prompts(folder: Path) -> tuple[str, str]:
    """(query prompt, passage prompt) from ``config_sentence_transformers.json`` ("" when none):
    the ``query`` prompt and the ``document`` (or ``passage``) prompt, else the default prompt."""
    file = folder / PROMPTS_FILE
    config = _json(file) if file.is_file() else {}
    prompts = config.get("prompts") or {}
    default = prompts.get(config.get("default_prompt_name") or "", "")
    query = prompts.get("query", default)
    passage = prompts.get("document", prompts.get("passage", default))
    return str(query or ""), str(passage or "")


def read_pooling(config_file: Path) -> str:
    """Our pooling for a sentence-transformers Pooling config, in either of its key formats."""
    pool = _json(config_file) if config_file.is_file() else {}
    mode = pool.get("pooling_mode")
    modes = [mode] if isinstance(mode, str) else list(mode or [])
    modes += [key for key, on in pool.items() if key.startswith("pooling_mode_") and on is True]
    ours = {ST_POOLING.get(m) for m in modes}
    if len(ours) != 1 or None in ours:
        raise UserError(f"{config_file}: pooling {modes or 'unset'} is not supported (one of "
                        "cls, mean, max, lasttoken)")
    return ours.pop()


def _read_dense(folder: Path) -> DenseLayer:
    config = _json(folder / "config.json")
    if config.get("use_residual"):
        raise UserError(f"{folder / 'config.json'}: a residual Dense layer is not supported")
    activation = str(config.get("activation_function") or "Identity").rsplit(".", 1)[-1]
    try:
        layer = DenseLayer(int(config["in_features"]), int(config["out_features"]),
                           bool(config.get("bias", True)), activation)
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{folder / 'config.json'}: not a Dense config ({err})") from None
    except UserError as err:
        raise UserError(f"{folder / 'config.json'}: {err}") from None
    weights = folder / DENSE_WEIGHTS
    if weights.is_file():
        state = load_file(str(weights))
    elif (folder / "pytorch_model.bin").is_file():  # older folders; tensors only, no pickled code
        with loading(folder / "pytorch_model.bin"):
            state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise UserError(f"{folder}: Dense layer without weights ({DENSE_WEIGHTS})")
    try:
        layer.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as err:
        raise UserError(f"{folder}: Dense weights do not match its config "
                        f"({str(err).splitlines()[0]})") from None
    return layer


def read_folder(path: str | Path) -> Folder | None:
    """The sentence-transformers settings of ``path``, or None when it is not such a folder."""
    folder = Path(path)
    modules = _json(folder / MODULES_FILE) if (folder / MODULES_FILE).is_file() else []
    if not modules and (folder / "1_Pooling" / "config.json").is_file():  # a folder without a list
        modules = [{"type": "Pooling", "path": "1_Pooling"}]
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise UserError(f"{folder / MODULES_FILE}: expected a list of module objects")
    kinds = [_kind(m) for m in modules]
    if "Pooling" not in kinds:
        return None
    unsupported = [k for k in kinds if k not in ("Transformer", "Pooling", "Dense", "Normalize")]
    if unsupported:  # refused: ignoring a module would give other embeddings, silently
        raise UserError(f"{path}: sentence-transformers module {unsupported[0]} is not supported "
                        "(only Transformer, Pooling, Dense and Normalize)")
    pool_dir = folder / modules[kinds.index("Pooling")].get("path", "1_Pooling")
    query, passage = read_prompts(folder)
    pool_config = _json(pool_dir / "config.json") if (pool_dir / "config.json").is_file() else {}
    if (query or passage) and pool_config.get("include_prompt") is False:
        raise UserError(f"{pool_dir / 'config.json'}: pooling that leaves out the prompt tokens "
                        "is not supported")
    after = modules[kinds.index("Pooling") + 1 :]
    if [_kind(m) for m in after] != sorted((_kind(m) for m in after), key=lambda k: k == "Normalize"):
        raise UserError(f"{folder / MODULES_FILE}: a Dense layer after Normalize is not supported")
    dense = tuple(_read_dense(folder / m["path"]) for m in after if _kind(m) == "Dense")
    return Folder(pooling=read_pooling(pool_dir / "config.json"), normalize="Normalize" in kinds,
                  query_prompt=query, passage_prompt=passage, dense=dense)


def write_folder(out: Path, pooling: str, hidden: int, normalize: bool, max_length: int,
                 dense: list[DenseLayer], query_prompt: str = "", passage_prompt: str = "") -> None:
    """``modules.json`` and each module's files for an encoder with these settings."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]

    def add(kind: str, dirname: str) -> Path:
        idx = len(modules)
        path = f"{idx}_{dirname}"
        modules.append({"idx": idx, "name": str(idx), "path": path,
                        "type": f"sentence_transformers.models.{kind}"})
        (out / path).mkdir()
        return out / path

    pool = add("Pooling", "Pooling")
    (pool / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": hidden, **{key: mode == pooling for mode, key in OLD_KEYS.items()}},
        indent=2))
    for layer in dense:
        where = add("Dense", "Dense")
        spec = layer.spec
        (where / "config.json").write_text(json.dumps(
            {"in_features": spec["in_features"], "out_features": spec["out_features"],
             "bias": spec["bias"],
             "activation_function": f"torch.nn.modules.activation.{spec['activation']}"
             if spec["activation"] != "Identity" else "torch.nn.modules.linear.Identity"}, indent=2))
        save_file({k: v.detach().float().contiguous() for k, v in layer.state_dict().items()
                   if k.startswith("linear.")}, str(where / DENSE_WEIGHTS))
    if normalize:
        add("Normalize", "Normalize")
    (out / MODULES_FILE).write_text(json.dumps(modules, indent=2))
    (out / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": max_length, "do_lower_case": False}, indent=2))
    prompts = {name: p for name, p in (("query", query_prompt), ("document", passage_prompt)) if p}
    if prompts:
        (out / PROMPTS_FILE).write_text(json.dumps(
            {"prompts": prompts, "default_prompt_name": None}, indent=2))
