"""transformers' RAG checkpoints in and out (rag.hf_rag), against transformers itself.

The models are tiny and random, built here with transformers: a DPR question/context pair and a
BART warm-started from the same tiny BERT (one WordPiece vocabulary). The corpus is made so that
every generator input has the same number of tokens and ``max_input_length`` is exactly that:
transformers' RAG-Sequence ``generate`` ignores the context attention mask and its retriever pads
to ``max_combined_length``, so only unpadded, untruncated inputs can give the same answers.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from generator.inputs import passage_inputs
from rag.common.errors import UserError
from rag.config import DecodeConfig, RagConfig
from rag.model import RagModel
from retriever.batch_encode import EncodeConfig
from retriever.build import BuildConfig, build_index
from retriever.encoder import Encoder
from retriever.index import DenseIndex

QUESTIONS = ["who is the paris", "where is the river", "what is the capital"]  # one token a word
ANSWERS = ["einstein", "paris france", "the sea"]
MODES = {"sequence": "RagSequenceForGeneration", "token": "RagTokenForGeneration"}


@pytest.fixture(scope="module")
def uniform(tmp_path_factory, dpr_pair_dirs):
    """(corpus JSONL, input length, index dir): 8 passages of one title word and 8 text words."""
    from tests.conftest import vocab_words

    words = [w for w in vocab_words() if len(w) > 2 and w.isalpha()]
    tmp = tmp_path_factory.mktemp("uniform")
    rows = [{"id": f"p{i}", "title": words[i], "text": " ".join(words[8 + 5 * i + j] for j in range(8))}
            for i in range(8)]
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    index_dir = tmp / "index"
    build_index(corpus, Encoder.from_pretrained(str(dpr_pair_dirs[0])), index_dir,
                BuildConfig(encode=EncodeConfig(progress=False)))
    return index_dir


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, dpr_pair_dirs, rag_generator_dir):
    """{mode: a transformers RAG checkpoint directory} of the DPR question encoder + tiny BART."""
    import transformers
    from transformers import AutoTokenizer, BartForConditionalGeneration, DPRQuestionEncoder, RagTokenizer

    out = {}
    for mode, cls_name in MODES.items():
        q = DPRQuestionEncoder.from_pretrained(str(dpr_pair_dirs[1]))
        g = BartForConditionalGeneration.from_pretrained(str(rag_generator_dir))
        config = transformers.RagConfig.from_question_encoder_generator_configs(
            q.config, g.config, n_docs=3, max_combined_length=input_length(rag_generator_dir))
        path = tmp_path_factory.mktemp(f"hf-{mode}")
        getattr(transformers, cls_name)(config, question_encoder=q, generator=g).save_pretrained(path)
        RagTokenizer(question_encoder=AutoTokenizer.from_pretrained(str(dpr_pair_dirs[1])),
                     generator=AutoTokenizer.from_pretrained(str(rag_generator_dir))
                     ).save_pretrained(path)
        out[mode] = path
    return out


def input_length(generator_dir) -> int:
    """Tokens of every generator input of the uniform corpus (all alike by construction)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(generator_dir))
    from generator.inputs import format_generator_input

    return len(tok(format_generator_input("word", " ".join(["word"] * 8), QUESTIONS[0]))["input_ids"])


def hf_model(path, mode):
    import transformers

    return getattr(transformers, MODES[mode]).from_pretrained(str(path)).eval()


@pytest.mark.parametrize("mode", ["sequence", "token"])
def test_transformers_checkpoint_loads_with_the_same_likelihoods_and_answers(hf_dirs, uniform, mode):
    ours = RagModel.from_pretrained(hf_dirs[mode], uniform, num_beams=2, copy_spans=False).eval()
    assert (ours.config.mode, ours.config.k) == (mode, 3)
    hf = hf_model(hf_dirs[mode], mode)
    with torch.no_grad():
        doc_scores, result = ours.retrieve(QUESTIONS)
        inputs = passage_inputs(ours.tokenizer, QUESTIONS, result.passages,
                                ours.config.max_input_length)[0]
        assert bool(inputs["attention_mask"].all())  # unpadded, as the module doc asks
        # transformers' question encoder and p(z|x) on the same passages
        q_ids = ours.question_encoder.tokenize(QUESTIONS)
        q = hf.question_encoder(**q_ids)[0]
        d = torch.from_numpy(ours.index.vectors(result.rows.reshape(-1))).view(3, 3, -1)
        torch.testing.assert_close(doc_scores, torch.bmm(q.unsqueeze(1), d.transpose(1, 2)).squeeze(1),
                                   atol=1e-5, rtol=0)
        b, k, length = inputs["input_ids"].shape
        ref = hf(context_input_ids=inputs["input_ids"].view(b * k, length),
                 context_attention_mask=inputs["attention_mask"].view(b * k, length),
                 doc_scores=doc_scores, labels=ours.labels(ANSWERS), n_docs=k,
                 reduce_loss=False).loss
        torch.testing.assert_close(ours.loss(QUESTIONS, ANSWERS)[1], ref, atol=1e-5, rtol=0)
        sequences = hf.generate(context_input_ids=inputs["input_ids"].view(b * k, length),
                                context_attention_mask=inputs["attention_mask"].view(b * k, length),
                                doc_scores=doc_scores, n_docs=k, num_beams=2,
                                max_length=ours.config.decode.max_length, min_length=0,
                                length_penalty=1.0, early_stopping=False)
    want = ours.tokenizer.batch_decode(sequences, skip_special_tokens=True)
    assert [a.answer for a in ours.answer(QUESTIONS)] == [w.strip() for w in want]


def test_export_loads_in_transformers_with_the_same_passages_and_answers(dpr_pair_dirs, uniform,
                                                                       rag_generator_dir, tmp_path):
    from transformers import RagRetriever, RagSequenceForGeneration, RagTokenizer

    from generator.model import load_generator
    from rag.hf_rag import export

    generator, tokenizer = load_generator(rag_generator_dir)
    config = RagConfig(mode="sequence", k=5, max_input_length=input_length(rag_generator_dir),
                       decode=DecodeConfig(num_beams=2), copy_spans=False, index=str(uniform))
    ours = RagModel(Encoder.from_pretrained(str(dpr_pair_dirs[1])), generator, tokenizer,
                    DenseIndex.load(uniform), config, pair=True).eval()
    ours.index.remove([ours.retrieve(QUESTIONS[:1])[1].passages[0][1]["id"]])  # hot-swapped out
    out = export(ours, tmp_path / "exported")
    assert json.loads((out / "ragqa_export.json").read_text())["passages"] == 7
    retriever = RagRetriever.from_pretrained(str(out))
    hf = RagSequenceForGeneration.from_pretrained(str(out), retriever=retriever).eval()
    hf_tok = RagTokenizer.from_pretrained(str(out))
    enc = hf_tok.question_encoder(QUESTIONS, return_tensors="pt", padding=True)
    with torch.no_grad():
        q = hf.question_encoder(**enc)[0]
        found = retriever(enc["input_ids"].numpy(), q.numpy(), n_docs=5, return_tensors="pt")
        sequences = hf.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                num_beams=2, max_length=config.decode.max_length, min_length=0,
                                length_penalty=1.0, early_stopping=False)
    passages = retriever.index.dataset
    hf_ids = [[passages[int(r)]["id"] for r in row] for row in found["doc_ids"]]
    _, result = ours.retrieve(QUESTIONS)
    assert hf_ids == [[p["id"] for p in ps] for ps in result.passages]
    answers = hf_tok.generator.batch_decode(sequences, skip_special_tokens=True)
    assert [a.answer for a in ours.answer(QUESTIONS)] == [x.strip() for x in answers]


def test_what_transformers_cannot_represent_is_refused(make_rag, tmp_path):
    from rag.hf_rag import check_exportable

    model = make_rag()  # the tiny BERT question encoder with [CLS] pooling: exportable as DPR
    check_exportable(model)
    for overrides, fragment in [({"constrain": "spans"}, "--constrain none"),
                                ({"mode": "closed_book"}, "closed_book"),
                                ({"score_scale": 5.0}, "score scale")]:
        with pytest.raises(UserError, match=fragment):
            check_exportable(make_rag(**overrides))
    model.question_encoder.config = model.question_encoder.config.__class__(pooling="mean")
    with pytest.raises(UserError, match="mean pooling"):
        check_exportable(model)


def test_damaged_transformers_checkpoints_are_one_clear_error(hf_dirs, tmp_path):
    from rag.hf_rag import load

    truncated = tmp_path / "truncated"
    shutil.copytree(hf_dirs["sequence"], truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="model.safetensors: cannot be loaded"):
        load(truncated)
    bad_field = tmp_path / "bad-field"
    shutil.copytree(hf_dirs["sequence"], bad_field)
    config = json.loads((bad_field / "config.json").read_text())
    config["question_encoder"] = "not a config"
    (bad_field / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="config.json: cannot be loaded"):
        load(bad_field)
