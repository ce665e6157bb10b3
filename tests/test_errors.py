"""The error tree: every code unique, catalogued and documented, every error marked."""

from __future__ import annotations

import onshore
from onshore import errors


def test_every_error_is_in_the_catalogue_and_the_docstring() -> None:
    assert errors.__doc__ is not None
    for code, cls in errors.ERRORS.items():
        assert cls.code == code
        if cls is not errors.OnshoreError:
            assert f"{cls.__name__} " in errors.__doc__, f"{cls.__name__} is not drawn in errors.py"
        assert cls.__name__ in errors.__all__


def test_every_error_is_transient_or_terminal() -> None:
    for cls in errors.ERRORS.values():
        if cls is errors.OnshoreError:
            continue
        assert issubclass(cls, errors.Transient) != issubclass(cls, errors.Terminal), cls


def test_errors_carry_hint_and_exit_code() -> None:
    exc = errors.SiteNotFound("no site 'x'", hint="declared sites: a, b")
    assert exc.to_dict() == {
        "error": "config.site_not_found",
        "message": "no site 'x'",
        "hint": "declared sites: a, b",
        "exit_code": 2,
    }
    assert str(exc) == "no site 'x' (declared sites: a, b)"


def test_public_surface() -> None:
    assert onshore.__all__ == ["OnshoreError", "__version__", "load_model"]
    assert all(hasattr(errors, name) for name in errors.__all__)
