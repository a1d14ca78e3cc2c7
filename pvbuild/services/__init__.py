"""The services pvbuild talks to, each behind a ``typing.Protocol`` seam (``stores.ObjectStore``,
``training.TrainingBackend``, ``endpoints.EndpointBackend``) that receives request values and never
imports the engine or the stages. Backends are plugins (``register_backends``); the local ones and
SageMaker's are built in (``pvbuild/builtins/backends.py``)."""
