"""The vision-language scorer (``model.name=vlm`` / ``vlm-video``, components/training/vlm.py)
on tiny random Qwen2-VL directories: the processor's work done on the device equals the
processor's, the decode actors' ids equal the processor's, the config checks say what to fix,
LoRA reaches the language model only when asked, and a clip's frames reach the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from components.media.spec import MediaSpec  # noqa: E402
from components.training.models import (  # noqa: E402
    RewardHead,
    build_scorer,
    config_problems,
    initial_weights,
    model_options,
    text_contract,
    to_memory_format,
    to_model_input,
)
from components.training.vlm import patchify  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from tests.tiny_checkpoints import write_qwen2_vl_base

    return write_qwen2_vl_base(tmp_path_factory.mktemp("qwen2vl") / "base", seed=2)


def test_patchify_equals_the_image_processor(base):
    """The device-side patchify + normalisation of a uint8 image is the processor's
    ``pixel_values`` for the same image (56x56: 16 patches of 2 x 3 x 14 x 14 values)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(base, local_files_only=True)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)
    want = processor.image_processor(images=[img], return_tensors="pt")
    options = model_options("vlm", "", RewardHead(), pretrained=str(base))
    model = build_scorer("vlm", options)
    x = to_model_input(torch.from_numpy(img).permute(2, 0, 1)[None], torch.device("cpu"), False)
    got, grid = model.pixel_values(x)
    assert grid.tolist() == want["image_grid_thw"].tolist() == [[1, 4, 4]]
    torch.testing.assert_close(got, want["pixel_values"], atol=1e-5, rtol=0)


def test_patchify_orders_merge_windows_contiguously():
    """Hand-built: a 1x1x28x28 single-channel frame pair with pixel value = its raster index;
    row 0 of the output is the top-left 14x14 patch, row 1 the one to its right (same 2x2
    merge window), row 2 the one below it."""
    frame = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 1, 28, 28).expand(1, 2, 1, 28, 28)
    rows = patchify(frame, patch=14, merge=2, temporal=2)
    assert rows.shape == (4, 2 * 14 * 14)
    assert rows[0, 0] == 0 and rows[1, 0] == 14 and rows[2, 0] == 14 * 28 and rows[3, 0] == 14 * 28 + 14


def test_decode_actor_ids_equal_the_processors(base):
    """``MediaSpec.tokenize`` (no transformers in the actors) gives the ids the processor
    gives the rendered conversation, with one image placeholder where the processor expands
    it, then pad ids."""
    from transformers import AutoProcessor

    from components.training import vlm_prompts as P

    options = model_options("vlm", "", RewardHead(), pretrained=str(base))
    spec = MediaSpec("image", 56, 10**8, **text_contract("vlm", options))
    processor = AutoProcessor.from_pretrained(base, local_files_only=True)
    processor.tokenizer.add_special_tokens({"additional_special_tokens": list(P.PLAIN_TOKENS)})
    prompt = "a red apple on a wooden table"
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                        "text": P.PLAIN_INSTRUCTION.format(text_prompt=prompt)}]}],
        tokenize=False, add_generation_prompt=True)
    want = processor.tokenizer(text)["input_ids"]
    got = spec.tokenize([prompt])[0]
    n = len(want)
    assert got[:n].tolist() == want and (got[n:] == options["pad_id"]).all()
    assert (got == options["media_token_id"]).sum() == 1
    assert (got == options["reward_token_ids"][0]).sum() == 1
    long = spec.tokenize(["apple " * 1000])[0]  # cut, never past the reward token
    assert (long == options["reward_token_ids"][0]).sum() == 1


def test_scores_depend_on_image_and_prompt_and_train(base):
    """Random weights, one score per pair; changing the image or the prompt changes it, and
    a gradient reaches the vision tower, the language model and the head."""
    options = model_options("vlm", "", RewardHead("mu_sigma"), pretrained=str(base))
    spec = MediaSpec("image", 56, 10**8, **text_contract("vlm", options))
    torch.manual_seed(0)
    model = build_scorer("vlm", options)
    model.load_state_dict(initial_weights("vlm", options, 0, pretrained=str(base)))
    model.eval()
    x = to_model_input(torch.randint(0, 256, (2, 3, 56, 56), dtype=torch.uint8),
                       torch.device("cpu"), False)
    same = torch.from_numpy(spec.tokenize(["a photo of a cat"] * 2))
    out = model(x, same, outputs=True)
    assert out.shape == (2, 2)
    assert (out[0] - out[1]).abs().max() > 1e-3  # the image matters
    other = model(x, torch.from_numpy(spec.tokenize(["two dogs playing in the snow"] * 2)))
    assert (other - out[:, 0]).abs().max() > 1e-3  # the prompt matters
    model.train()
    model(x, same).sum().backward()
    for prefix in ("net.visual.", "net.language_model.", "rm_head."):
        assert any(p.grad is not None and p.grad.abs().sum() > 0
                   for n, p in model.named_parameters() if n.startswith(prefix)), prefix


def test_video_frames_reach_the_model(base):
    """``vlm-video``: a clip ``(N, 3, T, S, S)`` goes in as video (T/2 temporal patches); the
    conversation holds the video placeholder; reversing the frames changes the score."""
    options = model_options("vlm-video", "", RewardHead("named", ("vq", "mq", "ta"), (1, 1, 1)),
                            pretrained=str(base))
    assert options["video"] and options["media_token_id"] != model_options(
        "vlm", "", RewardHead(), pretrained=str(base))["media_token_id"]
    spec = MediaSpec("video", 56, 10**8, frames=4, **text_contract("vlm-video", options))
    torch.manual_seed(0)
    model = build_scorer("vlm-video", {**options, "head": {"kind": "named",
                                                           "names": ["vq", "mq", "ta"],
                                                           "weights": [1, 1, 1]}}).eval()
    clip = torch.randint(0, 256, (1, 3, 4, 56, 56), dtype=torch.uint8)
    tokens = torch.from_numpy(spec.tokenize(["a dog runs"]))
    x = to_model_input(clip, torch.device("cpu"), False)
    with torch.no_grad():
        out = model(x, tokens, outputs=True)
        flipped = model(x.flip(2), tokens, outputs=True)
    assert out.shape == (1, 3)
    assert (out - flipped).abs().max() > 1e-4
    with pytest.raises(ValueError, match="multiple of 2 frames"):
        model(x[:, :, :3], tokens)


def test_lora_on_the_language_model_only(base):
    """``model.lora.target_modules`` naming the language model's projections puts adapters
    there and nowhere in the vision tower (VideoAlign's LoRA), the head trained fully."""
    from components.config import LoraConfig
    from components.training.lora import apply_lora, trainable_share

    options = model_options("vlm", "", RewardHead(), pretrained=str(base))
    model = build_scorer("vlm", options)
    cfg = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                     trainable=["head"])
    model = apply_lora(model, cfg)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n and n.startswith("net.language_model.") for n in names)
    assert not any(n.startswith("net.visual.") for n in names)
    assert any(n.startswith("rm_head.") for n in names)
    trainable, total = trainable_share(model)
    assert 0 < trainable < total


def test_config_problems_say_what_to_fix(base, tmp_path):
    """Family, pixel budget and published head are checked before any work, with the fix."""
    from components.config import load_config

    def problems(*overrides, modality="image"):
        cfg = load_config(None, [f"model.pretrained={base}", *overrides],
                          require_train=False, modality=modality)
        return " ".join(config_problems(cfg))

    assert problems("model.name=vlm", "data.image_size=56") == ""
    assert "multiple of 28" in problems("model.name=vlm", "data.image_size=64")
    assert "groups of 2" in problems("model.name=vlm-video", "data.image_size=56",
                                     "data.video.frames=3", modality="video")
    moe = tmp_path / "qwen3-moe"
    moe.mkdir()
    (moe / "config.json").write_text(json.dumps({"model_type": "qwen3_vl_moe"}))
    cfg = load_config(None, require_train=False, overrides=["model.name=vlm", f"model.pretrained={moe}",
                             "data.image_size=56"], modality="image")
    assert "mixture-of-experts" in " ".join(config_problems(cfg))
    from tests.tiny_checkpoints import write_qwen2_vl_base

    qwen3 = write_qwen2_vl_base(tmp_path / "qwen3", family="qwen3_vl", min_pixels=64 * 64,
                                max_pixels=64 * 64)
    assert problems("model.name=vlm", f"model.pretrained={qwen3}", "data.image_size=64") == ""
    # Qwen3-VL clips: frame times need a fixed rate; the budget is the clip's, frames included.
    qwen3_clip = ("model.name=vlm-video", f"model.pretrained={qwen3}", "data.video.frames=4")
    assert "data.video.fps" in problems(*qwen3_clip, "data.image_size=64", modality="video")
    assert problems(*qwen3_clip, "data.image_size=64", "data.video.fps=2",
                    modality="video") == ""
    assert "side^2 in [4096, 4096]" in problems(*qwen3_clip, "data.image_size=96",
                                                "data.video.fps=2", modality="video")
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"model_type": "clip"}))
    cfg = load_config(None, require_train=False, overrides=["model.name=vlm", f"model.pretrained={clip}"], modality="image")
    assert "Qwen2-VL" in " ".join(config_problems(cfg))


def test_hpsv3_layout_needs_its_head(tmp_path):
    from components.config import load_config
    from tests.tiny_checkpoints import write_hpsv3_layout

    directory = write_hpsv3_layout(tmp_path / "hpsv3")
    cfg = load_config(None, require_train=False, overrides=["model.name=vlm", f"model.pretrained={directory}",
                             "data.image_size=448"], modality="image")
    assert "model.head=mu_sigma" in " ".join(config_problems(cfg))


def test_a_hub_id_fails_saying_nothing_downloads():
    from components.config import load_config

    with pytest.raises(Exception, match="(?i)download|directory"):
        cfg = load_config(None, require_train=False, overrides=["model.name=vlm", "model.pretrained=MizzenAI/HPSv3"],
                          modality="image")
        config_problems(cfg)


def test_vlm_video_trains_on_clips_sampled_by_the_config(base):
    """Step level, no Ray: a 1 s and a 5 s clip both decode to ``data.video.frames=4`` frames
    at ``data.video.fps=2`` (the frame count is the config's, not the clip's length: the bias
    VideoAlign's users report), and one DPO step on them moves the head."""
    from components.config import LossConfig
    from components.media.video import encode_video
    from components.training.step import train_step

    head = RewardHead("named", ("VQ", "MQ", "TA"), (1.0, 1.0, 1.0))
    options = model_options("vlm-video", "", head, pretrained=str(base))
    spec = MediaSpec("video", 56, 10**8, frames=4, fps=2.0,
                     **text_contract("vlm-video", options))
    rng = np.random.default_rng(0)
    data = [encode_video(rng.integers(0, 256, (n, 56, 56, 3), dtype=np.uint8), "mp4", fps=8)
            for n in (8, 40)]
    clips = [spec.decode(b)[0] for b in data]
    assert clips[0].shape == clips[1].shape == (3, 4, 56, 56)
    torch.manual_seed(0)
    model = build_scorer("vlm-video", options)
    before = [p.detach().clone() for p in model.rm_head.parameters()]
    chosen = torch.from_numpy(np.stack(clips))
    metrics = train_step(model, torch.optim.AdamW(model.parameters(), lr=1e-3), chosen,
                         chosen.flip(2), LossConfig(), torch.device("cpu"),
                         tokens=torch.from_numpy(spec.tokenize(["a dog runs", "a cat sleeps"])))
    assert torch.isfinite(metrics["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.rm_head.parameters(),
                                                     strict=True))


def test_options_build_without_torchvision_as_on_a_bare_gpu_image(base):
    """transformers' Qwen2-VL video processor needs torchvision; the scorer's options (the
    chat template, token ids, normalisation) do not, and are the same without it: a machine
    with torch + transformers only (benchmarks/gpu_suite.py's) builds image and clip scorers."""
    import subprocess
    import sys

    from components.training.vlm import vlm_options

    code = ("import json, sys; sys.modules['torchvision'] = None\n"
            "from components.training.vlm import vlm_options\n"
            f"o = [vlm_options({str(base)!r}, v) for v in (False, True)]\n"
            "assert 'torchvision' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n"
            "print(json.dumps(o, sort_keys=True))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    without = json.loads(out.stdout.strip().splitlines()[-1])
    expected = json.loads(json.dumps([vlm_options(str(base), v) for v in (False, True)],
                                     sort_keys=True))
    assert without == expected


@pytest.mark.parametrize("video", [False, True])
def test_memory_format_leaves_a_vlm_scorer_usable(base, video):
    """A CUDA worker puts its scorer's weights in channels_last: an image vlm scorer (Qwen2-VL's
    Conv3d patch embedding, a rank-5 weight) is left as it is instead of ``Module.to``
    raising, a clip scorer's Conv3d goes channels_last_3d; both still score the same."""
    name = "vlm-video" if video else "vlm"
    options = model_options(name, "", RewardHead(), pretrained=str(base))
    spec = MediaSpec("video" if video else "image", 56, 10**8, frames=4 if video else 1,
                     **text_contract(name, options))
    torch.manual_seed(0)
    model = build_scorer(name, options).eval()
    shape = (1, 3, 4, 56, 56) if video else (1, 3, 56, 56)
    x = to_model_input(torch.randint(0, 256, shape, dtype=torch.uint8), torch.device("cpu"), True)
    tokens = torch.from_numpy(spec.tokenize(["a dog runs"]))
    with torch.no_grad():
        before = model(x, tokens)
        if not video:
            with pytest.raises(RuntimeError, match="rank"):
                model.to(memory_format=torch.channels_last)  # what the worker used to do
        model = to_memory_format(model, video)
        after = model(x, tokens)
    conv = [p for p in model.parameters() if p.dim() == 5]
    assert conv and all(p.is_contiguous(memory_format=torch.channels_last_3d) == video
                        for p in conv)
    assert torch.allclose(before, after, atol=1e-5)


@pytest.mark.parametrize("name", ["vlm", "vlm-video"])
def test_qwen3_vl_trains_through_its_deepstack_mergers(tmp_path, name):
    """A Qwen3-VL ``vlm`` scorer (and ``vlm-video``: 4-frame clips at 2 fps, the conversation
    holding every frame group's media tokens after its time): the reward token added to the
    base's vocabulary starts at the mean embedding; a gradient reaches the vision tower's
    DeepStack mergers (their features enter the language model at the media tokens), the
    language model and the head, and a small step along it moves the pair's margin the right
    way."""
    from tests.tiny_checkpoints import write_qwen2_vl_base

    qwen3 = write_qwen2_vl_base(tmp_path / "qwen3", seed=2, family="qwen3_vl",
                                min_pixels=64 * 64, max_pixels=64 * 64)
    video = name == "vlm-video"
    options = model_options(name, "", RewardHead(), pretrained=str(qwen3),
                            clip=(64, 4, 2.0) if video else (0, 0, 0.0))
    spec = MediaSpec("video" if video else "image", 64, 10**8, frames=4 if video else 0,
                     fps=2.0 if video else 0.0, **text_contract(name, options))
    if video:  # two frame groups, each after its mean time: (0 + 0.5) / 2 and (1 + 1.5) / 2
        assert "<0.2 seconds><|vision_start|>" in options["chat_template"]
        assert "<1.2 seconds><|vision_start|>" in options["chat_template"]
    torch.manual_seed(0)
    model = build_scorer(name, options)
    model.load_state_dict(initial_weights(name, options, 0, pretrained=str(qwen3)))
    from safetensors.torch import load_file

    rows = load_file(str(qwen3 / "model.safetensors"))["model.language_model.embed_tokens.weight"]
    embed = model.net.get_input_embeddings().weight.detach()
    (reward,) = model.reward_token_ids
    assert reward >= rows.shape[0]  # <|Reward|> is added to the base's vocabulary
    # ... at the checkpoint's mean embedding (transformers' mean_resizing), not zeros: a zero
    # row made the embedding's gradient 2.4e5 here, against about 10 now
    torch.testing.assert_close(embed[reward], rows.mean(0), atol=1e-6, rtol=0)
    shape = (2, 3, 4, 64, 64) if video else (2, 3, 64, 64)
    x = to_model_input(torch.randint(0, 256, shape, dtype=torch.uint8), torch.device("cpu"),
                       False)
    tokens = torch.from_numpy(spec.tokenize(["a red apple", "a red apple"]))
    model.eval()  # no dropout: the step's effect is compared on the same function
    margin = model(x[:1], tokens[:1]) - model(x[1:], tokens[1:])
    torch.nn.functional.logsigmoid(margin).neg().sum().backward()
    for prefix in ("net.visual.deepstack_merger_list.", "net.language_model.", "rm_head."):
        assert any(p.grad is not None and p.grad.abs().sum() > 0
                   for n, p in model.named_parameters() if n.startswith(prefix)), prefix
    # A step of length 1e-3 along the gradient (the tiny model's 0.5 init scale).
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None))
    torch.optim.SGD(model.parameters(), lr=float(1e-3 / norm)).step()
    with torch.no_grad():
        after = model(x[:1], tokens[:1]) - model(x[1:], tokens[1:])
    assert float(after) > float(margin.detach())  # the step moved the pair the right way


def test_qwen3_vl_clip_scorer_from_the_config_scores_raw_mp4_bytes(tmp_path):
    """``vlm-video`` on a Qwen3-VL directory from a video config, as ``run video`` and
    ``register-published`` resolve it (``clip_grid``: the config's side, frames and fps): the
    conversation spells out the configured 4 frames at 2 fps (two timed frame groups), and
    the registry's pyfunc scores raw MP4 bytes + prompts with it; the prompt matters."""
    import pandas as pd

    from components.config import load_config
    from components.media.video import encode_video
    from components.registry.published import published_scorer
    from components.registry.pyfunc import ScorerModel
    from tests.tiny_checkpoints import write_qwen2_vl_base

    qwen3 = write_qwen2_vl_base(tmp_path / "qwen3", seed=6, family="qwen3_vl",
                                min_pixels=64 * 64, max_pixels=64 * 64)
    cfg = load_config(None, require_train=False, modality="video", overrides=[
        "model.name=vlm-video", f"model.pretrained={qwen3}", "data.image_size=64",
        "data.video.frames=4", "data.video.fps=2"])
    assert config_problems(cfg) == []
    scorer = published_scorer(cfg).scorer
    template = scorer.options["chat_template"]
    assert template.count("<0.2 seconds><|vision_start|>") == 1
    assert template.count("<1.2 seconds><|vision_start|>") == 1
    assert template.count("<|video_pad|>") == 2 * (64 // 32) ** 2  # every media token
    served = ScorerModel()
    served.load(scorer)
    rng = np.random.default_rng(6)
    clips = [encode_video(rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8), "mp4", fps=8)
             for n in (8, 24)]
    scores = served.predict(None, pd.DataFrame({"video": clips * 2, "prompt": [
        "a dog runs", "a dog runs", "a red car at night", "a red car at night"]}))
    assert np.isfinite(scores).all() and len(set(np.round(scores, 6))) == 4
