"""Open-domain QA exact match and F1 as an ``evaluate`` module, loaded by path.

Usage (offline; the directory name must equal the file name, which is how evaluate finds it)::

    import evaluate
    from rag.common.qa_metrics import QA_METRIC_DIR
    qa = evaluate.load(str(QA_METRIC_DIR))    # or evaluate.load("rag/common/qa_metric") from the repo root
    qa.compute(predictions=["Paris", "1969"], references=[["Paris"], ["July 1969", "1969"]])
    qa.compute(predictions=["lambe"], references=[[]], patterns=[["lamb(e)?"]])

evaluate copies this file into its module cache and imports it from there, so the computation
lives in ``rag.common.qa_metrics`` (an installed package) and this file stays a thin wrapper.
"""

from __future__ import annotations

import datasets
import evaluate

from rag.common.qa_metrics import qa_metrics

_CITATION = """\
@inproceedings{rajpurkar-etal-2016-squad,
  title = {{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text},
  author = {Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy},
  booktitle = {EMNLP},
  year = {2016}
}
@inproceedings{karpukhin-etal-2020-dense,
  title = {Dense Passage Retrieval for Open-Domain Question Answering},
  author = {Karpukhin, Vladimir and others},
  booktitle = {EMNLP},
  year = {2020}
}
"""

_DESCRIPTION = """\
Exact match and token F1 of open-domain QA answers, in percent (0-100), with SQuAD v1.1's answer
normalisation (lowercase, no punctuation, no articles, single spaces) and the maximum over the
gold answers. Questions whose answers are regular expressions (CuratedTREC) score EM = 1 when a
pattern matches the whole prediction (case-insensitive); their F1 equals their EM.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: list of predicted answers (str), one per question.
    references: list of gold answer lists (list of str), one per question; may be empty for a
        question answered by patterns.
    patterns: optional list, one entry per question, of regex answers (list of str); a question
        with a non-empty entry is scored by regex match instead of its references.
Returns:
    exact_match: percentage of questions answered exactly (0-100).
    f1: average token F1 in percent (0-100).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class QaMetric(evaluate.Metric):
    """SQuAD-normalised EM/F1 with CuratedTREC regex answers (see ``rag.common.qa_metrics``)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/",
                            "https://github.com/facebookresearch/DPR"],
        )

    def _compute(self, predictions, references, patterns=None) -> dict[str, float]:
        return qa_metrics(predictions, references, patterns)
