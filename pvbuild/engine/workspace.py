"""The workspace of one profile: where each artifact lives, its build records, the URL table, the
identities of configuration and plugins, the machine-local cache, and the services (object store,
trainer, endpoint) the configuration selects. Stages read and write through it; it knows no stage."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvbuild.artifacts import EndpointRecord, ModelRecord, TrainingRecord, UploadMarker, read_json_object
from pvbuild.config import (
    RUNTIME_CRAWL_OPTIONS,
    RUNTIME_MODEL_OPTIONS,
    Config,
    SourceConfig,
    suggest,
    without_later_defaults,
)
from pvbuild.engine import candidates
from pvbuild.engine.candidates import Candidate, Standing
from pvbuild.engine.forked import Forked, can_fork
from pvbuild.engine.hasher import FileHasher
from pvbuild.engine.records import (
    IdentityStore,
    Item,
    StageRecords,
    digest,
    file_output,
)
from pvbuild.engine.url_table import UrlRow, parse_digested, read_digested_urls
from pvbuild.errors import StateError
from pvbuild.files import atomic_write_bytes
from pvbuild.plugin_types import BACKEND_KINDS, ServiceContext

if TYPE_CHECKING:
    from pvbuild.plugin_types import BaseModel
    from pvbuild.services.endpoints import EndpointBackend
    from pvbuild.services.stores import ObjectStore
    from pvbuild.services.training import TrainingBackend

STAT_CACHE = "stat-cache.marshal"  # the FileHasher's machine-local stat cache, in the cache folder
LARGE_TABLE = 1_000_000  # bytes of URL table (about 8,000 rows) worth parsing in another process
# Fields of the JSON records that differ between two builds of the same inputs (timings, process
# ids, ports, service timestamps). The files keep them; every digest, and so every record under
# .state and every staleness decision, leaves them out.
VOLATILE_FIELDS = {"training.json": ("billable_seconds",),
                   "endpoint.json": ("url", "pid", "creation_time", "previous")}


class Workspace:
    """One validated profile's artifact tree: paths, records, the URL table, identities, services."""

    def __init__(self, config: Config, live: bool = True, services: Mapping[str, Any] | None = None) -> None:
        """``live``: staleness may ask the object store and the endpoint (doit); ``check`` passes False
        unless ``--remote``, and then decides from committed files alone. ``services``: backends by
        kind (``store``, ``training``, ``endpoint``) to use instead of the configured ones."""
        self.config = config
        self.live = live
        self.forced = False  # the running action was forced by doit -a: do its work even if up to date
        self.checking = False  # ``pvbuild check``: saves the stat cache once at its end; --remote verifies jobs
        self.save_cache_at_end = False  # a doit run in this process saves the stat cache when it ends
        # Made on first use from the configured backend plugins; tests may hand in their own.
        self._services: dict[str, Any] = dict(services or {})
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
        self.hasher = FileHasher(config.cache_dir / STAT_CACHE, config.project_dir)
        self._records: dict[str, StageRecords] = {}
        self._rows: list[UrlRow] | None = None
        self._table: list[tuple[UrlRow, str]] | None = None
        self._table_elsewhere: Forked | None = None  # see read_table_elsewhere
        self._row_digests: dict[str, str] = {}
        self.identities: dict[str, Any] = {}
        # Computes the items of the named steps, so that the identities they name are known (set by
        # ``catalog.open_workspace``: the engine knows no step): ``prune`` folds a killed run's journal,
        # whose records may name identities it had not saved yet, before those steps have run.
        self.name_identities: Callable[[set[str]], None] | None = None
        self.item_counts: dict[str, int] = {}  # per stage, how many items its last staleness pass saw
        # Per stage, its last staleness pass and the number of writes seen when it ran: an action takes
        # the pass its up-to-date check made just before, when nothing was written since.
        self.passes: dict[str, tuple[int, list[Any]]] = {}
        self.prechecked: dict[str, list[Any]] = {}
        self.elsewhere: dict[str, Forked] = {}  # per stage, its pass in a forked process (a fresh check)
        self._memos: dict[tuple[str, str], tuple[int, Any]] = {}
        self.writes_seen = 0
        self._markdown_prefix = os.path.join(self.markdown_dir, "")
        self._conversation_prefix = os.path.join(self.conversation_dir, "")
        self.identity_store = IdentityStore(config.state_dir / "identities.json")
        self._artifacts_prefix = os.path.join(config.artifacts, "")
        self.generation = self.read_generation()

    # -- inputs -----------------------------------------------------------------------------
    def records(self, stage: str) -> StageRecords:
        if stage not in self._records:
            self._records[stage] = self._read_records(stage)
        return self._records[stage]

    def _read_records(self, stage: str) -> StageRecords:
        return StageRecords(self.config.state_dir, stage, self.config.cache_dir / "records" / stage,
                            int(self.config.dataset["articles_per_shard"]))

    def recorded_blobs(self) -> dict[str, str]:
        """Blob id -> digest of every per-article and dataset file the records know (``engine.gitindex``)."""
        known = self.records("markdown").blob_digests() | self.records("conversations").blob_digests()
        for record in self.records("dataset").records.values():
            known |= {file["blob"]: file["output"] for file in (record.get("files") or {}).values()}
        return known

    def recorded_stages(self) -> list[str]:
        """The stages that have records (files, shard folders or journals) under .state."""
        names = {name.removesuffix(".json").removesuffix(".journal") for name in os.listdir(self.config.state_dir)
                 if name.endswith((".json", ".journal")) or os.path.isdir(self.config.state_dir / name)} \
            if self.config.state_dir.is_dir() else set()
        return sorted(name for name in names if name != "identities" and not name.startswith("."))

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

    @property
    def row_digests(self) -> dict[str, str]:
        """What each article's row holds, digested (``urls.row_digest``), by file_id."""
        self.rows()
        return self._row_digests

    def _refuse_unknown_sources(self, unknown: set[str], configured: set[str]) -> None:
        """A row whose source is not configured would silently never be built: name it."""
        if not unknown:
            return
        from pvbuild.engine.url_table import line_of

        source = sorted(unknown)[0]
        line = line_of(self.urls_csv, lambda row: row.source == source)
        raise StateError(f"{self.urls_csv}:{line}: source {source!r}{suggest(source, sorted(configured))} is not a "
                         f"source of profile {self.config.profile!r} (configured: {', '.join(sorted(configured))}); "
                         "fix the row's source or delete the row")

    def forget_rows(self) -> None:
        self._rows = None
        self._table = None
        if self._table_elsewhere is not None:  # what it parsed may be the table before a write
            self._table_elsewhere.stop()
            self._table_elsewhere = None

    def lists_pending(self) -> bool:
        """Whether the list pages are to be crawled again: never crawled, or the sources changed since."""
        record = self.records("urls").get("urls")
        return record is None or record.get("inputs") != {"sources": self.sources_identity()}

    def unbuilt_sources(self) -> set[str]:
        """Sources in the URL table that the list crawl will drop: no longer configured, and the
        lists are due to be crawled again because the source configuration changed."""
        if not self.lists_pending():
            return set()
        configured = {source.name for source in self.config.sources}
        return {row.source for row, _ in self.table_rows()} - configured

    def table_rows(self) -> list[tuple[UrlRow, str]]:
        """Every row of the URL table with its digest, configured source or not."""
        if self._table is None:
            elsewhere, self._table_elsewhere = self._table_elsewhere, None
            self._table = read_digested_urls(self.urls_csv, self.hasher.digest(self.urls_csv), self._table_cache,
                                             elsewhere.result() if elsewhere is not None else None)
        return self._table

    @property
    def _table_cache(self) -> Path:
        return self.config.cache_dir / "urls-cache.marshal"

    def read_table_elsewhere(self, min_bytes: int = LARGE_TABLE) -> bool:
        """Start parsing a URL table of ``min_bytes`` or more that has no machine-local copy (a fresh
        clone) in a forked process, while this one reads the records: at 100,000 articles each takes
        about a second. ``table_rows`` takes the result. Whether a process parses it (started now or before)."""
        if self._table_elsewhere is not None:
            return True
        if self._table is not None or self._table_cache.exists() or not can_fork():
            return False
        with contextlib.suppress(OSError):
            if self.urls_csv.stat().st_size >= min_bytes:
                self._table_elsewhere = Forked(functools.partial(parse_digested, self.urls_csv))
        return self._table_elsewhere is not None

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

    def bump_generation(self, seen: bool = False) -> None:
        """Tell every process that files changed; ``seen``: this one knows what (see ``writing``)."""
        generation = os.urandom(8).hex().encode()
        atomic_write_bytes(self.generation_file, generation)
        if seen:
            self.generation = generation

    def writing(self, stage: str, writes: tuple[str, ...] | None) -> None:
        """The action of ``stage`` is about to write ``writes`` (artifact-relative; a folder ends in "/",
        or in "/*" when each file in it is written through ``write_output``; None: anything): forget
        what may change. Records of other stages, the URL table and the digests of other files stay
        valid in this process, unless another process wrote since."""
        self.refresh()
        if writes is None:
            self.invalidate()
            return
        last = self.passes.get(stage)
        if last is not None and last[0] == self.writes_seen:
            self.prechecked[stage] = last[1]
        self._memos = {key: (self.writes_seen + 1, value) for key, (seen, value) in self._memos.items()
                       if key[0] == stage and seen == self.writes_seen}  # nothing is written yet
        self.writes_seen += 1
        self.hasher.writing(tuple(os.path.join(self.config.artifacts, path) for path in writes
                                  if not path.endswith("/*")))

    def memo(self, stage: str, name: str, compute: Callable[[], Any]) -> Any:
        """``compute()``, kept until anything is written; the action of ``stage`` starts with the
        values its up-to-date check computed (so they must not depend on that stage's outputs)."""
        kept = self._memos.get((stage, name))
        if kept is not None and kept[0] == self.writes_seen:
            return kept[1]
        value = compute()
        self._memos[(stage, name)] = (self.writes_seen, value)
        return value

    def write_output(self, path: str | Path, data: bytes) -> None:
        """Write an output file atomically, and look at it again when its digest is next asked."""
        atomic_write_bytes(Path(path), data)
        self.hasher.wrote(str(path))

    def invalidate(self) -> None:
        """Forget every record, row and digest read so far: files may have changed since."""
        self.writes_seen += 1
        self.prechecked.clear()
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
        """Save the identities, then fold the stage's journal into its records file, then the stat cache.
        Identities first: they follow the records in memory (the journal included), and a run killed
        between the two leaves the journal, which the next run replays. The other way round, a run
        killed after the commit lost which identities the stage's records gave up, and identities.json
        kept them for good (found by the differential soak, seed 14104)."""
        records = self.records(stage)
        self.identity_store.save(self.identities, records, lambda: self._referenced(stage))
        records.commit()
        if not self.save_cache_at_end:
            self.hasher.save()

    def settle_identities(self) -> None:
        """identities.json as a clean build would write it, after records changed outside a stage's finish
        (``prune`` drops records of gone articles) or a killed run's journal was replayed (its records may
        name identities the file lacks, computed again by this run). Reads every stage's records, so only
        then; ``replayed`` stays set, so the end of such a run settles again what its stages computed."""
        loaded = list(self._records.values())
        if any(records.replayed or records.released for records in loaded):
            self.identity_store.reconcile(self.identities, self._referenced())
            for records in loaded:
                records.released, records.added = set(), set()

    def _referenced(self, stage: str | None = None) -> set[str]:
        """Every input digest of every stage's records: ``stage``'s as in memory (not committed yet), the
        others' as on disk now (with doit -n N another process may have written them since they were read)."""
        values = self.records(stage).input_values() if stage is not None else set()
        for other in self.recorded_stages():
            if other != stage:
                values |= self._read_records(other).input_values()
        return values

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
                if record is None:
                    continue
                if item.file.startswith((self._markdown_prefix, self._conversation_prefix)):
                    data = Path(item.file).read_bytes()  # a per-article file: its digest and blob id
                    self.records(stage).put(item.key, {**record, **file_output(data)})
                else:
                    self.records(stage).put(item.key, {**record, "output": self.output_digest(item.file)})

    def source(self, name: str) -> SourceConfig:
        return next(source for source in self.config.sources if source.name == name)

    def sources_identity(self) -> str:
        """What decides the URL table: each source's plugin, version and output-affecting options."""
        return self.identity([self.plugin_identity("crawlers", s.plugin) | {"name": s.name, "options": {
            k: v for k, v in without_later_defaults(s.options).items() if k not in RUNTIME_CRAWL_OPTIONS}}
            for s in self.config.sources])

    def plugin_identity(self, kind: str, name: str) -> dict[str, Any]:
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

    # -- the model half's records, typed -----------------------------------------------------
    def read_upload(self) -> UploadMarker | None:
        return UploadMarker.read(self.upload_marker)

    def read_training(self, candidate: Candidate | None = None) -> TrainingRecord | None:
        """A candidate's training record; by default the selected one's (what deploy serves)."""
        return TrainingRecord.read(self.training_record_of(candidate or self.winner()))

    def read_model(self, candidate: Candidate | None = None) -> ModelRecord | None:
        return ModelRecord.read(self.model_record_of(candidate or self.winner()))

    # -- training candidates (engine.candidates) ----------------------------------------------
    def candidates(self) -> list[Candidate]:
        return candidates.configured(self.config.training)

    def training_record_of(self, candidate: Candidate) -> Path:
        return candidate.folder(self.config.artifacts) / "training.json"

    def model_record_of(self, candidate: Candidate) -> Path:
        return candidate.folder(self.config.artifacts) / "model.json"

    def training_records(self) -> dict[str, dict[str, Any] | None]:
        """Every candidate's training record as JSON (None where it has none yet), by name."""
        return {c.name: self.read_artifact(self.training_record_of(c)) for c in self.candidates()}

    def standings(self, chrf: Mapping[str, float | None] | None = None) -> list[Standing]:
        """The leaderboard: every candidate's losses (and ``chrf``, its evaluation score), best first, the one
        deploy serves marked."""
        return candidates.standings(self.candidates(), self.training_records(), self.winner(), chrf)

    def winner(self) -> Candidate:
        """The candidate deploy serves (``training.select``); the only one when there is one."""
        found = self.candidates()
        if len(found) == 1:
            return found[0]
        return candidates.select(found, self.training_records(), self.config.training["select"])

    def read_endpoint(self) -> EndpointRecord | None:
        return EndpointRecord.read(self.endpoint_record)

    def read_artifact(self, path: Path) -> dict[str, Any] | None:
        """A JSON artifact (marker, record, manifest), or None when it does not exist yet."""
        return read_json_object(path)

    # -- services ---------------------------------------------------------------------------
    def _service(self, kind: str) -> Any:
        """The backend of ``kind`` the configuration selects, made once per workspace (one boto3 client
        per run, not per staleness check), from the plugin that registered it."""
        if kind not in self._services:
            section = BACKEND_KINDS[kind]
            options = getattr(self.config, section)
            backend = self.config.registry.backends[f"{kind}:{options['backend']}"].item
            store = self.store() if kind != "store" else None
            self._services[kind] = backend.make(ServiceContext(options, self.config.aws, self.config.project_dir,
                                                               self.config.cache_dir, store))
        return self._services[kind]

    def store(self) -> ObjectStore:
        store: ObjectStore = self._service("store")
        return store

    def training_backend(self) -> TrainingBackend:
        backend: TrainingBackend = self._service("training")
        return backend

    def endpoint_backend(self) -> EndpointBackend:
        backend: EndpointBackend = self._service("endpoint")
        return backend

    def base_model(self, candidate: Candidate | None = None) -> BaseModel:
        """A candidate's base model plugin; by default the selected candidate's."""
        return self.config.registry.base_models[(candidate or self.winner()).base_model].item

    def options_identity(self, options: Mapping[str, Any], leave_out: frozenset[str] = frozenset()) -> str:
        """The identity of a model-half configuration section, without the options that change how a
        step runs, not what it makes."""
        return self.identity({k: v for k, v in without_later_defaults(options).items()
                              if k not in RUNTIME_MODEL_OPTIONS | leave_out})

    @property
    def last_list_crawl_file(self) -> Path:
        """When the lists were last crawled: machine-local, so committed state has no timestamps."""
        return self.config.cache_dir / "last-list-crawl"

