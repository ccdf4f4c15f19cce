"""Read a config or search-space YAML file: one clear input error for any bad file.

Both files are plain data: anchors and aliases (``&a`` / ``*a``) are refused at the first
alias, and a key given twice in one mapping is an error (YAML keeps the last one silently). A few nested aliases ("billion laughs") expand to billions of values, which hpo then
walked, copied and printed for minutes before failing.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from hpo.errors import HPOInputError

__all__ = ["read_yaml"]


def read_yaml(path: Path, what: str, error: type[HPOInputError]) -> Any:
    """The YAML document in ``path``, as plain data.

    Args:
        path: the file.
        what: what it is, for messages ("config", "search space").
        error: the input error to raise, with ``path`` in front of its message.

    Raises:
        HPOInputError (``error``): the file cannot be read, is not a regular file, is not
            UTF-8, or is not valid YAML.
    """
    import yaml

    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):  # never open a FIFO: reading it would wait for a writer
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise error(f"{path}: cannot read the {what} (it is {kind})")
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(
            f"{path}: the {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); "
            "save it as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 (a SafeLoader without aliases)
    except _AliasError as exc:
        raise error(
            f"{path}: line {exc.line}: YAML aliases (*{exc.anchor}) are not allowed in the {what}; "
            "write the values out"
        ) from None
    except _DuplicateKeyError as exc:
        raise error(
            f"{path}: line {exc.line}: duplicate key {exc.key!r}; each key may appear once "
            "(YAML would keep only the last)"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise error(f"{path}: not valid YAML{where}") from None


class _AliasError(Exception):
    def __init__(self, anchor: str, line: int) -> None:
        super().__init__(anchor, line)
        self.anchor, self.line = anchor, line


class _DuplicateKeyError(Exception):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(key, line)
        self.key, self.line = key, line


def _loader() -> type:
    """yaml.SafeLoader that stops at the first alias, before anything is expanded, and at the
    first key given twice in one mapping (YAML itself keeps the last one without a word)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise _AliasError(event.anchor, event.start_mark.line + 1)
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    break
                if duplicate:
                    raise _DuplicateKeyError(key, key_node.start_mark.line + 1)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader
