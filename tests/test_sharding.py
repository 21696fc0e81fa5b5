"""FSDP2, activation checkpointing, sharded checkpoints and LoRA in plain PyTorch, without Ray:
two real processes on the gloo backend (what ``train.strategy=fsdp`` runs in each Ray Train
worker on CPU)."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from components.config import LoraConfig, LossConfig
from components.training import sharding
from components.training.models import build_scorer
from components.training.optim import Schedule, Updater
from components.training.step import train_step


def _batches(n: int, size: int = 16, batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 255, (batch, 3, size, size), dtype=torch.uint8, generator=g),
             torch.randint(0, 255, (batch, 3, size, size), dtype=torch.uint8, generator=g))
            for _ in range(n)]


def test_shard_units_are_the_blocks_of_each_scorer():
    bn = build_scorer("bn-cnn")
    units = sharding.shard_units(bn)
    assert units == [m for m in bn.features.children() if any(True for _ in m.parameters())]
    assert len(units) == 6 and bn.head not in units  # the head stays with the root
    prompt = build_scorer("prompt-bn-cnn")
    assert len(sharding.shard_units(prompt)) == 6
    r18 = sharding.shard_units(build_scorer("resnet18"))
    assert len(r18) == 8 and all(type(u).__name__ == "BasicBlock" for u in r18)


def test_activation_checkpointing_gives_the_same_gradients_and_batchnorm_statistics():
    torch.manual_seed(0)
    plain = build_scorer("bn-cnn")
    ckpt = copy.deepcopy(plain)
    assert sharding.checkpoint_activations(sharding.shard_units(ckpt)) == 6
    assert list(ckpt.state_dict()) == list(plain.state_dict())  # same keys: same checkpoints
    x = torch.randn(4, 3, 16, 16)
    plain(x).sum().backward()
    ckpt(x).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    # The recomputation in backward does not update the running statistics a second time.
    for name, a in plain.state_dict().items():
        torch.testing.assert_close(a, ckpt.state_dict()[name], msg=name)


def test_lora_trains_adapters_and_merges_into_a_plain_scorer():
    from components.training.lora import apply_lora, merge_lora, trainable_share

    torch.manual_seed(0)
    base = build_scorer("bn-cnn")
    model = apply_lora(copy.deepcopy(base), LoraConfig(r=2, alpha=4.0))
    trainable, total = trainable_share(model)
    assert 0 < trainable < total - sum(p.numel() for p in base.features.parameters()) + trainable
    assert all(p.requires_grad == ("lora_" in n or n.startswith("head.")) for n, p in
               model.named_parameters())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for c, r in _batches(3):
        train_step(model, opt, c, r, LossConfig(), torch.device("cpu"))
    x = torch.randn(4, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    merged = merge_lora(model)
    assert list(merged.state_dict()) == list(base.state_dict())  # a plain bn-cnn again
    plain = build_scorer("bn-cnn")
    plain.load_state_dict(merged.state_dict())
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(plain(x), base.eval()(x))  # it did learn something


def test_lora_names_an_unknown_target():
    from components.training.lora import apply_lora

    with pytest.raises(ValueError, match="matches no Linear or Conv layer"):
        apply_lora(build_scorer("bn-cnn"), LoraConfig(r=2, target_modules=["q_proj"]))


# --- two processes ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, strategy: str, out: str, ckpt_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_scorer("bn-cnn")
        dev = torch.device("cpu")
        if strategy == "fsdp":
            sharding.fully_shard_model(model, dev)
        else:
            model = nn.parallel.DistributedDataParallel(model)
        updater = Updater(model, Schedule(lr=3e-3))
        losses = []
        for c, r in _batches(6, batch=8, seed=1):  # each rank takes its half of each batch
            half = slice(rank * 4, rank * 4 + 4)
            m = train_step(model, updater, c[half], r[half], LossConfig(), dev)
            loss = m["loss"].clone()
            dist.all_reduce(loss)
            losses.append(loss.item() / world)
        report = sharding.memory_report(model, updater.optimizer)
        if strategy == "fsdp":
            sharding.save_sharded(ckpt_dir, model, updater.optimizer)
        torch.save({"losses": losses, "memory": report}, os.path.join(out, f"{strategy}-{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _spawn(strategy: str, tmp_path, world: int = 2) -> list[dict]:
    mp.spawn(_worker, args=(world, _free_port(), strategy, str(tmp_path), str(tmp_path / "ckpt")),
             nprocs=world, join=True)
    return [torch.load(tmp_path / f"{strategy}-{r}.pt") for r in range(world)]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    return _spawn("ddp", tmp), _spawn("fsdp", tmp), tmp


@pytest.mark.slow  # two spawned processes with gloo (about 30 s)
def test_fsdp_and_ddp_follow_the_same_loss_curve(two_process_runs):
    ddp, fsdp, _ = two_process_runs
    assert len(ddp[0]["losses"]) == 6
    torch.testing.assert_close(torch.tensor(fsdp[0]["losses"]), torch.tensor(ddp[0]["losses"]),
                               atol=1e-4, rtol=1e-4)
    assert ddp[0]["losses"][-1] != ddp[0]["losses"][0]  # the curve is a curve


@pytest.mark.slow  # two spawned processes with gloo (about 30 s)
def test_each_fsdp_rank_holds_half_of_the_parameters_and_optimizer_state(two_process_runs):
    ddp, fsdp, _ = two_process_runs
    total = ddp[0]["memory"]["memory/params_total"]
    assert ddp[0]["memory"]["memory/params_local"] == total
    assert ddp[0]["memory"]["memory/optimizer_state_local"] == 2 * total  # AdamW's moments
    for rank in fsdp:
        m = rank["memory"]
        assert m["memory/params_total"] == total
        # Each dim-0 shard is ceil(rows / 2): within a few rows of an exact half.
        assert 0.45 < m["memory/params_local"] / total < 0.55, m
        assert 0.45 < m["memory/optimizer_state_local"] / (2 * total) < 0.55, m
    assert sum(r["memory"]["memory/params_local"] for r in fsdp) == pytest.approx(total, rel=0.02)


@pytest.mark.slow  # two spawned processes with gloo (about 30 s)
def test_a_sharded_checkpoint_loads_whole_in_one_process(two_process_runs):
    """The driver reads the weights two ranks wrote (resharded to one process) and they are
    the weights the ranks trained: the same scores as a ddp replica of the same run."""
    _, _, tmp = two_process_runs
    model = build_scorer("bn-cnn")
    state = sharding.full_model_state(str(tmp / "ckpt"), model)
    assert set(state) == set(model.state_dict())
    assert not torch.equal(state["head.weight"], model.state_dict()["head.weight"])  # trained
    assert all(torch.isfinite(v.float()).all() for v in state.values())
