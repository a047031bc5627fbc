"""The public surface of endpointsec.testing: exported, documented, importable."""

from __future__ import annotations

import importlib
import inspect

import pytest

import endpointsec.testing as testing
from endpointsec.testing import plugin


@pytest.mark.parametrize("name", testing.__all__)
def test_exported_name_is_documented(name: str) -> None:
    obj = getattr(testing, name)
    if inspect.isclass(obj) or inspect.isfunction(obj):
        assert inspect.getdoc(obj), f"{name} has no docstring"


def test_all_is_sorted_and_complete() -> None:
    assert testing.__all__ == sorted(testing.__all__, key=lambda n: (not n.isupper(), n))
    public = {n for n in dir(testing)
              if not n.startswith(("_", "@")) and n != "annotations"}  # "@": pytest rewrite
    modules = {"assertions", "clients", "pki", "principals", "suites", "tokens", "plugin",
               "importlib", "typing"}
    assert public - modules == set(testing.__all__)


def test_every_export_resolves_lazily() -> None:
    """The package imports its helpers on first use; every name it exports resolves."""
    assert set(testing._LAZY) == set(testing.__all__)
    for name in testing.__all__:
        module = importlib.import_module(testing._LAZY[name])
        assert getattr(testing, name) is getattr(module, name)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = testing.nothing_here  # type: ignore[attr-defined]


def test_plugin_fixtures_are_documented() -> None:
    for name in plugin.__all__:
        assert inspect.getdoc(getattr(plugin, name)), name
