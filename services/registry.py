"""Finds the services: every ``SVC_*.py`` module in ``services/`` and in the packages named
by ``SVC_PACKAGES``, and every concrete ``AbstractService`` subclass defined in them.

A module that fails to import, a class with bad settings, or two classes with one name are
reported (file and reason) and left out; every other service still loads.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import logging
import pkgutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services import shutdown
from services.AbstractService import AbstractService
from services.config import ServiceConfig, resolve_config
from services.errors import ServiceConfigError, UnknownServiceError
from services.settings import get_settings, service_env_var

logger = logging.getLogger(__name__)
# Where services are found without SVC_PACKAGES: the project's own services/SVC_*.py (the
# seed's place for them) and the examples this framework ships.
SHIPPED_PACKAGES = ("services", "services.examples")


@dataclass(frozen=True)
class ServiceSpec:
    """A discovered service: its class and resolved settings, before anything is built."""

    cls: type[AbstractService]
    config: ServiceConfig
    source: str

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class Registry:
    specs: dict[str, ServiceSpec] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    environ: Mapping[str, str] | None = None
    """The environment the specs were resolved from; ``build()`` resolves from it too."""

    @classmethod
    def discover(
        cls,
        packages: Iterable[str] | None = None,
        environ: Mapping[str, str] | None = None,
        only: Iterable[str] | None = None,
    ) -> Registry:
        """Import every ``SVC_*`` module of ``packages`` (default: ``SHIPPED_PACKAGES`` and
        ``SVC_PACKAGES``) and collect their services; ``only`` (default ``SVC_SERVICES``)
        keeps just the named ones."""
        settings = get_settings()
        if packages is None:
            packages = [*SHIPPED_PACKAGES, *settings.package_list]
        if only is None:
            only = settings.service_allowlist
        registry = cls(environ=environ)
        found: list[ServiceSpec] = []
        for package in packages:
            for module_name in _svc_modules(package, registry.errors):
                found.extend(_specs_in(module_name, environ, registry.errors))
        registry._add_unique(found)
        registry._keep_only(list(only))
        for error in registry.errors:
            logger.error("service not loaded: %s", error)
        return registry

    def _add_unique(self, found: list[ServiceSpec]) -> None:
        # Names that differ only in '.', '-' or '_' share their SVC_<NAME>_* variables, so
        # they count as one name here: neither could be configured on its own.
        by_token: dict[str, list[ServiceSpec]] = {}
        for spec in found:
            by_token.setdefault(service_env_var(spec.name, ""), []).append(spec)
        for _, specs in sorted(by_token.items()):
            if len(specs) == 1:
                self.specs[specs[0].name] = specs[0]
                continue
            names = sorted({s.name for s in specs})
            where = " and ".join(s.source for s in specs)
            what = (f"service name {names[0]!r} is defined more than once" if len(names) == 1
                    else f"service names {' and '.join(map(repr, names))} share their "
                         f"{service_env_var(names[0], '*')} settings")
            self.errors.append(f"{what} ({where}); none of them is loaded: rename one "
                               "(set `name = \"...\"` on the class)")

    def _keep_only(self, only: list[str]) -> None:
        if not only:
            return
        for name in only:
            if name not in self.specs:
                unknown = UnknownServiceError(name, self.names(), suggest(name, self.names()))
                self.errors.append(f"SVC_SERVICES names {name!r}, which is not a discovered "
                                   f"service: {unknown}")
        self.specs = {name: spec for name, spec in self.specs.items() if name in only}

    def names(self) -> list[str]:
        return sorted(self.specs)

    def get(self, name: str) -> ServiceSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise UnknownServiceError(name, self.names(), suggest(name, self.names())) from None

    def build(self, name: str, **kwargs: Any) -> AbstractService:
        """A new instance (``_configure_service()`` runs now)."""
        spec = self.get(name)
        kwargs.setdefault("environ", self.environ)
        return spec.cls(name=spec.name, **kwargs)

    def configs(self) -> dict[str, dict[str, Any]]:
        return {name: spec.config.as_dict() for name, spec in self.specs.items()}


def suggest(name: str, known: Iterable[str]) -> list[str]:
    """The known names closest to a mistyped one."""
    return difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)


def _svc_modules(package: str, errors: list[str]) -> list[str]:
    try:
        pkg = importlib.import_module(package)
    except BaseException as exc:
        if not isinstance(exc, Exception) and shutdown.requested():
            raise
        errors.append(f"package {package!r} (from SVC_PACKAGES) cannot be imported: "
                      f"{type(exc).__name__}: {exc}")
        return []
    paths = getattr(pkg, "__path__", None)
    if paths is None:
        errors.append(f"{package!r} is a module, not a package: expected a folder of SVC_*.py")
        return []
    return sorted(f"{package}.{info.name}" for info in pkgutil.iter_modules(paths)
                  if info.name.startswith("SVC_") and not info.ispkg)


def _specs_in(module_name: str, environ: Mapping[str, str] | None,
              errors: list[str]) -> list[ServiceSpec]:
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:
        # SystemExit or KeyboardInterrupt raised by a module's own code is that module's
        # problem: report it and load the rest. Only this process's shutdown goes on.
        if not isinstance(exc, Exception) and shutdown.requested():
            raise
        logger.debug("import of %s failed", module_name, exc_info=True)
        errors.append(f"{_path_of(module_name)}: cannot be imported: {type(exc).__name__}: {exc}")
        return []
    classes = [obj for obj in vars(module).values()
               if inspect.isclass(obj) and issubclass(obj, AbstractService)
               and obj.__module__ == module.__name__ and not inspect.isabstract(obj)]
    if not classes:
        errors.append(f"{_path_of(module_name)}: defines no concrete AbstractService subclass "
                      "(expected a class with _configure_service() and async update())")
    specs = []
    for cls in classes:
        source = f"{_path_of(module_name)} ({cls.__name__})"
        try:
            specs.append(ServiceSpec(cls, resolve_config(cls, environ=environ), source))
        except (ServiceConfigError, ValueError) as exc:
            errors.append(f"{source}: {exc}")
    return specs


def _path_of(module_name: str) -> str:
    spec = importlib.util.find_spec(module_name)
    return spec.origin if spec and spec.origin else module_name
