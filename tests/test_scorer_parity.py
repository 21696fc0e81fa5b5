"""The product scores published CLIP-family checkpoints exactly as their publishers' own
inference code does, on the same inputs (within 1e-4).

Each checkpoint is tiny and random but in the publisher's file layout (tests/tiny_checkpoints.py),
loaded through the product's code path (``model_options`` -> ``text_contract`` /
``MediaSpec`` -> ``initial_weights`` -> ``build_scorer``; prompts tokenised by the spec, as the
decode actors and the registered model do; images decoded by ``MediaSpec.decode`` and
normalised by ``to_model_input``). The reference is the publisher's code, copied below with
its file cited, run on the same checkpoint.

Where the preprocessing differs (it does only when an image must be resized):

- PickScore's processor (``CLIPImageProcessor``) resizes the shortest edge to 224 with a
  bicubic filter, then centre-crops; the data pipeline resizes the shortest edge with Pillow's
  box reduction + bilinear filter (media/image.py), then centre-crops.
- HPSv2's ``preprocess_val`` (``light_augmentation=True``: ``ResizeMaxSize``) resizes the
  *longest* edge to 224 (bicubic) and pads to a square with black; the pipeline crops.

So the score parity runs on 224x224 images (no resize on either side), and a second test feeds
the processor's own pixels for a non-square image, converted to the pipeline's normalisation,
to show the models agree on any pixels; ``test_*_pixels_*`` check that for 224x224 inputs the
decode + normalisation equals the publisher's preprocessing.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from components.config import DataConfig
from components.media.spec import MediaSpec
from components.training.models import (
    MEAN,
    STD,
    build_scorer,
    initial_weights,
    model_options,
    text_contract,
    to_model_input,
)
from tests.tiny_checkpoints import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

pytest.importorskip("transformers")
pytest.importorskip("open_clip")

TOL = 1e-4
PROMPTS = ["a photo of a cat", "An astronaut riding a horse, 4k",
           "the quick brown fox " * 40,  # > 77 tokens: truncated by both
           ""]


def _png(seed: int, size: tuple[int, int] = (224, 224)) -> bytes:
    rng = np.random.default_rng(seed)
    px = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    return buf.getvalue()


def _product(name: str, arch: str, pretrained: str, score_scale: str = "logit_scale"):
    """The scorer and its decode contract, built as a run builds them."""
    options = model_options(name, arch, pretrained=pretrained, score_scale=score_scale)
    spec = MediaSpec.from_config("image", DataConfig(image_size=224),
                                 text_contract(name, options))
    model = build_scorer(name, options)
    model.load_state_dict(initial_weights(name, options, seed=0, pretrained=pretrained))
    return model.eval(), spec


def _product_scores(model, spec: MediaSpec, images: list[bytes], prompts: list[str]):
    """Raw bytes + prompts -> scores, through the decode contract (as the pyfunc does)."""
    pixels = torch.from_numpy(np.stack([spec.decode(b)[0] for b in images]))
    tokens = torch.from_numpy(spec.tokenize(prompts))
    with torch.no_grad():
        return model(to_model_input(pixels, torch.device("cpu"), False), tokens)


def _imagenet_from(pixel_values: torch.Tensor, mean, std) -> torch.Tensor:
    """A publisher's normalised pixels in the pipeline's (ImageNet) normalisation."""
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (pixel_values * s + m - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(
        STD).view(1, 3, 1, 1)


# --- PickScore: transformers CLIP directory --------------------------------------------------

def pickscore_reference(processor_name_or_path: str, model_pretrained_name_or_path: str,
                        prompt: str, images: list[Image.Image]) -> torch.Tensor:
    """yuvalkirstain/PickScore README.md (commit f79607f), ``calc_probs`` up to ``scores``
    (before the softmax), verbatim but for: ``local_files_only=True`` (nothing downloads),
    CPU, and ``.pooler_output`` after ``get_*_features``, which in transformers 5 return a
    ``BaseModelOutputWithPooling`` (in 4.x, the README's version, the projected tensor)."""
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(processor_name_or_path, local_files_only=True)
    model = AutoModel.from_pretrained(model_pretrained_name_or_path,
                                      local_files_only=True).eval()
    image_inputs = processor(
        images=images,
        padding=True,
        truncation=True,
        max_length=77,
        return_tensors="pt",
    )
    text_inputs = processor(
        text=prompt,
        padding=True,
        truncation=True,
        max_length=77,
        return_tensors="pt",
    )
    with torch.no_grad():
        # embed
        image_embs = model.get_image_features(**image_inputs).pooler_output
        image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)

        text_embs = model.get_text_features(**text_inputs).pooler_output
        text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)

        # score
        scores = model.logit_scale.exp() * (text_embs @ image_embs.T)[0]
    return scores


@pytest.fixture(scope="module")
def pickscore(tmp_path_factory):
    from tests.tiny_checkpoints import write_pickscore_layout

    return write_pickscore_layout(tmp_path_factory.mktemp("pickscore"))


def test_pickscore_scores_equal_the_readme_code(pickscore):
    model, spec = _product("hf-clip", "", str(pickscore))
    images = [_png(i) for i in range(3)]
    pil = [Image.open(io.BytesIO(b)) for b in images]
    worst = 0.0
    for prompt in PROMPTS:
        ours = _product_scores(model, spec, images, [prompt] * len(images))
        ref = pickscore_reference(str(pickscore), str(pickscore), prompt, pil)
        worst = max(worst, (ours - ref).abs().max().item())
        assert torch.allclose(ours, ref, atol=TOL, rtol=0), (prompt, ours, ref)
    assert ours.abs().max() > 1e-2  # not vacuous: the scores are not all ~0
    print(f"PickScore layout, 224x224 PNGs: max |ours - README| = {worst:.2e}")


def test_pickscore_on_the_processors_pixels_of_a_resized_image(pickscore):
    """A 320x200 image: the processor's bicubic resize differs from the pipeline's, so both
    models get the processor's pixels (ours in ImageNet normalisation, as the pipeline feeds
    it) and the prompt's ids from our tokenizer."""
    from transformers import AutoProcessor

    model, spec = _product("hf-clip", "", str(pickscore))
    pil = [Image.open(io.BytesIO(_png(7, (320, 200)))), Image.open(io.BytesIO(_png(8, (200, 320))))]
    processor = AutoProcessor.from_pretrained(str(pickscore), local_files_only=True)
    pixel_values = processor(images=pil, return_tensors="pt")["pixel_values"]
    prompt = PROMPTS[1]
    with torch.no_grad():
        ours = model(_imagenet_from(pixel_values, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
                     torch.from_numpy(spec.tokenize([prompt] * 2)))
    ref = pickscore_reference(str(pickscore), str(pickscore), prompt, pil)
    assert torch.allclose(ours, ref, atol=TOL, rtol=0), (ours, ref)


def test_pickscore_pixels_and_token_ids_equal_the_processors(pickscore):
    """224x224 (no resize): the decode + ImageNet normalisation, mapped to CLIP's by the
    scorer, equals ``CLIPImageProcessor``'s ``pixel_values``; the spec's ids equal the
    processor's ``padding="max_length", truncation=True, max_length=77`` ids."""
    from transformers import AutoProcessor

    model, spec = _product("hf-clip", "", str(pickscore))
    images = [_png(i) for i in range(3)]
    processor = AutoProcessor.from_pretrained(str(pickscore), local_files_only=True)
    expected = processor(images=[Image.open(io.BytesIO(b)) for b in images],
                         return_tensors="pt")["pixel_values"]
    pixels = torch.from_numpy(np.stack([spec.decode(b)[0] for b in images]))
    x = to_model_input(pixels, torch.device("cpu"), False)
    ours = x * model._norm_scale + model._norm_shift  # what forward feeds the vision tower
    assert (ours - expected).abs().max().item() < TOL

    ids = processor(text=PROMPTS, padding="max_length", truncation=True, max_length=77,
                    return_tensors="np")["input_ids"]
    assert np.array_equal(spec.tokenize(PROMPTS), ids)
    assert spec.text == "hf" and spec.context_length == 77


def test_pickscore_score_scale_none_is_the_cosine(pickscore):
    scaled, spec = _product("hf-clip", "", str(pickscore))
    plain, _ = _product("hf-clip", "", str(pickscore), score_scale="none")
    images = [_png(i) for i in range(2)]
    a = _product_scores(scaled, spec, images, PROMPTS[:2])
    b = _product_scores(plain, spec, images, PROMPTS[:2])
    assert torch.allclose(a, b * scaled.net.logit_scale.exp(), atol=TOL)
    assert b.abs().max() <= 1.0


# --- HPSv2: open_clip ViT-H-14 .pt ----------------------------------------------------------

def hpsv2_preprocess_val(image_size: int, mean, std):
    """tgxs002/HPSv2 (commit 866735e) ``hpsv2/src/open_clip/transform.py``: ``image_transform
    (is_train=False, resize_longest_max=True)``, which ``create_model_and_transforms`` builds
    as ``preprocess_val`` with ``light_augmentation=True`` (as ``img_score.py`` asks);
    ``ResizeMaxSize``, ``_convert_to_rgb_or_rgba`` and ``MaskAwareNormalize`` copied."""
    import torch.nn.functional  # noqa: F401
    from torch import nn
    from torchvision.transforms import Compose, InterpolationMode, Normalize, ToTensor
    from torchvision.transforms import functional as F

    class ResizeMaxSize(nn.Module):
        def __init__(self, max_size, interpolation=InterpolationMode.BICUBIC, fn='max', fill=0):
            super().__init__()
            if not isinstance(max_size, int):
                raise TypeError(f"Size should be int. Got {type(max_size)}")
            self.max_size = max_size
            self.interpolation = interpolation
            self.fn = min if fn == 'min' else min
            self.fill = fill

        def forward(self, img):
            if isinstance(img, torch.Tensor):
                height, width = img.shape[1:]
            else:
                width, height = img.size
            scale = self.max_size / float(max(height, width))
            if scale != 1.0:
                new_size = tuple(round(dim * scale) for dim in (height, width))
                img = F.resize(img, new_size, self.interpolation)
                pad_h = self.max_size - new_size[0]
                pad_w = self.max_size - new_size[1]
                img = F.pad(img, padding=[pad_w//2, pad_h//2, pad_w - pad_w//2, pad_h - pad_h//2], fill=self.fill)
            return img

    def _convert_to_rgb_or_rgba(image):
        if image.mode == 'RGBA':
            return image
        else:
            return image.convert('RGB')

    class MaskAwareNormalize(nn.Module):
        def __init__(self, mean, std):
            super().__init__()
            self.normalize = Normalize(mean=mean, std=std)

        def forward(self, tensor):
            if tensor.shape[0] == 4:
                return torch.cat([self.normalize(tensor[:3]), tensor[3:]], dim=0)
            else:
                return self.normalize(tensor)

    return Compose([_convert_to_rgb_or_rgba, ToTensor(), ResizeMaxSize(image_size, fill=0),
                    MaskAwareNormalize(mean=mean, std=std)])


def hpsv2_reference(arch: dict, cp: str, images: list[Image.Image], prompt: str) -> list[float]:
    """tgxs002/HPSv2 (commit 866735e) ``hpsv2/img_score.py`` ``score`` (the list branch),
    verbatim but for the model: open_clip's ``CLIP`` of ``arch`` with ``output_dict=True`` (what
    ``create_model_and_transforms('ViT-H-14', ...)`` builds, at tiny widths; its forward, like
    the fork's ``model.py``, returns normalised features), CPU and no CUDA autocast (fp32)."""
    import open_clip

    model = open_clip.CLIP(**arch, output_dict=True)
    preprocess_val = hpsv2_preprocess_val(arch["vision_cfg"]["image_size"],
                                          open_clip.OPENAI_DATASET_MEAN,
                                          open_clip.OPENAI_DATASET_STD)
    device = "cpu"
    checkpoint = torch.load(cp, map_location=device)
    model.load_state_dict(checkpoint['state_dict'])
    tokenizer = open_clip.get_tokenizer('ViT-H-14')
    model = model.to(device)
    model.eval()

    result = []
    for one_img_path in images:
        with torch.no_grad():
            image = preprocess_val(one_img_path).unsqueeze(0).to(device=device, non_blocking=True)
            text = tokenizer([prompt]).to(device=device, non_blocking=True)
            outputs = model(image, text)
            image_features, text_features = outputs["image_features"], outputs["text_features"]
            logits_per_image = image_features @ text_features.T

            hps_score = torch.diagonal(logits_per_image).cpu().numpy()
        result.append(hps_score[0])
    return result


@pytest.fixture(scope="module")
def hpsv2(tmp_path_factory):
    from tests.tiny_checkpoints import write_hpsv2_layout

    return write_hpsv2_layout(tmp_path_factory.mktemp("hpsv2"))


def test_hpsv2_scores_equal_img_score_py(hpsv2):
    import json

    arch, ckpt = hpsv2
    model, spec = _product("clip", str(arch), str(ckpt), score_scale="none")
    images = [_png(10 + i) for i in range(3)]
    pil = [Image.open(io.BytesIO(b)) for b in images]
    worst = 0.0
    for prompt in PROMPTS:
        ours = _product_scores(model, spec, images, [prompt] * len(images))
        ref = torch.tensor(hpsv2_reference(json.loads(arch.read_text()), str(ckpt), pil, prompt))
        worst = max(worst, (ours - ref).abs().max().item())
        assert torch.allclose(ours, ref, atol=TOL, rtol=0), (prompt, ours, ref)
    # The default scale is PickScore's: HPSv2 needs model.score_scale=none.
    scaled, _ = _product("clip", str(arch), str(ckpt))
    assert torch.allclose(_product_scores(scaled, spec, images, ["a cat"] * 3),
                          _product_scores(model, spec, images, ["a cat"] * 3) * np.exp(4.0),
                          atol=TOL)
    print(f"HPSv2 layout, 224x224 PNGs: max |ours - img_score.py| = {worst:.2e}")


def test_hpsv2_on_its_own_letterboxed_pixels(hpsv2):
    """A 300x180 image: HPSv2 letterboxes (longest edge to 224, black padding), the pipeline
    crops; both models get HPSv2's pixels."""
    import json

    import open_clip

    arch, ckpt = hpsv2
    model, spec = _product("clip", str(arch), str(ckpt), score_scale="none")
    pil = Image.open(io.BytesIO(_png(3, (300, 180))))
    pixels = hpsv2_preprocess_val(224, open_clip.OPENAI_DATASET_MEAN,
                                  open_clip.OPENAI_DATASET_STD)(pil).unsqueeze(0)
    with torch.no_grad():
        ours = model(_imagenet_from(pixels, open_clip.OPENAI_DATASET_MEAN,
                                    open_clip.OPENAI_DATASET_STD),
                     torch.from_numpy(spec.tokenize([PROMPTS[0]])))
    ref = hpsv2_reference(json.loads(arch.read_text()), str(ckpt), [pil], PROMPTS[0])
    assert abs(ours.item() - ref[0]) < TOL


def test_hpsv2_pixels_and_token_ids_equal_its_preprocessing(hpsv2):
    import open_clip

    arch, ckpt = hpsv2
    model, spec = _product("clip", str(arch), str(ckpt), score_scale="none")
    images = [_png(20 + i) for i in range(3)]
    preprocess_val = hpsv2_preprocess_val(224, open_clip.OPENAI_DATASET_MEAN,
                                          open_clip.OPENAI_DATASET_STD)
    expected = torch.stack([preprocess_val(Image.open(io.BytesIO(b))) for b in images])
    pixels = torch.from_numpy(np.stack([spec.decode(b)[0] for b in images]))
    ours = to_model_input(pixels, torch.device("cpu"), False) * model._norm_scale \
        + model._norm_shift
    assert (ours - expected).abs().max().item() < TOL
    ids = open_clip.get_tokenizer("ViT-H-14")(PROMPTS).numpy()
    assert np.array_equal(spec.tokenize(PROMPTS), ids)
