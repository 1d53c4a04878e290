"""Shared by the torchrun workers: turn every dropout off, so that runs can be compared exactly."""

import torch


def no_dropout(model: torch.nn.Module) -> None:
    """Dropout modules get p = 0, and so do the rates BART keeps as plain floats."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("dropout", "activation_dropout", "attention_dropout", "layerdrop"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
