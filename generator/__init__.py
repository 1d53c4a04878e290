"""ragqa's generator: BART (plain, or with a copy path over its input) and its inputs.

Public names (imported on first use):

- :func:`load_generator`, :func:`save_generator`: a BART directory in and out (``generator.model``);
- :func:`warm_start_bart`: a BART made from a BERT checkpoint (``generator.warmstart``);
- :class:`CopyBartForConditionalGeneration`: BART with a pointer over its input (``generator.copy``);
- :func:`build_generator_inputs`: "title / text // question" inputs as transformers' RAG builds
  them (``generator.inputs``).
"""

from __future__ import annotations

from rag.common.lazy import lazy_exports

_EXPORTS = {
    "load_generator": "generator.model", "save_generator": "generator.model",
    "warm_start_bart": "generator.warmstart",
    "CopyBartForConditionalGeneration": "generator.copy",
    "build_generator_inputs": "generator.inputs",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
