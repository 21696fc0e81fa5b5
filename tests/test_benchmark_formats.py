"""Public benchmark layouts (datasets/benchmark_formats.py) and the accuracies their papers
report (evaluation/benchmarks.py).

Data: small real files in each layout (a JSON list + PNG files for HPDv2, a CSV + MP4 clips
for VideoGen-RewardBench, Parquet for Pick-a-Pic), converted and then read back through the
contract's own reader, every candidate pair accounted for. Maths: hand-computed values in the
docstrings, and VideoAlign's ``calc_accuracy_with_ties`` copied as the reference. One slow test
runs ``visual-dpo evaluate`` on HPDv2 and on Pick-a-Pic with the tie protocol, with a tiny
PickScore registered by ``register-published``."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from components.config import ConfigError, load_config
from components.datasets import benchmark_formats as bf
from components.datasets.contract import OK, ReadPlan, canonical_rows, resolve_shards
from components.evaluation import benchmarks
from tests.media_bytes import photo_bytes

# --- HPDv2 ------------------------------------------------------------------------------------

HPDV2_ENTRIES = [
    {"prompt": "a cat", "image_path": ["0-0.png", "0-1.png", "0-2.png"], "rank": [2, 1, 3]},
    {"prompt": "a dog", "image_path": ["1-0.png", "1-1.png", "1-2.png", "1-3.png"],
     "rank": [1, 2, 2, 3]},  # a tie between images 1 and 2
    {"prompt": "a bird", "image_path": ["2-0.png", "2-1.png", "gone.png"], "rank": [1, 2, 3]},
    {"prompt": "a fish", "image_path": ["3-0.png", "3-1.png"], "rank": [1]},  # malformed
    {"prompt": "a cow", "image_path": ["4-0.png"], "rank": [1]},  # one image: no pair
]


@pytest.fixture
def hpdv2(tmp_path):
    """HPDv2's release layout: ``test.json`` beside the image folder ``test/``."""
    images = tmp_path / "test"
    images.mkdir()
    seed = 0
    for entry in HPDV2_ENTRIES:
        for name in entry["image_path"]:
            if name != "gone.png":
                (images / name).write_bytes(photo_bytes(32, "PNG", seed=seed))
                seed += 1
    (tmp_path / "test.json").write_text(json.dumps(HPDV2_ENTRIES))
    return tmp_path / "test.json"


def _read_back(path, ties="soft"):
    """The converted file through the contract's own reader (what ``evaluate`` prepares)."""
    plan = ReadPlan.of(resolve_shards([str(path)]), "canonical")
    rows = []
    for unit in plan.units:
        table = pq.ParquetFile(unit.shard.path).read_row_group(unit.row_group)
        rows += list(canonical_rows(unit, table, None, ties))
    return rows


def test_hpdv2_rankings_become_every_pair_of_each_prompt(hpdv2):
    out = hpdv2.parent / "converted.parquet"
    conv = bf.convert(str(hpdv2), "hpdv2", str(out))
    # 3 + 6 + 3 + 1 candidate pairs (n (n-1) / 2; the one-image prompt has none)
    assert (conv.entries, conv.read, conv.pairs, conv.ties) == (5, 13, 10, 1)
    assert conv.excluded == {"missing image file": 2, "rank and image_path differ in length": 1}
    assert conv.groups == 3

    rows = _read_back(out)
    assert len(rows) == 10 and all(r["status"] == OK for r in rows)
    folder = hpdv2.parent / "test"
    by_id = {r["pair_id"]: r for r in rows}
    for index, entry in enumerate(HPDV2_ENTRIES[:3]):
        n = len(entry["image_path"])
        for a in range(n):
            for b in range(a + 1, n):
                pid = f"hpdv2:test:{index}:{a}-{b}"
                if "gone.png" in (entry["image_path"][a], entry["image_path"][b]):
                    assert pid not in by_id
                    continue
                r = by_id[pid]
                ra, rb = entry["rank"][a], entry["rank"][b]
                best, worst = (a, b) if ra <= rb else (b, a)  # the lower rank is preferred
                assert r["chosen"] == (folder / entry["image_path"][best]).read_bytes()
                assert r["rejected"] == (folder / entry["image_path"][worst]).read_bytes()
                assert r["target"] == (0.5 if ra == rb else 1.0)
                assert r["prompt"] == entry["prompt"]
                meta = json.loads(r["meta"])
                assert meta["group_id"] == f"test:{index}"
                assert (meta["rank_chosen"], meta["rank_rejected"]) == (min(ra, rb), max(ra, rb))
    # Under ties=drop the tie is excluded by the contract's tie policy, and counted there.
    dropped = _read_back(out, ties="drop")
    assert sum(r["status"] != OK for r in dropped) == 1


def test_layouts_are_recognised_by_content(hpdv2, tmp_path):
    assert bf.sniff_layout(str(hpdv2)) == "hpdv2"
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"caption": "x"}]))
    assert bf.sniff_layout(str(other)) is None
    assert bf.benchmark_layout([str(hpdv2)], "auto") == "hpdv2"
    assert bf.benchmark_layout([str(tmp_path)], "auto") is None  # a folder of Parquet shards
    assert bf.benchmark_layout([str(tmp_path)], "pickapic") is None


# --- VideoGen-RewardBench ---------------------------------------------------------------------

COLUMNS = ["path_A", "path_B", "A_model", "B_model", "prompt", "VQ", "MQ", "TA", "Overall",
           "fps_A", "num_frames_A", "fps_B", "num_frames_B"]


def _clip(seed: int) -> bytes:
    from components.media.video import encode_video

    rng = np.random.default_rng(seed)
    return encode_video(rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8), "mp4")


@pytest.fixture
def videogen(tmp_path):
    """``videogen-rewardbench.csv`` with its ``videos/<model>/...`` beside it."""
    (tmp_path / "videos" / "kling").mkdir(parents=True)
    (tmp_path / "videos" / "minimax").mkdir(parents=True)
    labels = [("A", "A", "B", "A"), ("B", "same", "A", "B"), ("same", "B", "B", "same"),
              ("A", "A", "A", ""), ("A", "A", "A", "C"), ("A", "A", "A", "A")]
    rows = []
    for i, (vq, mq, ta, overall) in enumerate(labels):
        a, b = f"videos/kling/kling_{i:05d}.mp4", f"videos/minimax/minimax_{i:05d}.mp4"
        (tmp_path / a).write_bytes(_clip(2 * i))
        if i != 5:  # the last row's B clip is missing
            (tmp_path / b).write_bytes(_clip(2 * i + 1))
        rows.append({"path_A": a, "path_B": b, "A_model": "kling", "B_model": "minimax",
                     "prompt": f"a ball rolls, take {i}", "VQ": vq, "MQ": mq, "TA": ta,
                     "Overall": overall, "fps_A": "8.0", "num_frames_A": "4", "fps_B": "8.0",
                     "num_frames_B": "4"})
    path = tmp_path / "videogen-rewardbench.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path, rows


def test_videogen_rows_become_pairs_oriented_by_overall_with_ties_kept(videogen):
    path, source = videogen
    assert bf.sniff_layout(str(path)) == "videogen-rewardbench"
    out = path.parent / "converted.parquet"
    conv = bf.convert(str(path), "videogen-rewardbench", str(out))
    assert (conv.entries, conv.read, conv.pairs, conv.ties) == (6, 6, 3, 1)
    assert conv.excluded == {"no Overall label": 1, "unknown Overall label": 1,
                             "missing video file": 1}
    rows = {r["pair_id"]: r for r in _read_back(out)}
    assert set(rows) == {f"videogen:videogen-rewardbench:{i}" for i in range(3)}
    for i in range(3):
        r, src = rows[f"videogen:videogen-rewardbench:{i}"], source[i]
        a = (path.parent / src["path_A"]).read_bytes()
        b = (path.parent / src["path_B"]).read_bytes()
        side = "B" if src["Overall"] == "B" else "A"
        assert (r["chosen"], r["rejected"]) == ((b, a) if side == "B" else (a, b))
        assert r["target"] == (0.5 if src["Overall"] == "same" else 1.0)
        meta = json.loads(r["meta"])
        assert meta["chosen_side"] == side
        assert {k: meta[k] for k in COLUMNS if k != "prompt"} == {
            k: src[k] for k in COLUMNS if k != "prompt"}  # every column kept, as written


def test_videogen_needs_its_columns(tmp_path):
    path = tmp_path / "bench.csv"
    path.write_text("path_A,path_B,prompt\nx.mp4,y.mp4,z\n")
    with pytest.raises(bf.DataError, match="missing columns \\['Overall'\\]"):
        bf.convert(str(path), "videogen-rewardbench", str(tmp_path / "o.parquet"))


def test_benchmark_layouts_and_ties_are_checked_with_the_config():
    with pytest.raises(ConfigError, match="only `evaluate`"):
        load_config(None, ["data.layout=hpdv2"], {"data": {"train": ["x"]}})
    with pytest.raises(ConfigError, match="add ties=soft"):
        load_config(None, ["data.layout=videogen-rewardbench"], require_train=False)
    with pytest.raises(ConfigError, match="add ties=soft"):
        load_config(None, ["eval.tie_validation=[val]"], require_train=False)
    cfg = load_config(None, ["data.layout=videogen-rewardbench", "ties=soft",
                             "eval.media_root=/data/VideoGen-RewardBench"], require_train=False)
    assert cfg.eval.media_root == "/data/VideoGen-RewardBench"


def test_evaluate_converts_before_any_run(hpdv2, tmp_path):
    """The driver-side step of ``evaluate``: converted under the run root, read as canonical."""
    from pipelines.evaluate import convert_benchmark

    cfg = load_config(None, [f"output_dir={tmp_path / 'out'}"],
                      {"data": {"eval": [str(hpdv2)]}}, require_train=False)
    (conv,) = convert_benchmark(cfg, "hpdv2")
    assert conv.path.startswith(str(tmp_path / "out" / "benchmarks" / "hpdv2-"))
    assert ReadPlan.of(resolve_shards([conv.path]), "canonical").rows == conv.pairs == 10


# --- Metrics: hand-computed -------------------------------------------------------------------

def _delta_with_gap(gap: float, sign: float = 1.0) -> float:
    """The score difference whose softmax probabilities differ by ``gap``: 2 atanh(gap)."""
    return sign * 2 * math.atanh(gap)


def test_pickscore_tie_threshold_is_tuned_on_validation_and_applied_to_test():
    """Validation, (label, |p_c - p_r|, order right?):
        1 tie 0.05; 2 tie 0.15; 3 pref 0.35 right; 4 pref 0.65 wrong; 5 pref 0.95 right.
    Accuracy with ties by threshold (1 exact, 0.5 when a tie is involved, 0 wrong):
        t=0.0: .5+.5+1+0+1 = 3.0 -> 0.6    t=0.1: 1+.5+1+0+1 = 3.5 -> 0.7
        t=0.2: 1+1+1+0+1 = 4.0 -> 0.8      t=0.3: 0.8
        t=0.4..0.6: 1+1+.5+0+1 = 3.5 -> 0.7
        t=0.7..0.9: 1+1+.5+.5+1 = 4.0 -> 0.8   t=1.0: 3.5 -> 0.7
    First best: t=0.2 (val 0.8). Test at t=0.2:
        a tie 0.1 -> 1; b tie 0.5 -> .5; c pref 0.1 right -> .5; d pref 0.9 wrong -> 0;
        e pref 0.8 right -> 1: (1+.5+.5+0+1)/5 = 0.6. Without ties: c, e right, d wrong: 2/3."""
    val_delta = np.array([_delta_with_gap(0.05), _delta_with_gap(0.15), _delta_with_gap(0.35),
                          _delta_with_gap(0.65, -1), _delta_with_gap(0.95)])
    val_tie = np.array([True, True, False, False, False])
    test_delta = np.array([_delta_with_gap(0.1, -1), _delta_with_gap(0.5), _delta_with_gap(0.1),
                           _delta_with_gap(0.9, -1), _delta_with_gap(0.8)])
    test_tie = np.array([True, True, False, False, False])
    out = benchmarks.pickscore_tie_protocol(val_delta, val_tie, test_delta, test_tie)
    assert out["tie_threshold"] == 0.2
    assert out["val_accuracy_with_ties"] == pytest.approx(0.8)
    assert out["accuracy_with_ties"] == pytest.approx(0.6)
    assert out["accuracy_without_ties"] == pytest.approx(2 / 3)
    assert out["test_ties"] == 2


def test_accuracy_with_ties_hand_computed():
    """h (+1 A preferred, -1 B, 0 tie), m = s_A - s_B, sorted by |m|:
        0.1 (tie), 0.5 (+1, right), 1.0 (-1, wrong), 2.0 (+1, right), 3.0 (tie).
    eps=0.1: ties predicted {0.1}: T_hm 1, C 2 (0.5, 2.0) -> 3/5
    eps=0.5: T_hm 1, C 1 -> 2/5; eps=1.0: 2/5; eps=2.0: T_hm 1, C 0 -> 1/5; eps=3.0: 2/5.
    Without ties: 0.5 and 2.0 right, 1.0 wrong -> 2/3."""
    h = np.array([1, 1, -1, 0, 0])
    m = np.array([0.5, 2.0, 1.0, 0.1, 3.0])
    assert benchmarks.accuracy_with_ties(h, m) == (pytest.approx(0.6), 0.1)
    assert benchmarks.accuracy_without_ties(h, m) == pytest.approx(2 / 3)


def videoalign_calc_accuracy_with_ties(h, m):
    """KwaiVGI/VideoAlign ``calc_accuracy.py`` (commit 3e5ebc6), ``suff_stats``, ``calc_tau``
    and ``calc_accuracy_with_ties`` verbatim but for the try/except, the comments and `strict=True`."""
    def suff_stats(h, m, epsilon):
        C = D = Th = Tm = Thm = 0
        for hi, mi in zip(h, m, strict=True):
            if hi == 0 and abs(mi) <= epsilon:
                Thm += 1
            elif hi == 0:
                Th += 1
            elif abs(mi) <= epsilon:
                Tm += 1
            elif hi * mi > 0:
                C += 1
            else:
                D += 1
        return C, D, Th, Tm, Thm

    def calc_tau(C, D, Th, Tm, Thm):
        return (C + Thm) / (C + D + Th + Tm + Thm)

    C, D, Th, Tm, Thm = suff_stats(h, m, -1)
    sorted_pairs = sorted(zip(h, m, strict=True), key=lambda x: abs(x[1]))
    tau_star = float('-inf')
    epsilon_curr = -1
    current_thresholds = {'C': C, 'D': D, 'Th': Th, 'Tm': Tm, 'Thm': Thm}
    for hi, mi in sorted_pairs:
        if hi == 0 and abs(mi) < epsilon_curr:
            current_thresholds['Thm'] -= 1
        elif hi == 0:
            current_thresholds['Th'] -= 1
        elif abs(mi) < epsilon_curr:
            current_thresholds['Tm'] -= 1
        elif hi * mi > 0:
            current_thresholds['C'] -= 1
        else:
            current_thresholds['D'] -= 1
        epsilon_curr = abs(mi)
        if hi == 0 and abs(mi) <= epsilon_curr:
            current_thresholds['Thm'] += 1
        elif hi == 0:
            current_thresholds['Th'] += 1
        elif abs(mi) <= epsilon_curr:
            current_thresholds['Tm'] += 1
        elif hi * mi > 0:
            current_thresholds['C'] += 1
        else:
            current_thresholds['D'] += 1
        tau_curr = calc_tau(**current_thresholds)
        if tau_curr > tau_star:
            tau_star = tau_curr
    return tau_star


def test_accuracy_with_ties_equals_videoalign_on_distinct_differences():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 60))
        h = rng.choice([-1, 0, 1], size=n, p=[0.4, 0.2, 0.4])
        m = rng.normal(size=n) + 0.7 * h  # a scorer better than chance
        ours, _ = benchmarks.accuracy_with_ties(h, m)
        assert ours == pytest.approx(videoalign_calc_accuracy_with_ties(list(h), list(m)))


def _scores(delta, target, meta, **heads) -> pd.DataFrame:
    df = pd.DataFrame({"pair_id": [f"p{i}" for i in range(len(delta))],
                       "s_chosen": np.array(delta, dtype=float), "s_rejected": 0.0,
                       "target": target, "meta": [json.dumps(m) for m in meta]})
    for name, values in heads.items():
        df[f"chosen_head_{name}"] = np.array(values, dtype=float)
        df[f"rejected_head_{name}"] = 0.0
    return df


def test_hpdv2_ranking_accuracy_is_per_prompt_then_averaged():
    """Prompt g0: 3 pairs, 2 ordered right -> 2/3. Prompt g1: a tied pair (agreed, as
    HPSv2's inversion_score counts it) and a wrong one -> 1/2. Mean (2/3 + 1/2) / 2 = 7/12,
    not the pooled 3/5."""
    df = _scores([1.0, 2.0, -1.0, -0.5, -3.0], [1, 1, 1, 0.5, 1],
                 [{"group_id": g} for g in ("g0", "g0", "g0", "g1", "g1")])
    out = benchmarks.hpdv2_ranking_accuracy(df)
    assert out == {"ranking_accuracy": pytest.approx(7 / 12), "prompts": 2.0}


def test_videogen_accuracies_per_dimension_use_their_heads():
    """Three pairs oriented by Overall (chosen side A, B, A); VQ read from the ``vq`` head,
    MQ from the score (no mq head).
        Overall labels A, B, same; score deltas +1, -2, +0.5: h = +1, +1, 0.
            without ties: pair 0 right, pair 1 wrong -> 1/2;
            with ties: eps=0.5 -> {pair 2} tied (T_hm 1) + pair 0 right -> 2/3.
        VQ labels B, B, A (h = -1, +1, +1), vq deltas -3, +1, +2: all right -> without 1.0;
            with ties (no human tie), every threshold ties at least the smallest |m|:
            eps=1 -> C 2 -> 2/3; eps=2 -> 1/3; eps=3 -> 0: 2/3.
        MQ labels A, A, same (h = +1, -1, 0), score deltas +1, -2, +0.5: pair 0 right,
            pair 1 right -> without 1.0; with ties eps=0.5 -> 1 + 2 right -> 3/3 = 1."""
    meta = [{"chosen_side": "A", "Overall": "A", "VQ": "B", "MQ": "A"},
            {"chosen_side": "B", "Overall": "B", "VQ": "B", "MQ": "A"},
            {"chosen_side": "A", "Overall": "same", "VQ": "A", "MQ": "same"}]
    df = _scores([1.0, -2.0, 0.5], [1, 1, 0.5], meta, vq=[-3.0, 1.0, 2.0])
    out = benchmarks.videogen_accuracies(df, ("Overall", "VQ", "MQ"))
    assert out["Overall/accuracy_without_ties"] == pytest.approx(0.5)
    assert out["Overall/accuracy_with_ties"] == pytest.approx(2 / 3)
    assert out["Overall/tie_threshold"] == 0.5
    assert out["VQ/accuracy_without_ties"] == 1.0
    assert out["VQ/accuracy_with_ties"] == pytest.approx(2 / 3)
    assert out["MQ/accuracy_without_ties"] == 1.0
    assert out["MQ/accuracy_with_ties"] == pytest.approx(1.0)
    assert out["MQ/pairs"] == 3.0


# --- Through the CLI ----------------------------------------------------------------------------

@pytest.mark.slow
def test_evaluate_hpdv2_and_pickapic_with_the_tie_protocol(ray_cluster, hpdv2, tmp_path,
                                                           tracking_uri, capsys):
    """A tiny PickScore registered from its directory, evaluated by the CLI on HPDv2's
    layout (auto-detected) and on Pick-a-Pic test pairs with the threshold tuned on its
    validation pairs; the summary and MLflow carry the benchmark metrics and counts."""
    import mlflow

    from components.sample.images import write_image_pairs
    from pipelines.__main__ import main
    from tests.tiny_checkpoints import write_pickscore_layout

    directory = write_pickscore_layout(tmp_path / "pickscore")
    assert main(["register-published", "--model-name", "pickscore", "--alias", "champion",
                 "--tracking-uri", tracking_uri, "model.name=hf-clip",
                 f"model.pretrained={directory}", "data.image_size=224"]) == 0

    def evaluate(name, *args):
        summary = tmp_path / f"{name}.json"
        rc = main(["evaluate", "--model", "models:/pickscore@champion", "--tracking-uri",
                   tracking_uri, "--output-dir", str(tmp_path / "out"), "--run-name", name,
                   "--summary", str(summary), "ties=soft", *args])
        capsys.readouterr()
        s = json.loads(summary.read_text())
        assert rc == 0, s
        return s

    s = evaluate("hpdv2", "--data", str(hpdv2))
    assert s["benchmark"][0]["pairs"] == 10 and s["rows"]["eval"]["used"] == 10
    assert 0 <= s["metrics"]["eval/benchmark/hpdv2/ranking_accuracy"] <= 1
    assert s["metrics"]["eval/benchmark/hpdv2/prompts"] == 3
    mlflow.set_tracking_uri(tracking_uri)
    logged = mlflow.get_run(s["run_id"]).data.metrics
    assert logged["benchmark/excluded/missing_image_file"] == 2
    assert logged["eval/benchmark/hpdv2/ranking_accuracy"] == \
        s["metrics"]["eval/benchmark/hpdv2/ranking_accuracy"]

    data = tmp_path / "pickapic"
    write_image_pairs(str(data), pairs=24, size=32, layout="pickapic", shards=1,
                      tie_fraction=0.3, seed=4)
    s = evaluate("pickapic", "--data", str(data / "eval"), "--tie-validation",
                 str(data / "train"))
    m = s["metrics"]
    assert m["eval/benchmark/pickapic/tie_threshold"] in benchmarks.PICKSCORE_THRESHOLDS
    # All 18 validation pairs scored (the rows' fate is in the tie_validation/* metrics).
    val_rows = {k: v for k, v in mlflow.get_run(s["run_id"]).data.metrics.items()
                if k.startswith("tie_validation/")}
    assert m["eval/benchmark/pickapic/val_pairs"] == 18, val_rows
    assert m["eval/benchmark/pickapic/test_pairs"] == s["rows"]["eval"]["used"]
    assert 0 <= m["eval/benchmark/pickapic/accuracy_with_ties"] <= 1


@pytest.mark.slow
def test_evaluate_videogen_rewardbench_per_dimension_with_a_registered_videoalign(
        ray_cluster, videogen, tmp_path, tracking_uri, capsys):
    """A tiny VideoAlign registered from its layout, evaluated by the CLI on
    VideoGen-RewardBench's CSV (auto-detected): the three usable rows scored, the other three
    counted as excluded with their reasons, and accuracy with and without ties reported for
    Overall and for each of VQ, MQ, TA from its own head."""
    import mlflow

    from pipelines.__main__ import main
    from tests.tiny_checkpoints import write_videoalign_layout

    directory = write_videoalign_layout(tmp_path / "videoreward", seed=7)
    assert main(["register-published", "--model-name", "videoreward", "--alias", "champion",
                 "--modality", "video", "--tracking-uri", tracking_uri, "model.name=vlm-video",
                 f"model.pretrained={directory}", "model.head=named",
                 "model.head_names=VQ,MQ,TA", "loss.type=btt", "data.image_size=56",
                 "data.video.frames=4", "data.video.fps=0"]) == 0
    path, _ = videogen
    summary = tmp_path / "videogen.json"
    rc = main(["evaluate", "--model", "models:/videoreward@champion", "--tracking-uri",
               tracking_uri, "--output-dir", str(tmp_path / "out"), "--run-name", "videogen",
               "--summary", str(summary), "ties=soft", "--data", str(path)])
    capsys.readouterr()
    s = json.loads(summary.read_text())
    assert rc == 0, s
    assert s["rows"]["eval"]["used"] == 3
    m = s["metrics"]
    for dim in ("Overall", "VQ", "MQ", "TA"):
        for kind in ("accuracy_with_ties", "accuracy_without_ties"):
            assert 0 <= m[f"eval/benchmark/videogen/{dim}/{kind}"] <= 1, (dim, kind, m)
    mlflow.set_tracking_uri(tracking_uri)
    logged = mlflow.get_run(s["run_id"]).data.metrics
    assert logged["eval/benchmark/videogen/Overall/accuracy_with_ties"] == \
        m["eval/benchmark/videogen/Overall/accuracy_with_ties"]
    excluded = {k: v for k, v in logged.items() if k.startswith("benchmark/excluded/")}
    assert sum(excluded.values()) == 3, excluded
