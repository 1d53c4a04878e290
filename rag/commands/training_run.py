"""What the two training commands (``ragqa finetune``, ``ragqa train-retriever``) share: their
question files, the directory they write, their log, and the checks made on those before any work
starts."""

from __future__ import annotations

from dataclasses import dataclass, field

from rag.common.artefact import Kind, check_output_dir, check_paths
from rag.common.atomic import check_output_parent
from rag.common.options import NON_NEGATIVE, check_fields, option
from rag.common.questions import Question, read_questions


@dataclass(frozen=True)
class TrainingRun:
    train: str = field(metadata={"help": (
        "training questions: SQuAD JSON, DPR JSON or JSON lines (finetune needs their answers, "
        "train-retriever their gold passages)")})
    out: str = field(metadata={"help": (
        "directory to write the trained model to; checkpoints go to <out>.checkpoint/, and a "
        "killed run rerun with the same command resumes from them")})
    dev: str | None = option(None, "dev questions, evaluated during training")
    train_limit: int = option(0, "train on the first N questions only; 0 = all", within=NON_NEGATIVE)
    overwrite: bool = option(False, "replace an existing --out written by ragqa")
    json: str | None = option(None, "write the training log here")

    def __post_init__(self) -> None:
        check_fields(self)

    def check_outputs(self, kind: Kind, inputs: dict[str, str | None] | None = None,
                      outputs: dict[str, str | None] | None = None) -> None:
        """Refuse, before any work, an --out that is not our ``kind`` to replace (or is there
        without --overwrite), a --json that cannot be written, and outputs (these two and
        ``outputs``) that land on an input (--train, --dev and ``inputs``) or on each other."""
        check_paths({"--train": self.train, "--dev": self.dev, **(inputs or {})},
                    {"--out": self.out, "--json": self.json, **(outputs or {})})
        if self.json:
            check_output_parent(self.json)
        check_output_dir(self.out, self.overwrite, kind)

    def questions(self, offset: int = 0) -> tuple[list[Question], list[Question] | None]:
        """The training questions (from ``offset`` on, at most --train_limit of them) and the dev
        questions (None without --dev)."""
        train = read_questions(self.train)[offset:]
        if self.train_limit > 0:
            train = train[: self.train_limit]
        return train, read_questions(self.dev) if self.dev else None
