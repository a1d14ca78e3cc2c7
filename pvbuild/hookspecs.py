"""The plugin contract: every hook pvbuild calls, in the style of ``llm``'s ``register_*`` hooks.

A plugin is a module (or an installed distribution exposing one through the
``pvbuild`` entry-point group, or a ``plugins/*.py`` file of the project) with
functions decorated by ``@pvbuild.hookimpl`` whose names are the hooks below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from pvbuild.plugin_types import Annotator, Backend, BaseModel, CssSite, DatasetFormat

hookspec = pluggy.HookspecMarker("pvbuild")
hookimpl = pluggy.HookimplMarker("pvbuild")


@hookspec
def register_crawlers(register: Callable[[CssSite], None]) -> None:
    """Register source sites: call ``register(CssSite(...))`` once per site."""


@hookspec
def register_annotators(register: Callable[[Annotator], None]) -> None:
    """Register annotators: call ``register(annotator)`` once per annotator."""


@hookspec
def register_base_models(register: Callable[[BaseModel], None]) -> None:
    """Register base models for fine-tuning: call ``register(BaseModel(...))``."""


@hookspec
def register_backends(register: Callable[[Backend], None]) -> None:
    """Register service backends: call ``register(Backend(kind, name, make))`` for an object store,
    a training service or an endpoint service."""


@hookspec
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register dataset formats: call ``register(DatasetFormat(name, hyperparameter, channels, write))``."""
