"""One process of a distributed RAG fine-tuning run (launched by ``torchrun`` from
``test_distributed.py``): fine-tunes the tiny RAG model (question encoder and generator) and saves
its weights, and the training questions' NLL (``__outputs__``), as ``<out>/rank<RANK>.safetensors``.
Dropout is off, so runs can be compared exactly. INDEX, when given, replaces the model's own (a
sharded one: the processes search it together, in training and in the dev evaluation).

    torchrun --nproc_per_node 2 rag_worker.py MODEL_DIR QUESTIONS OUT BATCH_SIZE [INDEX]
"""

import json
import os
import sys

import torch
from determinism import no_dropout  # this directory (torchrun runs the worker as a script)
from safetensors.torch import save_file

from rag.benchmark import BenchmarkConfig, run_benchmark
from rag.pipeline import RagModel
from rag.train import FinetuneConfig, finetune
from retriever.questions import read_questions
from retriever.train import make_accelerator


def main(model_dir: str, questions: str, out: str, batch_size: str, index: str | None = None
         ) -> None:
    torch.manual_seed(0)
    acc = make_accelerator()  # before the index: a sharded one is searched by every process
    model = RagModel.from_pretrained(model_dir, index)
    no_dropout(model)
    config = FinetuneConfig(epochs=1, batch_size=int(batch_size), lr=1e-3, warmup_ratio=0.0,
                            eval_limit=0, seed=0)
    train = read_questions(questions)
    finetune(model, train, os.path.join(out, f"model-{batch_size}"), config, dev=train[:3],
             accelerator=acc)
    model.eval()
    # the benchmark, the questions shared by the processes: predictions to compare across runs
    bench = run_benchmark(model, train, BenchmarkConfig(batch_size=3, progress=False))
    if acc.is_main_process:
        with open(os.path.join(out, f"predictions-{acc.num_processes}.json"), "w") as f:
            json.dump([r["prediction"] for r in bench.predictions] + [bench.metrics["n"]], f)
    with torch.no_grad():  # what the weights do: the training questions' NLL
        outputs = model.loss([q.question for q in train], [q.answers[0] for q in train])[1]
    state = {k: v.clone() for k, v in model.state_dict().items()}  # tied weights: copies
    state["__outputs__"] = outputs.contiguous()
    save_file(state, os.path.join(out, f"rank{os.environ.get('RANK', '0')}.safetensors"))


if __name__ == "__main__":
    main(*sys.argv[1:])
