from __future__ import annotations

import importlib

import pytest

import endpointsec


def test_all_exports_exist_and_are_sorted() -> None:
    for name in endpointsec.__all__:
        assert hasattr(endpointsec, name), name
    public = {n for n in dir(endpointsec) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(endpointsec, n)).__name__ == "module"}
    assert public - modules - {"annotations"} <= set(endpointsec.__all__)


def test_exceptions_form_one_tree() -> None:
    for name in endpointsec.__all__:
        obj = getattr(endpointsec, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, endpointsec.EndpointSecError), name
    assert issubclass(endpointsec.ConfigurationError, ValueError)
    statuses = {
        endpointsec.RequestError: 400, endpointsec.AuthenticationError: 401,
        endpointsec.AuthorizationError: 403, endpointsec.UpstreamError: 503,
    }
    for cls, status in statuses.items():
        assert cls.status_code == status


def test_every_export_resolves_lazily() -> None:
    """``import endpointsec`` imports the names it exports on first use."""
    assert set(endpointsec._LAZY) == set(endpointsec.__all__) - {"__version__"}
    for name, module in endpointsec._LAZY.items():
        assert getattr(endpointsec, name) is getattr(importlib.import_module(module), name)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = endpointsec.nothing_here  # type: ignore[attr-defined]
