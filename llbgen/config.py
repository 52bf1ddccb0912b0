"""The project configuration: pinned base images, and what llbgen's own buildkitd trusts.

Settings that belong to a project or to the machine it builds on, not to llbgen: where the base
image pins are, which registries llbgen's own daemon reaches over plain HTTP, which insecure
entitlements it lets builds have. It is read from the first of

1. ``--config FILE``;
2. ``$LLBGEN_CONFIG``;
3. ``llbgen.toml`` in the current directory;
4. the ``[tool.llbgen]`` table of ``pyproject.toml`` in the current directory.

With none of them there are no pins and llbgen's daemon trusts no registry and allows no
insecure entitlement. Every key is optional::

    bases-file = "bases.json"             # {"NAME": "REF@sha256:..."}; relative to this file
    [bases]                               # pins of this file's own, over those of bases-file
    "debian:trixie" = "127.0.0.1:5000/llbgen/debian:trixie@sha256:<64 hex digits>"
    [daemon]                              # llbgen's own buildkitd (no --addr, no $BUILDKIT_HOST)
    insecure-registries = ["127.0.0.1:5000"]      # plain HTTP, certificates not checked
    entitlements = ["network.host"]               # what --allow (and the graph) may ask for

(in ``pyproject.toml``: ``[tool.llbgen]``, ``[tool.llbgen.bases]``, ``[tool.llbgen.daemon]``).
A mistake is reported with the file and line, and the key it is about.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from llbgen.llb.errors import UsageError
from llbgen.llb.location import Location

ENV_VAR = "LLBGEN_CONFIG"
FILE_NAME = "llbgen.toml"
#: BuildKit's entitlements (``util/entitlements``).
ENTITLEMENTS = ("network.host", "security.insecure", "device")

_PIN = re.compile(r"@sha256:[0-9a-f]{64}$")
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]+)?$|^\[[0-9A-Fa-f:.]+\](:[0-9]+)?$")


class ConfigError(UsageError):
    """A mistake in the project configuration (exit code 2), at its file and line."""


@attrs.frozen
class DaemonSettings:
    """What llbgen's own buildkitd is started with (it is used when no address is given)."""

    #: Registries reached over plain HTTP without checking certificates: ``host[:port]``.
    insecure_registries: tuple[str, ...] = ()
    #: Entitlements builds on it may be granted (``insecure-entitlements``).
    entitlements: tuple[str, ...] = ()


@attrs.frozen
class Config:
    #: Where it was read from, for messages; None when there was no configuration.
    source: Path | None = None
    bases_file: Path | None = None
    bases: Mapping[str, str] = attrs.field(factory=dict)
    daemon: DaemonSettings = DaemonSettings()


def find(explicit: Path | None, cwd: Path, environ: Mapping[str, str] = os.environ) -> Config:
    """The configuration from ``explicit`` (``--config``), ``$LLBGEN_CONFIG`` or ``cwd``."""
    given = explicit or (Path(environ[ENV_VAR]) if environ.get(ENV_VAR) else None)
    if given is not None:
        if not given.is_file():
            where = "--config" if explicit else f"${ENV_VAR}"
            raise UsageError(f"{where} {given}: no such file")
        return load(given)
    if (cwd / FILE_NAME).is_file():
        return load(cwd / FILE_NAME)
    if (cwd / "pyproject.toml").is_file():
        return load(cwd / "pyproject.toml", table=("tool", "llbgen"))
    return Config()


def load(path: Path, table: Sequence[str] = ()) -> Config:
    """``path`` read as a configuration; in ``table`` of it (``tool.llbgen``) if given, absent
    there meaning no configuration."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the configuration {path}: {exc}") from None
    try:
        data: Any = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(path, text, exc) from None
    for name in table:
        data = data.get(name) if isinstance(data, dict) else None
    if data is None:
        return Config()
    return _Reader(path, text, tuple(table)).config(data)


def _syntax_error(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    """tomllib's message, its position made ``file:line`` (the end of the file when it has none)."""
    message = str(exc)
    found = re.search(r" \(at line (\d+), column (\d+)\)$", message)
    if found is None:
        message = message.removesuffix(" (at end of document)")
        return ConfigError(f"{message} (at the end)", Location(str(path), max(1, len(text.splitlines()))))
    return ConfigError(f"{message[: found.start()]} (column {found[2]})", Location(str(path), int(found[1])))


@attrs.frozen
class _Reader:
    """Checks the configuration's values, and knows the lines to report mistakes at."""

    path: Path
    text: str
    table: tuple[str, ...]

    def config(self, data: Any) -> Config:
        self._keys(data, (), {"bases-file", "bases", "daemon"})
        bases_file = None
        if "bases-file" in data:
            bases_file = self.path.parent / self._string(data["bases-file"], (), "bases-file")
        bases = {}
        if "bases" in data:
            pins = self._table(data["bases"], (), "bases")
            for name, ref in pins.items():
                ref = self._string(ref, ("bases",), name)
                if not _PIN.search(ref):
                    raise self._error(("bases",), name, f"{ref!r} is not pinned: expected REF@sha256:<64 hex digits>")
                bases[name] = ref
        daemon = DaemonSettings()
        if "daemon" in data:
            section = self._table(data["daemon"], (), "daemon")
            self._keys(section, ("daemon",), {"insecure-registries", "entitlements"})
            registries = self._strings(section, "insecure-registries")
            for registry in registries:
                if not _REGISTRY.match(registry):
                    raise self._error(
                        ("daemon",), "insecure-registries", f"{registry!r} is not HOST[:PORT] (no scheme, no path)"
                    )
            entitlements = self._strings(section, "entitlements")
            for entitlement in entitlements:
                if entitlement not in ENTITLEMENTS:
                    raise self._error(
                        ("daemon",), "entitlements", f"unknown entitlement {entitlement!r}: expected {', '.join(ENTITLEMENTS)}"
                    )
            daemon = DaemonSettings(registries, entitlements)
        return Config(self.path, bases_file, bases, daemon)

    def _keys(self, data: Mapping[str, Any], section: tuple[str, ...], known: set[str]) -> None:
        for key in data:
            if key not in known:
                raise self._error(section, key, f"unknown key; expected {', '.join(sorted(known))}")

    def _table(self, value: Any, section: tuple[str, ...], key: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self._error(section, key, f"expected a table, not {_kind(value)}")
        return value

    def _string(self, value: Any, section: tuple[str, ...], key: str) -> str:
        if not isinstance(value, str):
            raise self._error(section, key, f"expected a string, not {_kind(value)}")
        return value

    def _strings(self, section: Mapping[str, Any], key: str) -> tuple[str, ...]:
        value = section.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._error(("daemon",), key, "expected a list of strings")
        return tuple(value)

    def _error(self, section: tuple[str, ...], key: str, message: str) -> ConfigError:
        path = (*self.table, *section)
        name = ".".join(_toml_key(k) for k in (*path, key))
        return ConfigError(f"{name}: {message}", Location(str(self.path), self._line(path, key)))

    def _line(self, path: tuple[str, ...], key: str) -> int:
        """The line where ``key`` of the table at ``path`` is set, as usual TOML sets it (a
        ``[table]`` header, or ``key = value`` under its table's header); else where that table is."""
        table = _header(path)
        own_table = _header((*path, key))
        assignment = re.compile(r"^\s*" + _key_pattern(key) + r"\s*=")
        in_table = not path
        for number, line in enumerate(self.text.splitlines(), start=1):
            if own_table.match(line):
                return number
            if line.lstrip().startswith("["):
                in_table = bool(table.match(line))
            elif in_table and assignment.match(line):
                return number
        return self._line(path[:-1], path[-1]) if path else 1


def _header(path: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(_key_pattern(k) for k in path) + r"\s*\]")


def _key_pattern(key: str) -> str:
    """A regular expression for ``key`` written bare or quoted."""
    escaped = re.escape(key)
    return f"(?:{escaped}|\"{escaped}\"|'{escaped}')"


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'"{key}"'


def _kind(value: Any) -> str:
    return {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__
    )
