"""A model's structure: its backbone, the list of its layers (blocks), what runs before and after.

Freezing depth, LoRA targets and the fast paths ask this structure, never a model's class
name, so they work for any architecture whose backbone keeps its repeated blocks in one
``nn.ModuleList``: BERT, DistilBERT, RoBERTa, MPNet, ELECTRA, DeBERTa-v2 encoders, Llama / Qwen2
/ GPT-2 decoders, ViT layers and CNN stages alike.

- ``layers``: the backbone's ``ModuleList`` of same-class blocks holding the most parameters.
- ``pre``: the backbone's children registered before the one that holds the layers (embeddings,
  an embedding projection): they run first, and are frozen with any depth ``k >= 1``.
- ``shared``: modules beside the layers inside the layers' parent (relative-position tables of
  DeBERTa and MPNet): every layer reads them, so they are frozen with the embeddings.
- ``post``: the backbone's children after the layers (a final norm, a pooler): trainable, like
  the task's head outside the backbone.

Freezing ``k`` layers freezes ``pre + shared + layers[:k]``; ``k = 0`` freezes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    import torch

__all__ = ["ModelStructure", "find_structure", "lora_target_names", "default_lora_targets"]

# Module names that project an attention's queries and values, across the families we know:
# LoRA's usual default targets when peft has none for the model type.
_QUERY_VALUE = ("query", "value", "q", "v", "q_lin", "v_lin", "q_proj", "v_proj", "query_proj",
                "value_proj", "c_attn", "qkv", "Wqkv", "query_key_value")


@dataclass
class ModelStructure:
    """Where a model's parts are (see the module docstring)."""

    model: torch.nn.Module  # the whole model (the backbone plus the task's head)
    backbone: torch.nn.Module
    layers: torch.nn.ModuleList
    parent: torch.nn.Module  # the module that holds ``layers`` as an attribute
    layers_name: str  # that attribute's name: "layer", "layers", "h", ...
    layers_path: str  # dotted path of ``layers`` in ``model``
    pre: list[torch.nn.Module]
    shared: list[torch.nn.Module]
    post: list[torch.nn.Module]

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def frozen(self, k: int) -> list[torch.nn.Module]:
        """The modules that freezing ``k`` layers freezes (none for ``k = 0``)."""
        if not 0 <= k <= self.n_layers:
            raise ValueError(f"freeze_layers={k}: the model has {self.n_layers} layers (0..{self.n_layers})")
        if k == 0:
            return []
        return [*self.pre, *self.shared, *list(self.layers)[:k]]


def _unwrap(model: Any) -> Any:
    # peft wraps the model; DistributedDataParallel too.
    inner = model
    for _ in range(3):
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        elif type(inner).__name__ == "DistributedDataParallel":
            inner = inner.module
    return inner


def find_structure(model: Any) -> ModelStructure:
    """Find the backbone, its layers and the modules before and after them.

    Raises:
        ValueError: the model keeps no repeated blocks in a ``ModuleList``.
    """
    import torch

    model = _unwrap(model)
    backbone = getattr(model, "base_model", None)
    if not isinstance(backbone, torch.nn.Module):
        backbone = model
    best: tuple[int, str, torch.nn.ModuleList] | None = None
    for name, module in backbone.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or not len(module):
            continue
        if len({type(m) for m in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise ValueError(f"{type(model).__name__}: no list of repeated layers (blocks) found")
    _, path, layers = best
    parent_path, _, layers_name = path.rpartition(".")
    parent = backbone.get_submodule(parent_path) if parent_path else backbone
    top = path.split(".")[0]
    pre: list[torch.nn.Module] = []
    post: list[torch.nn.Module] = []
    seen_top = False
    for name, child in backbone.named_children():
        if name == top:
            seen_top = True
        elif child is not parent:
            (post if seen_top else pre).append(child)
    # Beside the layers, at every level between the backbone and the layers' parent.
    shared: list[torch.nn.Module] = []
    parts = path.split(".")
    for depth in range(1, len(parts)):
        holder = backbone.get_submodule(".".join(parts[:depth]))
        for name, child in holder.named_children():
            if name != parts[depth]:
                shared.append(child)
    prefix = next((n for n, m in model.named_modules() if m is backbone), "")
    full_path = f"{prefix}.{path}" if prefix else path
    return ModelStructure(model, backbone, layers, parent, layers_name, full_path, pre, shared, post)


def _linear_paths(module: Any) -> list[str]:
    import torch

    kinds: tuple[type, ...] = (torch.nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

        kinds = (torch.nn.Linear, Conv1D)
    except ImportError:
        pass
    return [name for name, m in module.named_modules() if isinstance(m, kinds) and name]


def lora_target_names(structure: ModelStructure) -> list[str]:
    """Names LoRA can target: the last part of each linear module's name inside a layer."""
    return sorted({p.rpartition(".")[2] for p in _linear_paths(structure.layers[0])})


def default_lora_targets(structure: ModelStructure) -> list[str] | str:
    """peft's default targets for the model type, else the layers' query/value projections,
    else every linear layer."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(getattr(structure.model, "config", None), "model_type", None)
    known = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    names = lora_target_names(structure)
    if known and all(t in names for t in known):
        return list(known)
    found = [n for n in names if n in _QUERY_VALUE]
    return found or "all-linear"


def check_lora_targets(structure: ModelStructure, value: str) -> list[str] | str:
    """The LoRA targets that ``value`` names (comma-separated module names or ``all-linear``).

    Raises:
        ValueError: a name that matches no linear module of the layers, listing the valid ones.
    """
    if value.strip() == "all-linear":
        return "all-linear"
    names = lora_target_names(structure)
    paths = _linear_paths(structure.layers[0])
    targets = [t.strip() for t in value.split(",") if t.strip()]
    if not targets:
        raise ValueError("target_modules: empty; give module names or 'all-linear'")
    for t in targets:
        if not any(p == t or p.endswith("." + t) for p in paths):
            raise ValueError(
                f"target_modules: {t!r} is not a linear module of the model's layers "
                f"(valid: {', '.join(names)}, or all-linear)"
            )
    return targets
