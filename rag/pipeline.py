"""RAG end to end: retrieve with the question encoder, generate with BART, answer with provenance.

p(z|x) is the softmax of the retriever's scores of the top-k passages (Lewis et al. 2020, Sec. 2.2):
inner products between the question embedding and the passage vectors, plus with hybrid retrieval
the normalised BM25 score (``retriever.fusion``). Passages are found by ``retriever.search.Retriever``,
the one retrieval path. The passage vectors come from the (fixed) index, and the question
embedding is computed with gradient, so the RAG loss trains the question encoder through the dense
term of the document scores, as in the paper. ``mode="closed_book"`` is the baseline without retrieval:
the generator reads the question alone (RAG-Sequence with one empty passage is plain BART).

A model directory (written by :meth:`RagModel.save_pretrained`, read by ``from_pretrained``)::

    rag_config.json      mode, k, lengths, decoding, the index it was trained with, and the
                         retrieval settings ("retrieval": retriever.fusion.RetrievalConfig)
    question_encoder/    retriever.encoder.Encoder directory (paired with the index's encoder);
                         may be left out when rag_config.json names an untrained encoder instead
    generator/           BART directory (safetensors)

Glossary: B questions, K passages per question, L generator input length, T answer length,
D retriever dimension.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn

from generator.copy import has_copy_head
from generator.inputs import build_generator_inputs, generator_input_strings, pointer_targets
from generator.model import load_generator, save_generator
from rag.common.atomic import atomic_directory
from rag.common.errors import UserError, fraction, positive, require
from retriever.encoder import Encoder
from retriever.fusion import RetrievalConfig
from retriever.index import DenseIndex, SearchResult
from retriever.search import Retriever, check_questions
from retriever.shards import load_index

from .constrain import CONSTRAINTS
from .decode import DecodeConfig, rag_sequence_generate, rag_token_generate
from .marginal import rag_loss

log = logging.getLogger(__name__)
MODES = ("sequence", "token", "closed_book")
CONFIG_NAME = "rag_config.json"


@dataclass(frozen=True)
class RagConfig:
    mode: str = "sequence"  # "sequence" (RAG-Sequence), "token" (RAG-Token) or "closed_book"
    k: int = 5  # passages retrieved per question
    max_input_length: int = 256  # generator tokens per "title / text // question" input
    max_answer_length: int = 24  # longest generated answer in tokens (decoder start included)
    num_beams: int = 4  # beam width; 1 = greedy
    decoding: str = "thorough"  # RAG-Sequence: "thorough" or "fast"; ignored by RAG-Token
    label_smoothing: float = 0.0  # epsilon of label smoothing in the training loss
    index: str = ""  # index directory the model was trained with (default for --index)
    question_encoder: str = ""  # question encoder to start from (default: the index's encoder),
    # paired with the index explicitly (DPR's twins); also what a model dir without question_encoder/ loads
    doc_score_scale: float = 0.0  # p(z|x) = softmax(scale * q . d) over the k passages; 0 = 20 for
    # L2-normalised question encoders (cosine scores, nearly uniform over k without a scale; 20
    # is sentence-transformers' training scale, and train_retriever's), else 1 (DPR inner products)
    pointer_weight: float = 1.0  # copy generators: weight of the supervised-pointing loss (the
    # pointer at answer step t pulled to the answer's t-th token in each passage that contains it)
    constrain: str = "none"  # "spans": answers may only be stretches of the generator input
    # (passage title, text or question) followed by EOS (rag.constrain); any generator
    copy_spans: bool = True  # an answer whose tokens occur in a retrieved passage is returned as
    # that stretch of the passage (its casing, spacing and punctuation: "Levi's Stadium", not
    # "levi ' s stadium"); False returns the detokenised tokens as they are

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"mode {self.mode!r} is not one of {MODES}")
        if self.decoding not in ("thorough", "fast"):
            raise UserError(f"decoding {self.decoding!r} is not 'thorough' or 'fast'")
        if self.k <= 0:
            raise UserError(f"k must be a positive number of passages, got {self.k}")
        if self.constrain not in CONSTRAINTS:
            raise UserError(f"constrain {self.constrain!r} is not one of {CONSTRAINTS}")
        if self.constrain == "spans" and self.mode == "closed_book":
            raise UserError("constrain 'spans' needs passages to copy from; closed_book has none")
        if not self.pointer_weight >= 0 or self.pointer_weight == float("inf"):
            raise UserError(f"pointer_weight must be a finite number >= 0, got {self.pointer_weight}")
        if self.doc_score_scale < 0:
            raise UserError(f"doc_score_scale must be >= 0 (0 = automatic), got {self.doc_score_scale}")
        positive(self, "max_input_length", "num_beams")
        require(isinstance(self.max_answer_length, int) and self.max_answer_length >= 3,
                "max_answer_length", self.max_answer_length,
                "must be at least 3 (start symbol, one answer token, EOS)")
        fraction(self, "label_smoothing", below_one=True)


@dataclass
class Answer:
    """An answer and where it came from: the passages (id, title, text, score) it was generated
    from, best first; ``score`` is log p(y|x) (RAG-Sequence) or the search score (RAG-Token)."""

    question: str
    answer: str
    score: float
    passages: list[dict]


def fit_passages(tokenizer, questions: list[str], titles: list[list[str]],
                 texts: list[list[str]], max_length: int) -> list[list[str]]:
    """Cut passage texts (at a token boundary) so that title, text *and question* fit max_length.

    transformers' RAG truncates the joined string from the right, which drops the question when
    the passage is long; trimming the passage instead keeps the input format and the question.
    """
    flat = [t for row in texts for t in row]
    enc = tokenizer(flat, add_special_tokens=False, return_offsets_mapping=True)
    q_len = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    t_len = tokenizer([t for row in titles for t in row], add_special_tokens=False)["input_ids"]
    out, i = [], 0
    for b, row in enumerate(texts):
        kept = []
        for _ in row:
            budget = max(8, max_length - q_len[b] - len(t_len[i]) - 8)  # 8: separators, specials
            offsets = enc["offset_mapping"][i]
            kept.append(flat[i] if len(offsets) <= budget else flat[i][: offsets[budget - 1][1]])
            i += 1
        out.append(kept)
    return out


def copy_span(tokenizer, answer_ids: list[int], passages: list[dict]) -> str | None:
    """The passage text the answer tokens were copied from, or None.

    Searches the passages in order (best first), text before title, for ``answer_ids`` (without
    special tokens) as a contiguous run of the passage's own tokens, and cuts the original string
    at that run's character offsets. Needs a fast tokenizer (offsets); None without one.
    """
    if not answer_ids or not getattr(tokenizer, "is_fast", False):
        return None
    n = len(answer_ids)
    for p in passages:
        for field_name in ("text", "title"):
            source = p.get(field_name) or ""
            enc = tokenizer(source, add_special_tokens=False, return_offsets_mapping=True)
            ids = enc["input_ids"]
            for i in range(len(ids) - n + 1):
                if ids[i : i + n] == answer_ids:
                    offsets = enc["offset_mapping"]
                    return source[offsets[i][0] : offsets[i + n - 1][1]]
    return None


class RagModel(nn.Module):
    """Question encoder + index + BART generator, in one of the modes of :class:`RagConfig`."""

    def __init__(self, question_encoder: Encoder | None, generator, tokenizer,
                 index: DenseIndex | None, config: RagConfig = RagConfig(),
                 retrieval: RetrievalConfig | None = None, pair: bool = False):
        super().__init__()
        self.question_encoder = question_encoder
        self.generator = generator
        self.tokenizer = tokenizer
        self.index = index
        self.config = config
        self.pointer_stats = {"answers": 0, "not_found": 0}  # supervised pointing, this process
        self.retriever: Retriever | None = None
        if config.mode != "closed_book":
            if index is None or question_encoder is None:
                raise UserError(f"mode {config.mode!r} needs an index and a question encoder")
            self.retriever = Retriever(question_encoder, index, retrieval or RetrievalConfig(),
                                       pair=pair)
            self.retriever.check_k(config.k)
            if self.retriever.mode == "hybrid" and self.retriever.fusion.fusion == "rrf":
                raise UserError("--fusion rrf only ranks passages; RAG's p(z|x) needs scores: use "
                                "--fusion linear")

    def forward(self, questions: list[str], answers: list[str],
                passages: list[tuple[str, str]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss (what accelerate/DDP call): see :meth:`loss`."""
        return self.loss(questions, answers, passages)

    # --------------------------------------------------------------- inputs
    def retrieve(self, questions: list[str], k: int | None = None,
                 ) -> tuple[torch.Tensor, SearchResult]:
        """Doc scores (B, K) float, the logits of p(z|x): ``score_scale`` times the retriever's
        scores, with gradient into the question encoder while grad is enabled; and the passages."""
        scores, result = self.retriever.search(questions, k or self.config.k,
                                               grad=torch.is_grad_enabled())
        return self.score_scale * scores, result

    @property
    def score_scale(self) -> float:
        """The factor on q . d in p(z|x) (see ``RagConfig.doc_score_scale``)."""
        return self.question_encoder.score_scale(self.config.doc_score_scale)

    def generator_inputs(self, questions: list[str], result: SearchResult | None
                         ) -> dict[str, torch.Tensor]:
        """Tokenised "title / text // question" inputs (B, K, L) (closed book: (B, 1, L))."""
        if result is None:
            enc = self.tokenizer(questions, max_length=self.config.max_input_length,
                                 truncation=True, padding=True, return_tensors="pt")
            return {key: enc[key][:, None, :] for key in ("input_ids", "attention_mask")}
        return self._passage_inputs(questions, result.passages)

    def _passage_inputs(self, questions: list[str], passages: list[list[dict]]
                        ) -> dict[str, torch.Tensor]:
        """Inputs (B, K, L) for K passage dicts (``title``, ``text``) per question."""
        titles, texts = self._fitted(questions, passages)
        return build_generator_inputs(self.tokenizer, questions, titles, texts,
                                      self.config.max_input_length, pad_to_max_length=False)

    def _fitted(self, questions: list[str], passages: list[list[dict]]
                ) -> tuple[list[list[str]], list[list[str]]]:
        """(B, K) titles and texts, the texts cut to fit the generator input (fit_passages)."""
        titles = [[p["title"] for p in row] for row in passages]
        texts = [[p["text"] for p in row] for row in passages]
        return titles, fit_passages(self.tokenizer, questions, titles, texts,
                                    self.config.max_input_length)

    def _pointer_targets(self, questions: list[str], answers: list[str], passages: list[list[dict]],
                         labels: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, K, T-1) supervised-pointing targets (generator.inputs.pointer_targets); counts the
        answers found in no passage in ``self.pointer_stats``."""
        titles, texts = self._fitted(questions, passages)
        strings = generator_input_strings(questions, titles, texts)
        n_start = 1 + (getattr(self.generator.generation_config, "forced_bos_token_id", None)
                       is not None)
        targets = pointer_targets(self.tokenizer, strings, answers, labels.cpu(), input_ids.cpu(),
                                  n_start)
        found = targets.ge(0).flatten(1).any(dim=1)  # (B,)
        self.pointer_stats["answers"] += len(answers)
        self.pointer_stats["not_found"] += int((~found).sum())
        if not found.all():
            log.debug("pointer loss: %d of %d answers found in no passage, skipped",
                      int((~found).sum()), len(answers))
        return targets.to(labels.device)

    def labels(self, answers: list[str]) -> torch.Tensor:
        """Decoder targets (B, T): start symbol [+ forced BOS], answer tokens, EOS, right-padded."""
        gen = self.generator.generation_config
        start = [gen.decoder_start_token_id]
        if getattr(gen, "forced_bos_token_id", None) is not None:
            start.append(gen.forced_bos_token_id)
        body = self.tokenizer(answers, add_special_tokens=False, truncation=True,
                              max_length=self.config.max_answer_length - len(start) - 1)["input_ids"]
        seqs = [start + ids + [gen.eos_token_id] for ids in body]
        width = max(len(s) for s in seqs)
        pad = self.generator.config.pad_token_id
        return torch.tensor([s + [pad] * (width - len(s)) for s in seqs])  # (B, T)

    def _prepare(self, questions: list[str], given: list[tuple[str, str]] | None = None
                 ) -> tuple[dict, torch.Tensor, SearchResult | None]:
        """Generator inputs, doc scores and search result; ``given`` (one ``(title, text)`` per
        question) replaces retrieval with that single passage, p(z|x) = 1."""
        questions = check_questions(questions)
        device = next(self.generator.parameters()).device
        doc_scores, result = torch.zeros(len(questions), 1), None
        if given is not None:
            inputs = self._passage_inputs(questions, [[{"title": t, "text": x}] for t, x in given])
        else:
            if self.config.mode != "closed_book":
                doc_scores, result = self.retrieve(questions)
            inputs = self.generator_inputs(questions, result)
        return ({k: v.to(device) for k, v in inputs.items()}, doc_scores.to(device), result)

    # ------------------------------------------------------------- training
    def loss(self, questions: list[str], answers: list[str],
             passages: list[tuple[str, str]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """RAG NLL: ``(mean loss, per-question NLL (B,))`` (Lewis et al. 2020, Eqs. 1-2).

        ``passages`` (one ``(title, text)`` per question) replaces retrieval with that single
        given passage, p(z|x) = 1: the generator trains as a reader on it and the question
        encoder gets no gradient (a reader warm-up on gold passages).
        """
        inputs, doc_scores, result = self._prepare(questions, passages)
        labels = self.labels(answers).to(doc_scores.device)
        mode = "sequence" if self.config.mode == "closed_book" else self.config.mode
        targets = None
        sources = ([[{"title": t, "text": x}] for t, x in passages] if passages is not None
                   else None if result is None else result.passages)
        if has_copy_head(self.generator) and self.config.pointer_weight > 0 and sources:
            targets = self._pointer_targets(questions, answers, sources, labels,
                                            inputs["input_ids"])
        return rag_loss(mode, self.generator, inputs["input_ids"], inputs["attention_mask"],
                        doc_scores, labels, epsilon=self.config.label_smoothing,
                        pointer_targets=targets, pointer_weight=self.config.pointer_weight)

    # ------------------------------------------------------------- decoding
    @torch.no_grad()
    def answer(self, questions: str | list[str], num_beams: int | None = None,
               passages: list[tuple[str, str]] | None = None, batch_size: int = 0
               ) -> Answer | list[Answer]:
        """Answer a question (a string: one :class:`Answer`) or several (a list: a list), each with
        the passages it was generated from, best first.

        ``batch_size`` answers that many questions at a time (0: all at once). ``num_beams``
        overrides the model's beam width. ``passages`` (one ``(title, text)`` per question)
        replaces retrieval with that single given passage (reading mode; its ``id`` is ``""`` and
        its ``score`` 0).
        """
        if isinstance(questions, str):
            return self.answer([questions], num_beams, passages, batch_size)[0]
        if batch_size < 0:
            raise UserError(f"batch_size must be >= 0, got {batch_size}")
        if 0 < batch_size < len(questions):
            return [a for start in range(0, len(questions), batch_size)
                    for a in self.answer(questions[start : start + batch_size], num_beams,
                                         None if passages is None
                                         else passages[start : start + batch_size])]
        inputs, doc_scores, result = self._prepare(questions, passages)
        if result is not None:
            sources = result.passages
        elif passages is not None:
            sources = [[{"id": "", "title": t, "text": x, "score": 0.0}] for t, x in passages]
        else:  # closed book
            sources = [[] for _ in questions]
        constrain = self.config.constrain if (result is not None or passages is not None) else "none"
        cfg = DecodeConfig(num_beams=num_beams or self.config.num_beams,
                           max_length=self.config.max_answer_length, constrain=constrain)
        if self.config.mode == "token":
            out = rag_token_generate(self.generator, inputs["input_ids"],
                                     inputs["attention_mask"], doc_scores, cfg)
        else:
            out = rag_sequence_generate(self.generator, inputs["input_ids"],
                                        inputs["attention_mask"], doc_scores, cfg,
                                        fast=self.config.decoding == "fast")
        texts = self.tokenizer.batch_decode(out.sequences[:, 0], skip_special_tokens=True)
        if self.config.copy_spans:
            special = set(self.tokenizer.all_special_ids)
            for b, seq in enumerate(out.sequences[:, 0].tolist()):
                span = copy_span(self.tokenizer, [t for t in seq if t not in special], sources[b])
                texts[b] = span if span is not None else texts[b]
        return [Answer(question=q, answer=t.strip(), score=float(s), passages=sources[b])
                for b, (q, t, s) in enumerate(zip(questions, texts, out.scores[:, 0].tolist(),
                                                  strict=True))]

    # ------------------------------------------------------------ save/load
    def save_pretrained(self, out_dir: str | os.PathLike, extra_files: dict[str, str] | None = None,
                        half: bool = False, question_backbone_from: str | None = None) -> None:
        """Write the model directory (see module doc) atomically, plus any ``extra_files``.

        ``half`` stores the weights in float16 (half the size; loading restores float32).
        ``question_backbone_from`` stores the question encoder's backbone as a reference to that
        model instead of weights (``Encoder.save_pretrained``'s ``backbone_from``).
        """
        with atomic_directory(out_dir) as tmp:
            retrieval = RetrievalConfig()
            if self.retriever is not None:
                self.retriever.save_question_encoder(tmp / "question_encoder", half=half,
                                                     backbone_from=question_backbone_from)
                retrieval = self.retriever.config
            save_generator(self.generator, self.tokenizer, tmp / "generator",
                           dtype=torch.float16 if half else None)
            (tmp / CONFIG_NAME).write_text(json.dumps(
                {**asdict(self.config), "retrieval": retrieval.saved()}, indent=2))
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike | None = None,
                        index: DenseIndex | str | None = None,
                        retrieval: RetrievalConfig | None = None, **overrides) -> RagModel:
        """Load a model: the starter shipped with the package (no ``model_dir``), one of our
        model directories, or a transformers RAG checkpoint (``rag.hf_rag``).

        ``index`` (object or directory) defaults to the one the model was trained with, and for the
        starter to the embedded corpus (indexed on first use and cached, ``rag.default``).
        ``retrieval`` overrides the saved retrieval settings where it sets a field
        (``RetrievalConfig.over``); ``overrides`` change :class:`RagConfig` fields, e.g. ``k=10``.
        """
        if model_dir is None:
            from . import default

            if not (default.MODEL / CONFIG_NAME).is_file():
                raise UserError(f"no starter model in {default.MODEL}; pass a model directory")
            model_dir = default.MODEL
            index = default.default_index() if index is None else index
        model_dir = Path(model_dir)
        if not (model_dir / CONFIG_NAME).is_file():
            from .hf_rag import is_transformers_rag

            if is_transformers_rag(model_dir):
                return cls._from_transformers(model_dir, index, retrieval, **overrides)
            raise UserError(f"{model_dir}: not a RAG model directory (no {CONFIG_NAME}, and not a "
                            "transformers RAG checkpoint)")
        config_file = model_dir / CONFIG_NAME
        try:
            saved = json.loads(config_file.read_text())
            known = {f.name for f in fields(RagConfig)}
            config = RagConfig(**{k: v for k, v in saved.items() if k in known})
        except (ValueError, AttributeError) as err:  # bad JSON, or not an object
            raise UserError(f"{config_file}: not a valid RAG config ({type(err).__name__})") from None
        except TypeError as err:  # a field of the wrong type, caught by a comparison in the checks
            raise UserError(f"{config_file}: a field has the wrong type ({err})") from None
        except UserError as err:
            raise UserError(f"{config_file}: {err}") from None
        config = replace(config, **overrides)
        try:
            saved_retrieval = RetrievalConfig(**saved.get("retrieval", {}))
        except (TypeError, AttributeError, UserError) as err:
            raise UserError(f"{config_file}: bad retrieval settings ({err})") from None
        retrieval = (retrieval or RetrievalConfig()).over(saved_retrieval)
        generator, tokenizer = load_generator(model_dir / "generator")
        if config.mode == "closed_book":
            return cls(None, generator, tokenizer, None, config)
        if index is None or isinstance(index, str | os.PathLike):
            path = index or config.index
            if not path:
                raise UserError(f"{model_dir}: no index recorded; pass an index directory")
            index = load_index(path, mmap=retrieval.mmap)
        q_dir = model_dir / "question_encoder"
        if not q_dir.is_dir() and not config.question_encoder:
            raise UserError(f"{model_dir}: no question_encoder/ and no question_encoder in config")
        if q_dir.is_dir():
            return cls(Encoder.from_pretrained(str(q_dir)), generator, tokenizer, index, config, retrieval)
        # the encoder named in the config was paired with the index by the user (check_question_encoder)
        return cls(Encoder.from_pretrained(config.question_encoder), generator, tokenizer, index,
                   config, retrieval, pair=True)

    @classmethod
    def _from_transformers(cls, model_dir: Path, index: DenseIndex | str | None,
                           retrieval: RetrievalConfig | None, **overrides) -> RagModel:
        """A transformers RAG checkpoint (``rag.hf_rag``) with ``index``, paired explicitly."""
        from .hf_rag import load

        q_enc, generator, tokenizer, fields = load(model_dir)
        config = RagConfig(**{**fields, **overrides})
        if index is None or isinstance(index, str | os.PathLike):
            if not (index or config.index):
                raise UserError(f"{model_dir}: a transformers RAG checkpoint brings no index of "
                                "ours: pass one (--index DIR)")
            config = replace(config, index=str(index or config.index))
            index = load_index(config.index, mmap=bool(retrieval and retrieval.mmap))
        return cls(q_enc, generator, tokenizer, index, config, retrieval, pair=True)

