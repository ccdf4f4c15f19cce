"""Fine-tune a pretrained image classifier with a new head: the ``image_classification`` objective.

Models: the packaged EfficientNet-Lite0 (``model: efficientnet-lite0``), an EfficientNet saved by
``hpo export``, or any Hugging Face ``AutoModelForImageClassification`` directory or hub id (see
:mod:`objectives.image_models`). ``freeze_layers`` counts the model's blocks: stages for the
CNN, layers for a ViT. Data: :mod:`objectives.image_data`. Images are decoded and resized to
the model's input size once per worker; a batch is scaled to [0, 1], augmented when the trial
samples any augmentation (:class:`ImageParams`, training batches only) and normalized.

The frozen-prefix cache applies when nothing random happens before the first trainable block:
with augmentation on, the core runs the frozen blocks at every step instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar

import numpy as np

from objectives.config import TrainConfig
from objectives.image_data import ImageDataConfig
from objectives.image_data import image_fingerprint
from objectives.image_data import load_image_splits
from objectives.params import TrainParams
from objectives.params import hp

if TYPE_CHECKING:
    import optuna
    import torch

    from objectives.core import Batch
    from objectives.image_data import ImageSplits
    from objectives.image_models import ImageModel

__all__ = ["METRICS", "ImageClassificationConfig", "ImageClassificationTask", "ImageParams",
           "check_data", "export", "fingerprint", "objective", "prepare", "task_for",
           "validate_space"]

METRICS = {"val_loss": "minimize", "val_accuracy": "maximize", "val_f1": "maximize"}
_SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class ImageParams(TrainParams):
    """The hyperparameters of image classification: every task's, plus augmentation."""

    crop_scale: float = hp(0.0, low=0.0, high=0.95,
                           help="random resized crop: keep between 1 - crop_scale of a training "
                           "image's area and all of it, resized back; 0: off")
    hflip: float = hp(0.0, low=0.0, high=1.0,
                      help="probability of flipping a training image horizontally; 0: off")
    color_jitter: float = hp(0.0, low=0.0, high=1.0,
                             help="brightness, contrast and saturation scaled by factors in "
                             "[1 - s, 1 + s] per training image; 0: off")

    @property
    def augmented(self) -> bool:
        return self.crop_scale > 0 or self.hflip > 0 or self.color_jitter > 0


@dataclass(frozen=True)
class ImageClassificationConfig(TrainConfig):
    """Fixed settings of an image-classification study (everything that is not searched)."""

    model: str = field(default="efficientnet-lite0", metadata={
        "help": "efficientnet-lite0 (packaged), an hpo-exported EfficientNet, or a Hugging Face "
        "image-classification directory or hub id"})
    dataset: ImageDataConfig = field(
        default_factory=lambda: ImageDataConfig(name="digits"),
        metadata={"help": "built-in dataset name, a class-per-subfolder folder, or a CSV/JSONL "
                  "of image path and label"})
    image_size: int | None = field(default=None, metadata={
        "help": "input side in pixels (images are resized to a square); null: the model's own"})

    METRICS: ClassVar[dict[str, str]] = METRICS

    def __post_init__(self) -> None:
        super().__post_init__()
        size = self.image_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8):
            raise ValueError(f"image_size must be an integer >= 8 or null, got {size!r}")

    @classmethod
    def _convert(cls, d: dict[str, Any]) -> dict[str, Any]:
        if "dataset" in d:
            d["dataset"] = ImageDataConfig.from_dict(d["dataset"])
        return d


@dataclass
class ImageResources:
    """What a worker loads once for image classification: the model, the resized images."""

    key: tuple[Any, ...]
    image: ImageModel
    base_model: torch.nn.Module
    structure: Any
    splits: ImageSplits
    pixels: dict[str, torch.Tensor]  # split -> [n, 3, S, S] uint8
    prefix_cache: Any
    device: str
    fast: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def _resize(images: list[np.ndarray], size: int) -> torch.Tensor:
    """Every image at ``size`` x ``size`` (bilinear, antialiased), as one uint8 tensor."""
    import torch
    import torch.nn.functional as F

    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        by_shape.setdefault(img.shape, []).append(i)
    for idx in by_shape.values():
        for start in range(0, len(idx), 256):
            part = idx[start : start + 256]
            x = torch.from_numpy(np.stack([images[i] for i in part])).permute(0, 3, 1, 2).float()
            if x.shape[-2:] != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                  align_corners=False)
            out[part] = x.round().clamp(0, 255).to(torch.uint8)
    return out


def get_image_resources(cfg: ImageClassificationConfig, device: str) -> ImageResources:
    """Load (once per process, model, data and device) the model and the resized images."""
    import torch

    from objectives.image_models import load_image_model
    from objectives.models import PrefixCache
    from objectives.models import cached_resources
    from objectives.models import remember
    from objectives.structure import find_structure

    splits = load_image_splits(cfg.dataset, cfg.seed)
    key = ("image", cfg.model, cfg.image_size, splits.fingerprint, device)
    found = cached_resources(key)
    if found is not None:
        return found  # type: ignore[return-value]
    image = load_image_model(cfg.model, splits.label_names, cfg.image_size)
    base = image.model
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    base.to(device)
    if image.kind == "efficientnet-lite":
        # Convolutions run 1.5x faster in training on CPU with channels-last tensors (oneDNN).
        base.to(memory_format=torch.channels_last)
    res = ImageResources(
        key=key, image=image, base_model=base, structure=find_structure(base), splits=splits,
        pixels={s: _resize(splits.images[s], image.image_size) for s in _SPLITS},
        prefix_cache=PrefixCache(cfg.prefix_cache_mb * 2**20), device=device,
    )
    remember(res, cfg.models_in_memory)  # type: ignore[arg-type]
    return res


class ImageClassificationTask:
    """Pixels in, class logits out; cross-entropy loss; loss, accuracy and macro-F1."""

    peft_task_type = "SEQ_CLS"  # peft's classification wrapper passes pixel_values through

    def __init__(self, config: ImageClassificationConfig, res: ImageResources) -> None:
        import torch

        self.config = config
        self.res = res
        self.base_model = res.base_model
        self.structure = res.structure
        self.prefix_cache = res.prefix_cache
        self.key = res.key
        self.n_classes = len(res.splits.label_names)
        self.params: ImageParams | None = None  # the trial's, set by augments()
        self._mean = torch.tensor(res.image.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(res.image.std).view(1, 3, 1, 1)
        if res.fast is None:
            res.fast = self._fast_paths()
        self.fast = res.fast

    def _fast_paths(self) -> Any:
        from objectives.fastpath import FastPaths

        probe = list(self.examples("validation")[:4]) or list(self.examples("train")[:4])
        batch = self.collate(probe, self.res.device)
        return FastPaths(self.base_model, self.structure,
                         (batch.inputs, self.lengths("validation")[: len(probe)]))

    def examples(self, split: str) -> Sequence[tuple[torch.Tensor, int]]:
        """``(uint8 image [3, S, S], label)`` per example."""
        cache = self.res.extra.setdefault("examples", {})
        if split not in cache:
            pixels, labels = self.res.pixels[split], self.res.splits.labels[split]
            cache[split] = list(zip(pixels, labels.tolist(), strict=True))
        return cache[split]

    def lengths(self, split: str) -> np.ndarray:
        # All images have one size. The frozen-prefix cache keeps the first `length` rows of a
        # block's output per example: S * S is more than any block's channels (CNN) or tokens
        # (ViT), so it keeps all of it.
        size = self.res.image.image_size
        return np.full(len(self.res.splits.labels[split]), size * size, dtype=np.int64)

    def augments(self, params: TrainParams) -> bool:
        """Whether ``params`` augment the training batches (the core then passes a generator)."""
        self.params = params if isinstance(params, ImageParams) else None
        return self.params is not None and self.params.augmented

    def collate(self, examples: Sequence[tuple[torch.Tensor, int]], device: str,
                rng: np.random.Generator | None = None) -> Batch:
        import torch

        from objectives.core import Batch
        from objectives.image_augment import augment_images

        x = torch.stack([img for img, _ in examples]).to(device).float().div_(255.0)
        if rng is not None and self.params is not None:
            p = self.params
            x = augment_images(x, rng, p.crop_scale, p.hflip, p.color_jitter)
        x = (x - self._mean.to(device)) / self._std.to(device)
        if self.res.image.kind == "efficientnet-lite":
            x = x.contiguous(memory_format=torch.channels_last)
        labels = torch.tensor([label for _, label in examples], dtype=torch.long, device=device)
        return Batch(inputs={"pixel_values": x}, targets=labels, units=len(examples))

    def loss(self, outputs: Any, batch: Batch) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(outputs.logits.float(), batch.targets, reduction="sum")

    def collect(self, outputs: Any, batch: Batch) -> dict[str, Any]:
        import torch.nn.functional as F

        logits = outputs.logits.float()
        return {"loss_sum": float(F.cross_entropy(logits, batch.targets, reduction="sum")),
                "units": batch.units, "pred": logits.argmax(-1).tolist(),
                "label": batch.targets.tolist()}

    def metrics(self, collected: dict[str, Any]) -> dict[str, float]:
        from objectives.metrics import macro_f1

        pred, label = np.asarray(collected["pred"]), np.asarray(collected["label"])
        return {"val_loss": collected["loss_sum"] / max(collected["units"], 1),
                "val_accuracy": float(np.mean(pred == label)) if len(label) else 0.0,
                "val_f1": macro_f1(label, pred, self.n_classes)}


def task_for(cfg: ImageClassificationConfig, device: str | None = None) -> ImageClassificationTask:
    """The task of ``cfg`` on this worker: images and model loaded once per process and device."""
    from objectives.distributed import worker_device

    device = device or worker_device(cfg.device)
    return ImageClassificationTask(cfg, get_image_resources(cfg, device))


def prepare(cfg: ImageClassificationConfig) -> dict[str, Any]:
    """Load the images once (checking them); their fingerprint and split info."""
    splits = load_image_splits(cfg.dataset, cfg.seed)
    return {"data_fingerprint": splits.fingerprint, "data": splits.info}


def fingerprint(cfg: ImageClassificationConfig) -> str:
    """The data fingerprint without decoding the images."""
    return image_fingerprint(cfg.dataset, cfg.seed)


def validate_space(cfg: ImageClassificationConfig, distributions: dict[str, Any]) -> None:
    """Check every hyperparameter's name and range, also against the model's blocks.

    Raises:
        ValueError: naming the parameter, e.g. a freezing depth beyond the model's blocks, or
            LoRA for the EfficientNet (its blocks are convolutions).
    """
    from objectives.image_models import describe_image_model

    for name, dist in distributions.items():
        ImageParams.check_distribution(name, dist)
    info = describe_image_model(cfg.model)
    lora_keys = ("r", "lora_alpha", "lora_dropout", "target_modules")
    wants_lora = any(k in distributions for k in lora_keys) or (
        "finetuning" in distributions and "lora" in getattr(distributions["finetuning"], "choices", ()))
    if wants_lora and not info.lora_names:
        raise ValueError(f"finetuning: LoRA needs linear layers in the blocks; model "
                         f"{cfg.model!r} has convolutions only (use full fine-tuning and "
                         "freeze_layers)")
    info.check_space(distributions)


def objective(trial: optuna.Trial, params: dict[str, Any], cfg: ImageClassificationConfig, *,
              resume: list[int] | None = None) -> float:
    """Fine-tune with ``params``; report ``cfg.metric`` at each fidelity step; return its best."""
    from objectives.objective import run_trial

    return run_trial(trial, ImageParams.from_params(params), task_for(cfg), resume=resume)


def check_data(cfg: ImageClassificationConfig) -> list[Any]:
    """The image checks (:mod:`objectives.image_data`)."""
    from objectives.image_data import check_images

    return check_images(cfg.dataset, cfg.seed)


def export(cfg: ImageClassificationConfig, params: dict[str, Any], *, n_examples: int,
           seeds: Sequence[int], include_validation: bool = False,
           output_dir: str | None = None, merge: bool = False) -> Any:
    """Retrain ``params`` with each seed, test each once, save the first seed's model with a
    ``preprocessor_config.json`` (resize, scale, normalize).

    Returns:
        A :class:`objectives.final.FinalResult`: test accuracy, macro-F1 and loss per seed,
        per-class scores and the confusion matrix for the model card.
    """
    from pathlib import Path

    from objectives.final import FinalResult
    from objectives.final import retrain
    from objectives.image_models import save_preprocessor
    from objectives.text_classification import _card

    task = task_for(cfg)
    splits = task.res.splits
    typed = ImageParams.from_params(params)
    result = FinalResult(
        seeds=[], data=splits.info, trained_on="", n_examples=0, params=typed.to_dict(),
        task="image-classification", summary_metrics=("accuracy", "macro_f1", "loss"),
        label_names=list(splits.label_names),
    )

    def seeded(seed: int) -> ImageClassificationTask:
        return ImageClassificationTask(
            dataclasses.replace(cfg, seed=seed, checkpoint_dir=None), task.res)

    class _Preprocessor:  # saved beside the model, as a tokenizer would be
        def save_pretrained(self, directory: Any) -> None:
            save_preprocessor(Path(directory), task.res.image)

    retrain(seeded, typed, _test, n_examples=n_examples, seeds=seeds,
            include_validation=include_validation, output_dir=output_dir, merge=merge,
            tokenizer=_Preprocessor(), result=result)
    result.card = _card(result)
    if task.res.image.kind == "efficientnet-lite":
        result.load = [
            "from objectives.image_models import efficientnet_from_pretrained",
            "",
            'model = efficientnet_from_pretrained("path/to/this/directory")',
            "# inputs: preprocessor_config.json (resize, scale to [0, 1], normalize)",
            "logits = model(pixel_values=pixel_values).logits",
        ]
    elif result.saved == "lora-adapter":
        result.load = [
            "from peft import PeftModel",
            "from transformers import AutoImageProcessor",
            "from transformers import AutoModelForImageClassification",
            "",
            f"base = AutoModelForImageClassification.from_pretrained({cfg.model!r}, "
            f"num_labels={len(splits.label_names)}, ignore_mismatched_sizes=True)",
            'model = PeftModel.from_pretrained(base, "path/to/this/directory")',
            'processor = AutoImageProcessor.from_pretrained("path/to/this/directory")',
        ]
    else:
        result.load = [
            "from transformers import AutoImageProcessor",
            "from transformers import AutoModelForImageClassification",
            "",
            'model = AutoModelForImageClassification.from_pretrained("path/to/this/directory")',
            'processor = AutoImageProcessor.from_pretrained("path/to/this/directory")',
        ]
    return result


def _test(model: Any, task: ImageClassificationTask) -> dict[str, Any]:
    """The one evaluation on the held-out test split."""
    from objectives.core import outputs
    from objectives.devices import Precision
    from objectives.devices import resolve_precision
    from objectives.metrics import classification_metrics

    device = task.res.device
    precision = Precision(resolve_precision(task.config.precision, device), device)
    out = outputs(model, task, "test", device, precision)
    labels, preds = np.asarray(out["label"]), np.asarray(out["pred"])
    return {"loss": out["loss_sum"] / max(out["units"], 1),
            **classification_metrics(labels, preds, task.res.splits.label_names),
            "n_examples": len(labels)}
