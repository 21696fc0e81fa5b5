"""The fine-tuning controls of components/training/optim.py: fast, CPU, no Ray."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from components.training.optim import Schedule, Updater, head_prefixes_of, problems


class Net(nn.Module):
    """A backbone (``body``) and a head (``head``); BatchNorm optional (buffers for EMA)."""

    def __init__(self, bn: bool = False, dtype=torch.float64):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(4, 8)]
        if bn:
            layers.append(nn.BatchNorm1d(8))
        layers.append(nn.Tanh())
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(8, 1)
        self.to(dtype)

    def forward(self, x):
        return self.head(self.body(x)).squeeze(-1)


def make(seed: int = 0, bn: bool = False) -> Net:
    torch.manual_seed(seed)
    return Net(bn=bn)


def data(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


def mse(model, x, y):
    return ((model(x) - y) ** 2).mean()


def snapshot(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k.startswith(prefix)}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def step_once(up: Updater, model, x, y) -> None:
    while not up.update(mse(model, x, y)):
        pass


# --- learning-rate schedule ------------------------------------------------------------------

def test_warmup_then_cosine_follows_the_formula():
    peak, warm, total, floor = 0.5, 4, 20, 0.1
    model = make()
    up = Updater(model, Schedule(lr=peak, warmup_steps=warm, schedule="cosine",
                                 total_steps=total, min_lr_ratio=floor))
    x, y = data(8)
    seen = {}
    for i in range(26):
        seen[i] = (up.lrs()["lr/head"], up.optimizer.param_groups[-1]["lr"])
        step_once(up, model, x, y)

    def expected(i):
        if i < warm:
            return peak * i / warm
        t = min(1.0, (i - warm) / (total - warm))
        return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))

    for i in (0, 1, 2, 4, 8, 12, 19, 20, 25):
        reported, in_optimizer = seen[i]
        assert reported == pytest.approx(expected(i), abs=1e-12), i
        assert in_optimizer == pytest.approx(expected(i), abs=1e-12), i
    assert seen[0][1] == 0.0
    assert seen[warm][1] == pytest.approx(peak)
    assert seen[12][1] == pytest.approx(peak * (floor + (1 - floor) * 0.5))  # halfway down
    assert seen[25][1] == pytest.approx(peak * floor)                         # held at the floor


def test_constant_schedule_stays_after_warmup():
    model = make()
    up = Updater(model, Schedule(lr=0.01, backbone_lr=0.001, warmup_steps=2))
    x, y = data(8)
    lrs = []
    for _ in range(10):
        lrs.append(up.lrs())
        step_once(up, model, x, y)
    assert [r["lr/head"] for r in lrs[:3]] == pytest.approx([0.0, 0.005, 0.01])
    assert all(r["lr/head"] == pytest.approx(0.01) for r in lrs[2:])
    assert all(r["lr/backbone"] == pytest.approx(0.001) for r in lrs[2:])


# --- param groups ----------------------------------------------------------------------------

def test_backbone_and_head_groups_get_their_own_lr():
    model = make()
    up = Updater(model, Schedule(lr=1e-2, backbone_lr=1e-4, weight_decay=0.05))
    groups = {g["name"]: g for g in up.optimizer.param_groups}
    assert groups.keys() == {"backbone", "head"}
    assert groups["head"]["lr"] == 1e-2 and groups["backbone"]["lr"] == 1e-4
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in model.head.parameters()}
    assert {id(p) for p in groups["backbone"]["params"]} == {id(p) for p in model.body.parameters()}
    assert all(g["weight_decay"] == 0.05 for g in groups.values())
    assert up.lrs() == {"lr/backbone": 1e-4, "lr/head": 1e-2}

    same_lr = Updater(make(), Schedule(lr=3e-3))
    assert [g["lr"] for g in same_lr.optimizer.param_groups] == [3e-3, 3e-3]


@pytest.mark.parametrize("prefixes, groups", [(("nothing",), ["backbone"]), (("",), ["head"])])
def test_all_backbone_or_all_head_model_has_one_group(prefixes, groups):
    model = make()
    model.head_prefixes = prefixes
    up = Updater(model, Schedule(lr=1e-2, backbone_lr=1e-3, freeze_backbone_steps=1,
                                 warmup_steps=1, grad_clip=1.0))
    assert [g["name"] for g in up.optimizer.param_groups] == groups
    x, y = data(8)
    before = snapshot(model, "")
    for _ in range(3):
        step_once(up, model, x, y)
    assert not same(before, snapshot(model, ""))
    assert set(up.lrs()) == {"lr/backbone", "lr/head"}


def test_head_prefixes_seen_through_wrappers():
    model = make()
    model.head_prefixes = ("body.2", "head")
    assert head_prefixes_of(make()) == ("head",)
    assert head_prefixes_of(model) == ("body.2", "head")
    compiled = torch.compile(model)  # lazy: nothing is compiled until it is called
    assert head_prefixes_of(compiled) == ("body.2", "head")
    up = Updater(compiled, Schedule(lr=1e-2))
    assert set(up.weights()) == set(model.state_dict())


# --- freezing --------------------------------------------------------------------------------

def test_frozen_backbone_gets_no_update_not_even_weight_decay():
    model = make()
    up = Updater(model, Schedule(lr=1e-2, weight_decay=0.5, freeze_backbone_steps=3))
    x, y = data(16)
    body0, head_prev = snapshot(model, "body"), snapshot(model, "head")
    for step in range(1, 4):
        step_once(up, model, x, y)
        assert same(snapshot(model, "body"), body0), f"backbone moved at step {step}"
        head_now = snapshot(model, "head")
        assert not same(head_now, head_prev), f"head did not move at step {step}"
        head_prev = head_now
    step_once(up, model, x, y)
    assert up.steps == 4
    assert all(not torch.equal(v, body0[k]) for k, v in snapshot(model, "body").items())


# --- clipping --------------------------------------------------------------------------------

def _grads_at_step(up: Updater) -> list[list[torch.Tensor]]:
    seen: list[list[torch.Tensor]] = []

    def hook(opt, args, kwargs):
        seen.append([p.grad.detach().clone() for g in opt.param_groups for p in g["params"]
                     if p.grad is not None])

    up.optimizer.register_step_pre_hook(hook)
    return seen


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_grad_clip_bounds_the_norm_the_optimizer_sees(clip):
    model = make()
    up = Updater(model, Schedule(lr=1e-3, grad_clip=clip))
    seen = _grads_at_step(up)
    x, y = data(16)
    loss_scale = 100.0  # makes the raw norm far above the clip

    ref = copy.deepcopy(model)
    raw = torch.autograd.grad(loss_scale * mse(ref, x, y), list(ref.parameters()))
    raw_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw]))
    assert raw_norm > 10 * 0.5

    assert up.update(loss_scale * mse(model, x, y))
    applied = seen[0]
    applied_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in applied]))
    if clip:
        assert applied_norm <= clip * (1 + 1e-6)
        assert applied_norm == pytest.approx(clip, rel=1e-5)
        assert float(up.last_grad_norm) == pytest.approx(float(raw_norm), rel=1e-9)
        # clipping rescales, it does not change the direction
        scale = float(applied_norm / raw_norm)
        for a, r in zip(applied, raw, strict=True):
            torch.testing.assert_close(a, r * scale, rtol=1e-9, atol=1e-12)
    else:
        assert applied_norm == pytest.approx(float(raw_norm), rel=1e-9)
        assert up.last_grad_norm is None


def test_clip_norm_excludes_frozen_backbone():
    model = make()
    up = Updater(model, Schedule(lr=1e-3, grad_clip=1e9, freeze_backbone_steps=1))
    x, y = data(16)
    ref = copy.deepcopy(model)
    head_grads = torch.autograd.grad(mse(ref, x, y), list(ref.head.parameters()))
    up.update(mse(model, x, y))
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in head_grads]))
    assert float(up.last_grad_norm) == pytest.approx(float(expected), rel=1e-9)


# --- accumulation ----------------------------------------------------------------------------

def test_accumulation_of_4x8_equals_one_batch_of_32():
    x, y = data(32 * 3, seed=7)
    common = dict(lr=1e-2, weight_decay=0.1, warmup_steps=1, grad_clip=0.3)
    big, small = make(), make()
    up_big = Updater(big, Schedule(**common, accumulation=1))
    up_small = Updater(small, Schedule(**common, accumulation=4))
    for s in range(3):
        xb, yb = x[32 * s:32 * (s + 1)], y[32 * s:32 * (s + 1)]
        assert up_big.update(mse(big, xb, yb))
        stepped = [up_small.update(mse(small, xb[8 * m:8 * (m + 1)], yb[8 * m:8 * (m + 1)]))
                   for m in range(4)]
        assert stepped == [False, False, False, True]
        torch.testing.assert_close(up_small.last_grad_norm, up_big.last_grad_norm,
                                   rtol=1e-12, atol=0)
    assert up_big.steps == up_small.steps == 3 and up_small.micro == 0
    for k, v in big.state_dict().items():
        torch.testing.assert_close(small.state_dict()[k], v, rtol=1e-12, atol=1e-14)
    assert not same(snapshot(big, ""), snapshot(make(), ""))


# --- EMA -------------------------------------------------------------------------------------

def test_ema_weights_are_the_hand_computed_average():
    decay = 0.5
    model = make(bn=True)
    up = Updater(model, Schedule(lr=5e-2, ema_decay=decay))
    x, y = data(16)
    live = []
    for _ in range(4):
        step_once(up, model, x, y)
        live.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    w = up.weights()
    assert set(w) == set(model.state_dict())
    assert all(v.device.type == "cpu" and not v.requires_grad for v in w.values())
    for k in w:
        if not w[k].is_floating_point():
            continue
        ema = live[0][k]
        for snap in live[1:]:
            ema = decay * ema + (1 - decay) * snap[k]
        torch.testing.assert_close(w[k], ema, rtol=1e-12, atol=1e-14, msg=k)
    assert not torch.equal(w["body.1.running_mean"], model.body[1].running_mean)  # buffers averaged
    assert any(not torch.equal(w[k], v) for k, v in model.state_dict().items())

    # a copy: changing it leaves the EMA alone
    w["head.weight"].add_(1.0)
    assert not torch.equal(up.weights()["head.weight"], w["head.weight"])


def test_without_ema_weights_are_a_copy_of_the_model():
    model = make()
    up = Updater(model, Schedule(lr=1e-2))
    step_once(up, model, *data(8))
    w = up.weights()
    assert same(w, snapshot(model, ""))
    w["head.bias"].add_(1.0)
    assert not torch.equal(w["head.bias"], model.head.bias)


# --- resume ----------------------------------------------------------------------------------

RESUME = Schedule(lr=2e-2, backbone_lr=5e-3, weight_decay=0.05, warmup_steps=2,
                  schedule="cosine", total_steps=6, min_lr_ratio=0.1, freeze_backbone_steps=2,
                  grad_clip=0.5, accumulation=2, ema_decay=0.7)


def _batches():
    x, y = data(8 * 12, seed=3)
    return [(x[8 * i:8 * (i + 1)], y[8 * i:8 * (i + 1)]) for i in range(12)]


@pytest.mark.parametrize("cut", [6, 7])  # at a step boundary, and mid-accumulation
def test_resume_continues_exactly(cut):
    batches = _batches()
    straight = make(bn=True)
    up = Updater(straight, RESUME)
    for xb, yb in batches:
        up.update(mse(straight, xb, yb))
    assert up.steps == 6

    first = make(bn=True)
    up1 = Updater(first, RESUME)
    for xb, yb in batches[:cut]:
        up1.update(mse(first, xb, yb))
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "updater": up1.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    resumed = make(seed=123, bn=True)
    resumed.load_state_dict(ckpt["model"])
    up2 = Updater(resumed, RESUME)
    up2.load_state_dict(ckpt["updater"])
    assert (up2.steps, up2.micro) == (up1.steps, up1.micro) == (3, cut % 2)
    assert up2.lrs() == up1.lrs()
    for xb, yb in batches[cut:]:
        up2.update(mse(resumed, xb, yb))

    assert up2.steps == 6
    assert same(snapshot(resumed, ""), snapshot(straight, ""))
    assert same(up2.weights(), up.weights())
    assert up2.lrs() == up.lrs()


def test_resume_refuses_a_mismatched_state():
    sd = Updater(make(), Schedule(lr=1e-2)).state_dict()
    with pytest.raises(ValueError, match="EMA"):
        Updater(make(), Schedule(lr=1e-2, ema_decay=0.9)).load_state_dict(sd)
    head_only = make()
    head_only.head_prefixes = ("",)
    with pytest.raises(ValueError, match="groups"):
        Updater(head_only, Schedule(lr=1e-2)).load_state_dict(sd)


# --- validation ------------------------------------------------------------------------------

def test_problems_name_the_config_keys():
    assert problems(Schedule(lr=1e-3)) == []
    assert problems(RESUME) == []
    bad = Schedule(lr=0.0, weight_decay=-1, backbone_lr=-1, warmup_steps=-1, schedule="linear",
                   min_lr_ratio=2.0, total_steps=-1, freeze_backbone_steps=-2, grad_clip=-1,
                   accumulation=0, ema_decay=1.0)
    found = problems(bad)
    for key in ("lr", "weight_decay", "backbone_lr", "warmup_steps", "lr_schedule", "min_lr_ratio",
                "total_steps", "freeze_backbone_steps", "grad_clip", "accumulation", "ema_decay"):
        assert any(p.startswith(f"train.{key}:") for p in found), key
    assert "train.warmup_steps: must be >= 0, got -1" in found

    cosine = problems(Schedule(lr=1e-3, schedule="cosine"))
    assert len(cosine) == 1 and cosine[0].startswith("train.total_steps:")
    assert problems(Schedule(lr=1e-3, schedule="cosine", total_steps=10)) == []
    assert problems(Schedule(lr=float("nan")))[0].startswith("train.lr:")
    assert problems(Schedule(lr=1e-3, accumulation=2.0))[0].startswith("train.accumulation:")
    with pytest.raises(ValueError, match="train.total_steps"):
        Updater(make(), Schedule(lr=1e-3, schedule="cosine"))
