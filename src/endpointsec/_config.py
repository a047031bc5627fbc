"""Typed, strict reading of configuration tables (TOML or plain dicts).

Every accessor names the full dotted key in its error, and :meth:`Table.finish`
rejects keys nobody read (with a "did you mean" for near misses), so a typo fails at
start-up instead of being ignored.

The readers (``IdentityConfig.from_table`` ...) are the one definition of the file:

* read with ``Table(data)``, the first error raises;
* read with ``Table(data, collect=True)``, every error is collected and
  :meth:`Table.raise_errors` raises one :class:`ConfigurationError` listing them all
  (a section whose keys are invalid is not built, so its cross-key checks do not
  repeat the same mistake);
* read with :meth:`Table.schema_root`, nothing is read: each accessor declares its key,
  type, default and bounds, and :meth:`Table.json_schema` is the JSON Schema of exactly
  the keys the loader accepts.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from endpointsec.errors import ConfigurationError

__all__ = ["MISSING", "Table"]

T = TypeVar("T")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

_STRING_LIST: dict[str, Any] = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
}


class _Invalid(Exception):
    """A section had errors (already collected): its value is not built."""


class _Report:
    """What a whole read shares: the collected errors, or the schema being declared."""

    __slots__ = ("collect", "errors", "schema")

    def __init__(self, *, collect: bool, schema: bool) -> None:
        self.collect = collect or schema
        self.schema = schema
        self.errors: list[ConfigurationError] = []


def _json_default(value: Any) -> Any:
    """A default as JSON, or MISSING when it has no JSON form (``None``)."""
    if value is None or value is MISSING:
        return MISSING
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list | frozenset | set):
        items = [_json_default(v) for v in value]
        return MISSING if any(i is MISSING for i in items) else sorted(items) \
            if isinstance(value, frozenset | set) else items
    if isinstance(value, bool | int | float | str):
        return value
    return MISSING


class Table:
    """A view of one configuration table with strict, key-naming accessors."""

    def __init__(
        self,
        data: Mapping[str, Any],
        *,
        key: str = "",
        base_dir: Path | None = None,
        collect: bool = False,
    ) -> None:
        self._report = _Report(collect=collect, schema=False)
        self._init(data, key=key, base_dir=base_dir, parent=None)

    def _init(self, data: Mapping[str, Any], *, key: str, base_dir: Path | None,
              parent: Table | None) -> None:
        self._key = key
        self._parent = parent
        self._failed = False
        self._seen: set[str] = set()
        self.base_dir = base_dir or Path.cwd()
        #: Schema mode: key -> JSON Schema (a dict, or a child Table / list marker).
        self._props: dict[str, Any] = {}
        self._required: list[str] = []
        self._extra: Any = None  # schema of keys chosen by the user (named tables)
        if self._report.schema:
            self._data: Mapping[str, Any] = {}
            return
        if not isinstance(data, Mapping):
            self._data = {}
            self._error("must be a table", key or "<root>")
            return
        self._data = data

    @classmethod
    def schema_root(cls) -> Table:
        """A table that reads nothing and records what its readers declare."""
        t = cls.__new__(cls)
        t._report = _Report(collect=True, schema=True)
        t._init({}, key="", base_dir=None, parent=None)
        return t

    def _child(self, data: Any, key: str) -> Table:
        t = Table.__new__(Table)
        t._report = self._report
        t._init(data, key=key, base_dir=self.base_dir, parent=self)
        return t

    # -- errors ---------------------------------------------------------------------

    @property
    def collecting(self) -> bool:
        return self._report.collect

    @property
    def declaring(self) -> bool:
        """Schema mode: accessors declare keys instead of reading them."""
        return self._report.schema

    def _error(self, message: str, dotted: str) -> None:
        exc = ConfigurationError(message, key=dotted)
        if not self._report.collect:
            raise exc
        self._record(exc)

    def _record(self, exc: ConfigurationError) -> None:
        if not self._report.schema:
            self._report.errors.append(exc)
        t: Table | None = self
        while t is not None:
            t._failed = True
            t = t._parent

    def error(self, message: str, *, key: str) -> None:
        """Report an invalid value of ``key`` (raised now, or collected)."""
        self._error(message, self.name(key))

    @property
    def errors(self) -> list[ConfigurationError]:
        """Every error collected so far (by this table's whole read)."""
        return list(self._report.errors)

    def raise_errors(self) -> None:
        """Raise one :class:`ConfigurationError` listing every collected error."""
        if self._report.errors:
            raise ConfigurationError.collect(self._report.errors)

    # -- building values ------------------------------------------------------------

    def build(self, factory: Callable[..., T], /, **kwargs: Any) -> T:
        """Finish this table and build its value with ``factory(**kwargs)``.

        When collecting, a table with an invalid key is not built (its error is already
        reported) and the constructor's own checks are collected too; the caller's
        :meth:`read` then substitutes its fallback.
        """
        self.finish()
        if self._failed or self._report.schema:
            raise _Invalid
        try:
            return factory(**kwargs)
        except ConfigurationError as exc:
            if not self._report.collect:
                raise
            self._record(exc)
            raise _Invalid from None

    def read(self, reader: Callable[[Table], T], fallback: T) -> T:
        """``reader(self)``, or ``fallback`` when the table was invalid (collecting)."""
        try:
            return reader(self)
        except _Invalid:
            if not self._report.collect:  # pragma: no cover - only raised when collecting
                raise
            return fallback
        except ConfigurationError as exc:
            if not self._report.collect:
                raise
            self._record(exc)
            return fallback

    # -- names ----------------------------------------------------------------------

    def name(self, key: str) -> str:
        return f"{self._key}.{key}" if self._key else key

    def keys(self) -> list[str]:
        return list(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    # -- schema declarations --------------------------------------------------------

    def _declare(self, key: str, schema: dict[str, Any], default: Any) -> None:
        self._seen.add(key)
        if not self._report.schema:
            return
        schema = dict(schema)
        if default is MISSING:
            if key not in self._required:
                self._required.append(key)
        else:
            json_default = _json_default(default)
            if json_default is not MISSING:
                schema["default"] = json_default
        self._props[key] = schema

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema (draft 2020-12 vocabulary) of what this table declared."""
        props: dict[str, Any] = {}
        for key, value in self._props.items():
            props[key] = _resolve(value)
        out: dict[str, Any] = {"type": "object", "properties": props}
        if self._required:
            out["required"] = list(self._required)
        out["additionalProperties"] = (
            False if self._extra is None else _resolve(self._extra))
        return out

    # -- accessors ------------------------------------------------------------------

    def _get(self, key: str, default: Any) -> Any:
        self._seen.add(key)
        if key in self._data:
            return self._data[key]
        if default is MISSING:
            self._error("is required", self.name(key))
            return MISSING
        return default

    def _typed(self, key: str, default: Any, types: tuple[type, ...], what: str) -> Any:
        value = self._get(key, default)
        if value is MISSING or (value is default and default is not MISSING):
            return value
        # bool is an int subclass: keep them apart.
        if isinstance(value, bool) and bool not in types:
            self._error(f"must be {what}, not a boolean", self.name(key))
            return MISSING
        if not isinstance(value, types):
            self._error(f"must be {what}, not {type(value).__name__}", self.name(key))
            return MISSING
        return value

    @staticmethod
    def _or(value: Any, default: Any, placeholder: Any) -> Any:
        """What an accessor returns for an invalid value: never seen by a built section."""
        if value is not MISSING:
            return value
        return placeholder if default is MISSING else default

    def string(self, key: str, default: Any = MISSING) -> Any:
        schema: dict[str, Any] = {"type": "string"}
        if default is MISSING:
            schema["minLength"] = 1
        self._declare(key, schema, default)
        if self.declaring:
            return self._or(MISSING, default, "")
        value = self._typed(key, default, (str,), "a string")
        if isinstance(value, str) and value == "" and default is MISSING:
            self._error("must not be empty", self.name(key))
        return self._or(value, default, "")

    def boolean(self, key: str, default: Any = MISSING) -> Any:
        self._declare(key, {"type": "boolean"}, default)
        if self.declaring:
            return self._or(MISSING, default, False)
        return self._or(self._typed(key, default, (bool,), "true or false"), default, False)

    @staticmethod
    def _bounds(schema: dict[str, Any], minimum: float | None,
                maximum: float | None) -> dict[str, Any]:
        if minimum is not None:
            schema["minimum"] = minimum
        if maximum is not None:
            schema["maximum"] = maximum
        return schema

    def _out_of_bounds(self, key: str, value: float, minimum: float | None,
                       maximum: float | None) -> bool:
        if minimum is not None and value < minimum:
            self._error(f"must be at least {minimum}", self.name(key))
            return True
        if maximum is not None and value > maximum:
            self._error(f"must be at most {maximum}", self.name(key))
            return True
        return False

    def integer(self, key: str, default: Any = MISSING, *, minimum: int | None = None,
                maximum: int | None = None) -> Any:
        self._declare(key, self._bounds({"type": "integer"}, minimum, maximum), default)
        if self.declaring:
            return self._or(MISSING, default, minimum or 0)
        value = self._typed(key, default, (int,), "an integer")
        if isinstance(value, int) and value is not default \
                and self._out_of_bounds(key, value, minimum, maximum):
            value = MISSING
        return self._or(value, default, minimum or 0)

    def number(self, key: str, default: Any = MISSING, *, minimum: float | None = None,
               maximum: float | None = None) -> Any:
        self._declare(key, self._bounds({"type": "number"}, minimum, maximum), default)
        if self.declaring:
            return self._or(MISSING, default, minimum or 0.0)
        value = self._typed(key, default, (int, float), "a number")
        if isinstance(value, int | float) and value is not default:
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                self._error("must be a finite number", self.name(key))
                value = MISSING
            elif self._out_of_bounds(key, value, minimum, maximum):
                value = MISSING
        return self._or(value, default, minimum or 0.0)

    def choice(self, key: str, choices: Sequence[str], default: Any = MISSING) -> Any:
        self._declare(key, {"type": "string", "enum": list(choices)}, default)
        placeholder = choices[0] if choices else ""
        if self.declaring:
            return self._or(MISSING, default, placeholder)
        value = self._typed(key, default, (str,), "a string")
        if value is not MISSING and value is not default and value not in choices:
            hint = _did_you_mean(value, choices)
            self._error(
                f"must be one of {', '.join(repr(c) for c in choices)}, not {value!r}{hint}",
                self.name(key),
            )
            value = MISSING
        return self._or(value, default, placeholder)

    def str_list(self, key: str, default: Any = MISSING, *,
                 choices: Sequence[str] | None = None, what: str = "value") -> Any:
        """A list of strings (a single string is a list of one); with ``choices``, each
        must be one of them (``what`` names an item in the error)."""
        schema: dict[str, Any] = _STRING_LIST
        if choices is not None:
            item = {"type": "string", "enum": list(choices)}
            schema = {"anyOf": [item, {"type": "array", "items": item}]}
        self._declare(key, schema, default)
        if self.declaring:
            return self._or(MISSING, default, ())
        value = self._get(key, default)
        if value is MISSING or (value is default and default is not MISSING):
            return self._or(value, default, ())
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            self._error("must be a list of strings", self.name(key))
            return self._or(MISSING, default, ())
        if choices is not None:
            for v in value:
                if v not in choices:
                    self._error(f"unknown {what} {v!r}; expected one of "
                                f"{', '.join(choices)}{_did_you_mean(v, choices)}",
                                self.name(key))
                    return self._or(MISSING, default, ())
        return tuple(value)

    def _resolve_path(self, value: str, key: str, must_exist: bool) -> Path:
        path = Path(value)
        if not path.is_absolute():
            path = self.base_dir / path
        if must_exist and not path.exists():
            self._error(f"file not found: {path}", self.name(key))
        return path

    def path(self, key: str, default: Any = MISSING, *, must_exist: bool = True) -> Any:
        value = self.string(key, default)
        if self.declaring or value is default or value == "":
            return value if value != "" else Path()
        return self._resolve_path(value, key, must_exist)

    def path_list(self, key: str, default: Any = MISSING, *, must_exist: bool = True) -> Any:
        values = self.str_list(key, default)
        if self.declaring or values is default:
            return values
        return tuple(self._resolve_path(v, key, must_exist) for v in values)

    def table(self, key: str, *, required: bool = False) -> Table | None:
        if self.declaring:
            child = self._child({}, self.name(key))
            self._declare(key, {"$table": child}, MISSING if required else None)
            return child
        self._seen.add(key)
        value = self._get(key, MISSING if required else None)
        if value is None or value is MISSING:
            return None
        if not isinstance(value, Mapping):
            self._error("must be a table", self.name(key))
            return None
        return self._child(value, self.name(key))

    def tables(self, key: str) -> list[Table]:
        """An array of tables (``[[routes]]``), or a table of tables keyed by name."""
        if self.declaring:
            child = self._child({}, f"{self.name(key)}[]")
            self._declare(key, {"$tables": child}, None)
            return [child]
        value = self._get(key, [])
        if isinstance(value, Mapping):
            children = [self._child(v, f"{self.name(key)}.{k}") for k, v in value.items()]
        elif isinstance(value, list):
            children = [self._child(v, f"{self.name(key)}[{i}]") for i, v in enumerate(value)]
        else:
            self._error("must be an array of tables", self.name(key))
            return []
        # An entry that is not a table is reported once ("must be a table"), not read.
        return [c for c in children if not c._failed]

    def named_tables(self, key: str) -> list[tuple[str, Table]]:
        """A table whose keys are names chosen by the user, each a table
        (``[identity.trust_domains."example.org"]``)."""
        if self.declaring:
            holder = self._child({}, self.name(key))
            child = holder._child({}, f"{self.name(key)}.<name>")
            holder._extra = {"$table": child}
            self._declare(key, {"$table": holder}, None)
            return [("<name>", child)]
        holder_t = self.table(key)
        if holder_t is None:
            return []
        out: list[tuple[str, Table]] = []
        for name in holder_t.keys():  # noqa: SIM118 (Table is not iterable)
            sub = holder_t.table(name, required=True)
            if sub is not None:
                out.append((name, sub))
        return out

    def raw(self, key: str, default: Any = MISSING) -> Any:
        if self.declaring:
            self._declare(key, {}, default)
            return self._or(MISSING, default, None)
        return self._get(key, default)

    def finish(self) -> None:
        """Reject keys that no accessor read: they are typos or unsupported options."""
        if self.declaring:
            return
        known = sorted(self._seen)
        for key in sorted(set(self._data) - self._seen):
            self._error(f"unknown key{_did_you_mean(key, known)}", self.name(key))


def _did_you_mean(word: str, known: Sequence[str]) -> str:
    same = [k for k in known if k.lower() == str(word).lower()]
    close = same or difflib.get_close_matches(str(word), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _resolve(value: Any) -> Any:
    """A declared schema, with child tables turned into their schemas."""
    if isinstance(value, dict):
        if "$table" in value:
            out = value["$table"].json_schema()
            if "default" in value:  # pragma: no cover - tables have no defaults
                out["default"] = value["default"]
            return out
        if "$tables" in value:
            item = value["$tables"].json_schema()
            return {"anyOf": [{"type": "array", "items": item},
                              {"type": "object", "additionalProperties": item}]}
        return value
    return value
