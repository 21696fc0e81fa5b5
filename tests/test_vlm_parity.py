"""The vision-language scorers score a published checkpoint as its publisher's own inference
code does: a tiny random checkpoint in exactly the published layout (tests/tiny_checkpoints.py)
is scored twice on the same images/clips and prompts, through the product (decode contract ->
``MediaSpec.tokenize`` -> ``VlmScorer``) and through the publisher's code path, copied below
with the file it comes from; the scores agree within 1e-4.

The publisher's path runs on transformers 5.23 (hpsv3 pins 4.45.2 and deepspeed, VideoAlign
a 4.4x; neither installs here), with the one change 5.x needs: the vision tower is
``model.model.visual`` (``self.visual`` in 4.45) and the checkpoint's 4.45 key names are
mapped to 5.x's as transformers' own loader does.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from components.media.spec import MediaSpec  # noqa: E402
from components.training.models import (  # noqa: E402
    RewardHead,
    build_scorer,
    initial_weights,
    model_options,
    text_contract,
    to_model_input,
)

PROMPTS = ["a photo of a cat", "two dogs playing in the snow, a red apple on a wooden table",
           "an astronaut riding a horse"]


def _png(seed: int, size: int = 56) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _reward_model_bt(base, special_token_ids, rm_head):
    """hpsv3/model/qwen2vl_trainer.py ``Qwen2VLRewardModelBT.forward`` (reward_token
    "special"), copied; ``self`` is ``base`` (a ``Qwen2VLForConditionalGeneration``) with
    ``rm_head``. VideoAlign's trainer.py ``Qwen2VLRewardModelBT.forward`` is the same code
    with ``view(batch_size, 3, -1)`` (three tokens) where HPSv3 has ``view(batch_size, 1, -1)``."""

    def forward(input_ids, attention_mask, pixel_values=None, image_grid_thw=None,
                pixel_values_videos=None, video_grid_thw=None, **_):
        inputs_embeds = base.model.language_model.embed_tokens(input_ids)
        if pixel_values is not None:
            pixel_values = pixel_values.type(base.model.visual.get_dtype())
            image_embeds = base.model.visual(pixel_values, grid_thw=image_grid_thw).pooler_output
            image_mask = (input_ids == base.config.image_token_id).unsqueeze(-1).expand_as(
                inputs_embeds)
            image_embeds = image_embeds.to(inputs_embeds.device, inputs_embeds.dtype)
            inputs_embeds = inputs_embeds.masked_scatter(image_mask, image_embeds)
        if pixel_values_videos is not None:
            pixel_values_videos = pixel_values_videos.type(base.model.visual.get_dtype())
            video_embeds = base.model.visual(pixel_values_videos,
                                             grid_thw=video_grid_thw).pooler_output
            video_mask = (input_ids == base.config.video_token_id).unsqueeze(-1).expand_as(
                inputs_embeds)
            video_embeds = video_embeds.to(inputs_embeds.device, inputs_embeds.dtype)
            inputs_embeds = inputs_embeds.masked_scatter(video_mask, video_embeds)
        outputs = base.model(input_ids=None, position_ids=None, attention_mask=attention_mask,
                             inputs_embeds=inputs_embeds)
        hidden_states = outputs[0]  # [B, L, D]
        logits = rm_head(hidden_states)  # [B, L, N]
        batch_size = input_ids.shape[0]
        special_token_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for special_token_id in special_token_ids:
            special_token_mask = special_token_mask | (input_ids == special_token_id)
        pooled_logits = logits[special_token_mask, ...]
        pooled_logits = pooled_logits.view(batch_size, len(special_token_ids), -1)
        return {"logits": pooled_logits.view(batch_size, -1)}

    return forward


def _publisher_model(directory, tokens, weights: dict[str, torch.Tensor], rm_head: nn.Module):
    """``create_model_and_processor`` of hpsv3/train.py (VideoAlign's train_reward.py): the
    base model's processor, padding side right, the special tokens added, the model's
    embeddings resized to the tokenizer, then the published weights loaded strictly."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(directory, padding_side="right",
                                              local_files_only=True)
    processor.tokenizer.add_special_tokens({"additional_special_tokens": list(tokens)})
    ids = processor.tokenizer.convert_tokens_to_ids(list(tokens))
    base = Qwen2VLForConditionalGeneration.from_pretrained(directory, local_files_only=True)
    base.resize_token_embeddings(len(processor.tokenizer))
    state = {}
    for k, v in weights.items():  # 4.45 names -> 5.x names, as transformers' loader maps them
        if k.startswith("rm_head."):
            continue
        k = "model." + k if k.startswith("visual.") else k.replace(
            "model.", "model.language_model.", 1) if k.startswith("model.") else k
        state[k] = v
    base.load_state_dict(state, strict=True)
    rm_head.load_state_dict({k[len("rm_head."):]: v for k, v in weights.items()
                             if k.startswith("rm_head.")}, strict=True)
    base.eval(), rm_head.eval()
    return processor, _reward_model_bt(base, ids, rm_head)


def _product(name: str, directory, head: RewardHead, spec_kwargs: dict):
    k = spec_kwargs
    clip = (k["size"], k["frames"], k.get("fps", 0.0)) if k["modality"] == "video" else (0, 0, 0.0)
    options = model_options(name, "", head, pretrained=str(directory), clip=clip)
    spec = MediaSpec(**spec_kwargs, **text_contract(name, options))
    model = build_scorer(name, options)
    model.load_state_dict(initial_weights(name, options, 0, pretrained=str(directory)))
    return spec, model.eval()


def _hpsv3_reference(directory, images: list[bytes], prompts: list[str],
                     side: int = 56) -> torch.Tensor:
    """hpsv3/inference.py ``HPSv3RewardInferencer`` on ``side`` px PNG ``images`` and
    ``prompts``: the ``(mu, log sigma)`` logits, ``(N, 2)``."""
    from PIL import Image
    from safetensors.torch import load_file

    from components.training import vlm_prompts as P

    weights = load_file(str(directory / "HPSv3.safetensors"))
    hidden = weights["model.embed_tokens.weight"].shape[1]
    rm_head = nn.Sequential(nn.Linear(hidden, 1024), nn.ReLU(), nn.Dropout(0.05),
                            nn.Linear(1024, 16), nn.ReLU(), nn.Linear(16, 2))
    processor, forward = _publisher_model(directory, P.HPSV3_TOKENS, weights, rm_head)
    pixels = side * side  # hpsv3: max_pixels = min_pixels = 256 * 28 * 28
    message_list = [[{"role": "user", "content": [
        {"type": "image", "image": Image.open(io.BytesIO(b)).convert("RGB"),
         "min_pixels": pixels, "max_pixels": pixels},
        {"type": "text", "text": P.HPSV3_INSTRUCTION.format(text_prompt=text)}]}]
        for text, b in zip(prompts, images, strict=True)]
    image_inputs = [m[0]["content"][0]["image"] for m in message_list]  # smart_resize keeps them
    # hpsv3's fetch_image resizes to the message's pixel budget before the processor, whose
    # own budget (Qwen2-VL-7B-Instruct's: 3136 .. 12845056 pixels) then keeps the size; the
    # tiny base's processor has a 56x56 budget, so the message's is passed to it.
    batch = processor(text=processor.apply_chat_template(message_list, tokenize=False,
                                                         add_generation_prompt=True),
                      images=image_inputs, padding=True, return_tensors="pt",
                      images_kwargs={"size": {"shortest_edge": pixels, "longest_edge": pixels}})
    assert batch["image_grid_thw"].tolist() == [[1, side // 14, side // 14]] * len(images)
    with torch.no_grad():
        return forward(**batch)["logits"]


@pytest.mark.parametrize("key_names", ["transformers-4.45", "transformers-4.52"])
def test_hpsv3_layout_scores_as_hpsv3_inference(tmp_path, key_names):
    """hpsv3/inference.py ``HPSv3RewardInferencer``: ``prepare_batch`` (the message with
    ``INSTRUCTION.format(text_prompt=...) + prompt_with_special_token``, the image at
    ``min_pixels = max_pixels``, ``apply_chat_template(..., add_generation_prompt=True)``,
    ``processor(..., padding=True)``), ``reward`` -> ``logits``; the score is ``logits[:, 0]``
    (mu). Tiny: 56x56 pixels where HPSv3 has 256*28*28. ``HPSv3.safetensors`` as hpsv3 1.0.0
    saves it (transformers 4.45: ``visual.*``, ``model.*``) and as a re-save under
    transformers >= 4.52 names it (``model.visual.*``, ``model.language_model.*``)."""
    from safetensors.torch import load_file

    from tests.tiny_checkpoints import write_hpsv3_layout

    directory = write_hpsv3_layout(tmp_path / "hpsv3", seed=5)
    images = [_png(i) for i in range(3)]

    # The publisher's path.
    reference = _hpsv3_reference(directory, images, PROMPTS)
    if key_names == "transformers-4.52":  # the same tensors under the new names
        from safetensors.torch import save_file

        weights = load_file(str(directory / "HPSv3.safetensors"))
        renamed = {("model." + k if k.startswith("visual.") else
                    k.replace("model.", "model.language_model.", 1) if k.startswith("model.")
                    else k): v for k, v in weights.items()}
        assert "model.language_model.embed_tokens.weight" in renamed
        assert "model.visual.patch_embed.proj.weight" in renamed
        save_file(renamed, str(directory / "HPSv3.safetensors"))

    # The product's path: decode contract, tokens from the decode actors, the scorer.
    spec, model = _product("vlm", directory, RewardHead("mu_sigma"),
                           dict(modality="image", size=56, max_pixels=10**8))
    x = torch.from_numpy(np.stack([spec.decode(b)[0] for b in images]))
    tokens = torch.from_numpy(spec.tokenize(PROMPTS))
    with torch.no_grad():
        out = model(to_model_input(x, torch.device("cpu"), False), tokens, outputs=True)
        score = model(to_model_input(x, torch.device("cpu"), False), tokens)

    assert reference.shape == out.shape == (3, 2)
    assert float(reference[:, 0].max() - reference[:, 0].min()) > 1e-2  # the scores differ
    print(f"hpsv3 max abs difference: {float((out - reference).abs().max()):.2e}")
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(score, reference[:, 0], atol=1e-4, rtol=0)  # score = mu


def _videoalign_lora(base, path):
    """VideoAlign's LoRA as its code builds and loads it: ``train_reward.py``
    ``find_target_linear_names`` (every Linear/Embedding whose name holds none of
    ``lora_namespan_exclude``) -> peft ``LoraConfig``; ``utils.load_model_from_checkpoint``
    (``_insert_adapter_name_into_state_dict`` -> ``lora_A.default.weight``; the model's state
    dict updated with ``non_lora_state_dict.pth`` and the adapters, loaded strictly)."""
    import json

    from peft import LoraConfig, inject_adapter_in_model
    from safetensors.torch import load_file

    cfg = json.loads((path / "model_config.json").read_text())["peft_lora_config"]
    exclude = cfg["lora_namespan_exclude"]
    targets = [name for name, module in base.named_modules()
               if not any(ex in name for ex in exclude)
               and isinstance(module, (nn.Linear, nn.Embedding))]
    base = inject_adapter_in_model(LoraConfig(target_modules=targets, r=cfg["lora_r"],
                                              lora_alpha=cfg["lora_alpha"],
                                              lora_dropout=cfg["lora_dropout"],
                                              use_rslora=cfg["use_rslora"], bias="none"), base)

    def to_5x(key):  # peft's prefix off, 4.45 names -> 5.x names
        key = key.removeprefix("base_model.model.")
        if key.startswith("visual."):
            return "model." + key
        return key.replace("model.", "model.language_model.", 1) if key.startswith("model.") else key

    ckpt = path / "checkpoint-100"
    lora = {to_5x(k).replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
            for k, v in load_file(str(ckpt / "adapter_model.safetensors")).items()}
    non_lora = {to_5x(k): v for k, v in torch.load(ckpt / "non_lora_state_dict.pth").items()}
    state = base.state_dict()
    state.update({k: v for k, v in non_lora.items() if not k.startswith("rm_head.")})
    state.update(lora)
    base.load_state_dict(state, strict=True)
    return base, non_lora["rm_head.weight"]


def _videoalign_reference(directory, clips: torch.Tensor,
                          prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """VideoAlign's inference.py on uint8 ``(N, 3, T, S, S)`` clips (the frames
    ``fetch_video`` would give) and ``prompts``: the normalised VQ, MQ, TA ``(N, 3)`` and
    Overall ``(N,)``."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from components.training import vlm_prompts as P
    from tests.tiny_checkpoints import VIDEOALIGN_NORM

    processor = AutoProcessor.from_pretrained(directory, padding_side="right",
                                              local_files_only=True)
    processor.tokenizer.add_special_tokens({"additional_special_tokens": list(P.VIDEOALIGN_TOKENS)})
    ids = processor.tokenizer.convert_tokens_to_ids(list(P.VIDEOALIGN_TOKENS))
    base = Qwen2VLForConditionalGeneration.from_pretrained(directory, local_files_only=True)
    base.resize_token_embeddings(len(processor.tokenizer))
    base, head_weight = _videoalign_lora(base, directory)
    rm_head = nn.Linear(head_weight.shape[1], 1, bias=False)
    rm_head.weight.data.copy_(head_weight)
    base.eval()
    forward = _reward_model_bt(base, ids, rm_head)
    side = clips.shape[-1]
    chat_data = [[{"role": "user", "content": [
        {"type": "video", "video": clip.permute(1, 0, 2, 3).float(), "max_pixels": side * side,
         "fps": 2.0},
        {"type": "text", "text": P.VIDEOALIGN_INSTRUCTION.format(text_prompt=p)}]}]
        for clip, p in zip(clips, prompts, strict=True)]
    video_inputs = [c[0]["content"][0]["video"] for c in chat_data]  # smart_resize keeps them
    batch = processor(text=processor.apply_chat_template(chat_data, tokenize=False,
                                                         add_generation_prompt=True),
                      videos=video_inputs, padding=True, return_tensors="pt",
                      videos_kwargs={"do_rescale": True, "do_sample_frames": False})
    with torch.no_grad():
        logits = forward(**batch)["logits"]
    reference = torch.stack([(logits[:, k] - VIDEOALIGN_NORM[f"{n}_mean"]) / VIDEOALIGN_NORM[f"{n}_std"]
                             for k, n in enumerate(("VQ", "MQ", "TA"))], dim=1)
    return reference, reference.sum(1)


def test_videoalign_layout_scores_as_videoalign_inference(tmp_path):
    """VideoAlign's inference.py ``VideoVLMRewardInference.reward``: ``prepare_batch`` (the
    video entry + ``build_prompt(prompt, eval_dim, "detailed_special")``, ``fetch_video``'s
    frames as a float ``(T, C, H, W)`` tensor, ``processor(..., padding=True,
    videos_kwargs={"do_rescale": True})``), ``logits`` = VQ, MQ, TA at the three reward
    tokens, ``_norm`` with ``inference_config``, Overall = VQ + MQ + TA. The LoRA runs unmerged
    in peft here and merged in the product."""
    from tests.tiny_checkpoints import write_videoalign_layout

    directory = write_videoalign_layout(tmp_path / "videoreward", seed=7)
    rng = np.random.default_rng(3)
    clips = torch.from_numpy(rng.integers(0, 256, (2, 3, 4, 56, 56), dtype=np.uint8))
    prompts = PROMPTS[:2]
    reference, overall = _videoalign_reference(directory, clips, prompts)

    head = RewardHead("named", ("VQ", "MQ", "TA"), (1.0, 1.0, 1.0))
    spec, model = _product("vlm-video", directory, head,
                           dict(modality="video", size=56, max_pixels=10**8, frames=4))
    tokens = torch.from_numpy(spec.tokenize(prompts))
    x = to_model_input(clips, torch.device("cpu"), False)
    with torch.no_grad():
        out = model(x, tokens, outputs=True)
        score = model(x, tokens)
    assert out.shape == reference.shape == (2, 3)
    assert float((reference[0] - reference[1]).abs().max()) > 1e-2  # the clips score apart
    print(f"videoalign max abs difference: {float((out - reference).abs().max()):.2e}")
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(score, overall, atol=1e-4, rtol=0)


def test_instructions_are_the_publishers_verbatim():
    """The parity tests above render the product's instruction constants on both sides, so
    they cannot see a changed instruction; this pins the texts to the publishers' files:
    HPSv3 ``INSTRUCTION + prompt_with_special_token`` (hpsv3/dataset/data_collator_qwen.py,
    trailing spaces included) and VideoAlign ``DETAILED_PROMPT_WITH_SPECIAL_TOKEN``
    (prompt_template.py), by SHA-256 of the exact strings read there."""
    import hashlib

    from components.training import vlm_prompts as P

    def digest(text):
        return hashlib.sha256(text.encode()).hexdigest()

    assert digest(P.HPSV3_INSTRUCTION) == "5e6fde2238a332ebdfdef60128d3ded626450a694897f2c963e6b44cd80fe3c8"
    assert digest(P.VIDEOALIGN_INSTRUCTION) == "fdb6309bac618dd0c8b1b589d3a0970a974f7856eecbb355a190b2dce54af700"
    assert P.HPSV3_INSTRUCTION.count("{text_prompt}") == 1
    assert P.HPSV3_INSTRUCTION.endswith("<|Reward|>\n\nEND\n")
    assert [t in P.VIDEOALIGN_INSTRUCTION for t in P.VIDEOALIGN_TOKENS] == [True] * 3


def _transformers_twin(cls, directory, model, spec, images: list[bytes], tokens: torch.Tensor):
    """transformers' own ``cls`` (a ``*ForConditionalGeneration``) holding ``model``'s weights
    (the added reward token's row included), the image processor's ``pixel_values`` of the
    decoded ``images``, and the product's ``tokens`` with the one image placeholder expanded
    to the processor's count: (base, pixels, ids, image token id)."""
    from PIL import Image
    from transformers import AutoProcessor

    base = cls.from_pretrained(directory, local_files_only=True)
    net = {k[len("net."):]: v for k, v in model.state_dict().items() if k.startswith("net.")}
    base.resize_token_embeddings(net["language_model.embed_tokens.weight"].shape[0])
    missing, unexpected = base.model.load_state_dict(net, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    processor = AutoProcessor.from_pretrained(directory, local_files_only=True)
    decoded = [Image.fromarray(spec.decode(b)[0].transpose(1, 2, 0)) for b in images]
    pixels = processor.image_processor(images=decoded, return_tensors="pt")
    per_image = int(pixels["image_grid_thw"][0].prod()) // 4  # 2x2 merge
    media = base.config.image_token_id
    expanded = []
    for row in tokens.long():
        row = row[row != model.pad_id]
        at = int((row == media).nonzero()[0, 0])
        expanded.append(torch.cat([row[:at], row.new_full((per_image,), media), row[at + 1:]]))
    width = max(len(r) for r in expanded)
    ids = torch.stack([torch.cat([r, r.new_full((width - len(r),), model.pad_id)])
                       for r in expanded])
    return base.eval(), pixels, ids, media


def test_qwen2_5_vl_base_scores_as_transformers_qwen2_5_vl(tmp_path):
    """``vlm`` on a Qwen2.5-VL base (``model_type: qwen2_5_vl``: windowed vision attention,
    here 28 px windows with the second block full, so window order matters) scores as the
    publishers' reward forward run on transformers' own ``Qwen2_5_VLForConditionalGeneration``
    holding the same weights: the image processor's ``pixel_values`` through its vision
    tower, spliced at the image tokens, its language model, the same head at the reward
    token. Only the token ids are shared (the product's, with the one image placeholder
    expanded to the processor's count)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from tests.tiny_checkpoints import write_qwen2_vl_base

    directory = write_qwen2_vl_base(tmp_path / "qwen2.5-vl", seed=3, family="qwen2_5_vl")
    images = [_png(10 + i) for i in range(3)]
    spec, model = _product("vlm", directory, RewardHead(),
                           dict(modality="image", size=56, max_pixels=10**8))
    assert type(model.net).__name__ == "Qwen2_5_VLModel"
    x = torch.from_numpy(np.stack([spec.decode(b)[0] for b in images]))
    tokens = torch.from_numpy(spec.tokenize(PROMPTS))
    with torch.no_grad():
        out = model(to_model_input(x, torch.device("cpu"), False), tokens, outputs=True)

    base, pixels, ids, media = _transformers_twin(Qwen2_5_VLForConditionalGeneration, directory,
                                                  model, spec, images, tokens)
    # _reward_model_bt's steps (Qwen2.5-VL's vision tower has no ``get_dtype``).
    with torch.no_grad():
        embeds = base.model.language_model.embed_tokens(ids)
        image = base.model.visual(pixels["pixel_values"],
                                  grid_thw=pixels["image_grid_thw"]).pooler_output
        embeds = embeds.masked_scatter((ids == media).unsqueeze(-1).expand_as(embeds), image)
        hidden = base.model(input_ids=None, position_ids=None, inputs_embeds=embeds,
                            attention_mask=(ids != model.pad_id).long())[0]
        (reward,) = model.reward_token_ids
        reference = model.rm_head(hidden)[ids == reward]

    assert reference.shape == out.shape == (3, 1)
    assert float(reference.max() - reference.min()) > 1e-2  # the scores differ
    print(f"qwen2.5-vl max abs difference: {float((out - reference).abs().max()):.2e}")
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=0)


def test_qwen3_vl_base_scores_as_transformers_qwen3_vl(tmp_path):
    """``vlm`` on a Qwen3-VL base (``model_type: qwen3_vl``: 16 px patches, interpolated
    position embeddings, DeepStack) scores as transformers' own ``Qwen3VLModel`` forward with
    the same weights: the image processor's ``pixel_values``, its own splice and DeepStack
    injection (vision block 0's features added after language-model layer 0 at the image
    tokens), at the publishers' sequential positions, the same head at the reward token. A
    scorer that skipped the DeepStack features would differ (checked)."""
    from transformers import Qwen3VLForConditionalGeneration

    from tests.tiny_checkpoints import write_qwen2_vl_base

    directory = write_qwen2_vl_base(tmp_path / "qwen3-vl", seed=4, family="qwen3_vl",
                                    min_pixels=64 * 64, max_pixels=64 * 64)
    images = [_png(20 + i, size=64) for i in range(3)]
    spec, model = _product("vlm", directory, RewardHead(),
                           dict(modality="image", size=64, max_pixels=10**8))
    assert type(model.net).__name__ == "Qwen3VLModel"
    x = torch.from_numpy(np.stack([spec.decode(b)[0] for b in images]))
    tokens = torch.from_numpy(spec.tokenize(PROMPTS))
    with torch.no_grad():
        out = model(to_model_input(x, torch.device("cpu"), False), tokens, outputs=True)

    base, pixels, ids, media = _transformers_twin(Qwen3VLForConditionalGeneration, directory,
                                                  model, spec, images, tokens)
    mask = (ids != model.pad_id).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[None].expand(3, -1, -1)
    (reward,) = model.reward_token_ids
    with torch.no_grad():
        hidden = base.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            pixel_values=pixels["pixel_values"],
                            image_grid_thw=pixels["image_grid_thw"]).last_hidden_state
        reference = model.rm_head(hidden)[ids == reward]
        # Without DeepStack: the same splice, the language model alone.
        embeds = base.model.get_input_embeddings()(ids)
        image = base.model.visual(pixels["pixel_values"],
                                  grid_thw=pixels["image_grid_thw"]).pooler_output
        embeds = embeds.masked_scatter((ids == media).unsqueeze(-1).expand_as(embeds), image)
        flat = base.model.language_model(inputs_embeds=embeds, attention_mask=mask,
                                         position_ids=positions).last_hidden_state
        no_deepstack = model.rm_head(flat)[ids == reward]

    assert reference.shape == out.shape == (3, 1)
    assert float(reference.max() - reference.min()) > 1e-2  # the scores differ
    assert float((no_deepstack - reference).abs().max()) > 1e-3  # DeepStack matters here
    print(f"qwen3-vl max abs difference: {float((out - reference).abs().max()):.2e}")
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=0)


@pytest.mark.slow  # a registered model: an MLflow store and a pyfunc load, ~15 s
def test_qwen3_vl_clips_score_as_transformers_qwen3_vl(tmp_path):
    """``vlm-video`` on a Qwen3-VL base: the conversation is the one Qwen3-VL's own processor
    writes for the clip (every frame group after its time, ``<0.2 seconds>`` ...: the same
    token ids, checked), and the scores are those of transformers' ``Qwen3VLModel`` forward on
    the processor's ``pixel_values_videos`` (its splice and DeepStack at the video tokens) at
    the publishers' sequential positions, the same head at the reward token."""
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration
    from transformers.video_utils import VideoMetadata

    from components.media.vlm_text import PROMPT
    from components.training import vlm_prompts as P
    from tests.tiny_checkpoints import write_qwen2_vl_base

    directory = write_qwen2_vl_base(tmp_path / "qwen3-vl", seed=5, family="qwen3_vl",
                                    min_pixels=64 * 64, max_pixels=64 * 64)
    frames, fps = 4, 2.0
    spec, model = _product("vlm-video", directory, RewardHead(),
                           dict(modality="video", size=64, frames=frames, fps=fps,
                                max_pixels=10**8))
    rng = np.random.default_rng(5)
    clips = rng.integers(0, 256, (3, 3, frames, 64, 64), dtype=np.uint8)
    tokens = torch.from_numpy(spec.tokenize(PROMPTS))
    with torch.no_grad():
        out = model(to_model_input(torch.from_numpy(clips), torch.device("cpu"), False),
                    tokens, outputs=True)

    processor = AutoProcessor.from_pretrained(directory, local_files_only=True)
    processor.tokenizer.add_special_tokens({"additional_special_tokens": list(P.PLAIN_TOKENS)})
    texts = [processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text":
          P.PLAIN_VIDEO_INSTRUCTION.format(text_prompt=p)}]}],
        tokenize=False, add_generation_prompt=True) for p in PROMPTS]
    videos = [list(c.transpose(1, 2, 3, 0)) for c in clips]  # T frames of (H, W, 3)
    metadata = [VideoMetadata(total_num_frames=frames, fps=fps, width=64, height=64,
                              frames_indices=list(range(frames))) for _ in clips]
    inputs = processor(text=texts, videos=videos, video_metadata=metadata,
                       do_sample_frames=False, padding=True, return_tensors="pt")
    ids = inputs["input_ids"]
    assert "<0.2 seconds>" in processor.batch_decode(ids)[0]  # frames 0-1 at 0 and 0.5 s
    for row, real, product in zip(ids, inputs["attention_mask"], tokens.long(), strict=True):
        # The conversation is the processor's, token for token (the prompt where it goes).
        assert row[real.bool()].tolist() == product[product != model.pad_id].tolist()
    assert PROMPT not in processor.batch_decode(ids)[0]
    base = Qwen3VLForConditionalGeneration.from_pretrained(directory, local_files_only=True)
    net = {k[len("net."):]: v for k, v in model.state_dict().items() if k.startswith("net.")}
    base.resize_token_embeddings(net["language_model.embed_tokens.weight"].shape[0])
    base.model.load_state_dict(net)
    mask = inputs["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[None].expand(3, -1, -1)
    (reward,) = model.reward_token_ids
    with torch.no_grad():
        hidden = base.eval().model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                   pixel_values_videos=inputs["pixel_values_videos"],
                                   video_grid_thw=inputs["video_grid_thw"]).last_hidden_state
        reference = model.rm_head(hidden)[ids == reward]

    assert reference.shape == out.shape == (3, 1)
    assert float(reference.max() - reference.min()) > 1e-2  # the clips score apart
    print(f"qwen3-vl clip max abs difference: {float((out - reference).abs().max()):.2e}")
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=0)


def test_hpsv3_registers_published_and_its_pyfunc_scores_as_hpsv3_inference(
        tmp_path, tracking_uri, capsys):
    """``visual-dpo register-published`` on the HPSv3 layout: the version registered in a real
    sqlite MLflow store, loaded by alias with ``mlflow.pyfunc.load_model``, scores raw PNG
    bytes + prompts as hpsv3's inference does (``mu``), the checkpoint directory gone."""
    import json
    import shutil

    import mlflow
    import pandas as pd

    from pipelines.__main__ import main
    from tests.tiny_checkpoints import write_hpsv3_layout

    directory = write_hpsv3_layout(tmp_path / "hpsv3", seed=5)
    images = [_png(30 + i, size=448) for i in range(3)]  # HPSv3's own 448x448 (its layout's
    reference = _hpsv3_reference(directory, images, PROMPTS, side=448)  # pixel budget)
    summary = tmp_path / "register.json"
    rc = main(["register-published", "--model-name", "hpsv3", "--alias", "champion",
               "--tracking-uri", tracking_uri, "--summary", str(summary), "model.name=vlm",
               f"model.pretrained={directory}", "model.head=mu_sigma", "loss.type=uncertainty",
               "data.image_size=448"])
    capsys.readouterr()
    s = json.loads(summary.read_text())
    assert rc == 0, s
    assert s["aliases"] == ["champion"] and s["model_version"] == "1"
    shutil.rmtree(directory)  # what a consumer scores with travelled with the model

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model("models:/hpsv3@champion")
    ours = model.predict(pd.DataFrame({"image": images, "prompt": PROMPTS}))
    assert float(reference[:, 0].max() - reference[:, 0].min()) > 1e-2  # the scores differ
    np.testing.assert_allclose(np.asarray(ours, dtype=np.float64),
                               reference[:, 0].double().numpy(), atol=1e-4, rtol=0)


@pytest.mark.slow  # a registered model: an MLflow store and a pyfunc load, ~15 s
def test_videoalign_registers_published_and_its_pyfunc_scores_as_videoalign_inference(
        tmp_path, tracking_uri, capsys):
    """``visual-dpo register-published`` on the VideoAlign layout: the registered pyfunc,
    loaded by alias, scores raw MP4 bytes + prompts per head (VQ, MQ, TA, normalised) and in
    total as VideoAlign's inference does on the frames the registered decode contract
    samples, the checkpoint directory gone."""
    import json
    import shutil

    import mlflow
    import pandas as pd

    from components.media.video import encode_video
    from components.tracking.models import load_scorer
    from pipelines.__main__ import main
    from tests.tiny_checkpoints import write_videoalign_layout

    directory = write_videoalign_layout(tmp_path / "videoreward", seed=7)
    rng = np.random.default_rng(8)
    mp4 = [encode_video(rng.integers(0, 256, (8, 56, 56, 3), dtype=np.uint8), "mp4", fps=4)
           for _ in range(2)]
    prompts = PROMPTS[:2]
    summary = tmp_path / "register.json"
    rc = main(["register-published", "--model-name", "videoreward", "--alias", "champion",
               "--modality", "video", "--tracking-uri", tracking_uri, "--summary", str(summary),
               "model.name=vlm-video", f"model.pretrained={directory}", "model.head=named",
               "model.head_names=VQ,MQ,TA", "loss.type=btt", "data.image_size=56",
               "data.video.frames=4", "data.video.fps=2"])
    capsys.readouterr()
    s = json.loads(summary.read_text())
    assert rc == 0, s
    scorer = load_scorer("models:/videoreward@champion")
    clips = torch.from_numpy(np.stack([scorer.spec.decode(b)[0] for b in mp4]))
    assert tuple(clips.shape) == (2, 3, 4, 56, 56)
    reference, overall = _videoalign_reference(directory, clips, prompts)
    shutil.rmtree(directory)

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model("models:/videoreward@champion")
    out = model.predict(pd.DataFrame({"video": mp4, "prompt": prompts}))
    assert list(out.columns) == ["score", "VQ", "MQ", "TA"]
    assert float((reference[0] - reference[1]).abs().max()) > 1e-2  # the clips score apart
    np.testing.assert_allclose(out[["VQ", "MQ", "TA"]].to_numpy(dtype=np.float64),
                               reference.double().numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["score"].to_numpy(dtype=np.float64),
                               overall.double().numpy(), atol=1e-4, rtol=0)
