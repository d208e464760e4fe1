"""The hot loop issues at most one small collective per optimiser step (DDP back-end), whatever the
accumulation, in both phases, and reads the device once (the agreed flags); the losses stay on the device
until a log step."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from hpc_sr.config import load_config
from hpc_sr.dist.env import DistEnv
from hpc_sr.train.trainer import Trainer
from tests.conftest import tiny_overrides


@pytest.fixture
def one_rank_group(tmp_path: Path):  # noqa: ANN201
    """A real gloo process group of world size 1, torn down afterwards."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_one_all_reduce_per_step(
    one_rank_group: None, tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grad_accum: int
) -> None:
    over = tiny_overrides(
        tiny_shards,
        tmp_path,
        steps=4,
        pretrain=2,
        **{"train.grad_accum": grad_accum, "log.tensorboard": "false"},
    )
    trainer = Trainer(load_config(None, over), DistEnv(), torch.device("cpu"), resume="never")
    calls: list[str] = []
    real = dist.all_reduce

    def counting(tensor: torch.Tensor, *args: object, **kwargs: object) -> object:
        calls.append(f"all_reduce{tuple(tensor.shape)}")
        return real(tensor, *args, **kwargs)

    for name in ("all_reduce", "broadcast", "all_gather", "barrier", "reduce_scatter"):
        if name != "all_reduce":
            monkeypatch.setattr(dist, name, lambda *a, _n=name, **k: calls.append(_n))
    monkeypatch.setattr(dist, "all_reduce", counting)
    for phase in ("pretrain", "gan"):
        calls.clear()
        res = trainer.train_step(phase)
        assert calls == ["all_reduce(3,)"], (phase, calls)
        assert not res.skipped and all(isinstance(v, torch.Tensor) for v in res.losses.values())


HOST_READS = ("__bool__", "__float__", "__int__", "__index__", "item", "tolist")


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_one_host_read_per_step(
    one_rank_group: None, tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grad_clip: float
) -> None:
    """Every read of a tensor's value into Python from the project's own code is counted: on a GPU each one
    stops the CPU from queueing kernels. Non-finite gradients are agreed with the loss flags, not read."""
    over = tiny_overrides(tiny_shards, tmp_path, steps=4, pretrain=2,
                          **{"train.grad_accum": 2, "train.grad_clip": grad_clip, "log.tensorboard": "false"})
    trainer = Trainer(load_config(None, over), DistEnv(), torch.device("cpu"), resume="never")
    reads: list[str] = []
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def counting(self: torch.Tensor, *a: object, _real: object = real, _name: str = name,
                     **k: object) -> object:
            caller = sys._getframe(1).f_code.co_filename
            if "/hpc_sr/" in caller:
                reads.append(f"{_name} in {Path(caller).name}:{sys._getframe(1).f_lineno}")
            return _real(self, *a, **k)  # type: ignore[operator]

        monkeypatch.setattr(torch.Tensor, name, counting)
    for phase in ("pretrain", "gan"):
        reads.clear()
        res = trainer.train_step(phase)
        assert len(reads) == 1 and reads[0].startswith("tolist in step.py"), (phase, reads)
        assert not res.skipped and all(isinstance(v, torch.Tensor) for v in res.grad_norms.values())


def test_infinite_gradients_from_a_finite_loss_skip_the_step_everywhere(
    one_rank_group: None, tiny_shards: Path, tmp_path: Path
) -> None:
    trainer = Trainer(
        load_config(None, tiny_overrides(tiny_shards, tmp_path, **{"log.tensorboard": "false"})),
        DistEnv(),
        torch.device("cpu"),
        resume="never",
    )
    g = trainer.backend.module("g")
    before = {k: v.clone() for k, v in g.state_dict().items()}
    hook = next(g.parameters()).register_hook(lambda grad: grad * float("inf"))  # finite loss, inf gradient
    res = trainer.train_step("pretrain")
    hook.remove()
    assert res.skipped and res.losses == {}
    assert all(torch.equal(before[k], g.state_dict()[k]) for k in before)  # no NaN written, no update
    assert not trainer.train_step("pretrain").skipped  # and the next step trains


def test_a_poisoned_step_is_skipped_by_the_same_collective(
    one_rank_group: None, tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPC_SR_FAULT_NAN_STEPS", "1")
    trainer = Trainer(
        load_config(None, tiny_overrides(tiny_shards, tmp_path, **{"log.tensorboard": "false"})),
        DistEnv(),
        torch.device("cpu"),
        resume="never",
    )
    before = {k: v.clone() for k, v in trainer.backend.module("g").state_dict().items()}
    res = trainer.train_step("pretrain")
    assert res.skipped
    after = trainer.backend.module("g").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no update from a NaN step
    assert all(p.grad is None for p in trainer.backend.module("g").parameters())
