"""ragqa's retriever: a DPR-style bi-encoder over a FAISS index, with an optional BM25 side.

Public names (imported on first use):

- :class:`Encoder`, :class:`EncoderConfig`: a text encoder (BERT, DPR or sentence-transformers
  checkpoint; ``retriever.encoder``);
- :func:`build_index`, :class:`BuildConfig`: corpus -> index directory (``retriever.build``);
- :class:`DenseIndex`, :class:`IndexConfig`: the FAISS index with its passages (``retriever.index``)
  and its type's settings (``retriever.index_factory``);
- :class:`Retriever`, :class:`RetrievalConfig`: questions -> passages, dense, sparse or hybrid
  (``retriever.search``, ``retriever.fusion``);
- :func:`evaluate_retrieval`: DPR top-k accuracy, gold recall, MRR (``retriever.evaluation``);
- :func:`train_dpr`, :class:`TrainConfig`: question-encoder training (``retriever.train``);
- :func:`read_questions`, :func:`load_corpus`: question and corpus readers (``rag.common.questions``,
  ``retriever.corpus``);
- :class:`UserError`: the one exception for bad input (``rag.common.errors``).

Example::

    from retriever import Encoder, build_index, Retriever
    encoder = Encoder.from_pretrained("all-MiniLM-L6-v2")
    index = build_index("corpus.tsv", encoder, "runs/index")
    Retriever(encoder, index).retrieve(["Who designed the Eiffel Tower?"], k=5).passages
"""

from __future__ import annotations

from rag.common.lazy import lazy_exports

_EXPORTS = {
    "Encoder": "retriever.encoder", "EncoderConfig": "retriever.encoder",
    "build_index": "retriever.build", "BuildConfig": "retriever.build",
    "DenseIndex": "retriever.index", "IndexConfig": "retriever.index_factory",
    "Retriever": "retriever.search", "RetrievalConfig": "retriever.fusion",
    "evaluate_retrieval": "retriever.evaluation",
    "train_dpr": "retriever.train", "TrainConfig": "retriever.train",
    "read_questions": "rag.common.questions", "load_corpus": "retriever.corpus",
    "UserError": "rag.common.errors",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
