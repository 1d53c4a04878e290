"""The plumbing every package shares, and nothing of ours below it: the one exception for bad
input (``errors``), atomic files and JSON output (``atomic``), progress bars (``progress``),
collectives over torch.distributed processes (``collective``) and lazily imported package names
(``lazy``). ``retriever``, ``generator`` and ``rag`` import it; it imports none of them."""
