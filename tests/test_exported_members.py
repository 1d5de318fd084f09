"""The public surface: exactly what bridge/__init__.py promises, documented."""

from __future__ import annotations

import types

import bridge


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted and names exactly the public attributes."""
    public = {
        name
        for name in dir(bridge)
        if not name.startswith("_") and not isinstance(getattr(bridge, name), types.ModuleType)
    }
    assert sorted(bridge.__all__) == list(bridge.__all__)
    assert public | {"__version__"} == set(bridge.__all__)


def test_every_public_name_has_a_docstring() -> None:
    """Each exported class and function says what it promises."""
    for name in bridge.__all__:
        if name == "__version__":
            continue
        assert getattr(bridge, name).__doc__, name


def test_py_typed_is_shipped() -> None:
    """The package ships py.typed for type checkers."""
    from importlib.resources import files

    assert files("bridge").joinpath("py.typed").is_file()
