"""Minimal Validation of Thing Descriptions: the W3C TD 1.1 JSON Schema plus the Discovery extensions.

WoT Discovery asks a directory for at least the TD specification's "Minimal Validation" (its JSON
Schema) and the schema of the Enriched-TD extensions (`registration`). The TD 1.1 schema ships with
the device wire format (devices/wire/schemas/td-json-schema-validation.json, the one the device TDs
are tested against); the Discovery extension rules are few and checked here by hand. Errors come
back as the Discovery `validationErrors` items: `{"field": "properties.status.forms.0.href",
"description": "..."}`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

from registry.exceptions import RegistryInputError, TDValidationError
from registry.things import parse_time

MAX_ERRORS = 20
"""Validation errors reported per document (a broken TD can have hundreds; the first few fix it)."""


@lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    text = resources.files("devices.wire").joinpath("schemas/td-json-schema-validation.json").read_text("utf-8")
    schema = json.loads(text)
    return jsonschema.Draft7Validator(schema)


def _field(path: Iterable[Any]) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "(root)"


def validation_errors(td: Any) -> list[dict[str, str]]:
    """Every Minimal Validation problem of `td` (at most `MAX_ERRORS`), in document order; [] if valid."""
    if not isinstance(td, Mapping):
        return [{"field": "(root)", "description": "a Thing Description must be a JSON object"}]
    errors = []
    for e in sorted(_validator().iter_errors(td), key=lambda e: [str(p) for p in e.absolute_path]):
        errors.append({"field": _field(e.absolute_path), "description": _describe(e)})
        if len(errors) >= MAX_ERRORS:
            break
    errors.extend(_registration_errors(td.get("registration")))
    return errors[:MAX_ERRORS]


def _describe(error: Any) -> str:
    """jsonschema's message, shortened: a `oneOf` failure would otherwise print the whole instance."""
    if error.validator in ("oneOf", "anyOf") and error.context:
        best = min(error.context, key=lambda c: len(list(c.absolute_path)))
        return f"matches none of the allowed forms ({best.message[:200]})"
    return str(error.message)[:300]


def _registration_errors(reg: Any) -> list[dict[str, str]]:
    """The Discovery extension schema: `registration` is an object of date-times and a numeric `ttl`."""
    if reg is None:
        return []
    if not isinstance(reg, Mapping):
        return [{"field": "registration", "description": "registration must be an object"}]
    out = []
    for key in ("created", "modified", "expires", "retrieved"):
        if reg.get(key) is not None:
            try:
                parse_time(reg[key], f"registration.{key}")
            except RegistryInputError as exc:
                out.append({"field": f"registration.{key}", "description": str(exc)})
    ttl = reg.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0):
        out.append({"field": "registration.ttl", "description": f"ttl must be a number of seconds > 0, got {ttl!r}"})
    return out


def check_td(td: Any, *, source: str) -> None:
    """Raise `TDValidationError` naming `source` when `td` fails Minimal Validation."""
    errors = validation_errors(td)
    if errors:
        raise TDValidationError(source, errors)
