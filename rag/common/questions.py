"""Question files: SQuAD v1.1 JSON, NQ-open JSONL, WebQuestions JSON, DPR retriever TSV, DPR train JSON.

:func:`read_questions` detects the format from the file name and content and returns
:class:`Question` records; every script that takes ``--questions`` goes through it.
:func:`dev_subset` picks the questions an evaluation answers when it answers only some.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from rag.common.errors import UserError
from rag.common.jsonl import json_lines, load_json, utf8_lines

T = TypeVar("T")
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class Question:
    question: str
    answers: tuple[str, ...]  # gold answer strings; empty when the file gives none
    id: str = ""
    gold_context: str | None = None  # SQuAD: the paragraph the question was written on
    positive_ids: tuple[str, ...] = ()  # DPR train JSON: gold passage ids
    hard_negative_ids: tuple[str, ...] = ()  # DPR train JSON: hard negative passage ids
    patterns: tuple[str, ...] = field(default=())  # CuratedTREC-style regex answers


def collapse_ws(text: str) -> str:
    """Collapse runs of whitespace to one space and strip: how a SQuAD question's gold context is
    kept, and how a passage's text is compared with it (``retriever.corpus``, ``retriever.gold``)."""
    return _WS.sub(" ", text).strip()


def _answer_list(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(a, str) for a in value):
        return tuple(value)
    raise UserError(f"{where}: answers must be a string or a list of strings, got {value!r}")


def _squad(path: Path, data: dict) -> list[Question]:
    out = []
    for a, article in enumerate(data["data"]):
        for p, para in enumerate(article.get("paragraphs", [])):
            for q, qa in enumerate(para.get("qas", [])):
                where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}]"
                if "question" not in qa:
                    raise UserError(f"{where}: missing field 'question'")
                answers = tuple(ans["text"] for ans in qa.get("answers", []) if "text" in ans)
                out.append(
                    Question(
                        question=qa["question"],
                        answers=answers,
                        id=str(qa.get("id", f"{a}-{p}-{q}")),
                        gold_context=collapse_ws(para.get("context", "")) or None,
                    )
                )
    return out


def _json_list(path: Path, data: list) -> list[Question]:
    out = []
    for i, obj in enumerate(data):
        where = f"{path}: item {i}"
        if not isinstance(obj, dict):
            raise UserError(f"{where}: expected a JSON object")
        text = obj.get("qText", obj.get("question"))
        if text is None:
            raise UserError(f"{where}: missing field 'question' (or WebQuestions 'qText')")
        raw = obj.get("answers", obj.get("answer", []))
        out.append(
            Question(
                question=text,
                answers=_answer_list(raw, where),
                id=str(obj.get("qId", obj.get("id", i))),
                positive_ids=tuple(str(c["passage_id"]) for c in obj.get("positive_ctxs", [])
                                   if "passage_id" in c),
                hard_negative_ids=tuple(str(c["passage_id"]) for c in
                                        obj.get("hard_negative_ctxs", []) if "passage_id" in c),
            )
        )
    return out


def _jsonl(path: Path) -> list[Question]:
    out = []
    for lineno, obj in json_lines(path):
        where = f"{path}: line {lineno}"
        if "question" not in obj:
            raise UserError(f"{where}: expected an object with a 'question' field")
        out.append(
            Question(
                question=obj["question"],
                answers=_answer_list(obj.get("answer", obj.get("answers", [])), where),
                id=str(obj.get("id", lineno)),
                patterns=tuple(obj.get("patterns", ())),
            )
        )
    return out


def _tsv(path: Path) -> list[Question]:
    out = []
    for lineno, line in enumerate(utf8_lines(path), start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        parts = line.split("\t")
        where = f"{path}: line {lineno}"
        if len(parts) < 2:
            raise UserError(f"{where}: expected 'question<TAB>[answers]'")
        raw = parts[1].strip()
        try:
            answers = json.loads(raw)
        except json.JSONDecodeError:
            try:  # DPR's own files write Python list literals: ['a', "b's"]
                answers = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                raise UserError(f"{where}: answers {raw[:60]!r} are not a list") from None
        out.append(Question(question=parts[0], answers=_answer_list(answers, where), id=str(lineno)))
    return out


def read_questions(path: str | os.PathLike, require_answers: bool = True) -> list[Question]:
    """Read a question file in any supported format (see the module doc).

    Raises :class:`UserError` for a missing or empty file, an unknown format, an empty question,
    or (with ``require_answers``) a question without gold answers.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: " + ("a directory, not a question file" if path.is_dir()
                                       else "no such file"))
    name = path.name.lower()
    if name.endswith(".jsonl"):
        questions = _jsonl(path)
    elif name.endswith((".tsv", ".csv", ".txt")):
        questions = _tsv(path)
    elif name.endswith(".json"):
        data = load_json(path)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            questions = _squad(path, data)
        elif isinstance(data, list):
            questions = _json_list(path, data)
        else:
            raise UserError(f"{path}: unknown question format (not SQuAD, WebQuestions or DPR JSON)")
    else:
        raise UserError(f"{path}: unknown question format (use .json, .jsonl or .tsv)")
    if not questions:
        raise UserError(f"{path}: no questions in file")
    for i, q in enumerate(questions):
        if not isinstance(q.question, str) or not q.question.strip():
            raise UserError(f"{path}: question {i} (id {q.id!r}) is empty")
        if require_answers and not q.answers and not q.patterns:
            raise UserError(f"{path}: question {i} (id {q.id!r}) has no gold answers")
    return questions


def dev_subset(dev: Sequence[T], limit: int, sample: str = "random", seed: int = 0) -> list[T]:
    """The dev questions an evaluation answers: all (``limit`` 0), the first ``limit``, or
    ``limit`` drawn at random (seeded) and kept in file order. ``dev`` may hold anything that
    stands for the questions (their positions, say)."""
    if not limit or limit >= len(dev):
        return list(dev)
    if sample == "first":
        return list(dev[:limit])
    return [dev[i] for i in sorted(random.Random(seed).sample(range(len(dev)), limit))]
