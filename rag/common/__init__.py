"""What every package shares, importing nothing of ours above it. Plumbing: the one exception for
bad input (``errors``), atomic files and JSON output (``atomic``), what a directory we write is
(``artefact``), config options (``options``), the device policy (``device``), JSON-lines reading
(``jsonl``), progress bars (``progress``), collectives over torch.distributed processes
(``collective``), lazily imported package names (``lazy``), the allocator's threshold
(``malloc``). And what retrieval and RAG both use: where a model name lives (``model_path``),
question files (``questions``), SQuAD answer normalisation, EM and F1 (``qa_metrics``), the
training loop (``loop``) and its checkpoints (``checkpoint``). ``retriever``, ``generator`` and
``rag`` import it; it imports none of them (tests/test_architecture.py)."""
