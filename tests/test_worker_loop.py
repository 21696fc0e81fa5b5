"""The Ray Train worker loop's pieces, called without Ray: restore -> one epoch -> save ->
restore again continues exactly where it stopped."""

from __future__ import annotations

import pytest
import torch

from components.config import LossConfig, TrainConfig
from components.training.models import build_scorer
from components.training.worker import (
    EpochCutter,
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


def test_best_epoch_tracking_and_patience():
    from components.training.worker import track_best

    p = Progress()
    seen = []
    for epoch, acc in enumerate([0.6, 0.7, 0.7, 0.65, 0.8], start=1):
        p.epoch = epoch
        seen.append((track_best(p, {"val/accuracy": acc}, "val/accuracy"), p.stale))
    # Strictly better only; stale counts epochs since the best.
    assert seen == [(True, 0), (True, 0), (False, 1), (False, 2), (True, 0)]
    assert (p.best, p.best_epoch) == (0.8, 5)
    q = Progress()
    for epoch, loss in enumerate([0.7, 0.5, 0.6], start=1):
        q.epoch = epoch
        track_best(q, {"val/loss": loss}, "val/loss")
    assert (q.best, q.best_epoch, q.stale) == (0.5, 2, 1)  # loss: lower is better
    assert track_best(Progress(), {}, "last") is True


def test_validation_sums_are_the_registered_scores_accuracy():
    from components.training.worker import val_metrics, validate

    torch.manual_seed(0)
    model = build_scorer("bn-cnn")
    batches = list(_batches(3, n=2))
    sums = validate(model, batches, LossConfig(), torch.device("cpu"))
    from components.training.step import eval_scores

    correct = total = 0
    for b in batches:
        s_c, s_r = eval_scores(model, b["chosen_px"], b["rejected_px"], torch.device("cpu"))
        correct += int((s_c > s_r).sum())
        total += len(s_c)
    m = val_metrics(sums)
    assert m["val/pairs"] == total == 8
    assert m["val/accuracy"] == pytest.approx(correct / total)
    # dpo has no reference scores on the validation split: its val/loss is the BT loss.
    dpo = val_metrics(validate(model, batches, LossConfig(type="dpo"), torch.device("cpu")))
    assert dpo == pytest.approx(m)


def test_dpo_scores_the_reference_on_the_fly_and_starts_at_log_2():
    """The frozen reference scores each batch in the worker (no precomputed columns): with the
    policy starting at the reference's weights, the first step's DPO loss is exactly log 2."""
    import math

    torch.manual_seed(0)
    ref = build_scorer("seed-cnn").eval()
    spec = WorkerSpec(train=TrainConfig(lr=1e-2), loss=LossConfig(type="dpo", beta=0.5),
                      model_name="seed-cnn", modality="image", init_state=ref.state_dict())
    model, updater, progress = _fresh(spec)
    losses = []
    run_epoch(model, updater, _batches(0, n=2), spec.loss, torch.device("cpu"), progress,
              on_step=lambda step, m: losses.append(float(m["loss"])), reference=ref)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert losses[1] != pytest.approx(math.log(2), abs=1e-6)  # the policy moved, the reference not
    with pytest.raises(ValueError, match="reference"):  # dpo without a reference fails loudly
        run_epoch(model, updater, _batches(0, n=1), spec.loss, torch.device("cpu"), progress)


def _stream(total: int, batch: int):
    """Rows 0..total-1 in batches of ``batch``: ``id`` (N,) and pixels (N, 3, 2, 2)."""
    for start in range(0, total, batch):
        ids = torch.arange(start, min(start + batch, total))
        yield {"id": ids, "chosen_px": ids.view(-1, 1, 1, 1).expand(-1, 3, 2, 2).to(torch.uint8)}


def test_one_stream_is_cut_into_epochs_of_exact_rows_in_per_epoch_batches():
    # 3 passes of 10 rows, streamed in batches of 4: 4, 4, 4 | 4, 4, 4 | 4, 2. Each epoch must
    # be the 10 next rows in batches of 4, 4, 2, as a per-epoch iterator would give them, so
    # steps per epoch (and the schedule) do not change; the straddling batches are split.
    cutter = EpochCutter(_stream(30, 4), rows=10, batch_size=4)
    seen = []
    for _ in range(3):
        epoch = list(cutter.epoch())
        assert [len(b["id"]) for b in epoch] == [4, 4, 2]
        ids = torch.cat([b["id"] for b in epoch])
        seen.append(ids.tolist())
        for b in epoch:  # columns stay aligned row by row across the joins
            assert torch.equal(b["chosen_px"][:, 0, 0, 0], b["id"].to(torch.uint8))
    assert seen == [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]
    assert cutter.short_by == 0
    assert list(cutter.epoch()) == [] and cutter.short_by == 10  # the stream has ended


def test_a_stream_that_ends_early_ends_the_epoch_and_says_by_how_much():
    cutter = EpochCutter(_stream(13, 5), rows=8, batch_size=3)
    assert [len(b["id"]) for b in cutter.epoch()] == [3, 3, 2]
    assert [len(b["id"]) for b in cutter.epoch()] == [3, 2]
    assert cutter.short_by == 3
