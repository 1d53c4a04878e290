"""Reader check: a RAG model's exact match when given each dev question's own gold paragraph.

Retrieval is taken out of the picture: every question is answered from one given passage (greedy),
either the whole gold paragraph (``0``; cut to the model's input length, so an answer late in a long
paragraph is lost) or a window of the answer and 2W characters around it, the answer centred or
placed at random. The questions are ``--n`` random dev questions (seed 0; 300, the default, is
finetune's evaluation sample). ``--constrain spans`` holds answers to stretches of the passage. Run
from the repository root (docs/benchmarks.md has the figures):

    python docs/experiments/reader_oracle.py runs/reader runs/index-l6 0 100:centred 150:random
    python docs/experiments/reader_oracle.py runs/copy-reader runs/index-l6 0 --n 1000
"""

import argparse
import random

from rag.common.qa_metrics import exact_match
from rag.common.questions import collapse_ws, dev_subset, read_questions
from rag.model import RagModel
from rag.train import answer_window

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("model_dir")
parser.add_argument("index_dir")
parser.add_argument("settings", nargs="+", help="0 (whole paragraph) or W:centred / W:random")
parser.add_argument("--n", type=int, default=300, help="random dev questions (seed 0)")
parser.add_argument("--constrain", default="", help="'spans' or 'none'; default: the model's")
parser.add_argument("--max_input_length", type=int, default=0, help="0 = the model's own")
parser.add_argument("--reader", default="", help="'span' or 'generate'; default: the model's")
parser.add_argument("--dev", default="../shared/data/squad-open/dev.json", help="SQuAD dev questions")
args = parser.parse_args()
model_dir, settings = args.model_dir, args.settings
overrides = {k: v for k, v in (("constrain", args.constrain), ("reader", args.reader),
                               ("max_input_length", args.max_input_length)) if v}
model = RagModel.from_pretrained(model_dir, args.index_dir, **overrides).eval()
dev = dev_subset(read_questions(args.dev), args.n, "random", seed=0)
table = model.index.passages
title_of = dict(zip(map(collapse_ws, table["text"]), table["title"], strict=True))
for setting in settings:
    width, _, position = setting.partition(":")
    rng = random.Random(0) if position == "random" else None
    rows = []
    for q in dev:
        context = collapse_ws(q.gold_context or "")
        if context in title_of:
            text = answer_window(context, q.answers[0], int(width), rng) if int(width) else context
            if text:
                rows.append((q, (title_of[context], text)))
    em = []
    for start in range(0, len(rows), 16):
        chunk = rows[start : start + 16]
        answers = model.answer([q.question for q, _ in chunk], num_beams=1, passages=[g for _, g in chunk])
        em += [exact_match(a.answer, q.answers) for a, (q, _) in zip(answers, chunk, strict=True)]
    print(f"{model_dir} gold {setting or 'paragraph'} (reader {model.config.reader}, constrain "
          f"{model.config.decode.constrain}, input "
          f"{model.config.max_input_length}): EM {100 * sum(em) / len(em):.2f} on {len(em)}", flush=True)
