"""The ops layer keeps its place (issue 13): `einsearch/ops` imports only torch and itself, plus
an op's kernel inside the function that has chosen it; `einsearch/kernels` imports nothing from
einsearch but itself; and each op that may run a kernel names the PyTorch form an export runs.

Read from the source with `ast` (the kernel modules need Triton to import).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import einsearch
from tests.test_imports import imports, package_modules

ROOT = Path(einsearch.__file__).parent
MODULES = set(package_modules())


def einsearch_imports(path: Path) -> list[tuple[str, bool]]:
    """(the einsearch module imported, whether the import is inside a function) for each import in the file."""
    return imports(path, MODULES)


def test_ops_import_only_ops_and_their_kernels_lazily() -> None:
    for path in sorted((ROOT / "ops").glob("*.py")):
        for name, lazy in einsearch_imports(path):
            allowed = name.startswith("einsearch.ops.") or (name.startswith("einsearch.kernels.") and lazy)
            assert allowed, f"ops/{path.name} imports {name}"


def test_kernels_import_nothing_from_the_rest_of_einsearch() -> None:
    for path in sorted((ROOT / "kernels").glob("*.py")):
        for name, _ in einsearch_imports(path):
            assert name.startswith("einsearch.kernels."), f"kernels/{path.name} imports {name}"


def test_every_op_with_a_kernel_names_its_torch_form() -> None:
    """An op module that may import a kernel lists in TORCH_FORMS each op and the PyTorch form it
    falls back to, defined beside it: what an export carries in the op's place."""
    for path in sorted((ROOT / "ops").glob("[!_]*.py")):  # the op modules, not __init__
        module = importlib.import_module(f"einsearch.ops.{path.stem}")
        has_kernel = any(lazy for _, lazy in einsearch_imports(path))
        forms = getattr(module, "TORCH_FORMS", {})
        assert has_kernel == bool(forms), path.name
        for op, form in forms.items():
            assert op.__module__ == form.__module__ == module.__name__
            assert f"return {form.__name__}(" in inspect.getsource(op), f"{op.__name__} falls back to another form"
