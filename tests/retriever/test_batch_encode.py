"""Batch encoding: order is kept; corpus encoding resumes after a crash and splits across processes."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset

import retriever.batch_encode as encode_mod
from rag.common.errors import UserError
from retriever.batch_encode import EncodeConfig, encode_corpus, encode_texts
from retriever.encoder import Encoder

QUIET = EncodeConfig(batch_size=2, shard_size=3, progress=False)


@pytest.fixture(scope="module")
def encoder(tiny_encoder_dir) -> Encoder:
    return Encoder.from_pretrained(str(tiny_encoder_dir))


@pytest.fixture(scope="module")
def table(passages) -> Dataset:
    """Ten passages (four shards of 3, 3, 3 and 1 rows with ``shard_size=3``)."""
    extra = [{"id": "x1", "title": "", "text": "a"}, {"id": "x2", "title": "Moon", "text": "the moon"}]
    rows = passages + extra
    return Dataset.from_dict({k: [r[k] for r in rows] for k in ("id", "title", "text")})


@pytest.fixture(scope="module")
def texts(table) -> list[str]:
    return list(table["text"])


def test_encode_texts_keeps_input_order(encoder, passages):
    texts = [p["text"] for p in passages] + ["Paris", "a much longer question about the river nile"]
    titles = [p["title"] for p in passages] + ["", "Nile"]
    for with_titles in (False, True):
        t = titles if with_titles else None
        batched = encode_texts(encoder, texts, t, QUIET)
        alone = np.concatenate([encode_texts(encoder, [x], [t[i]] if t else None, QUIET)
                                for i, x in enumerate(texts)])
        assert batched.dtype == np.float32 and batched.shape == (len(texts), 32)
        np.testing.assert_allclose(batched, alone, atol=1e-5, rtol=0)
    # titles matter: passage vectors are not question vectors
    assert not np.allclose(encode_texts(encoder, texts, titles, QUIET),
                           encode_texts(encoder, texts, None, QUIET))


def test_encode_texts_leaves_training_mode(encoder):
    encoder.train()
    encode_texts(encoder, ["paris"], config=QUIET)
    assert encoder.training
    encoder.eval()


def test_unknown_dtype_is_a_user_error():
    with pytest.raises(UserError, match="'fp8'"):
        EncodeConfig(dtype="fp8")


class Spy:
    """Wraps ``encode_texts``: records the first text of each call, can fail on call number ``fail_on``."""

    def __init__(self, fail_on: int | None = None):
        self.calls: list[str] = []
        self.fail_on = fail_on

    def __call__(self, encoder, texts, titles=None, config=QUIET, desc="", bar=None):
        self.calls.append(texts[0])
        if len(self.calls) == self.fail_on:
            raise RuntimeError("killed")
        return encode_texts(encoder, texts, titles, config, desc, bar)


def test_encode_corpus_equals_one_pass(encoder, table, texts, tmp_path):
    full = encode_corpus(encoder, table, tmp_path / "w", QUIET)
    direct = encode_texts(encoder, texts, list(table["title"]), QUIET)
    np.testing.assert_allclose(full, direct, atol=1e-5, rtol=0)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [
        *(f"shard-{i:05d}.npy" for i in range(4)), "vectors.npy"]  # the shards, then all of them
    assert isinstance(full, np.memmap) and not full.flags.writeable


def test_encode_corpus_resumes_after_failure(encoder, table, texts, tmp_path, monkeypatch):
    reference = encode_corpus(encoder, table, tmp_path / "ref", QUIET)
    shard_starts = [texts[i] for i in (0, 3, 6, 9)]

    failing = Spy(fail_on=2)
    monkeypatch.setattr(encode_mod, "encode_texts", failing)
    with pytest.raises(RuntimeError, match="killed"):
        encode_corpus(encoder, table, tmp_path / "w", QUIET)
    assert failing.calls == shard_starts[:2]
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["shard-00000.npy"]  # no partial file

    resumed = Spy()
    monkeypatch.setattr(encode_mod, "encode_texts", resumed)
    got = encode_corpus(encoder, table, tmp_path / "w", QUIET)
    assert resumed.calls == shard_starts[1:]  # only the shards not yet on disk
    np.testing.assert_array_equal(got, reference)

    again = Spy()
    monkeypatch.setattr(encode_mod, "encode_texts", again)
    np.testing.assert_array_equal(encode_corpus(encoder, table, tmp_path / "w", QUIET), reference)
    assert again.calls == []


def test_encode_corpus_redoes_a_damaged_shard(encoder, table, texts, tmp_path, monkeypatch):
    reference = encode_corpus(encoder, table, tmp_path / "w", QUIET)
    (tmp_path / "w" / "shard-00002.npy").write_bytes(b"truncated")
    np.save(tmp_path / "w" / "shard-00003.npy", np.zeros((2, 32), np.float32))  # wrong shape
    spy = Spy()
    monkeypatch.setattr(encode_mod, "encode_texts", spy)
    np.testing.assert_array_equal(encode_corpus(encoder, table, tmp_path / "w", QUIET), reference)
    assert spy.calls == [texts[6], texts[9]]


class FakeAccelerator:
    """The three attributes encode_corpus uses; ``at_barrier`` runs when this process waits."""

    def __init__(self, rank: int, world: int, at_barrier=None):
        self.process_index, self.num_processes = rank, world
        self.is_main_process = rank == 0
        self.at_barrier = at_barrier
        self.waited = 0

    def wait_for_everyone(self) -> None:
        self.waited += 1
        if self.at_barrier is not None:
            self.at_barrier()


def test_encode_corpus_splits_shards_between_processes(encoder, table, texts, tmp_path, monkeypatch):
    reference = encode_corpus(encoder, table, tmp_path / "ref", QUIET)
    spies = {0: Spy(), 1: Spy()}
    results = {}

    def run_process_1():  # process 0 reaches the barrier first; process 1 then runs to its own
        monkeypatch.setattr(encode_mod, "encode_texts", spies[1])
        results[1] = encode_corpus(encoder, table, tmp_path / "w", QUIET, FakeAccelerator(1, 2))

    monkeypatch.setattr(encode_mod, "encode_texts", spies[0])
    acc0 = FakeAccelerator(0, 2, at_barrier=run_process_1)
    results[0] = encode_corpus(encoder, table, tmp_path / "w", QUIET, acc0)

    assert acc0.waited == 1
    assert spies[0].calls == [texts[0], texts[6]]  # shards 0 and 2
    assert spies[1].calls == [texts[3], texts[9]]  # shards 1 and 3
    np.testing.assert_array_equal(results[0], reference)
    assert results[1] is None  # only the main process indexes


def test_vectors_reach_the_host_in_few_copies(encoder, texts, monkeypatch):
    """Each copy to the host waits for the GPU: one per HOST_COPY_ROWS rows, not one per batch."""
    expected = encode_texts(encoder, texts, config=QUIET)
    copies = []
    real = encode_mod.to_numpy32
    monkeypatch.setattr(encode_mod, "to_numpy32", lambda x: copies.append(len(x)) or real(x))
    monkeypatch.setattr(encode_mod, "HOST_COPY_ROWS", 4)
    np.testing.assert_array_equal(encode_texts(encoder, texts, config=QUIET), expected)
    assert copies == [4, 4, 2]  # 10 texts in batches of 2
