"""Package attributes imported when first used (PEP 562), so that importing a
package loads none of torch, Ray or the decoders until a name needs them."""

from __future__ import annotations

import importlib


def lazy_attributes(package: str, names: dict[str, str], namespace: dict):
    """``(__getattr__, __dir__)`` for ``package``: ``names`` maps each public
    name to the relative module that defines it; a name, once imported, is
    kept in ``namespace`` (the package's globals)."""

    def __getattr__(name: str):
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
