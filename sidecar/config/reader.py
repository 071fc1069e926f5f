"""A checked reader over one parsed YAML mapping: every error names the field's path.

Reading marks keys as known; `finish()` rejects whatever was not read, so an unknown field
is an error without a separate list of allowed keys to keep in step with the parser.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

from sidecar.errors import ConfigError

_MISSING: Any = object()

# RFC 1123 hostname, optionally with one leading wildcard label (Gateway API `Hostname`).
HOSTNAME_RE = re.compile(
    r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
# Kubernetes object names (DNS-1123 subdomain) and label values are looser than this, but a
# name that fails it cannot name anything we serve.
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class Reader:
    """Typed access to a mapping at `path` inside document `source`."""

    __slots__ = ("_data", "_read", "path", "source")

    def __init__(self, data: object, path: str, source: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"must be a mapping, got {_type_name(data)}", source=source, field=path
            )
        self._data: Mapping[str, Any] = data
        self._read: set[str] = set()
        self.path = path
        self.source = source

    # -- errors -------------------------------------------------------------------------
    def fail(self, key: str | None, message: str) -> NoReturn:
        raise ConfigError(message, source=self.source, field=self._at(key))

    def _at(self, key: str | None) -> str:
        if key is None:
            return self.path
        return f"{self.path}.{key}" if self.path else key

    # -- scalars ------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return key in self._data and self._data[key] is not None

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self._read.add(key)
        value = self._data.get(key)
        if value is None:
            if default is _MISSING:
                self.fail(key, "is required")
            return default
        return value

    def text(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        choices: tuple[str, ...] | None = None,
        pattern: re.Pattern[str] | None = None,
        max_len: int = 253,
    ) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str):
            self.fail(key, f"must be a string, got {_type_name(value)}")
        if choices is not None and value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}; got {value!r}")
        if len(value) > max_len:
            self.fail(key, f"must be at most {max_len} characters")
        if pattern is not None and not pattern.match(value):
            self.fail(key, f"{value!r} is not valid")
        return value

    def integer(
        self, key: str, default: Any = _MISSING, *, lo: int = 0, hi: int = 2**31 - 1
    ) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"must be an integer, got {_type_name(value)}")
        if not lo <= value <= hi:
            self.fail(key, f"must be between {lo} and {hi}; got {value}")
        return value

    def flag(self, key: str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if not isinstance(value, bool) and value is not default:
            self.fail(key, f"must be true or false, got {_type_name(value)}")
        return value

    def str_map(self, key: str) -> dict[str, str]:
        value = self.raw(key, {})
        if not isinstance(value, Mapping):
            self.fail(key, f"must be a mapping, got {_type_name(value)}")
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, str):
                self.fail(key, f"entry {k!r} must map a string to a string")
            out[k] = v
        return out

    def str_list(
        self, key: str, *, pattern: re.Pattern[str] | None = None, max_len: int | None = None
    ) -> list[str]:
        value = self.raw(key, [])
        if not isinstance(value, list):
            self.fail(key, f"must be a list, got {_type_name(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{key}[{i}]", f"must be a string, got {_type_name(item)}")
            if max_len is not None and not 0 < len(item) <= max_len:
                self.fail(f"{key}[{i}]", f"must be 1 to {max_len} characters long")
            if pattern is not None and not pattern.match(item):
                self.fail(f"{key}[{i}]", f"{item!r} is not valid")
        return list(value)

    # -- nested -------------------------------------------------------------------------
    def obj(self, key: str) -> Reader | None:
        value = self.raw(key, None)
        return None if value is None else Reader(value, self._at(key), self.source)

    def req_obj(self, key: str) -> Reader:
        return Reader(self.raw(key), self._at(key), self.source)

    def objs(self, key: str, *, max_items: int = 100_000) -> Iterator[Reader]:
        value = self.raw(key, [])
        if not isinstance(value, list):
            self.fail(key, f"must be a list, got {_type_name(value)}")
        if len(value) > max_items:
            self.fail(key, f"must have at most {max_items} entries")
        for i, item in enumerate(value):
            yield Reader(item, f"{self._at(key)}[{i}]", self.source)

    # -- completion ---------------------------------------------------------------------
    def ignore(self, *keys: str) -> None:
        """Accept these keys without reading them (fields with no meaning for a proxy)."""
        self._read.update(keys)

    def finish(self) -> None:
        unknown = [k for k in self._data if k not in self._read]
        if unknown:
            self.fail(str(unknown[0]), "unknown field")


def _type_name(value: object) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
