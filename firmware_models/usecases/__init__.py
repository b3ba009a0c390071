"""Registry of use cases: sine, characters, keywords, presence.

Adding a use case is one line in `_MODULES` plus a module that defines one `UseCase` subclass
whose `name` matches the key. Modules that do not exist (yet) are left out of `USE_CASES`, so a
partial checkout still works; a module that exists but fails to import is a bug and raises.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path

from firmware_models.exceptions import UnknownUseCaseError
from firmware_models.usecases.base import UseCase

# name -> module that defines it (in the order the CLI lists them).
_MODULES: dict[str, str] = {
    "sine": "firmware_models.usecases.sine",
    "characters": "firmware_models.usecases.characters",
    "keywords": "firmware_models.usecases.keywords",
    "presence": "firmware_models.usecases.presence",
}
ALL = "all"


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


USE_CASES: tuple[str, ...] = tuple(name for name, module in _MODULES.items() if _available(module))


def get_use_case(name: str, *, data: str | Path | None = None) -> UseCase:
    """A fresh instance of the use case called `name`, reading the real data set at `data` if given.

    Raises
    ------
    UnknownUseCaseError
        When `name` is not one of `USE_CASES` (exit code 2); the message lists the valid names.
    DataOptionError
        `data` given for a use case without a real data set (exit code 2).
    """
    if name not in USE_CASES:
        raise UnknownUseCaseError(f"unknown use case {name!r}; valid: {', '.join(USE_CASES)}")
    module = importlib.import_module(_MODULES[name])
    for obj in vars(module).values():
        if (inspect.isclass(obj) and issubclass(obj, UseCase) and not inspect.isabstract(obj)
                and getattr(obj, "name", None) == name):
            return obj().with_data(data)
    raise UnknownUseCaseError(f"module {_MODULES[name]} defines no UseCase subclass named {name!r}")


def resolve_names(name: str) -> list[str]:
    """`name` as a list of use-case names; "all" expands to every available one."""
    if name == ALL:
        return list(USE_CASES)
    if name not in USE_CASES:
        raise UnknownUseCaseError(f"unknown use case {name!r}; valid: {', '.join((*USE_CASES, ALL))}")
    return [name]


__all__ = ["ALL", "USE_CASES", "UseCase", "get_use_case", "resolve_names"]
