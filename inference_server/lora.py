"""Low-rank adapters (LoRA) on the top encoder layers, and merging them back for serving.

Training wraps the linear layers of the top encoder layers in `LoRALinear`; only the small
A/B matrices learn. The shipped delta (`encoder_lora.safetensors`, tens of kilobytes) is merged
into the frozen encoder's weights at load (W += scale * B @ A), so serving runs the plain
encoder with no extra cost and no code of ours inside the forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

LORA_FILE = "encoder_lora.safetensors"
# A delta of the same form from domain-adaptive pre-training (dapt.py), on all the encoder's
# layers; merged before `LORA_FILE`, which was fine-tuned on top of it.
DAPT_FILE = "encoder_dapt.safetensors"
# The linear layers of a BERT layer (attention projections and the feed-forward pair).
TARGETS: tuple[str, ...] = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


class LoRALinear(nn.Module):
    """`base(x) + scale * B(A(dropout(x)))` with `base` frozen and B initialised to zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        for param in self.base.parameters():
            param.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.dropout(x) @ self.lora_A.T @ self.lora_B.T
        out: torch.Tensor = self.base(x) + self.scale * delta
        return out


def layer_prefixes(layers: Iterable[int]) -> list[str]:
    """Module names (in a BertModel) of the linear layers adapted in `layers`."""
    return [f"encoder.layer.{i}.{target}" for i in layers for target in TARGETS]


def add_lora(
    encoder: nn.Module, layers: Iterable[int], rank: int, alpha: float, dropout: float
) -> list[nn.Parameter]:
    """Replace the target linears of `layers` with `LoRALinear`; return the new parameters."""
    params: list[nn.Parameter] = []
    for name in layer_prefixes(layers):
        parent_name, _, child = name.rpartition(".")
        parent = encoder.get_submodule(parent_name)
        base = getattr(parent, child)
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{name} is {type(base).__name__}, not a Linear; wrong encoder?")
        wrapped = LoRALinear(base, rank, alpha, dropout)
        setattr(parent, child, wrapped)
        params += [wrapped.lora_A, wrapped.lora_B]
    return params


def lora_state(encoder: nn.Module) -> tuple[dict[str, torch.Tensor], float]:
    """The adapters' A/B matrices keyed by module name, and their common scale."""
    state: dict[str, torch.Tensor] = {}
    scales: set[float] = set()
    for name, module in encoder.named_modules():
        if isinstance(module, LoRALinear):
            state[f"{name}.lora_A"] = module.lora_A.detach().clone().contiguous()
            state[f"{name}.lora_B"] = module.lora_B.detach().clone().contiguous()
            scales.add(module.scale)
    if len(scales) > 1:
        raise ValueError(f"adapters with different scales {sorted(scales)}")
    return state, scales.pop() if scales else 1.0


@torch.no_grad()
def merge_lora(encoder: nn.Module, state: dict[str, torch.Tensor], scale: float) -> int:
    """Add `scale * B @ A` into each adapted plain Linear's weight; return how many merged."""
    names = sorted({key.rsplit(".", 1)[0] for key in state})
    for name in names:
        linear = encoder.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{name} is {type(linear).__name__}, not a Linear; wrong encoder?")
        a, b = state[f"{name}.lora_A"], state[f"{name}.lora_B"]
        linear.weight += scale * (b.to(linear.weight) @ a.to(linear.weight))
    return len(names)


def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], float, dict[str, str]]:
    """A saved delta: its A/B matrices, its scale and the file's metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    return state, float(metadata.get("scale", "1.0")), metadata


def merge_file(encoder: nn.Module, path: Path) -> int:
    """Merge the delta saved at `path` into `encoder`; return how many linears it touched."""
    state, scale, _ = read_lora(path)
    return merge_lora(encoder, state, scale)
