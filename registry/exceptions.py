"""Errors of the registry.

Each one is a mistake the user can fix (a bad file, an unknown name, an unreachable endpoint); the
CLI prints the message on one line (a SHACL report on a few plain lines) and exits with `exit_code`.
"""

from __future__ import annotations

from firmware_models.exceptions import TinyFleetError


class RegistryError(TinyFleetError):
    """Base of every registry error."""


class RegistryInputError(RegistryError):
    """A file, Thing Description, IRI or argument that the registry cannot read."""


class ValidationFailedError(RegistryError):
    """A description broke the SHACL shapes; nothing was written.

    Attributes
    ----------
    violations : list of str
        One plain sentence per violation, in a stable order.
    """

    def __init__(self, source: str, violations: list[str]) -> None:
        self.source = source
        self.violations = violations
        lines = "\n".join(f"  - {v}" for v in violations)
        super().__init__(f"{source}: {len(violations)} SHACL violation(s), nothing written\n{lines}")


class UnknownEntityError(RegistryError):
    """A model or device name, IRI or id that the registry does not hold."""


class AmbiguousNameError(RegistryError):
    """A name that matches more than one model or device; name it by IRI or id instead."""


class ReadOnlyQueryError(RegistryError):
    """A raw SPARQL text that would change the store (INSERT, DELETE, LOAD, DROP, ...)."""


class StoreError(RegistryError):
    """The store cannot be opened or reached (locked directory, endpoint down, auth refused)."""


class RegistryUsageError(RegistryError):
    """Options that cannot go together (e.g. `match` with both --model and --ram)."""

    exit_code = 2


class RegistryOptionError(RegistryInputError):
    """A question's argument that cannot be read (`--ram 12zB`, an unknown `--order-by`): a usage error.

    Why a subclass of RegistryInputError: callers that answer bad input (the HTTP API's 400) keep
    catching it; the CLI exits 2, as for any option it cannot parse.
    """

    exit_code = 2


class TDValidationError(RegistryInputError):
    """A Thing Description that breaks the W3C TD 1.1 JSON Schema or the directory's rules; nothing written.

    Attributes
    ----------
    errors : list of dict
        One `{"field": ..., "description": ...}` per problem (`field` is a dotted JSON path, `(root)`
        for the document itself): the shape of the WoT Discovery `validationErrors` member.
    """

    def __init__(self, source: str, errors: list[dict[str, str]]) -> None:
        self.source = source
        self.errors = errors
        first = errors[0] if errors else {"field": "(root)", "description": "invalid"}
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{source}: invalid Thing Description at {first['field']}: {first['description']}{more}")


class ThingNotFoundError(UnknownEntityError):
    """No Thing Description with that id in the directory (or its registration expired)."""


class ThingConflictError(RegistryError):
    """A Thing Description id that names something else in the registry (a model, a run, ...)."""
