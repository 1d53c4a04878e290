"""ragqa's RAG: retrieve passages, generate an answer with BART, say where it came from.

In three lines, with the starter shipped in the package (offline; the embedded corpus is indexed
on first use and cached)::

    from rag import RagModel
    model = RagModel.from_pretrained()                # or a model directory, and an index
    model.answer("Who designed the Eiffel Tower?")    # one Answer; a list of questions gives a list

Public names (imported on first use, so that ``import rag`` stays fast):

- :class:`RagModel`, :class:`RagConfig`, :class:`DecodeConfig`, :class:`Answer`: the model
  (``rag.model``), its settings and the search settings they hold (``rag.config``), and its
  answers (``rag.answers``);
- :class:`FinetuneConfig`, :func:`finetune`: joint fine-tuning (``rag.train``);
- :func:`updated`: a config with some fields changed, those of the configs it holds included
  (``updated(FinetuneConfig(), lr=1e-4)``, ``rag.common.options``);
- :class:`BenchmarkConfig`, :func:`run_benchmark`: exact match and latency (``rag.benchmark``);
- :func:`qa_metrics`: SQuAD EM and F1 (``rag.common.qa_metrics``);
- :func:`export`: a transformers RAG directory of a model (``rag.hf_rag``).

The command line is ``ragqa`` (``rag.commands``); retrieval is the ``retriever`` package and the
generator the ``generator`` package.
"""

from __future__ import annotations

from rag.common.lazy import lazy_exports

_EXPORTS = {
    "RagModel": "rag.model", "RagConfig": "rag.config", "DecodeConfig": "rag.config",
    "Answer": "rag.answers", "updated": "rag.common.options",
    "FinetuneConfig": "rag.train", "finetune": "rag.train",
    "BenchmarkConfig": "rag.benchmark", "run_benchmark": "rag.benchmark",
    "qa_metrics": "rag.common.qa_metrics", "export": "rag.hf_rag",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
