"""The upload step: dataset files → object store, verified, with a marker listing what is where.

Keys are content-addressed (``<prefix>/train-data/<dataset digest>/<channel>/<file>``), so
different data never overwrite each other and the training job's input is fixed by its
URI. An object already present with the right size and ETag is not sent again; every object
is verified after upload (``storage.put_verified``), and the marker is written only when all
of them check out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pvbuild.outcomes import StageResult
from pvbuild.pipeline import Pipeline
from pvbuild.progress import say
from pvbuild.records import digest, write_artifact
from pvbuild.storage import ObjectStore, StorageError, put_verified

# The files of each dataset format, by SageMaker input channel.
CHANNEL_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "instruction": {"training": ("train.jsonl", "template.json"), "validation": ("validation.jsonl", "template.json")},
    "chat": {"training": ("chat.jsonl",), "validation": ("chat_validation.jsonl",)},
}


def upload_plan(manifest: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``{channel: {file name: file digest}}`` for the files of the dataset's format that exist."""
    plan: dict[str, dict[str, str]] = {}
    files = manifest["files"]
    for channel, names in CHANNEL_FILES[manifest["format"]].items():
        if names[0] in files:
            plan[channel] = {name: files[name] for name in names}
    return plan


def object_key(prefix: str, dataset_digest: str, channel: str, name: str) -> str:
    return f"{prefix.strip('/')}/train-data/{dataset_digest}/{channel}/{name}"


def missing_objects(store: ObjectStore, marker: Mapping[str, Any]) -> list[str]:
    """The marker's objects that are gone or differ in the store (network: only when asked to look)."""
    wrong = []
    for entry in marker.get("objects", []):
        info = store.head(entry["key"])
        if info is None or (info.size, info.etag) != (entry["size"], entry["etag"]):
            wrong.append(f"{entry['uri']} {'missing' if info is None else 'changed'}")
    return wrong


def run_upload_stage(pipeline: Pipeline) -> StageResult:
    result = StageResult("upload")
    manifest = json.loads(pipeline.manifest.read_text(encoding="utf-8"))
    plan = upload_plan(manifest)
    if "training" not in plan:
        raise StorageError(f"{pipeline.manifest}: the dataset has no training file to upload; "
                           "are there any conversations?")
    dataset_digest = digest(plan)
    prefix = str(pipeline.config.storage["prefix"])
    store = pipeline.store()
    objects, channels = [], {}
    for channel, files in plan.items():
        for name in files:
            key = object_key(prefix, dataset_digest, channel, name)
            entry, sent = put_verified(store, key, pipeline.dataset_dir / name)
            objects.append({"key": key, "channel": channel, **entry})
            result.built += int(sent)
            result.skipped += int(not sent)
        channels[channel] = store.uri(object_key(prefix, dataset_digest, channel, ""))
    marker = {"dataset": dataset_digest, "format": manifest["format"], "channels": channels, "objects": objects}
    item = pipeline.items("upload")[0]
    write_artifact(pipeline.upload_marker, marker)
    with pipeline.finishing("upload"):
        pipeline.record("upload", item)
    say(f"upload: dataset {dataset_digest[:12]} at {channels['training']}")
    return result
