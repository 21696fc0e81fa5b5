"""The Ray Train worker loop's pieces, called without Ray: restore -> one epoch -> save ->
restore again continues exactly where it stopped."""

from __future__ import annotations

import pytest
import torch

from components.config import LossConfig, TrainConfig
from components.training.models import build_scorer
from components.training.worker import (
    NonFiniteLoss,
    Progress,
    WorkerSpec,
    epoch_metrics,
    load_checkpoint,
    make_updater,
    progress_line,
    restore,
    run_epoch,
    save_checkpoint,
)


def _batches(seed: int, n: int = 3, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield {"chosen_px": torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, generator=g),
               "rejected_px": torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, generator=g)}


def _fresh(spec, ckpt=None):
    torch.manual_seed(0)
    model = build_scorer(spec.model_name)
    opt_state, progress = restore(model, ckpt, spec.init_state)
    return model, make_updater(model, spec, opt_state), progress


def test_a_restored_checkpoint_continues_exactly(tmp_path):
    init = build_scorer("seed-cnn").state_dict()
    spec = WorkerSpec(train=TrainConfig(lr=1e-2), loss=LossConfig(), model_name="seed-cnn",
                      modality="image", init_state=init)
    dev = torch.device("cpu")

    # Straight through: two epochs.
    model, opt, progress = _fresh(spec)
    assert torch.equal(model.state_dict()["backbone.0.weight"], init["backbone.0.weight"])
    for e in range(2):
        sums = run_epoch(model, opt, _batches(e), spec.loss, dev, progress)
        progress.epoch = e + 1
    straight = {k: v.clone() for k, v in model.state_dict().items()}
    assert progress == Progress(epoch=2, step=6)

    # One epoch, save, restore into a fresh model, second epoch.
    model, opt, progress = _fresh(spec)
    steps = []
    sums = run_epoch(model, opt, _batches(0), spec.loss, dev, progress,
                     on_step=lambda step, m: steps.append((step, float(m["loss"]))))
    assert [s for s, _ in steps] == [1, 2, 3] and all(loss > 0 for _, loss in steps)
    progress.epoch = 1
    save_checkpoint(str(tmp_path), model, opt, progress, spec)
    state = load_checkpoint(str(tmp_path))
    assert set(state) == {"model", "updater", "progress", "config"}
    assert state["config"]["train"]["lr"] == 1e-2 and state["config"]["model"] == "seed-cnn"
    assert "init_state" not in str(state["config"])  # never a second copy of the weights

    model, opt, progress = _fresh(spec, str(tmp_path))
    assert progress == Progress(epoch=1, step=3)
    run_epoch(model, opt, _batches(1), spec.loss, dev, progress)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, straight[k], rtol=0, atol=0)

    m = epoch_metrics(sums, sums.values, world=1, epoch=0)
    assert m["train/pairs_per_epoch"] == 12.0 and m["epoch"] == 1.0
    assert progress_line(m, 1, 2).startswith("epoch 1/2  loss ")


def test_a_non_finite_loss_stops_training_naming_step_and_batch():
    spec = WorkerSpec(train=TrainConfig(), loss=LossConfig(), model_name="seed-cnn",
                      modality="image")
    model, opt, progress = _fresh(spec)
    batches = list(_batches(0))
    batches[1]["margin"] = torch.tensor([0.0, float("inf"), 0.0, 0.0])  # one poisoned pair
    with pytest.raises(NonFiniteLoss, match=r"optimiser step 2 \(batch 1 of epoch 1\)"):
        run_epoch(model, opt, batches, spec.loss, torch.device("cpu"), progress)
