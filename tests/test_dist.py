"""torchrun/DDP helpers: single-process fallbacks, environment checks, and a real 2-process gloo group."""
import os
import random
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ldae.engine import dist


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)


def test_single_process_without_torchrun(no_torchrun_env):
    env = dist.init_distributed("cpu")
    assert (env.rank, env.world_size, env.local_rank, env.device, env.is_main) == (0, 1, 0, torch.device("cpu"), True)
    assert not dist.is_distributed() and dist.is_main() and dist.get_rank() == 0 and dist.get_world_size() == 1
    x = torch.tensor([1.5, -2.0])
    assert torch.equal(dist.all_reduce_mean(x), x) and dist.all_reduce_mean(x) is not x
    assert torch.equal(dist.all_reduce_max(x), x)
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    dist.barrier()
    dist.destroy_distributed()


@pytest.mark.parametrize("env, msg", [
    ({"RANK": "2", "WORLD_SIZE": "2"}, "expected 0 <= RANK < WORLD_SIZE, got RANK=2, WORLD_SIZE=2"),
    ({"WORLD_SIZE": "two"}, "environment variable WORLD_SIZE='two' is not an integer"),
])
def test_bad_torchrun_environment_is_refused(no_torchrun_env, monkeypatch, env, msg):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=msg):
        dist.init_distributed("cpu")


def test_unknown_device_is_refused(no_torchrun_env):
    with pytest.raises(ValueError, match="device must be 'cuda' or 'cpu', got 'tpu'"):
        dist.init_distributed("tpu")


def test_seed_everything_offsets_by_rank():
    def draw():
        return torch.rand(3), random.random(), np.random.rand()

    assert dist.seed_everything(7, rank=0) == 7
    a = draw()
    assert dist.seed_everything(7, rank=1) == 8
    b = draw()
    dist.seed_everything(7, rank=0)
    c = draw()
    assert torch.equal(a[0], c[0]) and a[1:] == c[1:]
    assert not torch.equal(a[0], b[0]) and a[1] != b[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    env = dist.init_distributed("cpu")
    try:
        mean = dist.all_reduce_mean(torch.tensor([float(rank), 10.0 * rank]))
        top = dist.all_reduce_max(torch.tensor([float(rank), -float(rank)]))
        obj = dist.broadcast_object({"from": rank})
        buf = torch.full((2, 2), float(rank))
        dist.broadcast_tensors([buf])
        dist.barrier()
        out[rank] = dict(rank=env.rank, world=env.world_size, distributed=dist.is_distributed(), main=dist.is_main(),
                         mean=mean.tolist(), top=top.tolist(), obj=obj, buf=buf.tolist())
    finally:
        dist.destroy_distributed()


def test_two_gloo_processes():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        res = dict(out)
    for r in (0, 1):
        assert res[r]["rank"] == r and res[r]["world"] == 2 and res[r]["distributed"]
        assert res[r]["main"] == (r == 0)
        assert res[r]["mean"] == [0.5, 5.0]
        assert res[r]["top"] == [1.0, 0.0]
        assert res[r]["obj"] == {"from": 0}
        assert res[r]["buf"] == [[0.0, 0.0], [0.0, 0.0]]
