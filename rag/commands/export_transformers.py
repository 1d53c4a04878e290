"""Export a RAG model and its index for transformers: RagRetriever + RagSequenceForGeneration.

Writes OUT as transformers reads it: config.json and model.safetensors of a
RagSequenceForGeneration (or RagTokenForGeneration, by the model's mode), the RagTokenizer's two
tokenizers, and RagRetriever's custom index (OUT/passages, a datasets directory with id, title,
text and embeddings, and OUT/passages.faiss), named in the config. Then, in Python:

    from transformers import RagRetriever, RagSequenceForGeneration, RagTokenizer
    retriever = RagRetriever.from_pretrained("runs/exported")
    model = RagSequenceForGeneration.from_pretrained("runs/exported", retriever=retriever)

retrieves the same passages and generates the same answers (docs/interop.md says where
transformers differs: its RAG-Sequence generate attends to padding). What transformers cannot
represent is refused with one line: a mean-pooled or normalised question encoder (transformers'
RAG uses DPR's pooler output), hybrid retrieval (pass --retrieval dense), span-constrained
decoding (pass --constrain none), a copy generator, a score scale other than 1.

Example:
    ragqa export --model runs/rag-dpr --index runs/index-dpr \\
        --retrieval dense --constrain none --out runs/exported
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rag.commands.cli import parse
from rag.common.artefact import check_output_dir, check_paths
from rag.common.options import Changes, option
from rag.config import RagConfig
from rag.hf_rag import export
from rag.model import RagModel
from retriever.fusion import RetrievalConfig


@dataclass(frozen=True)
class Args:
    model: str = field(metadata={"help": "RAG model directory (ours, or a transformers RAG checkpoint)"})
    out: str = field(metadata={"help": "directory to write (refused if it exists, unless ours and "
                                       "--overwrite)"})
    index: str | None = option(None, "index directory; default: the model's own")
    overwrite: bool = option(False, "replace an existing export written by this script")


# what an export may change of the model's settings
EXPORT_CHANGES = Changes(RagConfig, over="the model's own", help={
    "constrain": 'the decoding constraint to export with ("none" for a model that decodes with '
                 '"spans")'})


def main() -> None:
    args, changes, retrieval = parse([Args, EXPORT_CHANGES, Changes(RetrievalConfig)],
                                     description=__doc__)
    check_paths({"--model": args.model, "--index": args.index}, {"--out": args.out})
    check_output_dir(args.out, args.overwrite, "export")
    model = RagModel.from_pretrained(args.model, args.index, retrieval, **changes).eval()
    out = export(model, args.out, overwrite=args.overwrite)
    print(f"transformers RAG ({model.config.mode}, k={model.config.k}) + RagRetriever index of "
          f"{len(model.index)} passages -> {out}")

