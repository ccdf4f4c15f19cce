"""image_classification: data formats and checks, the EfficientNet's and a ViT's blocks,
freezing with the prefix cache, augmentation, forgetting knobs, a study that prunes and exports,
bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_image
from conftest import write_image_folder
from task_studies import invoke
from task_studies import run_study
from task_studies import states

from objectives.core import train
from objectives.data import DataError
from objectives.image_augment import augment_images
from objectives.image_classification import ImageClassificationConfig
from objectives.image_classification import ImageClassificationTask
from objectives.image_classification import ImageParams
from objectives.image_classification import task_for
from objectives.image_classification import validate_space
from objectives.image_data import ImageDataConfig
from objectives.image_data import check_images
from objectives.image_data import load_image_splits


def config(model: str, dataset: dict[str, Any], **kw: Any) -> ImageClassificationConfig:
    return ImageClassificationConfig.from_dict({
        "model": model, "dataset": dataset, "image_size": 32, "epochs": 2,
        "evals_per_epoch": 2, "cache_dir": None, "precision": "fp32", **kw})


def codes(findings: list[Any]) -> list[str]:
    return [f.code for f in findings]


# --- data ----------------------------------------------------------------------------------


def test_folder_csv_jsonl_and_builtin_sources(image_folder: Path, tmp_path: Path) -> None:
    folder = load_image_splits(ImageDataConfig(path=str(image_folder)), 0)
    assert folder.label_names == ["left", "right", "top"]
    assert folder.info["sizes"] == {"train": 26, "validation": 5, "test": 5}
    assert folder.info["split_method"] == "stratified"
    assert all(img.shape == (16, 16, 3) and img.dtype == np.uint8 for img in folder.images["train"])
    # In the folder's order (sorted file names), so that the seeded split picks the same rows.
    rows = [(f"images/{c}/{i}", c) for c in ("left", "right", "top")
            for i in sorted(f"{i}.png" for i in range(12))]
    (tmp_path / "list.csv").write_text("file,cls\n" + "".join(f"{p},{c}\n" for p, c in rows))
    (tmp_path / "list.jsonl").write_text("".join(json.dumps({"image": p, "label": c}) + "\n"
                                                 for p, c in rows))
    csv = load_image_splits(ImageDataConfig(path=str(tmp_path / "list.csv"), image_column="file",
                                            label_column="cls"), 0)
    jsonl = load_image_splits(ImageDataConfig(path=str(tmp_path / "list.jsonl")), 0)
    for other in (csv, jsonl):
        assert other.label_names == folder.label_names
        assert other.info["sizes"] == folder.info["sizes"]
        for s in ("train", "validation", "test"):
            assert all(np.array_equal(a, b) for a, b in zip(other.images[s], folder.images[s], strict=True))
    digits = load_image_splits(ImageDataConfig(name="digits", max_examples=100), 0)
    assert digits.label_names == [str(i) for i in range(10)]
    assert sum(digits.info["sizes"].values()) == 100
    assert digits.images["train"][0].shape == (8, 8, 3)


def test_pre_split_folders_and_fingerprint(tmp_path: Path) -> None:
    for i, split in enumerate(("train", "validation", "test")):
        write_image_folder(tmp_path / split, n_per_class=4, seed=i + 1)
    cfg = ImageDataConfig(train_path=str(tmp_path / "train"), validation_path=str(tmp_path / "validation"),
                          test_path=str(tmp_path / "test"))
    splits = load_image_splits(cfg, 0)
    assert splits.info["sizes"] == {"train": 12, "validation": 12, "test": 12}
    before = splits.fingerprint
    make_image(0, 99).save(tmp_path / "train" / "left" / "0.png")  # new content, same name
    assert load_image_splits(cfg, 0).fingerprint != before


def test_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", n_per_class=3)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"^dataset folder '.*images': class folder 'empty' has no images "
                       r"\(\.png, \.jpg"):
        load_image_splits(ImageDataConfig(path=str(root)), 0)
    (tmp_path / "list.csv").write_text("path,label\na.png,x\n")
    with pytest.raises(DataError, match=r"has no column 'image' \(columns: 'path', 'label'\); set "
                       "image_column/label_column$"):
        load_image_splits(ImageDataConfig(path=str(tmp_path / "list.csv")), 0)
    with pytest.raises(DataError, match=r"^unsupported file type for path: 'x.xlsx'"):
        ImageDataConfig(path="x.xlsx")


def test_cli_label_folder_without_images_exits_2(tmp_path: Path, tiny_cnn: str) -> None:
    import yaml

    root = write_image_folder(tmp_path / "images", n_per_class=3)
    (root / "cats").mkdir()
    (tmp_path / "space.yaml").write_text("learning_rate: {type: float, low: 1e-4, high: 1e-2}\n")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "study": "x", "storage": f"sqlite:///{tmp_path / 'db.sqlite'}", "objective": "image_classification",
        "model": tiny_cnn, "dataset": {"path": str(root)}, "search_space": str(tmp_path / "space.yaml"),
        "n_trials": 1}))
    result = invoke("run", "--config", str(tmp_path / "s.yaml"))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "class folder 'cats' has no images" in lines[0], result.output
    assert not (tmp_path / "db.sqlite").exists() or "x" not in invoke(
        "studies", "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}").output


def test_checks_find_each_planted_problem(tmp_path: Path, image_folder: Path) -> None:
    assert codes(check_images(ImageDataConfig(path=str(image_folder)), 0)) == []
    # Unreadable, mixed sizes and modes, a duplicate with another label, imbalance.
    root = write_image_folder(tmp_path / "bad", n_per_class=12)
    (root / "left" / "broken.png").write_bytes(b"not a png")
    make_image(0, 5, size=24).save(root / "left" / "big.png")
    make_image(1, 6, mode="L").save(root / "right" / "grey.png")
    make_image(0, 7).save(root / "top" / "copy.png")
    make_image(0, 7).save(root / "left" / "copy.png")
    for i in range(40):
        make_image(2, 500 + i).save(root / "top" / f"more{i}.png")
    found = check_images(ImageDataConfig(path=str(root)), 0)
    by_code = {f.code: f for f in found}
    assert set(by_code) >= {"unreadable-image", "conflicting-labels", "mixed-sizes", "mixed-modes",
                            "class-imbalance"}
    assert by_code["unreadable-image"].severity == "error" and "broken.png" in by_code["unreadable-image"].message
    assert "16x16" in by_code["mixed-sizes"].message and "24x24" in by_code["mixed-sizes"].message
    assert "L (1)" in by_code["mixed-modes"].message
    assert codes(found)[0] in ("unreadable-image", "conflicting-labels", "leakage")  # errors first
    # The same image in train and test: leakage.
    for i, split in enumerate(("train", "validation", "test")):
        write_image_folder(tmp_path / "pre" / split, n_per_class=3, seed=i + 1)
    make_image(0, 1000).save(tmp_path / "pre" / "train" / "left" / "same.png")
    make_image(0, 1000).save(tmp_path / "pre" / "test" / "left" / "same.png")
    pre = ImageDataConfig(**{f"{s}_path": str(tmp_path / "pre" / s) for s in ("train", "validation", "test")})
    leak = [f for f in check_images(pre, 0) if f.code == "leakage"]
    assert leak and "1 of 10 test images are also in train" in leak[0].message


# --- models and training -----------------------------------------------------------------------


def test_efficientnet_stages_are_the_blocks(tiny_cnn: str, image_folder: Path) -> None:
    from objectives.image_models import describe_image_model

    lite0 = describe_image_model("efficientnet-lite0")
    assert lite0.n_layers == 7 and lite0.lora_names == ()  # stages; convolutions only
    task = task_for(config(tiny_cnn, {"path": str(image_folder)}))
    s = task.structure
    assert s.layers_path == "efficientnet.stages" and s.n_layers == describe_image_model(tiny_cnn).n_layers
    assert [type(m).__name__ for m in s.pre] == ["Sequential"]  # the stem
    rates = [r for stage in s.layers for r in stage.rates]
    assert rates == sorted(rates) and rates[0] == 0.0 < rates[-1]
    out = task.base_model(pixel_values=torch.zeros(2, 3, 32, 32))
    assert out.logits.shape == (2, 3)


@pytest.fixture
def pinned() -> Any:
    """One thread and no prefix outputs from earlier tests. oneDNN's convolutions choose their
    algorithm by batch shape and thread count, so the last bits of a frozen stage's output
    depend on both, and AdamW turns last-bit differences of near-zero gradients into whole
    steps: a comparison of two runs to 1e-5 computes both, and their cached prefix, with the
    same threads and (``eval_batch_size=8``, the training batch) the same batch shape."""
    from objectives.models import clear_resources

    clear_resources()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    clear_resources()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["cnn", "vit"])
def test_fast_and_plain_paths_train_the_same(family: str, tiny_cnn: str, tiny_vit: str,
                                             image_folder: Path, pinned: None) -> None:
    task = task_for(config(tiny_cnn if family == "cnn" else tiny_vit, {"path": str(image_folder)},
                           eval_batch_size=8))
    k = max(1, task.structure.n_layers // 2)
    params = ImageParams.from_params({"freeze_layers": k, "batch_size": 8, "learning_rate": 3e-3})
    fast = train(params, task)
    plain = train(params, task, fast_paths=False)
    assert fast.record.prefix_cached and not plain.record.prefix_cached
    for a, b in zip(fast.record.history, plain.record.history, strict=True):
        assert a.metrics["val_loss"] == pytest.approx(b.metrics["val_loss"], abs=1e-5)
    assert set(fast.record.history[0].metrics) == {"val_loss", "val_accuracy", "val_f1"}
    assert len(task.structure.layers) == task.structure.n_layers  # whole again


def test_frozen_stages_are_not_trained(tiny_cnn: str, image_folder: Path) -> None:
    task = task_for(config(tiny_cnn, {"path": str(image_folder)}))
    result = train(ImageParams.from_params({"freeze_layers": 2, "batch_size": 8,
                                            "learning_rate": 1e-2}), task, keep_model=True)
    mine, base = result.model.efficientnet, task.base_model.efficientnet
    for a, b in zip(mine.stages[1].parameters(), base.stages[1].parameters(), strict=True):
        assert a is b  # shared, never written
    top = list(zip(mine.stages[-1].parameters(), base.stages[-1].parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in top)
    # Batch norms of frozen stages keep their statistics (eval mode).
    assert torch.equal(mine.stages[0].blocks[0]._bn1.running_mean, base.stages[0].blocks[0]._bn1.running_mean)


@pytest.mark.parametrize("family", ["cnn", "vit"])
def test_gradual_unfreezing_and_layer_decay(family: str, tiny_cnn: str, tiny_vit: str,
                                            image_folder: Path, pinned: None) -> None:
    from objectives.core import _fresh_model
    from objectives.core import _optimizer
    from objectives.structure import find_structure

    task = task_for(config(tiny_cnn if family == "cnn" else tiny_vit, {"path": str(image_folder)},
                           eval_batch_size=8))
    n = task.structure.n_layers
    gradual = ImageParams.from_params({"batch_size": 8, "learning_rate": 3e-3, "unfreeze_every": 1})
    fast = train(gradual, task, keep_model=True)
    plain = train(gradual, task, fast_paths=False)
    assert fast.record.prefix_cached  # the frozen bottom is replayed while it is frozen
    for a, b in zip(fast.record.history, plain.record.history, strict=True):
        assert a.metrics["val_loss"] == pytest.approx(b.metrics["val_loss"], abs=1e-5)
    # After 3 evaluations of 4, the bottom n - 1 - 3 blocks are still frozen, the rest moved.
    still = max(0, n - 1 - 3)
    mine, base = find_structure(fast.model), task.structure
    for i in range(n):
        moved = any(not torch.equal(a, b) for a, b in
                    zip(mine.layers[i].parameters(), base.layers[i].parameters(), strict=True))
        assert moved is (i >= still), i
    model, _ = _fresh_model(task, 0, lora=False)
    for p in model.parameters():
        p.requires_grad_(True)
    s = find_structure(model)
    optimizer = _optimizer(model, ImageParams.from_params({"learning_rate": 1e-3, "layer_decay": 0.5}), s)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr_of[id(next(s.layers[-1].parameters()))] == pytest.approx(1e-3)
    assert lr_of[id(next(s.layers[0].parameters()))] == pytest.approx(1e-3 * 0.5 ** (n - 1))
    assert lr_of[id(next(s.pre[0].parameters()))] == pytest.approx(1e-3 * 0.5 ** n)


# --- augmentation --------------------------------------------------------------------------------


def test_augmentation_off_is_identity_and_flip_flips() -> None:
    rng = np.random.default_rng(0)
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(augment_images(x, rng, 0.0, 0.0, 0.0), x)
    flipped = augment_images(x, np.random.default_rng(0), 0.0, 1.0, 0.0)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)
    jittered = augment_images(x, np.random.default_rng(0), 0.5, 0.5, 0.5)
    assert jittered.shape == x.shape and 0 <= float(jittered.min()) and float(jittered.max()) <= 1
    assert not torch.allclose(jittered, x)


@pytest.mark.slow
def test_augmented_batches_repeat_with_the_seed_and_only_in_training(tiny_cnn: str,
                                                                      image_folder: Path) -> None:
    task = task_for(config(tiny_cnn, {"path": str(image_folder)}))
    seen: list[tuple[bool, torch.Tensor]] = []

    class Recording(ImageClassificationTask):
        def collate(self, examples: Any, device: str, rng: Any = None) -> Any:
            batch = super().collate(examples, device, rng)
            seen.append((rng is not None, batch.inputs["pixel_values"].clone()))
            return batch

    rec = Recording(task.config, task.res)
    params = ImageParams.from_params({"batch_size": 8, "freeze_layers": 1, "crop_scale": 0.4,
                                      "hflip": 0.5, "color_jitter": 0.4})
    runs = []
    for _ in range(2):
        seen.clear()
        result = train(params, rec)
        runs.append(list(seen))
    assert not result.record.prefix_cached  # inputs vary: the frozen stages run every step
    assert len(runs[0]) == len(runs[1])
    for (aug_a, a), (aug_b, b) in zip(*runs, strict=True):
        assert aug_a == aug_b and torch.equal(a, b)
    assert any(aug for aug, _ in runs[0]) and any(not aug for aug, _ in runs[0])
    # The same examples without augmentation give other pixels (training batches only).
    seen.clear()
    train(ImageParams.from_params({"batch_size": 8, "freeze_layers": 1}), rec)
    plain = [x for aug, x in seen if not aug]
    assert not any(aug for aug, _ in seen)
    augmented = [x for aug, x in runs[0] if aug]
    assert not any(a.shape == b.shape and torch.equal(a, b) for a in augmented for b in plain)


def test_search_space_checks(tiny_cnn: str, tiny_vit: str, image_folder: Path) -> None:
    from optuna.distributions import CategoricalDistribution
    from optuna.distributions import FloatDistribution
    from optuna.distributions import IntDistribution

    cnn = config(tiny_cnn, {"path": str(image_folder)})
    n = task_for(cnn).structure.n_layers
    validate_space(cnn, {"freeze_layers": IntDistribution(0, n), "crop_scale": FloatDistribution(0, 0.5),
                         "hflip": CategoricalDistribution([0.0, 0.5]), "color_jitter": FloatDistribution(0, 0.4)})
    with pytest.raises(ValueError, match=rf"^freeze_layers: {n + 1} is beyond the {n} layers of model"):
        validate_space(cnn, {"freeze_layers": IntDistribution(0, n + 1)})
    with pytest.raises(ValueError, match="^finetuning: LoRA needs linear layers"):
        validate_space(cnn, {"r": CategoricalDistribution([4, 8])})
    with pytest.raises(ValueError, match=r"^hflip: 1.5 is outside the valid range"):
        validate_space(cnn, {"hflip": FloatDistribution(0, 1.5)})
    vit = config(tiny_vit, {"path": str(image_folder)})
    validate_space(vit, {"r": CategoricalDistribution([4]), "target_modules": CategoricalDistribution(["q_proj,v_proj"])})


def test_vit_lora_trains_adapters_and_head(tiny_vit: str, image_folder: Path) -> None:
    task = task_for(config(tiny_vit, {"path": str(image_folder)}))
    result = train(ImageParams.from_params({"r": 4, "batch_size": 8, "learning_rate": 1e-2}), task)
    assert result.record.trainable_params == 2 * 2 * (32 * 4 + 4 * 32) + 32 * 3 + 3


# --- a study that prunes and exports --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", ["cnn", "vit"])
def test_study_prunes_and_exports(family: str, tiny_cnn: str, tiny_vit: str, tmp_path: Path) -> None:
    images = write_image_folder(tmp_path / "images", n_per_class=12)
    model = tiny_cnn if family == "cnn" else tiny_vit
    url, study = run_study(tmp_path / "study", "image_classification",
                           {"model": model, "dataset": {"path": str(images)}, "image_size": 32})
    assert states(study).get("PRUNED", 0) >= 1 and states(study).get("COMPLETE", 0) >= 1
    out = tmp_path / "model"
    result = invoke("export", "--storage", url, "--study", "s", "-o", str(out), "--seeds", "2")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test_summary"]) == {"accuracy", "macro_f1", "loss"}
    assert len(metrics["test_summary"]["accuracy"]["values"]) == 2
    assert metrics["validation_check"]["match"]
    card = (out / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "Confusion matrix" in card
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["size"] == {"height": 32, "width": 32}
    # The saved model gives the recorded test predictions back.
    if family == "cnn":
        from objectives.image_models import efficientnet_from_pretrained

        loaded = efficientnet_from_pretrained(out)
    else:
        from transformers import AutoModelForImageClassification

        loaded = AutoModelForImageClassification.from_pretrained(out)
    cfg = config(model, {"path": str(images)})
    task = task_for(cfg)
    loaded.eval()
    batch = task.collate(task.examples("test"), "cpu")
    with torch.inference_mode():
        pred = loaded(**batch.inputs).logits.argmax(-1)
    accuracy = float((pred == batch.targets).float().mean())
    assert accuracy == pytest.approx(metrics["test"]["accuracy"])


@pytest.mark.slow
def test_packaged_efficientnet_on_digits_learns() -> None:
    """The real model on real data: its ImageNet features separate digits (the head alone
    learns on the cached output of all 7 stages)."""
    cfg = ImageClassificationConfig.from_dict({
        "model": "efficientnet-lite0", "dataset": {"name": "digits", "max_examples": 400},
        "image_size": 64, "epochs": 1, "evals_per_epoch": 2, "precision": "fp32"})
    task = task_for(cfg)
    result = train(ImageParams.from_params({"freeze_layers": 7, "batch_size": 16,
                                            "learning_rate": 3e-3}), task)
    losses = [p.metrics["val_loss"] for p in result.record.history]
    accs = [p.metrics["val_accuracy"] for p in result.record.history]
    assert losses[-1] < losses[0] and accs[-1] > 0.3 and result.record.prefix_cached
    assert result.record.total_params > 3_000_000


def test_training_duplicates_and_missing_classes(tmp_path: Path) -> None:
    for i, split in enumerate(("train", "validation", "test")):
        write_image_folder(tmp_path / split, n_per_class=3, seed=i + 1,
                           classes=("left", "right", "top") if split == "train" else ("left", "right"))
    make_image(1, 77).save(tmp_path / "train" / "right" / "a.png")
    make_image(1, 77).save(tmp_path / "train" / "right" / "b.png")
    cfg = ImageDataConfig(**{f"{s}_path": str(tmp_path / s) for s in ("train", "validation", "test")})
    found = {f.code: f for f in check_images(cfg, 0)}
    assert found["train-duplicates"].count == 1 and found["train-duplicates"].severity == "warning"
    assert "has no example of 'top'" in found["missing-class"].message
