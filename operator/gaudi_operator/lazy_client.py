"""kubernetes_asyncio without importing its whole generated API at start-up.

`kubernetes_asyncio.client` imports all of its ~770 generated model classes and ~70 API
classes when it is first imported (kopf imports it too, whenever it is installed), about
38 MiB of the operator's resident memory before its first job (docs/performance.md). The
operator builds its requests from dicts and reads most answers as JSON; only a few
answers are turned into models. `install` puts light stand-ins for the packages
`kubernetes_asyncio.client`, `.client.models` and `.client.api` in `sys.modules` before
anything imports them: each class is imported from its own module when it is first used
(`client.CoreV1Api`, `ApiClient`'s `getattr(models, "V1Pod")` when it decodes an answer),
and everything else (submodules, `from kubernetes_asyncio.client import X`) works as
before. The package's file layout (one module per class, named in snake case) is what
openapi-generator writes; if it is not found, nothing is changed.

The way out is a thin JSON client of our own (issue 21): then kubernetes_asyncio is not
needed at all, and neither is this.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

PACKAGE = "kubernetes_asyncio"
# What `kubernetes_asyncio.client` exports besides the APIs and the models.
_CLIENT_EXTRAS = {
    "ApiClient": "api_client",
    "Configuration": "configuration",
    "OpenApiException": "exceptions",
    "ApiTypeError": "exceptions",
    "ApiValueError": "exceptions",
    "ApiKeyError": "exceptions",
    "ApiAttributeError": "exceptions",
    "ApiException": "exceptions",
}


class LazyPackage(types.ModuleType):
    """A package whose classes are imported from their own modules on first use."""

    def __init__(
        self, name: str, path: Path, classes: dict[str, str], extras: dict[str, str]
    ) -> None:
        super().__init__(name)
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(path)]
        self.__spec__ = spec
        self.__path__ = [str(path)]
        self.__package__ = name
        self.__file__ = str(path / "__init__.py")
        self._classes = classes  # class name, lower case -> module (full name)
        self._extras = extras  # exact class name -> module (full name)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        module = self._extras.get(attr) or self._classes.get(attr.lower())
        try:
            if module is not None:
                value = getattr(importlib.import_module(module), attr)
            else:  # a submodule: `client.rest`, `client.exceptions`
                value = importlib.import_module(f"{self.__name__}.{attr}")
        except (ImportError, AttributeError) as err:
            raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}") from err
        setattr(self, attr, value)
        return value

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._extras})


def _classes(folder: Path, package: str) -> dict[str, str] | None:
    """Class name (lower case, as openapi-generator names the module after it) -> module;
    None when two modules would answer for one name (then the layout is not the one
    this relies on)."""
    out: dict[str, str] = {}
    for f in folder.glob("*.py"):
        if f.stem == "__init__":
            continue
        key = f.stem.replace("_", "")
        if key in out:
            return None
        out[key] = f"{package}.{f.stem}"
    return out


def install() -> bool:
    """Put the lazy packages in place; False when it is too late (already imported) or
    the installed package does not have the expected layout."""
    name = f"{PACKAGE}.client"
    if name in sys.modules:
        return isinstance(sys.modules[name], LazyPackage)
    spec = importlib.util.find_spec(PACKAGE)  # finds it without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return False
    client_dir = Path(next(iter(spec.submodule_search_locations))) / "client"
    models_dir, api_dir = client_dir / "models", client_dir / "api"
    if not (models_dir.is_dir() and api_dir.is_dir() and (client_dir / "api_client.py").exists()):
        return False
    models = _classes(models_dir, f"{name}.models")
    apis = _classes(api_dir, f"{name}.api")
    if not models or not apis or models.keys() & apis.keys():
        return False
    extras = {k: f"{name}.{v}" for k, v in _CLIENT_EXTRAS.items()}
    sys.modules[f"{name}.models"] = LazyPackage(f"{name}.models", models_dir, models, {})
    sys.modules[f"{name}.api"] = LazyPackage(f"{name}.api", api_dir, apis, {})
    sys.modules[name] = LazyPackage(name, client_dir, {**models, **apis}, extras)
    return True
