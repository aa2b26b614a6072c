"""The package's layout rules, read from the source (nothing imported):
modules private unless public by name, none over 450 lines, Ray only in the
pipeline and the jobs, and the pipeline never importing the public face."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cps_ray"
MAX_LINES = 450
# The public modules and packages; everything else under cps_ray is private.
PUBLIC_MODULES = {"__init__.py", "errors.py"}
PUBLIC_PACKAGES = {"pipeline", "jobs"}
RAY_ALLOWED = {"pipeline", "jobs"}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative ones resolved)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_internal_modules_are_private():
    public = []
    for path in _modules():
        inside = path.relative_to(PACKAGE).parts
        if len(inside) == 1:
            ok = inside[0] in PUBLIC_MODULES or inside[0].startswith("_")
        elif inside[0] in PUBLIC_PACKAGES:
            ok = inside[-1] == "__init__.py" or inside[-1].startswith("_")
        else:
            ok = inside[0].startswith("_")  # a private package: its modules are private
        if not ok:
            public.append(str(path.relative_to(PACKAGE)))
    assert not public, f"modules that should be private (underscore): {public}"


def test_no_module_is_over_450_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_ray_is_imported_only_by_the_pipeline_and_the_jobs():
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in _modules()
        if p.relative_to(PACKAGE).parts[0] not in RAY_ALLOWED
        and any(name == "ray" or name.startswith("ray.") for name in _imports(p))
    ]
    assert not offenders, offenders


def test_the_pipeline_and_the_jobs_never_import_the_public_face():
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in _modules()
        if p.relative_to(PACKAGE).parts[0] in RAY_ALLOWED
        and any(name == "cps_ray._api" or name.startswith("cps_ray._api.") for name in _imports(p))
    ]
    assert not offenders, offenders


def test_the_rules_see_imports():
    """The import reader finds what these rules look for (they could not fail otherwise)."""
    stages = _imports(PACKAGE / "pipeline" / "_dataset.py")
    assert "cps_ray._config.PatchStreamConfig" in stages
    assert any(name == "ray" or name.startswith("ray.") for name in stages)
    assert any(name.startswith("cps_ray._core") for name in _imports(PACKAGE / "_api.py"))
