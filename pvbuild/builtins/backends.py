"""The built-in service backends, registered like any plugin's: a directory or S3 as the object
store, the local trainer or SageMaker for training, ``pvbuild serve`` or SageMaker for endpoints.

Each factory imports its module only when a profile selects it (boto3 and torch are heavy)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pvbuild import hookimpl
from pvbuild.plugin_types import Backend, ServiceContext

__cache_version__ = "0.1.0"  # what this plugin's artifacts depend on: bump it when its output changes


def local_store(context: ServiceContext) -> Any:
    from pvbuild.services.stores import LocalObjectStore

    return LocalObjectStore(context.project_dir / str(context.options["root"]))


def s3_store(context: ServiceContext) -> Any:
    from pvbuild.services.stores import S3ObjectStore, StorageError, aws_client

    if not context.options["bucket"]:
        raise StorageError("storage.bucket: set the S3 bucket of this profile (storage.backend is 's3')")
    return S3ObjectStore(aws_client("s3", context.aws), str(context.options["bucket"]),
                         kms_key_id=str(context.aws.get("kms") or ""))


def local_training(context: ServiceContext) -> Any:
    from pvbuild.services.local_training import LocalTraining

    return LocalTraining(context.store, context.cache_dir)


def sagemaker_training(context: ServiceContext) -> Any:
    from pvbuild.services.sagemaker import SageMakerTraining

    return SageMakerTraining(context.aws, context.options)


def local_endpoint(context: ServiceContext) -> Any:
    from pvbuild.services.local_endpoint import LocalEndpoints

    return LocalEndpoints(context.store, context.cache_dir)


def sagemaker_endpoint(context: ServiceContext) -> Any:
    from pvbuild.services.sagemaker import SageMakerEndpoints

    return SageMakerEndpoints(context.aws, context.options)


@hookimpl
def register_backends(register: Callable[[Backend], None]) -> None:
    register(Backend("store", "local", local_store, "a directory under the project (storage.root)"))
    register(Backend("store", "s3", s3_store, "an S3 bucket (storage.bucket; aws.endpoint_url for others)"))
    register(Backend("training", "local", local_training, "transformers on this machine (CPU or CUDA)"))
    register(Backend("training", "sagemaker", sagemaker_training, "SageMaker JumpStart training jobs",
                     one_file_per_channel=True))
    register(Backend("endpoint", "local", local_endpoint, "pvbuild serve in the background"))
    register(Backend("endpoint", "sagemaker", sagemaker_endpoint, "SageMaker real-time endpoints"))
