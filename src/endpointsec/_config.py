"""Typed, strict reading of configuration tables (TOML or plain dicts).

Every accessor names the full dotted key in its error, and :meth:`Table.finish`
rejects keys nobody read, so a typo fails at start-up instead of being ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from endpointsec.errors import ConfigurationError

__all__ = ["MISSING", "Table"]

T = TypeVar("T")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Table:
    """A view of one configuration table with strict, key-naming accessors."""

    def __init__(
        self, data: Mapping[str, Any], *, key: str = "", base_dir: Path | None = None
    ) -> None:
        if not isinstance(data, Mapping):
            raise ConfigurationError("must be a table", key=key or "<root>")
        self._data = data
        self._key = key
        self._seen: set[str] = set()
        self.base_dir = base_dir or Path.cwd()

    def name(self, key: str) -> str:
        return f"{self._key}.{key}" if self._key else key

    def keys(self) -> list[str]:
        return list(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def _get(self, key: str, default: Any) -> Any:
        self._seen.add(key)
        if key in self._data:
            return self._data[key]
        if default is MISSING:
            raise ConfigurationError("is required", key=self.name(key))
        return default

    def _typed(self, key: str, default: Any, types: tuple[type, ...], what: str) -> Any:
        value = self._get(key, default)
        if value is default and default is not MISSING:
            return value
        # bool is an int subclass: keep them apart.
        if isinstance(value, bool) and bool not in types:
            raise ConfigurationError(f"must be {what}, not a boolean", key=self.name(key))
        if not isinstance(value, types):
            raise ConfigurationError(
                f"must be {what}, not {type(value).__name__}", key=self.name(key)
            )
        return value

    def string(self, key: str, default: Any = MISSING) -> Any:
        value = self._typed(key, default, (str,), "a string")
        if isinstance(value, str) and value == "" and default is MISSING:
            raise ConfigurationError("must not be empty", key=self.name(key))
        return value

    def boolean(self, key: str, default: Any = MISSING) -> Any:
        return self._typed(key, default, (bool,), "true or false")

    def integer(self, key: str, default: Any = MISSING, *, minimum: int | None = None) -> Any:
        value = self._typed(key, default, (int,), "an integer")
        if isinstance(value, int) and minimum is not None and value < minimum:
            raise ConfigurationError(f"must be at least {minimum}", key=self.name(key))
        return value

    def number(self, key: str, default: Any = MISSING, *, minimum: float | None = None) -> Any:
        value = self._typed(key, default, (int, float), "a number")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                raise ConfigurationError("must be a finite number", key=self.name(key))
            if minimum is not None and value < minimum:
                raise ConfigurationError(f"must be at least {minimum}", key=self.name(key))
        return value

    def choice(self, key: str, choices: Sequence[str], default: Any = MISSING) -> Any:
        value = self.string(key, default)
        if value is not default and value not in choices:
            raise ConfigurationError(
                f"must be one of {', '.join(repr(c) for c in choices)}, not {value!r}",
                key=self.name(key),
            )
        return value

    def str_list(self, key: str, default: Any = MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not MISSING:
            return value
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigurationError("must be a list of strings", key=self.name(key))
        return tuple(value)

    def path(self, key: str, default: Any = MISSING, *, must_exist: bool = True) -> Any:
        value = self.string(key, default)
        if value is default and default is not MISSING:
            return value
        path = Path(value)
        if not path.is_absolute():
            path = self.base_dir / path
        if must_exist and not path.exists():
            raise ConfigurationError(f"file not found: {path}", key=self.name(key))
        return path

    def path_list(self, key: str, default: Any = MISSING, *, must_exist: bool = True) -> Any:
        values = self.str_list(key, default)
        if values is default and default is not MISSING:
            return values
        out = []
        for v in values:
            p = Path(v)
            if not p.is_absolute():
                p = self.base_dir / p
            if must_exist and not p.exists():
                raise ConfigurationError(f"file not found: {p}", key=self.name(key))
            out.append(p)
        return tuple(out)

    def table(self, key: str, *, required: bool = False) -> Table | None:
        value = self._get(key, MISSING if required else None)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ConfigurationError("must be a table", key=self.name(key))
        return Table(value, key=self.name(key), base_dir=self.base_dir)

    def tables(self, key: str) -> list[Table]:
        value = self._get(key, [])
        if isinstance(value, Mapping):
            # A table of tables keyed by name: [identity.trust_domains."example.org"]
            return [
                Table(v, key=f"{self.name(key)}.{k}", base_dir=self.base_dir)
                for k, v in value.items()
            ]
        if not isinstance(value, list):
            raise ConfigurationError("must be an array of tables", key=self.name(key))
        return [
            Table(v, key=f"{self.name(key)}[{i}]", base_dir=self.base_dir)
            for i, v in enumerate(value)
        ]

    def raw(self, key: str, default: Any = MISSING) -> Any:
        return self._get(key, default)

    def finish(self) -> None:
        """Reject keys that no accessor read: they are typos or unsupported options."""
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise ConfigurationError("unknown key", key=self.name(unknown[0]))
