"""Corpus readers: every format gives the same rows; bad files raise UserError naming file and row."""

from __future__ import annotations

import json

import pytest

from rag.common.errors import UserError
from retriever.corpus import CorpusConfig, iter_passages, load_corpus, split_words

pytestmark = pytest.mark.usefixtures("private_tempdir")


def rows(dataset) -> list[dict]:
    return [dict(r) for r in dataset]


@pytest.mark.parametrize("fixture", ["corpus_tsv", "corpus_jsonl"])
def test_tsv_and_jsonl_read_exactly(fixture, request, passages, tmp_path):
    ds = load_corpus(request.getfixturevalue(fixture), tmp_path / "p.arrow")
    assert rows(ds) == passages
    assert ds.column_names == ["id", "title", "text"]


def test_tsv_unquotes_doubled_quotes(corpus_tsv, tmp_path):
    raw = corpus_tsv.read_text()
    assert '""hello, world""' in raw  # the fixture really exercises csv quoting
    ds = load_corpus(corpus_tsv, tmp_path / "p.arrow")
    text = ds[[r["id"] for r in ds].index("python")]["text"]
    assert text.endswith('prints "hello, world".')


def test_tsv_quoted_field_with_tab_and_newline(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text('id\ttext\ttitle\n1\t"a\tb ""c""\nd"\tT\n2\tplain\tU\n')
    assert list(iter_passages(path)) == [
        {"id": "1", "title": "T", "text": 'a\tb "c"\nd'},
        {"id": "2", "title": "U", "text": "plain"},
    ]


def test_squad_json_paragraphs(corpus_squad, passages, tmp_path):
    ds = load_corpus(corpus_squad, tmp_path / "p.arrow")
    expected = [{"id": f"{i}-0", "title": p["title"], "text": p["text"]}
                for i, p in enumerate(passages)]
    assert rows(ds) == expected  # underscores in titles -> spaces, whitespace collapsed


def test_result_is_memory_mapped_arrow(corpus_tsv, tmp_path):
    arrow = tmp_path / "sub" / "passages.arrow"
    ds = load_corpus(corpus_tsv, arrow)
    assert [f["filename"] for f in ds.cache_files] == [str(arrow)]
    assert arrow.is_file()
    assert not [p for p in arrow.parent.iterdir() if ".tmp-" in p.name]


def test_default_arrow_path_is_a_fresh_temporary_file(corpus_jsonl, private_tempdir):
    files = [f["filename"] for f in load_corpus(corpus_jsonl).cache_files]
    assert len(files) == 1 and files[0].startswith(str(private_tempdir))


def test_split_words_into_100_word_passages(tmp_path):
    words = [f"w{i}" for i in range(250)]
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": "doc", "title": "T", "text": "  ".join(words)}) + "\n"
                    + json.dumps({"id": "short", "text": "just four words here"}) + "\n")
    ds = load_corpus(path, tmp_path / "p.arrow", CorpusConfig(passage_words=100))
    assert list(ds["id"]) == ["doc_0", "doc_1", "doc_2", "short_0"]
    assert ds["text"][0] == " ".join(words[:100])
    assert ds["text"][1] == " ".join(words[100:200])
    assert ds["text"][2] == " ".join(words[200:])
    assert list(ds["title"]) == ["T", "T", "T", ""]
    assert ds["text"][3] == "just four words here"


def test_split_words_edge_cases():
    assert split_words("a b c d", 2) == ["a b", "c d"]
    assert split_words("a b c", 5) == ["a b c"]


def test_small_batches_stream_all_rows(corpus_jsonl, passages, tmp_path):
    ds = load_corpus(corpus_jsonl, tmp_path / "p.arrow", CorpusConfig(batch_rows=3))
    assert rows(ds) == passages


# ---------------------------------------------------------------- errors
def check_error(path, *fragments) -> str:
    """Load ``path`` expecting a UserError whose message names the file and holds ``fragments``."""
    with pytest.raises(UserError) as info:
        load_corpus(path, path.parent / "out" / "p.arrow")
    msg = str(info.value)
    assert str(path) in msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_missing_file(tmp_path):
    check_error(tmp_path / "nope.tsv", "no such file")


def test_unknown_extension(tmp_path):
    path = tmp_path / "c.xml"
    path.write_text("x")
    check_error(path, "unknown corpus format")
    check_error(tmp_path, "not one written by datasets' save_to_disk")


def datasets_forms(passages, tmp_path) -> dict:
    """The same passages as a Parquet file (columns in another order, with an extra column), a
    save_to_disk directory, a one-split DatasetDict directory and an in-memory Dataset."""
    from datasets import Dataset, DatasetDict

    table = Dataset.from_list([{"text": p["text"], "extra": 1, "id": p["id"], "title": p["title"]}
                               for p in passages])
    table.to_parquet(str(tmp_path / "c.parquet"))
    table.save_to_disk(str(tmp_path / "saved"))
    DatasetDict({"train": table}).save_to_disk(str(tmp_path / "dict"))
    return {"parquet": tmp_path / "c.parquet", "saved": tmp_path / "saved",
            "dict": tmp_path / "dict", "in-memory": table}


def test_datasets_forms_read_exactly(passages, tmp_path):
    from retriever.corpus import corpus_digest

    forms = datasets_forms(passages, tmp_path / "forms")
    for name, source in forms.items():
        ds = load_corpus(source, tmp_path / name / "p.arrow", CorpusConfig(batch_rows=3))
        assert rows(ds) == passages, name
    digests = {name: corpus_digest(source) for name, source in forms.items()}
    assert len(set(digests.values())) == 4
    (forms["saved"] / "extra.txt").write_text("changed")
    assert corpus_digest(forms["saved"]) != digests["saved"]


def test_datasets_forms_bad_input(passages, tmp_path):
    from datasets import Dataset, DatasetDict

    def dataset_error(dataset, *fragments):
        with pytest.raises(UserError) as info:
            load_corpus(dataset, tmp_path / "out" / "p.arrow")
        assert all(f in str(info.value) for f in ("dataset", *fragments)), info.value

    no_text = Dataset.from_list([{"id": "1", "body": "x"}])
    dataset_error(no_text, "no 'text' column", "id, body")
    no_text.to_parquet(str(tmp_path / "no-text.parquet"))
    check_error(tmp_path / "no-text.parquet", "no-text.parquet", "no 'text' column")
    empty = Dataset.from_list([{"id": "1", "text": "fine"}, {"id": "2", "text": None}])
    dataset_error(empty, "row 2", "passage '2' has an empty text")
    (tmp_path / "bad.parquet").write_text("not parquet")
    check_error(tmp_path / "bad.parquet", "bad.parquet", "not a readable Parquet file")
    split = Dataset.from_list([{"id": "1", "text": "x"}])
    DatasetDict({"a": split, "b": split}).save_to_disk(str(tmp_path / "two"))
    check_error(tmp_path / "two", "splits ['a', 'b']", "give one split's directory")


@pytest.mark.parametrize("name,content,fragment", [
    ("c.tsv", "id\ttext\ttitle\n", "no passages"),
    ("c.tsv", "", "empty file"),
    ("c.jsonl", "\n\n", "no passages"),
    ("c.json", '{"data": []}', "no passages"),
])
def test_empty_corpus(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_text(content)
    check_error(path, fragment)
    assert not (tmp_path / "out" / "p.arrow").exists()


def test_tsv_row_with_missing_field(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("id\ttext\ttitle\n1\tfine\tT\n2\tno title here\n")
    check_error(path, "line 3", "2 field(s), expected 3")


def test_tsv_header_without_text_column(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("id\tbody\n1\tx\n")
    check_error(path, "text")


def test_jsonl_missing_field_and_bad_json(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "1", "text": "ok"}\n{"id": "2"}\n')
    check_error(path, "line 2", "'text'")
    path.write_text('{"id": "1", "text": "ok"}\n\n{"id": "2", "text": \n')
    check_error(path, "line 3", "invalid JSON")


def test_squad_paragraph_without_context(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"data": [{"title": "A", "paragraphs": [{"context": "x"}, {}]}]}))
    check_error(path, "data[0].paragraphs[1]", "context")


@pytest.mark.parametrize("name", ["c.tsv", "c.jsonl"])
def test_non_utf8_byte_names_its_line(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".tsv"):
        good = [b"id\ttext\ttitle\n", b"1\tok\tT\n", b"2\talso ok\tT\n"]
        bad = b"3\tcaf\xe9\tT\n"
    else:
        good = [b'{"id": "1", "text": "ok"}\n', b'{"id": "2", "text": "ok"}\n', b"\n"]
        bad = b'{"id": "3", "text": "caf\xe9"}\n'
    path.write_bytes(b"".join(good) + bad + good[-1])
    check_error(path, "line 4", "0xe9", "UTF-8")


def test_non_utf8_squad(tmp_path):
    path = tmp_path / "c.json"
    path.write_bytes(b'{"data": [{"title": "caf\xe9", "paragraphs": []}]}')
    check_error(path, "UTF-8")


@pytest.mark.parametrize("name,content,where", [
    ("c.tsv", "id\ttext\ttitle\na\tone\tT\nb\ttwo\tT\na\tthree\tT\n", "line 4"),
    ("c.jsonl", '{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "line 2"),
])
def test_duplicate_ids(tmp_path, name, content, where):
    path = tmp_path / name
    path.write_text(content)
    check_error(path, where, "duplicate passage id 'a'")


@pytest.mark.parametrize("name,content,where", [
    ("c.tsv", "id\ttext\ttitle\na\tone\tT\nb\t   \tT\n", "line 3"),
    ("c.jsonl", '{"id": "a", "text": "x"}\n{"id": "b", "text": ""}\n', "line 2"),
    ("c.json", json.dumps({"data": [{"paragraphs": [{"context": " \n "}]}]}), "data[0].paragraphs[0]"),
])
def test_empty_text(tmp_path, name, content, where):
    path = tmp_path / name
    path.write_text(content)
    check_error(path, where, "empty text")


def test_empty_id(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("id\ttext\ttitle\n\tsome text\tT\n")
    check_error(path, "line 2", "empty passage id")


def test_failed_read_leaves_no_partial_file(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "text": "t"}) + "\n" for i in range(50))
                    + '{"id": "0", "text": "dup"}\n')
    out = tmp_path / "out"
    with pytest.raises(UserError, match="line 51"):
        load_corpus(path, out / "p.arrow", CorpusConfig(batch_rows=7))
    assert list(out.iterdir()) == []
