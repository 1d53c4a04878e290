"""Checkpoints across devices and processes: tensors saved on a GPU load on a CPU machine, and each
process resumes its own random state."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

import rag.common.checkpoint as ckpt_mod
from rag.common.checkpoint import load_checkpoint, restore_rng, save_checkpoint


def _as_saved_on_cuda(path: Path) -> None:
    """Rewrite a torch.save file so that its storages say they live on cuda:0 (what a GPU run
    writes): loading it without map_location fails on a machine without CUDA."""
    with zipfile.ZipFile(path) as z:
        data = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in data if n.endswith("data.pkl"))
    assert b"X\x03\x00\x00\x00cpu" in data[pkl]
    data[pkl] = data[pkl].replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, blob in data.items():
            z.writestr(name, blob)


def _training_state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    return model, opt, sched


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_checkpoint_saved_on_a_gpu_resumes_on_the_cpu(tmp_path):
    model, opt, sched = _training_state()
    save_checkpoint(tmp_path / "ckpt", lambda d: d.mkdir(), opt, sched, {"step": 1})
    for name in ("optimizer.pt", "rng.pt"):
        _as_saved_on_cuda(tmp_path / "ckpt" / name)
    with pytest.raises(RuntimeError, match="CUDA"):  # what a plain torch.load does
        torch.load(tmp_path / "ckpt" / "optimizer.pt", weights_only=True)
    _, fresh_opt, fresh_sched = _training_state()
    assert load_checkpoint(tmp_path / "ckpt", fresh_opt, fresh_sched)["step"] == 1
    state = next(iter(fresh_opt.state.values()))
    assert state["exp_avg"].device.type == "cpu"
    torch.testing.assert_close(state["exp_avg"], next(iter(opt.state.values()))["exp_avg"])
    restore_rng(tmp_path / "ckpt")


def test_each_process_resumes_its_own_random_state(tmp_path, monkeypatch):
    model, opt, sched = _training_state()
    states = []
    for seed in (11, 22):  # what two ranks would have gathered
        torch.manual_seed(seed)
        states.append(torch.get_rng_state())
    save_checkpoint(tmp_path / "ckpt", lambda d: d.mkdir(), opt, sched, {"step": 1},
                    rng={"torch": torch.stack(states)})
    draws = []
    for rank in (0, 1):
        monkeypatch.setattr(ckpt_mod, "world", lambda rank=rank: (rank, 2))
        restore_rng(tmp_path / "ckpt")
        draws.append(torch.rand(3))
    for seed, draw in zip((11, 22), draws, strict=True):
        torch.manual_seed(seed)
        torch.testing.assert_close(draw, torch.rand(3))
    assert not torch.equal(draws[0], draws[1])


def test_a_single_process_checkpoint_round_trips(tmp_path):
    model, opt, sched = _training_state()
    torch.manual_seed(5)
    save_checkpoint(tmp_path / "ckpt", lambda d: d.mkdir(), opt, sched, {"step": 1})
    expected = torch.rand(4)
    torch.manual_seed(99)
    restore_rng(tmp_path / "ckpt")
    torch.testing.assert_close(torch.rand(4), expected)
