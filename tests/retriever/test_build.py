"""build_index resumes a killed build only from shards of the same corpus, encoder and settings."""

from __future__ import annotations

import numpy as np
import pytest

import retriever.batch_encode as encode_mod
from retriever.batch_encode import EncodeConfig
from retriever.build import BuildConfig, build_index
from retriever.encoder import Encoder

SMALL_SHARDS = BuildConfig(encode=EncodeConfig(shard_size=3, progress=False))


def vectors(index) -> np.ndarray:
    return np.stack([index.index.reconstruct(i) for i in range(len(index))])


def crash_after_first_shard(monkeypatch):
    real, calls = encode_mod.encode_texts, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt  # as a kill would, after one shard is on disk
        return real(*args, **kwargs)

    monkeypatch.setattr(encode_mod, "encode_texts", flaky)


def test_a_changed_corpus_after_a_crash_gives_a_fresh_correct_build(tiny_encoder_dir, passages,
                                                                    tmp_path, monkeypatch):
    encoder = Encoder.from_pretrained(str(tiny_encoder_dir))
    first, second = tmp_path / "a.tsv", tmp_path / "b.tsv"
    first.write_text("id\ttext\ttitle\n" + "".join(f"{p['id']}\t{p['text']}\t{p['title']}\n"
                                                   for p in passages))
    # same size, other texts: the stale shards would fit by shape
    second.write_text("id\ttext\ttitle\n" + "".join(f"{p['id']}\t{p['text'][::-1]}\t{p['title']}\n"
                                                    for p in passages))
    crash_after_first_shard(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        build_index(first, encoder, tmp_path / "idx", SMALL_SHARDS)
    assert (tmp_path / "idx.encoding" / "shard-00000.npy").is_file()
    monkeypatch.undo()
    got = build_index(second, encoder, tmp_path / "idx", SMALL_SHARDS)
    want = build_index(second, encoder, tmp_path / "fresh", SMALL_SHARDS)
    np.testing.assert_array_equal(vectors(got), vectors(want))
    assert not (tmp_path / "idx.encoding").exists()


def test_the_same_build_resumes_from_its_shards(tiny_encoder_dir, corpus_tsv, tmp_path, monkeypatch):
    encoder = Encoder.from_pretrained(str(tiny_encoder_dir))
    crash_after_first_shard(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus_tsv, encoder, tmp_path / "idx", SMALL_SHARDS)
    monkeypatch.undo()
    calls = []
    real = encode_mod.encode_texts
    monkeypatch.setattr(encode_mod, "encode_texts", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = build_index(corpus_tsv, encoder, tmp_path / "idx", SMALL_SHARDS)
    assert len(calls) == 2  # shards 2 and 3 of 3: the first was kept
    want = build_index(corpus_tsv, encoder, tmp_path / "fresh", SMALL_SHARDS)
    np.testing.assert_array_equal(vectors(got), vectors(want))


def test_stored_embeddings_are_indexed_without_encoding(tiny_encoder_dir, tiny_encoder_dir_16,
                                                        passages, tmp_path, monkeypatch):
    """A RagRetriever custom dataset (title, text, embeddings; no id) indexes as it is: ids are
    row numbers, the vectors are the stored ones, and another encoder's vectors are refused."""
    from datasets import Dataset

    from rag.common.errors import UserError
    from retriever.batch_encode import encode_texts

    quiet = EncodeConfig(progress=False)
    encoder = Encoder.from_pretrained(str(tiny_encoder_dir))
    vectors = encode_texts(encoder, [p["text"] for p in passages], [p["title"] for p in passages],
                           quiet).astype(np.float16)  # stored at half precision
    Dataset.from_dict({"title": [p["title"] for p in passages], "text": [p["text"] for p in passages],
                       "embeddings": list(vectors)}).save_to_disk(str(tmp_path / "psgs"))
    calls = []
    import retriever.build as build_mod

    monkeypatch.setattr(build_mod, "encode_corpus", lambda *a, **k: calls.append(1))
    index = build_index(tmp_path / "psgs", encoder, tmp_path / "idx",
                        BuildConfig(encode=quiet, use_embeddings=True))
    assert not calls  # nothing encoded beyond the sample check
    assert list(index.passages["id"]) == [str(i) for i in range(len(passages))]
    np.testing.assert_array_equal(index.vectors(np.arange(len(passages))), vectors.astype(np.float32))
    with pytest.raises(UserError, match=r"row \d is not encoder .*cosine"):
        build_index(tmp_path / "psgs", Encoder.from_pretrained(str(tiny_encoder_dir), pooling="mean"),
                    tmp_path / "idx-mean", BuildConfig(encode=quiet, use_embeddings=True))
    with pytest.raises(UserError, match="dimension 16"):
        build_index(tmp_path / "psgs", Encoder.from_pretrained(str(tiny_encoder_dir_16)),
                    tmp_path / "idx-16", BuildConfig(encode=quiet, use_embeddings=True))
    with pytest.raises(UserError, match="no 'embeddings' column"):
        Dataset.from_list(passages).save_to_disk(str(tmp_path / "plain"))
        build_index(tmp_path / "plain", encoder, tmp_path / "idx-plain",
                    BuildConfig(encode=quiet, use_embeddings=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "plain", "psgs"]
