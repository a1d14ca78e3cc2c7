"""The artifact tree of one profile: where each artifact lives, what it is built from, what is stale.

Each stage is a list of items (see ``records.Item``) whose input digests are computed here.
The doit tasks, the stage runners and ``pvbuild check`` all ask this module, so there is one
definition of staleness.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvbuild.config import RUNTIME_CRAWL_OPTIONS, RUNTIME_MODEL_OPTIONS, Config, SourceConfig, suggest
from pvbuild.errors import StateError
from pvbuild.progress import say
from pvbuild.records import (
    EDITED,
    FileHasher,
    IdentityStore,
    Item,
    StageRecords,
    atomic_write_bytes,
    digest,
    stale_items,
    strings_digest,
)
from pvbuild.urls import UrlRow, read_digested_urls

if TYPE_CHECKING:
    from pvbuild.endpoint import EndpointBackend
    from pvbuild.plugin_types import BaseModel
    from pvbuild.storage import ObjectStore
    from pvbuild.training import TrainingBackend

DATA_STAGES = ("urls", "markdown", "conversations", "dataset")
MODEL_STAGES = ("upload", "train", "package", "deploy", "report")
STAGES = DATA_STAGES + MODEL_STAGES
# Like make, a hand-edited intermediate is kept and its dependents rebuild from it; the
# dataset is wholly derived, so an edited dataset file is rebuilt.
KEEPS_EDITS = frozenset({"urls", "markdown", "conversations"})


# Fields of the JSON records that differ between two builds of the same inputs (timings, process
# ids, ports, service timestamps). The files keep them; every digest, and so every record under
# .state and every staleness decision, leaves them out.
VOLATILE_FIELDS = {"training.json": ("billable_seconds",),
                   "endpoint.json": ("url", "pid", "creation_time", "previous")}


@dataclass(frozen=True)
class StaleItem:
    """An item to rebuild and the reason."""

    item: Item
    reason: str
    # False when rebuilding restores what the records already say (a torn-down endpoint, a deleted
    # store object, an edited dataset file): nothing downstream can change because of it.
    propagates: bool = True


class Pipeline:
    """Paths, item lists and staleness for one validated profile."""

    def __init__(self, config: Config, live: bool = True) -> None:
        """``live``: staleness may ask the object store and the endpoint (doit); ``check`` passes False
        unless ``--remote``, and then decides from committed files alone."""
        self.config = config
        self.live = live
        self.forced = False  # the running action was forced by doit -a: do its work even if up to date
        self.checking = False  # ``pvbuild check``: saves the stat cache once at its end; --remote verifies jobs
        self._store: ObjectStore | None = None
        self._training_backend: TrainingBackend | None = None
        self._endpoint_backend: EndpointBackend | None = None
        self.urls_csv = config.artifacts / "urls.csv"
        self.markdown_dir = config.artifacts / "markdown"
        self.conversation_dir = config.artifacts / "conversations"
        self.dataset_dir = config.artifacts / "dataset"
        self.manifest = self.dataset_dir / "manifest.json"
        self.upload_marker = config.artifacts / "upload.json"
        self.training_record = config.artifacts / "training.json"
        self.model_record = config.artifacts / "model.json"
        self.endpoint_record = config.artifacts / "endpoint.json"
        self.report_dir = config.artifacts / "report"
        self.hasher = FileHasher(config.cache_dir / "stat-cache.marshal", config.project_dir)
        self._records: dict[str, StageRecords] = {}
        self._rows: list[UrlRow] | None = None
        self._table: list[tuple[UrlRow, str]] | None = None
        self._row_digests: dict[str, str] = {}
        self.identities: dict[str, Any] = {}
        self._markdown_prefix = os.path.join(self.markdown_dir, "")
        self._conversation_prefix = os.path.join(self.conversation_dir, "")
        self.identity_store = IdentityStore(config.state_dir / "identities.json")
        self._artifacts_prefix = os.path.join(config.artifacts, "")
        self.generation = self.read_generation()

    # -- inputs -----------------------------------------------------------------------------
    def records(self, stage: str) -> StageRecords:
        if stage not in self._records:
            self._records[stage] = StageRecords(self.config.state_dir, stage)
            if stage == "conversations":
                self._add_row_inputs(self._records[stage])
        return self._records[stage]

    def _add_row_inputs(self, conversations: StageRecords) -> None:
        """Records of versions before the row was an input of a conversation: take the row its markdown
        was built from (the conversation was annotated from that markdown), rather than re-annotate all."""
        markdown = None
        for key, record in conversations.records.items():
            inputs = record.get("inputs")
            if isinstance(inputs, dict) and "row" not in inputs:
                markdown = markdown or self.records("markdown")
                built_from = (markdown.get(key) or {}).get("inputs", {})
                if built_from.get("row"):
                    inputs["row"] = built_from["row"]

    def rows(self) -> list[UrlRow]:
        """URL rows of the configured sources (rows of sources no longer configured are kept
        in the table but not built)."""
        if self._rows is None:
            configured = {source.name for source in self.config.sources}
            digested = self.table_rows()
            unknown = {row.source for row, _ in digested} - configured
            if unknown:
                self._refuse_unknown_sources(unknown - self.unbuilt_sources(), configured)
            self._rows = [row for row, _ in digested if row.source in configured]
            self._row_digests = {row.file_id: row_digest for row, row_digest in digested}
        return self._rows

    def _refuse_unknown_sources(self, unknown: set[str], configured: set[str]) -> None:
        """A row whose source is not configured would silently never be built: name it."""
        if not unknown:
            return
        from pvbuild.urls import line_of

        source = sorted(unknown)[0]
        line = line_of(self.urls_csv, lambda row: row.source == source)
        raise StateError(f"{self.urls_csv}:{line}: source {source!r}{suggest(source, sorted(configured))} is not a "
                         f"source of profile {self.config.profile!r} (configured: {', '.join(sorted(configured))}); "
                         "fix the row's source or delete the row")

    def forget_rows(self) -> None:
        self._rows = None
        self._table = None

    def unbuilt_sources(self) -> set[str]:
        """Sources in the URL table that the list crawl will drop: no longer configured, and the
        lists are due to be crawled again because the source configuration changed."""
        record = self.records("urls").get("urls")
        if record is not None and record.get("inputs") == self.url_items()[0].inputs:
            return set()
        configured = {source.name for source in self.config.sources}
        return {row.source for row, _ in self.table_rows()} - configured

    def table_rows(self) -> list[tuple[UrlRow, str]]:
        """Every row of the URL table with its digest, configured source or not."""
        if self._table is None:
            self._table = read_digested_urls(self.urls_csv, self.hasher.digest(self.urls_csv),
                                             self.config.cache_dir / "urls-cache.marshal")
        return self._table

    # -- a fresh view after writes ---------------------------------------------------------
    @property
    def generation_file(self) -> Path:
        """Rewritten whenever a stage action ends: a doit process that sees it change (its stages ran
        in child processes, ``doit -n N``) forgets everything it had read."""
        return self.config.cache_dir / "generation"

    def read_generation(self) -> bytes:
        try:
            with open(self.generation_file, "rb") as stream:
                return stream.read()
        except OSError:
            return b""

    def bump_generation(self) -> None:
        atomic_write_bytes(self.generation_file, os.urandom(8).hex().encode())  # this process too re-reads

    def invalidate(self) -> None:
        """Forget every record, row and digest read so far: files may have changed since."""
        self._records.clear()
        self.forget_rows()
        self._row_digests = {}
        self.hasher.forget()  # the up-to-date checks turn remembering on again; an action must not
        self.generation = self.read_generation()

    def refresh(self) -> None:
        """Invalidate when another process (or an action) wrote since this pipeline last looked."""
        if self.read_generation() != self.generation:
            self.invalidate()

    @property
    def scratch_dir(self) -> Path:
        """Machine-local work space of the running stage (emptied when a stage starts, pruned)."""
        return self.config.cache_dir / "scratch"

    def identity(self, value: Any) -> str:
        """The digest of a configuration/plugin identity, remembered so ``check`` can name what changed."""
        key = digest(value)
        self.identities[key] = value
        return key

    def finish(self, stage: str) -> None:
        """Fold the stage's journal into its records file; save the stat cache and the identities."""
        self.records(stage).commit()
        self.hasher.save()
        self.identity_store.save(self.identities)

    @contextlib.contextmanager
    def finishing(self, stage: str) -> Iterator[None]:
        """Run a stage body and finish the stage even when it fails or is interrupted."""
        try:
            yield
        finally:
            self.finish(stage)

    def output_digest(self, file: str) -> str | None:
        """The digest of an output as records keep it: its bytes, or for the JSON records with
        volatile fields, its value without them."""
        volatile = VOLATILE_FIELDS.get(os.path.basename(file)) if file.startswith(self._artifacts_prefix) else None
        if volatile is None:
            return self.hasher.digest(file)
        value = self.read_artifact(Path(file))
        return None if value is None else digest({k: v for k, v in value.items() if k not in volatile})

    def record(self, stage: str, item: Item, **extra: Any) -> None:
        """Record that ``item`` was built from its current inputs (its output is already written)."""
        self.records(stage).put(item.key, {"inputs": dict(item.inputs), "output": self.output_digest(item.file),
                                           **extra})

    def rewrote(self, stage: str, items: list[Item]) -> None:
        """Take the outputs' new digests but keep the records' inputs: teardown marked the endpoint
        Deleted, or hand edits of intermediates are adopted (make semantics)."""
        with self.finishing(stage):
            for item in items:
                record = self.records(stage).get(item.key)
                if record is not None:
                    self.records(stage).put(item.key, {**record, "output": self.output_digest(item.file)})

    def source(self, name: str) -> SourceConfig:
        return next(source for source in self.config.sources if source.name == name)

    def list_identity(self) -> str:
        """What decides the URL table: each source's plugin, version and output-affecting options."""
        return self.identity([self._plugin_identity("crawlers", s.plugin) | {"name": s.name, "options": {
            k: v for k, v in s.options.items() if k not in RUNTIME_CRAWL_OPTIONS}} for s in self.config.sources])

    def crawler_identity(self, source: SourceConfig) -> str:
        """What decides an article's markdown: the plugin, its version, selector and strategy."""
        site = self.config.registry.crawlers[source.plugin].item
        return self.identity(self._plugin_identity("crawlers", source.plugin) | {
            "article_selector": site.article_selector, "strategy": source.options["strategy"]})

    def annotator_identity(self) -> str:
        """What decides a conversation: the annotator plugin, version and output-affecting options."""
        annotator = self.config.registry.annotators[self.config.annotator.plugin].item
        return self.identity(self._plugin_identity("annotators", self.config.annotator.plugin)
                      | {"options": annotator.identity(self.config.annotator.options)})

    def _plugin_identity(self, kind: str, name: str) -> dict[str, Any]:
        registered = self.config.registry.table(kind)[name]
        return {"name": name, **registered.identity}

    # -- paths ------------------------------------------------------------------------------
    def markdown_path(self, file_id: str) -> Path:
        return Path(self.markdown_file(file_id))

    def conversation_path(self, file_id: str) -> Path:
        return Path(self.conversation_file(file_id))

    # The same as strings, for per-article loops (see ``records.Item``).
    def markdown_file(self, file_id: str) -> str:
        return f"{self._markdown_prefix}{file_id}.md"

    def conversation_file(self, file_id: str) -> str:
        return f"{self._conversation_prefix}{file_id}.csv"

    # -- items ------------------------------------------------------------------------------
    def url_items(self) -> list[Item]:
        return [Item("urls", {"sources": self.list_identity()}, str(self.urls_csv))]

    def markdown_items(self) -> list[Item]:
        crawlers = {source.name: self.crawler_identity(source) for source in self.config.sources}
        rows = self.rows()
        return [Item(row.file_id, {"row": self._row_digests[row.file_id], "crawler": crawlers[row.source]},
                     self.markdown_file(row.file_id)) for row in rows]

    def conversation_items(self) -> list[Item]:
        """One item per article whose markdown exists (an uncrawled article has nothing to annotate)."""
        annotator = self.annotator_identity()
        items = []
        rows = self.rows()
        digests = self._row_digests
        for row in rows:
            markdown = self.hasher.digest(self.markdown_file(row.file_id))
            if markdown is not None:  # the annotator sees the title, date and link too: the row is an input
                items.append(Item(row.file_id, {"markdown": markdown, "annotator": annotator,
                                                "row": digests[row.file_id]}, self.conversation_file(row.file_id)))
        return items

    def dataset_members(self) -> list[tuple[UrlRow, str]]:
        """The articles that have a conversation, with the conversation's digest."""
        members = []
        for row in self.rows():
            conversation = self.hasher.digest(self.conversation_file(row.file_id))
            if conversation is not None:
                members.append((row, conversation))
        return members

    def dataset_items(self) -> list[Item]:
        members = [[row.file_id, row.title, row.date, row.source, conversation]
                   for row, conversation in self.dataset_members()]
        options = self.identity(dict(self.config.dataset))
        return [Item("dataset", {"conversations": strings_digest(members), "options": options}, str(self.manifest))]

    # -- the model half ------------------------------------------------------------------
    def read_artifact(self, path: Path) -> dict[str, Any] | None:
        """A JSON artifact (marker, record), or None when it does not exist yet."""
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise StateError(f"{path}: unreadable ({error}); delete it and run doit to rebuild it") from error
        if not isinstance(value, dict):
            raise StateError(f"{path}: expected a JSON object; delete it and run doit to rebuild it")
        return value

    def store(self) -> ObjectStore:
        from pvbuild.storage import open_store

        if self._store is None:
            self._store = open_store(self.config.storage, self.config.aws, self.config.project_dir)
        return self._store

    def base_model(self) -> BaseModel:
        return self.config.registry.base_models[self.config.training["base_model"]].item

    def hyperparameters(self) -> dict[str, str]:
        from pvbuild.training import resolve_hyperparameters

        return resolve_hyperparameters(self.base_model(), self.config.training["hyperparameters"],
                                       self.config.dataset["format"], self.config.config_file)

    def training_instance_type(self) -> str:
        return str(self.config.training["instance_type"]) or next(iter(self.base_model().training_instance_types), "")

    def endpoint_instance_type(self) -> str:
        return str(self.config.endpoint["instance_type"]) or next(iter(self.base_model().inference_instance_types),
                                                                  "")

    def training_backend(self) -> TrainingBackend:
        if self._training_backend is None:
            if self.config.training["backend"] == "sagemaker":
                from pvbuild.sagemaker import SageMakerTraining

                self._training_backend = SageMakerTraining(self.config.aws, self.config.training)
            else:
                from pvbuild.local_services import LocalTraining

                self._training_backend = LocalTraining(self.store(), self.config.cache_dir)
        return self._training_backend

    def endpoint_backend(self) -> EndpointBackend:
        if self._endpoint_backend is None:  # one boto3 client per run, not one per staleness check
            if self.config.endpoint["backend"] == "sagemaker":
                from pvbuild.sagemaker import SageMakerEndpoints

                self._endpoint_backend = SageMakerEndpoints(self.config.aws, self.config.endpoint)
            else:
                from pvbuild.local_services import LocalEndpoints

                self._endpoint_backend = LocalEndpoints(self.store(), self.config.cache_dir)
        return self._endpoint_backend

    def _identity(self, options: Mapping[str, Any], leave_out: frozenset[str] = frozenset()) -> str:
        return self.identity({k: v for k, v in options.items() if k not in RUNTIME_MODEL_OPTIONS | leave_out})

    def upload_items(self) -> list[Item]:
        from pvbuild.upload import upload_plan

        manifest = self.read_artifact(self.manifest)
        store = {**self.config.storage, "region": self.config.aws["region"]}
        return [Item("upload", {"dataset": digest(upload_plan(manifest)) if manifest else None,
                                "store": self._identity(store)}, str(self.upload_marker))]

    def train_items(self) -> list[Item]:
        marker = self.read_artifact(self.upload_marker)
        name = self.config.training["base_model"]
        return [Item("train", {
            "data": marker.get("dataset") if marker else None,
            "base_model": self.identity(self._plugin_identity("base_models", name)),
            "hyperparameters": self.identity(self.hyperparameters()),
            "training": self._identity({**self.config.training, "instance_type": self.training_instance_type()},
                                       frozenset({"hyperparameters", "accept_eula"})),
        }, str(self.training_record))]

    def package_items(self) -> list[Item]:
        record = self.read_artifact(self.training_record)
        job = [record.get("job_name"), record.get("model_artifacts")] if record else None
        return [Item("package", {"job": digest(job) if job else None}, str(self.model_record))]

    def deploy_items(self) -> list[Item]:
        model = self.read_artifact(self.model_record)
        return [Item("deploy", {"model": model.get("sha256") if model else None,
                                "endpoint": self._identity(self.config.endpoint)}, str(self.endpoint_record))]

    def report_items(self) -> list[Item]:
        training = self.read_artifact(self.training_record)
        endpoint = self.read_artifact(self.endpoint_record)
        return [Item("report", {"training": self.output_digest(str(self.training_record)) if training else None,
                                "model": endpoint.get("model_sha256") if endpoint else None,
                                "ask": self._identity(self.config.ask), "dataset": self.hasher.digest(self.manifest)},
                     str(self.report_dir / "report.html"))]

    def items(self, stage: str) -> list[Item]:
        return {"urls": self.url_items, "markdown": self.markdown_items,
                "conversations": self.conversation_items, "dataset": self.dataset_items,
                "upload": self.upload_items, "train": self.train_items, "package": self.package_items,
                "deploy": self.deploy_items, "report": self.report_items}[stage]()

    @property
    def last_list_crawl_file(self) -> Path:
        """When the lists were last crawled: machine-local, so committed state has no timestamps."""
        return self.config.cache_dir / "last-list-crawl"

    def _lists_due(self) -> list[StaleItem]:
        hours = [float(s.options["refresh_hours"]) for s in self.config.sources if s.options["refresh_hours"]]
        if not hours:
            return []
        try:
            age = time.time() - float(self.last_list_crawl_file.read_text())
        except (OSError, ValueError):
            age = float("inf")
        if age < min(hours) * 3600:
            return []
        return [StaleItem(self.url_items()[0], f"lists last crawled {age / 3600:.1f} h ago (refresh_hours)")]

    def stale(self, stage: str) -> list[StaleItem]:
        items = self.items(stage)
        if stage == "train":
            unfinished = self._job_of_these_inputs_unfinished(items[0])
            if unfinished:
                return unfinished
        digest_of = self.hasher.digest if stage in DATA_STAGES else self.output_digest
        found = [StaleItem(item, reason) for item, reason in stale_items(items, self.records(stage), digest_of)]
        if stage == "dataset" and not found:
            found = self._dataset_files_edited(items[0])
        if stage == "urls" and not found:
            found = self._lists_due()
        if stage in MODEL_STAGES and not found:
            found = self._model_stage_not_current(stage, items[0])
        if not self.checking:  # check saves the stat cache once, at its end
            self.hasher.save()
        return found

    def adopt_edits(self, stage: str) -> list[StaleItem]:
        """The build's explicit first step of a stage that keeps hand edits (make semantics): record
        each edited output as built, so its dependents rebuild from it. Returns what is left to build."""
        found = self.stale(stage)
        kept = [entry.item for entry in found if entry.reason == EDITED]
        if kept:
            self.rewrote(stage, kept)
            say(f"{stage}: kept {len(kept)} hand-edited file(s): " + ", ".join(item.key for item in kept[:5])
                + (" ..." if len(kept) > 5 else ""))
        return [entry for entry in found if entry.reason != EDITED]

    def _dataset_files_edited(self, item: Item) -> list[StaleItem]:
        """The manifest lists every dataset file's digest; an edited or missing file is stale."""
        manifest = json.loads(self.manifest.read_text(encoding="utf-8"))
        for name, expected in manifest.get("files", {}).items():
            if self.hasher.digest(self.dataset_dir / name) != expected:
                return [StaleItem(item, f"dataset file {name} missing or edited since it was built", False)]
        return []

    def _job_of_these_inputs_unfinished(self, item: Item) -> list[StaleItem]:
        """The job for exactly these inputs failed or was interrupted: say so (the record says why)."""
        record = self.read_artifact(self.training_record) or {}
        if record.get("input_digest") == digest(item.inputs) and record.get("status") != "Completed":
            return [StaleItem(item, f"last job {record.get('job_name')} {record.get('status')}: "
                                    f"{record.get('failure_reason') or 'no reason given'}")]
        return []

    def _model_stage_not_current(self, stage: str, item: Item) -> list[StaleItem]:
        """Beyond the records: a torn-down or dead endpoint, objects gone from the store."""
        if stage == "deploy":
            endpoint = self.read_artifact(self.endpoint_record) or {}
            if endpoint.get("status") != "InService":
                return [StaleItem(item, f"endpoint {endpoint.get('endpoint_name')} is {endpoint.get('status')}",
                                  False)]
            problem = self.endpoint_backend().problem(endpoint) if self.live else None
            if problem:
                return [StaleItem(item, problem, False)]
        if stage == "train" and self.live and self.checking:  # check --remote: the job itself
            name = (self.read_artifact(self.training_record) or {}).get("job_name")
            state = self.training_backend().describe(str(name))
            if state is None or state.status != "Completed":
                return [StaleItem(item, f"job {name} is {state.status if state else 'unknown'} at the service")]
        if stage == "upload" and self.live:
            from pvbuild.upload import missing_objects

            missing = missing_objects(self.store(), self.read_artifact(self.upload_marker) or {})
            if missing:
                return [StaleItem(item, f"not in the store any more: {'; '.join(missing)}", False)]
        return []
