"""The ``upload`` stage: dataset files → object store, verified, with a marker listing what is where.

Keys are content-addressed (``<prefix>/train-data/<dataset digest>/<channel>/<file>``), so
different data never overwrite each other and the training job's input is fixed by its
URI. An object already present with the right size and ETag is not sent again; a file the last
upload already sent (an unchanged shard of a sharded dataset) is copied inside the store instead
of uploaded; every object is verified (``stores.put_verified``, ``stores.copy_verified``), and
the marker, which lists every object with its digest, size and ETag, is written only when all of
them check out.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pvbuild.artifacts import UploadMarker
from pvbuild.engine.outcomes import StageResult
from pvbuild.engine.records import Item, digest
from pvbuild.engine.stage import StageBase, StaleItem
from pvbuild.engine.workspace import Workspace
from pvbuild.progress import say
from pvbuild.services.stores import ObjectStore, StorageError, copy_verified, matches, put_verified
from pvbuild.stages.dataset import format_data_names


def upload_plan(manifest: Mapping[str, Any], channels: Mapping[str, tuple[str, ...]],
                one_file: bool = False) -> dict[str, dict[str, str]]:
    """``{channel: {file name: file digest}}`` for the files of the dataset's format that exist
    (``channels``: the format's files per SageMaker channel, the data file first). A sharded data
    file is its shards, or with ``one_file`` the shards joined (its digest: theirs, in order)."""
    plan: dict[str, dict[str, str]] = {}
    files = manifest["files"]
    for channel, names in channels.items():
        data = format_data_names(manifest, names[0])  # the data file, or its shards
        if one_file and len(data) > 1:
            plan[channel] = {names[0]: digest([[name, files[name]] for name in data])}
            plan[channel] |= {name: files[name] for name in names[1:]}
        elif data:
            plan[channel] = {name: files[name] for name in [*data, *names[1:]]}
    return plan


def one_file_per_channel(workspace: Workspace) -> bool:
    """Whether the configured trainer reads one data file per channel (see ``Backend``)."""
    backend = workspace.config.registry.backends.get(f"training:{workspace.config.training['backend']}")
    return bool(backend is not None and backend.item.one_file_per_channel)


def joined(workspace: Workspace, manifest: Mapping[str, Any], name: str, channel: str) -> Path:
    """The shards of data file ``name`` joined into one file in the scratch folder, streamed byte for
    byte (JSON lines need no parsing to be joined)."""
    target = workspace.scratch_dir / "upload" / channel / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        for part in format_data_names(manifest, name):
            with (workspace.dataset_dir / part).open("rb") as stream:
                shutil.copyfileobj(stream, out, 1 << 20)
    return target


def format_channels(workspace: Workspace, manifest: Mapping[str, Any]) -> Mapping[str, tuple[str, ...]]:
    formats = workspace.config.registry.dataset_formats
    if manifest["format"] not in formats:
        raise StorageError(f"{workspace.manifest}: the dataset's format {manifest['format']!r} is no registered "
                           f"dataset format ({', '.join(sorted(formats))}); was its plugin removed?")
    return formats[manifest["format"]].item.channels


def object_key(prefix: str, dataset_digest: str, channel: str, name: str) -> str:
    return f"{prefix.strip('/')}/train-data/{dataset_digest}/{channel}/{name}"


def missing_objects(store: ObjectStore, objects: list[dict[str, Any]]) -> list[str]:
    """The marker's objects that are gone or differ in the store (network: only when asked to look)."""
    wrong = []
    for entry in objects:
        info = store.head(entry["key"])
        if info is None or not matches(info, entry):
            wrong.append(f"{entry['uri']} {'missing' if info is None else 'changed'}")
    return wrong


class UploadStage(StageBase):
    name = "upload"
    doc = "upload the dataset files to the object store and write the verified upload marker"
    record_output = True
    derived_inputs = frozenset({"dataset"})

    def items(self, workspace: Workspace) -> list[Item]:
        manifest = workspace.read_artifact(workspace.manifest)
        store = {**workspace.config.storage, "region": workspace.config.aws["region"]}
        plan = upload_plan(manifest, format_channels(workspace, manifest), one_file_per_channel(workspace)) \
            if manifest else None
        return [Item("upload", {"dataset": digest(plan) if plan is not None else None,
                                "store": workspace.options_identity(store)}, str(workspace.upload_marker))]

    def refine(self, workspace: Workspace, items: list[Item], found: list[StaleItem]) -> list[StaleItem]:
        """Beyond the records (when the services may be asked): objects gone from the store."""
        if found or not workspace.live:
            return found
        marker = workspace.read_upload()
        missing = missing_objects(workspace.store(), marker.objects if marker else [])
        return [StaleItem(items[0], f"not in the store any more: {'; '.join(missing)}", False)] if missing else []

    def run(self, workspace: Workspace) -> StageResult:
        result = StageResult("upload")
        manifest = json.loads(workspace.manifest.read_text(encoding="utf-8"))
        one_file = one_file_per_channel(workspace)
        plan = upload_plan(manifest, format_channels(workspace, manifest), one_file)
        if "training" not in plan:
            raise StorageError(f"{workspace.manifest}: the dataset has no training file to upload; "
                               "are there any conversations?")
        dataset_digest = digest(plan)
        prefix = str(workspace.config.storage["prefix"])
        store = workspace.store()
        previous = workspace.read_upload()
        earlier = {str(entry["digest"]): entry for entry in (previous.objects if previous else []) if "digest" in entry}
        objects, channels, copied = [], {}, 0
        for channel, files in plan.items():
            for name, file_digest in files.items():
                key = object_key(prefix, dataset_digest, channel, name)
                entry = copy_verified(store, earlier[file_digest], key) if file_digest in earlier else None
                copied += entry is not None and earlier[file_digest]["key"] != key
                if entry is None:
                    path = workspace.dataset_dir / name
                    if name not in manifest["files"]:  # the shards of a data file, joined
                        path = joined(workspace, manifest, name, channel)
                    try:
                        entry, sent = put_verified(store, key, path)
                    finally:
                        if path.is_relative_to(workspace.scratch_dir):
                            shutil.rmtree(workspace.scratch_dir / "upload", ignore_errors=True)
                    result.built += int(sent)
                objects.append({"key": key, "channel": channel, "digest": file_digest, **entry})
            channels[channel] = store.uri(object_key(prefix, dataset_digest, channel, ""))
        result.skipped = len(objects) - result.built
        marker = UploadMarker(dataset=dataset_digest, format=manifest["format"], channels=channels, objects=objects)
        item = self.items(workspace)[0]
        marker.write(workspace.upload_marker)
        with workspace.finishing("upload"):
            workspace.record("upload", item)
        say(f"upload: dataset {dataset_digest[:12]} at {channels['training']} ({result.built} file(s) sent, "
            f"{copied} copied from the last upload, {len(objects) - result.built - copied} already there)")
        return result


STAGE = UploadStage()
