"""One process of the distributed tests' single torchrun job (``test_distributed.py``): one
launch does it all, since each costs seconds of imports. In order, every process:

1. trains DPR (``parts.dpr_part``), saving ``dpr/rank<RANK>.safetensors``;
2. fine-tunes RAG on the model's own index, then on ``SHARDS`` (one shard per process), saving
   ``rag/`` and ``rag-sharded/rank<RANK>.safetensors`` and the first process's predictions;
3. searches the shards of ``LAYOUTS`` (``parts.search_part``), writing ``search/rank<RANK>.json``;
4. runs ``ragqa eval-retrieval`` on two shards (``eval.json``), then writes ``done-<RANK>``;
5. runs it on three shards, which must fail on both processes with one line and exit status 2:
   the job's last act, so torchrun's own exit status is that failure's.

    torchrun --nproc_per_node 2 worker.py ENCODER_DIR INDEX_DIR RAG_DIR SHARDS LAYOUTS QUESTIONS OUT
"""

import json
import os
import sys
from pathlib import Path

from parts import dpr_part, rag_part, search_part  # this directory: torchrun runs it as a script
from safetensors.torch import save_file

from rag.commands import run_command
from rag.common.loop import make_accelerator


def main(encoder_dir, index_dir, rag_dir, shards, layouts, questions, out) -> None:
    acc = make_accelerator()
    rank, out, layouts = acc.process_index, Path(out), Path(layouts)
    for name in ("dpr", "rag", "rag-sharded", "search"):
        (out / name).mkdir(exist_ok=True)
    save_file(dpr_part(encoder_dir, index_dir, questions, 2), str(out / "dpr" / f"rank{rank}.safetensors"))
    for name, index in (("rag", None), ("rag-sharded", shards)):
        state, predictions = rag_part(rag_dir, questions, out / name / "model", 2, acc, index)
        save_file(state, str(out / name / f"rank{rank}.safetensors"))
        if acc.is_main_process:
            (out / name / "predictions.json").write_text(json.dumps(predictions))
    report = search_part(encoder_dir, *(layouts / n for n in ("whole", "two", "three", "broken")),
                         questions, rank)
    (out / "search" / f"rank{rank}.json").write_text(json.dumps(report))
    run_command("eval-retrieval", ["--index", str(layouts / "two"), "--questions", questions,
                                   "--ks", "1,3", "--json", str(out / "eval.json")])
    (out / f"sparse-{rank}.txt").write_text(sparse_finetune(rag_dir, index_dir, questions, out))
    (out / f"done-{rank}").touch()
    run_command("eval-retrieval", ["--index", str(layouts / "three"), "--questions", questions,
                                   "--json", str(out / "bad.json")])


def sparse_finetune(rag_dir, index_dir, questions, out) -> str:
    """3 steps of ``ragqa finetune --retrieval sparse``: "ok", or how it failed (a question encoder
    that trains but is never called stalls DDP at step 2)."""
    try:
        run_command("finetune", ["--train", questions, "--index", str(index_dir), "--generator",
                                 str(Path(rag_dir) / "generator"), "--retrieval", "sparse",
                                 "--k", "2", "--max_input_length", "64", "--batch_size", "1",
                                 "--max_steps", "3", "--quiet", "--out", str(out / "sparse-ft")])
    except SystemExit as stop:
        return f"exit {stop.code}"
    except Exception as err:  # noqa: BLE001 - recorded for the test to show
        return repr(err)
    return "ok"


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(*sys.argv[1:])
