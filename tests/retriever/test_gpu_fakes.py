"""GPU logic pinned on the CPU: a fake faiss-gpu that records where indexes are cloned and
enforces FAISS's GPU limit k <= 2048, and the device policy (rag.common.device) under torchrun."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rag.common.device as device_mod
from rag.common.device import FAISS_GPU_MAX_K, resolve_device, used_dtype
from rag.common.errors import UserError
from retriever.index import DenseIndex
from retriever.index_factory import IndexConfig, faiss

from .test_index import IDENTITY, brute_force, make_table, unit_vectors

pytestmark = pytest.mark.usefixtures("private_tempdir")


class FakeGpu:
    """What faiss-gpu would be given: resources made, (resources, device, fp16) of each clone."""

    def __init__(self, gpus: int):
        self.gpus, self.resources, self.clones = gpus, [], []

    def install(self, monkeypatch) -> None:
        fake = self

        class Resources:
            def __init__(self):
                fake.resources.append(self)

        class Options:
            useFloat16 = False

        class Clone:
            def __init__(self, index, device):
                self.index, self.device = index, device

            def search(self, queries, k):
                if k > FAISS_GPU_MAX_K:
                    raise RuntimeError(f"GPU FAISS: k={k} > {FAISS_GPU_MAX_K}")
                return self.index.search(queries, k)

        def index_cpu_to_gpu(resources, device, index, options=None):
            fake.clones.append((resources, device, bool(options and options.useFloat16)))
            return Clone(index, device)

        monkeypatch.setattr(faiss, "StandardGpuResources", Resources, raising=False)
        monkeypatch.setattr(faiss, "GpuClonerOptions", Options, raising=False)
        monkeypatch.setattr(faiss, "get_num_gpus", lambda: fake.gpus)
        monkeypatch.setattr(faiss, "index_cpu_to_gpu", index_cpu_to_gpu, raising=False)
        monkeypatch.setattr(device_mod, "_RESOURCES", {})


@pytest.fixture
def flat(tmp_path):
    vectors = unit_vectors(3000, seed=0)
    index = DenseIndex.build(vectors, make_table(tmp_path / "p.arrow", 3000), IDENTITY,
                             IndexConfig(index_type="flat"))
    return index, vectors


def test_each_rank_clones_to_its_own_gpu_with_one_resources_object(flat, monkeypatch):
    index, vectors = flat
    gpu = FakeGpu(gpus=4)
    gpu.install(monkeypatch)
    monkeypatch.setenv("LOCAL_RANK", "1")
    queries = np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32)
    scores, rows = index.search_knn(queries, 10)
    np.testing.assert_array_equal(rows, brute_force(queries, vectors, 10)[1])
    index._gpu_index = None  # a second clone (e.g. after a hot-swap) shares the resources
    index.search_knn(queries, 10)
    assert [c[1] for c in gpu.clones] == [1, 1]
    assert len(gpu.resources) == 1 and gpu.clones[0][0] is gpu.clones[1][0]


def test_k_past_the_gpu_limit_searches_on_the_cpu(flat, monkeypatch):
    index, vectors = flat
    FakeGpu(gpus=1).install(monkeypatch)
    queries = np.random.default_rng(2).standard_normal((3, 32)).astype(np.float32)
    for k in (1100, 2500):  # 1100 asks for 2200 while widening past ties
        scores, rows = index.search_knn(queries, k)
        exp_scores, exp_rows = brute_force(queries, vectors, k)
        np.testing.assert_allclose(scores, exp_scores, rtol=1e-5, atol=1e-5)
        assert (rows == exp_rows).mean() > 0.99  # float ties may order differently


def test_memory_mapped_index_is_never_cloned(flat, monkeypatch, tmp_path):
    index, _ = flat
    index.save(tmp_path / "idx")
    gpu = FakeGpu(gpus=1)
    gpu.install(monkeypatch)
    mapped = DenseIndex.load(tmp_path / "idx", mmap=True)
    mapped.search_knn(np.ones((1, 32), dtype=np.float32), 5)
    assert gpu.clones == []
    DenseIndex.load(tmp_path / "idx").search_knn(np.ones((1, 32), dtype=np.float32), 5)
    assert len(gpu.clones) == 1 and gpu.clones[0][2] is False


def test_fp16_clone_option(flat, monkeypatch, tmp_path):
    index, vectors = flat
    gpu = FakeGpu(gpus=1)
    gpu.install(monkeypatch)
    half = DenseIndex.build(vectors, index.passages, IDENTITY,
                            IndexConfig(index_type="flat", gpu_fp16=True))
    half.search_knn(np.ones((1, 32), dtype=np.float32), 5)
    assert gpu.clones[0][2] is True


# ------------------------------------------------------------------------------ device policy
def test_devices_under_torchrun(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cuda", 3)
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="4 GPU"):
        resolve_device("cuda:4")
    with pytest.raises(UserError, match="--device"):
        resolve_device("gpu")


def test_devices_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="CUDA is not available"):
        resolve_device("cuda")


def test_the_dtype_used_is_named():
    assert used_dtype("auto", torch.device("cpu")) == "fp32"
    assert used_dtype("auto", torch.device("cuda", 0)) == "bf16"
    assert used_dtype("fp16", torch.device("cpu")) == "fp16"


def test_an_encoding_records_the_dtype_it_ran_in(tiny_encoder_dir, corpus_jsonl):
    """A resumed build must not mix bf16 and fp32 shards: "auto" is recorded as what it was."""
    from retriever.build import BuildConfig, _recipe
    from retriever.encoder import Encoder

    recipe = _recipe(corpus_jsonl, Encoder.from_pretrained(str(tiny_encoder_dir)), BuildConfig())
    assert recipe["dtype"] == "fp32"
