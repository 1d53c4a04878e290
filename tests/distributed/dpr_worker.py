"""One process of a distributed DPR training run (launched by ``torchrun`` from
``test_distributed.py``): trains the tiny question encoder against a prebuilt index and saves its
weights, and the training questions' vectors (``__outputs__``), as ``<out>/rank<RANK>.safetensors``.
Dropout is off, so runs can be compared exactly.

    torchrun --nproc_per_node 2 dpr_worker.py ENCODER_DIR INDEX_DIR QUESTIONS OUT BATCH_SIZE
"""

import os
import sys

import torch
from determinism import no_dropout  # this directory (torchrun runs the worker as a script)
from safetensors.torch import save_file

from retriever.encoder import Encoder
from retriever.index import DenseIndex
from retriever.questions import read_questions
from retriever.train import TrainConfig, train_dpr


def main(encoder_dir: str, index_dir: str, questions: str, out: str, batch_size: str) -> None:
    torch.manual_seed(0)
    q_enc = Encoder.from_pretrained(encoder_dir)
    ctx_enc = Encoder.from_pretrained(encoder_dir)
    no_dropout(q_enc)
    config = TrainConfig(epochs=2, batch_size=int(batch_size), negatives="corpus", lr=1e-3,
                         warmup_ratio=0.0, seed=0)
    train = read_questions(questions)
    train_dpr(q_enc, ctx_enc, DenseIndex.load(index_dir), train, config)
    q_enc.eval()
    with torch.no_grad():  # what the weights do: the training questions' vectors
        tok = q_enc.tokenize([q.question for q in train])
        outputs = q_enc(tok["input_ids"], tok["attention_mask"])
    state = {k: v.contiguous() for k, v in q_enc.state_dict().items()}
    state["__outputs__"] = outputs.contiguous()
    save_file(state, os.path.join(out, f"rank{os.environ.get('RANK', '0')}.safetensors"))


if __name__ == "__main__":
    main(*sys.argv[1:])
