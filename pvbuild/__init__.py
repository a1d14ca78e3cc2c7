"""pvbuild: a plugin-based, Make-style build system for LLM fine-tuning data artifacts.

Plugin authors need only what this module exports: ``hookimpl`` to mark hook
implementations, ``CssSite`` to describe a source site, ``Annotator`` to write
an annotator, ``BaseModel`` to describe a base model and ``Backend`` to provide an object store,
a trainer or an endpoint service.
"""

from pvbuild.hookspecs import hookimpl
from pvbuild.plugin_types import Annotation, Annotator, Article, Backend, BaseModel, CssSite, Message, ServiceContext

__version__ = "0.1.0"

__all__ = ["Annotation", "Annotator", "Article", "Backend", "BaseModel", "CssSite", "Message", "ServiceContext",
           "__version__", "hookimpl"]
