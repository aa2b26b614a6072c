"""The package's layout rules, read from the source (nothing imported):
modules private unless public by name, none over 600 lines, Ray only in
the pipeline and the jobs, and imports that run one way: entry points ->
pipeline -> core -> decode and select -> configuration
(``docs/architecture.md``)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cps_ray"
MAX_LINES = 600  # STYLE: split a module past 600 lines
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


def test_no_module_is_over_600_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


# Layers, lowest first: a module imports only from its own layer or lower ones.
LAYERS = (
    ("configuration", {"errors", "_lazy", "_faults", "_stderr", "_remote", "_guards", "_devices",
                       "_config", "_sampling", "_baselines", "_convert", "_media"}),
    ("decode and select", {"_decode", "_kernels", "_motion", "_select", "_rebuild"}),
    ("core", {"_rows", "_core", "_store"}),
    ("public face", {"_api"}),
    ("pipeline", {"pipeline"}),
    ("entry points", {"jobs", "_cli", "_demo", "__init__"}),
)  # fmt: skip


def _layer(name: str) -> int:
    """The layer of ``cps_ray.<name>...`` (by its first part)."""
    first = name.split(".")[0]
    for level, (_, members) in enumerate(LAYERS):
        if first in members:
            return level
    raise AssertionError(f"cps_ray.{name} is in no layer of LAYERS")


def test_imports_run_one_way():
    upward = []
    for path in _modules():
        inside = path.relative_to(PACKAGE).with_suffix("")
        own = _layer(".".join(inside.parts))
        for name in _imports(path):
            if name.startswith("cps_ray.") and name.count(".") >= 1:
                target = name[len("cps_ray.") :]
                if target.split(".")[0] in {"", "cps_ray"}:
                    continue
                try:
                    level = _layer(target)
                except AssertionError:
                    continue  # a name imported from a module, checked as its module
                if level > own:
                    upward.append(f"{inside} ({LAYERS[own][0]}) imports cps_ray.{target} "
                                  f"({LAYERS[level][0]})")  # fmt: skip
    assert not upward, upward


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
    assert _layer("pipeline._output") > _layer("_core") > _layer("_select") > _layer("_config")
    # the core reads rows from its own layer, never from the pipeline
    core = _imports(PACKAGE / "_core.py")
    assert any(name.startswith("cps_ray._rows") for name in core)
    assert not any(name.startswith("cps_ray.pipeline") for name in core)
