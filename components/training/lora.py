"""Low-rank adapters (``model.lora``) through ``peft``: injected in place, so parameter names
and the scorer's own attributes (head, prompt conditioning) stay as they are, and merged back
before registering, so the registered scorer is a plain model (no peft needed to load it).

Trainable: the adapters (``lora_A``/``lora_B``) and every parameter under ``lora.trainable``
(``head`` = the scorer's head prefixes); everything else is frozen.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..config import LoraConfig
from .optim import head_prefixes_of

ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _trainable_prefixes(model: nn.Module, cfg: LoraConfig) -> tuple[str, ...]:
    out: list[str] = []
    for p in cfg.trainable:
        out.extend(head_prefixes_of(model) if p == "head" else (p,))
    return tuple(out)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def target_modules(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Module names that get adapters: those named by ``lora.target_modules`` (a name or a
    dotted suffix), else every Linear/Conv layer outside the fully trained prefixes."""
    trained = _trainable_prefixes(model, cfg)
    names = []
    for name, m in model.named_modules():
        if not isinstance(m, ADAPTABLE) or _under(name, trained):
            continue
        if not cfg.target_modules or any(name == t or name.endswith("." + t)
                                         for t in cfg.target_modules):
            names.append(name)
    return names


def apply_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Inject adapters into ``model`` (in place) and freeze what they replace. Raises
    ``ValueError`` naming the setting when nothing matches."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    targets = target_modules(model, cfg)
    if not targets:
        raise ValueError(f"model.lora.target_modules={cfg.target_modules} matches no Linear or "
                         "Conv layer of this scorer; name layers it has (e.g. a suffix like "
                         "'q_proj', or leave it empty for all of them)")
    trained = _trainable_prefixes(model, cfg)
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=targets)
    model = inject_adapter_in_model(peft_cfg, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name or _under(name, trained))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer and put the base layer back: the model's
    state-dict keys become the plain scorer's again."""
    from peft.tuners.lora import LoraLayer

    for name, m in list(model.named_modules()):
        if isinstance(m, LoraLayer):
            m.merge()
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, m.get_base_layer())
    model.requires_grad_(True)
    return model


def trainable_share(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def has_adapters(state: dict[str, Tensor]) -> bool:
    return any("lora_A" in k for k in state)
