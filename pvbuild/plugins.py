"""Finds, loads and lists plugins: built-ins, the ``pvbuild`` entry-point group and ``plugins/*.py``.

A plugin that fails to load is recorded with its name, file and reason and left out, so
unrelated commands keep working; ``PVBUILD_STRICT_PLUGINS=1`` makes that fatal.
``PVBUILD_LOAD_PLUGINS=a,b`` loads only the named installed and project-local plugins
(built-ins always load; an empty value loads none of the others).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, TypeVar

import pluggy

from pvbuild import hookspecs
from pvbuild.errors import PluginError
from pvbuild.plugin_types import Annotator, Backend, BaseModel, CssSite, DatasetFormat

BUILTIN_PLUGINS = (
    "pvbuild.builtins.sample",
    "pvbuild.builtins.bjx",
    "pvbuild.builtins.extractive",
    "pvbuild.builtins.openai_annotator",
    "pvbuild.builtins.base_models",
    "pvbuild.builtins.tiny",
    "pvbuild.builtins.smollm2",
    "pvbuild.builtins.backends",
    "pvbuild.builtins.formats",
)
KINDS = {"register_crawlers": "crawlers", "register_annotators": "annotators",
         "register_base_models": "base_models", "register_backends": "backends",
         "register_dataset_formats": "dataset_formats"}
HOOK_NAMES = tuple(KINDS)
EXPECTED_TYPES: dict[str, type] = {"crawlers": CssSite, "annotators": Annotator, "base_models": BaseModel,
                                   "backends": Backend, "dataset_formats": DatasetFormat}

T = TypeVar("T")


@dataclass
class PluginInfo:
    """One loaded plugin: where it came from and what it registered."""

    name: str
    version: str
    source: str  # "builtin", "entrypoint" or "local"
    path: str
    # The module's ``__cache_version__``: what its outputs depend on, bumped by its author when they
    # change. Without one, ``version`` stands in (a release, or a local file's content hash).
    cache_version: str | None = None
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS.values()})

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "source": self.source,
                "cache_version": self.cache_version, "hooks": self.hooks, **self.registered}


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded, and why."""

    name: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"plugin {self.name!r} ({self.path}) failed to load: {self.reason}"


@dataclass(frozen=True)
class Registered(Generic[T]):
    """Something a plugin registered, with the plugin it came from (for staleness identity)."""

    item: T
    plugin: PluginInfo

    @property
    def identity(self) -> dict[str, str]:
        """What of the plugin its artifacts depend on: its cache version where it declares one, so a
        patch release or an edited comment rebuilds nothing; else its version."""
        return {"plugin": self.plugin.name, "version": self.plugin.cache_version or self.plugin.version}


@dataclass
class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    plugins: list[PluginInfo] = field(default_factory=list)
    failures: list[PluginFailure] = field(default_factory=list)
    crawlers: dict[str, Registered[CssSite]] = field(default_factory=dict)
    annotators: dict[str, Registered[Annotator]] = field(default_factory=dict)
    base_models: dict[str, Registered[BaseModel]] = field(default_factory=dict)
    backends: dict[str, Registered[Backend]] = field(default_factory=dict)  # by Backend.key, "kind:name"
    dataset_formats: dict[str, Registered[DatasetFormat]] = field(default_factory=dict)

    def backend_names(self, kind: str) -> list[str]:
        return sorted(entry.item.name for entry in self.backends.values() if entry.item.kind == kind)

    def table(self, kind: str) -> dict[str, Registered[Any]]:
        table: dict[str, Registered[Any]] = getattr(self, kind)
        return table


def _file_version(path: Path) -> str:
    """A project-local plugin without ``__version__`` is versioned by its content."""
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _allowed_names() -> set[str] | None:
    raw = os.environ.get("PVBUILD_LOAD_PLUGINS")
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def _strict() -> bool:
    return os.environ.get("PVBUILD_STRICT_PLUGINS", "") not in ("", "0", "false", "no")


def _misspelled_hooks(module: ModuleType) -> list[str]:
    """Hook implementations (or ``register_*`` functions) whose names are not hooks."""
    problems = []
    for attr, value in vars(module).items():
        marked = callable(value) and hasattr(value, "pvbuild_impl")
        looks_like_hook = attr.startswith("register_") and callable(value) and not isinstance(value, type)
        if (marked or looks_like_hook) and attr not in HOOK_NAMES and getattr(value, "__module__", None) \
                == module.__name__:
            close = difflib.get_close_matches(attr, HOOK_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown hook {attr!r}{hint}; hooks are: {', '.join(HOOK_NAMES)}")
    return problems


class PluginLoader:
    """Loads plugin modules into a pluggy manager and collects what they register."""

    def __init__(self, project_dir: Path) -> None:
        self.project_dir = project_dir
        self.manager = pluggy.PluginManager("pvbuild")
        self.manager.add_hookspecs(hookspecs)
        self.registry = Registry()

    def load(self) -> Registry:
        import pvbuild

        for module_name in BUILTIN_PLUGINS:
            short = module_name.rsplit(".", 1)[1]
            self._add(functools.partial(importlib.import_module, module_name), short, pvbuild.__version__,
                      "builtin", module_name)
        allowed = _allowed_names()
        for name, loader, version, path in self._entry_points():
            if allowed is None or name in allowed:
                self._add(loader, name, version, "entrypoint", path)
        for name, loader, path in self._local_plugins():
            if allowed is None or name in allowed:
                self._add(loader, name, None, "local", path)
        return self.registry

    def _entry_points(self) -> Iterator[tuple[str, Callable[[], ModuleType], str, str]]:
        for entry_point in importlib.metadata.entry_points(group="pvbuild"):
            version = entry_point.dist.version if entry_point.dist else "unknown"
            yield entry_point.name, entry_point.load, version, entry_point.value

    def _local_plugins(self) -> Iterator[tuple[str, Callable[[], ModuleType], str]]:
        directory = self.project_dir / "plugins"
        if not directory.is_dir():
            return
        for path in sorted(directory.glob("*.py")):
            if path.name.startswith("_"):
                continue
            yield path.stem, functools.partial(_import_file, path), f"plugins/{path.name}"

    def _add(self, loader: Callable[[], ModuleType], name: str, version: str | None,
             source: str, path: str) -> None:
        module: ModuleType | None = None
        try:
            module = loader()
            problems = _misspelled_hooks(module)
            if problems:
                raise PluginError("; ".join(problems))
            if version is None:
                module_file = Path(module.__file__ or path)
                version = str(getattr(module, "__version__", "")) or _file_version(module_file)
            cache_version = getattr(module, "__cache_version__", None)
            if cache_version is not None and (not isinstance(cache_version, str) or not cache_version.strip()):
                raise PluginError(f"__cache_version__ must be a non-empty string, not {cache_version!r}")
            info = PluginInfo(name=name, version=version, source=source, path=path, cache_version=cache_version)
            self.manager.register(module, name=f"{source}:{name}")
            self.manager.check_pending()
            self._collect(module, info)
        except Exception as error:  # noqa: BLE001 - any plugin error is reported, not raised
            if module is not None and self.manager.is_registered(module):
                self.manager.unregister(module)
            failure = PluginFailure(name=name, path=path, reason=f"{type(error).__name__}: {error}")
            if _strict():
                raise PluginError(f"{failure} (PVBUILD_STRICT_PLUGINS is set)") from error
            self.registry.failures.append(failure)
            return
        self.registry.plugins.append(info)

    def _collect(self, module: ModuleType, info: PluginInfo) -> None:
        for hook_name in HOOK_NAMES:
            function = getattr(module, hook_name, None)
            if function is None or not hasattr(function, "pvbuild_impl"):
                continue
            info.hooks.append(hook_name)
            kind = KINDS[hook_name]
            function(register=self._register_into(kind, info))

    def _register_into(self, kind: str, info: PluginInfo) -> Callable[[Any], None]:
        table = self.registry.table(kind)
        expected = EXPECTED_TYPES[kind]

        def register(item: Any) -> None:
            if not isinstance(item, expected):
                raise PluginError(f"{kind} must be {expected.__name__} instances, got {type(item).__name__}")
            name = str(getattr(item, "key", None) or getattr(item, "name", ""))
            if not name:
                raise PluginError(f"a {expected.__name__} registered without a name")
            if name in table:
                owner = table[name].plugin.name
                raise PluginError(f"{kind[:-1]} {name!r} is already registered by plugin {owner!r}")
            table[name] = Registered(item, info)
            info.registered[kind].append(name)

        return register


def _import_file(path: Path) -> ModuleType:
    module_name = f"pvbuild_local_plugins.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


_cache: dict[Path, Registry] = {}


def forget_plugins() -> None:
    """Drop loaded registries, so the next load sees new or changed plugin files."""
    _cache.clear()


def load_plugins(project_dir: Path, *, fresh: bool = False) -> Registry:
    """Load every plugin once per process (``fresh=True`` reloads, for tests and long sessions)."""
    key = project_dir.resolve()
    if fresh or key not in _cache:
        _cache[key] = PluginLoader(key).load()
    return _cache[key]
