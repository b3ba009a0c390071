"""Every benchmark module imports against the code it measures.

The benchmarks are run by hand (minutes to hours), so nothing else notices when a refactor renames what they
call: `benchmarks.scale` once imported a few-shot helper that no longer existed and could not start at all.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted(p.stem for p in (Path(__file__).parents[1] / "benchmarks").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_module_imports_and_has_an_entry_point(name: str) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    if 'if __name__ == "__main__":' in Path(str(module.__file__)).read_text():
        assert callable(getattr(module, "main", None)), f"benchmarks.{name} runs as a script but has no main()"
