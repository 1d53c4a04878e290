"""Device and precision, resolved once per process (nanoGPT's preamble) and carried by the objects.

- :func:`resolve_device` turns ``--device auto|cpu|cuda|cuda:N`` into the device this process
  computes on. Under torchrun (``LOCAL_RANK`` set) "auto" and "cuda" mean the local rank's GPU,
  never GPU 0 for every rank.
- :func:`faiss_gpu` is the FAISS side of the same rule: the GPU of this process, and one
  ``StandardGpuResources`` for all its clones (each holds its own scratch memory and streams).
- :func:`fp32_einsum` computes scores that feed a softmax or a ranking (retrieval scores, p(z|x),
  DPR's logits) in float32 even under bf16/fp16 autocast, where a half-precision inner product
  times a scale of 20 has noise of the size of the gaps between the top passages.
- :func:`used_dtype` names the precision an encoding actually ran in, which is what gets recorded
  ("auto" is not a dtype: a resumed run must know what its earlier shards hold).

FAISS's GPU search returns at most :data:`FAISS_GPU_MAX_K` results per query; callers asking for
more search the CPU index instead (``retriever.index``).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass

import torch
from torch.ao.quantization import quantize_dynamic

from .errors import UserError
from .options import check_fields, option

FAISS_GPU_MAX_K = 2048  # faiss/gpu/utils/DeviceDefs.cuh: GPU_MAX_SELECTION_K
_SPEC = re.compile(r"auto|cpu|cuda(:\d+)?")


def local_rank() -> int:
    """This process's rank on its machine (torchrun's ``LOCAL_RANK``; 0 when alone)."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def resolve_device(spec: str = "auto") -> torch.device:
    """The device of this process for ``spec``.

    "auto": the local rank's GPU when CUDA is there, else the CPU. "cuda": the local rank's GPU
    (one GPU per process, as torchrun starts them). "cuda:N": that GPU. "cpu": the CPU.

    Raises :class:`UserError` for another spec, CUDA asked for where there is none, or a GPU
    number past the last.
    """
    if not isinstance(spec, str) or not _SPEC.fullmatch(spec):
        raise UserError(f'--device must be "auto", "cpu", "cuda" or "cuda:N", got {spec!r}')
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"--device {spec}: CUDA is not available on this machine")
    count = torch.cuda.device_count()
    index = int(spec.split(":")[1]) if ":" in spec else local_rank() % count
    if index >= count:
        raise UserError(f"--device {spec}: this machine has {count} GPU(s), cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


@dataclass(frozen=True)
class DeviceConfig:
    """Where a command computes: ``--device``, resolved once by :meth:`resolve`."""

    device: str = option("auto", 'torch device: "auto" (the local rank\'s GPU when CUDA is there, '
                         'else the CPU), "cpu", "cuda" (the local rank\'s GPU) or "cuda:N"')

    def __post_init__(self) -> None:
        check_fields(self)
        if not _SPEC.fullmatch(self.device):
            raise UserError(f'--device must be "auto", "cpu", "cuda" or "cuda:N", got {self.device!r}')

    def resolve(self) -> torch.device:
        return resolve_device(self.device)


def fp32_einsum(equation: str, *operands: torch.Tensor) -> torch.Tensor:
    """``torch.einsum(equation, *operands)`` in float32, autocast or not (module doc)."""
    device_type = operands[0].device.type
    with torch.autocast(device_type, enabled=False):
        return torch.einsum(equation, *(x.float() for x in operands))


def used_dtype(name: str, device: torch.device) -> str:
    """The precision an encoding with dtype setting ``name`` runs in on ``device``: "auto" is
    "bf16" on a GPU and "fp32" elsewhere; the others are themselves."""
    if name == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return name


_RESOURCES: dict = {}


def faiss_gpu(faiss) -> tuple[object, int] | None:
    """``(resources, gpu)`` for cloning FAISS indexes to this process's GPU, or None without
    faiss-gpu or a GPU. ``gpu`` is the local rank's (torchrun starts one process per GPU); the
    resources object is made once per process and shared by every clone."""
    if not hasattr(faiss, "StandardGpuResources"):
        return None
    count = faiss.get_num_gpus()
    if count < 1:
        return None
    gpu = local_rank() % count
    if gpu not in _RESOURCES:
        _RESOURCES[gpu] = faiss.StandardGpuResources()
    return _RESOURCES[gpu], gpu


def quantize_int8(*modules) -> None:
    """Dynamic int8 quantization, torch's own (``quantize_dynamic``), of every ``nn.Linear``
    inside ``modules``, in place: weights stored in int8, activations quantized per batch on the
    fly. For answering on the CPU; a quantized module no longer trains."""
    with warnings.catch_warnings():  # torch points at torchao, which this project does not need
        warnings.simplefilter("ignore")
        for module in modules:
            quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
