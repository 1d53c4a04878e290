"""Training under bf16 autocast on the CPU, end to end: the scores that feed p(z|x), the hybrid's
top k and DPR's softmax stay float32 (rag.common.device.fp32_einsum), and training runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import retriever.train as dpr_mod
from rag.common.device import fp32_einsum
from rag.common.options import updated
from rag.common.questions import Question
from rag.model import RagModel
from rag.train import FinetuneConfig, finetune
from retriever.encoder import Encoder
from retriever.index import DenseIndex
from retriever.train import TrainConfig, train_dpr


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate keeps one process-wide state: mixed precision can only be chosen by the first
    Accelerator of a process, so these tests start from (and leave) a fresh one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_fp32_einsum_under_autocast_equals_full_precision():
    g = torch.Generator().manual_seed(0)
    q, docs = torch.randn(4, 64, generator=g), torch.randn(4, 5, 64, generator=g)
    exact = torch.einsum("bd,bcd->bc", q, docs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = torch.einsum("bd,bcd->bc", q, docs)
        ours = fp32_einsum("bd,bcd->bc", q, docs)
    assert half.dtype == torch.bfloat16  # what autocast alone does
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, exact, rtol=0, atol=0)


def test_finetune_in_bf16_keeps_doc_scores_fp32(make_rag, questions, tmp_path):
    train = [Question(question=q, answers=tuple(a), id=g) for q, a, g in questions]
    for retrieval in ("dense", "hybrid"):
        model = make_rag("sequence")
        if retrieval == "hybrid":
            if model.index.sparse is None:
                model.index.add_sparse()
            model.retriever.mode = "hybrid"
        seen = []
        real = RagModel.retrieve

        def retrieve(self, qs, k=None, real=real, seen=seen):
            scores, result = real(self, qs, k)
            seen.append((scores.dtype, torch.is_autocast_enabled("cpu")))
            return scores, result

        model.retrieve = retrieve.__get__(model)
        config = updated(FinetuneConfig(), epochs=1, batch_size=4, max_steps=2, save_every=100,
                         mixed_precision="bf16")
        finetune(model, train, tmp_path / retrieval, config)
        assert seen and all(s == (torch.float32, True) for s in seen), (retrieval, seen)
        assert (tmp_path / retrieval / "rag_config.json").is_file()


def test_train_retriever_in_bf16_scores_in_fp32(tiny_encoder_dir, rag_index_dir, questions,
                                                monkeypatch):
    index = DenseIndex.load(rag_index_dir)
    ctx_enc = Encoder.from_pretrained(index.manifest["encoder"]["name"])
    q_enc = Encoder.from_pretrained(index.manifest["encoder"]["name"])
    train = [Question(question=q, answers=tuple(a), id=g, positive_ids=(g,))
             for q, a, g in questions]
    seen = []
    real = F.cross_entropy

    def cross_entropy(scores, *args, **kwargs):
        seen.append(scores.dtype)
        return real(scores, *args, **kwargs)

    monkeypatch.setattr(dpr_mod.F, "cross_entropy", cross_entropy)
    config = updated(TrainConfig(), epochs=1, batch_size=4, hard_negatives=1,
                     mixed_precision="bf16")
    logs = train_dpr(q_enc, ctx_enc, index, train, config)
    # accelerate runs the encoder's forward under autocast; the loss scores its output in fp32
    assert seen and all(dtype == torch.float32 for dtype in seen), seen
    assert logs and all(entry["loss"] == entry["loss"] for entry in logs)  # not nan
