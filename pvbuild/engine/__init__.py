"""The engine: build records (``records``), file digests (``hasher``), the workspace of one profile
(``workspace``), the stage protocol (``stage``) and the one staleness engine that doit's tasks and
``pvbuild check`` both read (``staleness``). It knows no stage by name: the stages are in ``pvbuild.stages``."""
