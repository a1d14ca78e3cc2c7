"""The stages of the build, one module each, and the catalog that orders them (``catalog``): the
graph that doit's tasks, ``pvbuild check`` and the reporter all read. A stage module defines a
``StageBase`` subclass (items, its own reasons to rebuild, the action) and an instance, ``STAGE``."""
