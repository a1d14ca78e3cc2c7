"""What a stage is: a name, a doc line, its items, its own reasons to rebuild beyond the records, and
the action that rebuilds what is stale. The ordered catalog of stages (``pvbuild.stages.catalog``) is
the build graph."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pvbuild.engine.records import Item
from pvbuild.engine.summaries import ItemColumns

if TYPE_CHECKING:
    from pvbuild.engine.outcomes import StageResult
    from pvbuild.engine.url_table import UrlRow
    from pvbuild.engine.workspace import Workspace


@dataclass(frozen=True)
class StaleItem:
    """An item to rebuild and the reason."""

    item: Item
    reason: str
    # False when rebuilding restores what the records already say (a torn-down endpoint, a deleted
    # store object, an edited dataset file): nothing downstream can change because of it.
    propagates: bool = True
    # True when the reason comes from an upstream output that may itself be rebuilt first (an orphan
    # while the URL table is about to be crawled again): then it is a "may", not a "will".
    derived: bool = False
    owner: str = ""  # the stage whose file this is, when another stage acts on it (prune)


@dataclass(frozen=True)
class Fingerprint:
    """What a per-article stage's staleness depends on besides its records, as plain lists: while the
    context is the same, the staleness engine re-examines only the keys whose column values or records
    shard changed since the stage was last found up to date (one edited article at 100,000 builds one
    item, not 100,000)."""

    context: list[Any]  # what every item depends on (plugin identities)
    keys: list[str]  # every key, in order
    columns: list[list[str | None]]  # per column, each key's value (its row's digest, its files' digests)
    count: int  # how many items there are (keys without an input file have none)
    # The items themselves, where the columns say what they are: what a fresh clone's records summaries are
    # compared with, without making an item of each article (``staleness._unvouched_items``).
    items: ItemColumns | None = None


class Stage(Protocol):
    """One step of the build. Items are computed from the workspace; the engine compares them with
    the stage's records; ``refine`` adds the stage's own reasons (a job that failed, an endpoint that
    is down); ``run`` rebuilds what is stale and records it."""

    name: ClassVar[str]
    doc: ClassVar[str]
    per_article: ClassVar[bool]  # items are keyed by file_id: staleness passes key by key to the next such stage
    keeps_edits: ClassVar[bool]  # a hand-edited output is kept and taken as built (make semantics)
    record_output: ClassVar[bool]  # the output is a JSON record with volatile fields (workspace.VOLATILE_FIELDS)
    derived_inputs: ClassVar[frozenset[str]]  # inputs that are digests of upstream outputs, not configuration
    is_gate: ClassVar[bool]  # the data gate: a run that reaches it reports failures there, not stage by stage
    # What the action writes besides its records (artifact-relative; a folder ends in "/", or in "/*"
    # when every file in it is written through ``Workspace.write_output``), or None: anything. After
    # an action the engine looks again only at these (and at everything after None).
    writes: ClassVar[tuple[str, ...] | None]

    def items(self, workspace: Workspace) -> list[Item]: ...

    def refine(self, workspace: Workspace, items: list[Item], found: list[StaleItem]) -> list[StaleItem]: ...

    def fingerprint(self, workspace: Workspace) -> Fingerprint | None:
        """Everything ``items`` and ``refine`` depend on besides the stage's records, cheaper to compute
        than the items, or None (see ``Fingerprint``)."""
        ...

    def items_for(self, workspace: Workspace, keys: set[str]) -> list[Item]:
        """The items of ``keys`` only (those of them that exist)."""
        ...

    def file(self, workspace: Workspace, key: str) -> str: ...

    def run(self, workspace: Workspace) -> StageResult: ...

    def self_checked(self, workspace: Workspace) -> bool:
        """Whether ``refine`` reads the files the stage writes by digests cheaper than SHA-256 that its
        records keep (the dataset's), so that a check's digesting workers need not read them."""
        ...


class StageBase:
    """Defaults for a stage of one item whose staleness is its records' alone."""

    name: ClassVar[str] = ""
    doc: ClassVar[str] = ""
    per_article: ClassVar[bool] = False
    keeps_edits: ClassVar[bool] = False
    record_output: ClassVar[bool] = False
    derived_inputs: ClassVar[frozenset[str]] = frozenset()
    is_gate: ClassVar[bool] = False
    writes: ClassVar[tuple[str, ...] | None] = None

    def items(self, workspace: Workspace) -> list[Item]:
        raise NotImplementedError

    def refine(self, workspace: Workspace, items: list[Item], found: list[StaleItem]) -> list[StaleItem]:
        return found

    def fingerprint(self, workspace: Workspace) -> Fingerprint | None:
        return None

    def items_for(self, workspace: Workspace, keys: set[str]) -> list[Item]:
        return [item for item in self.items(workspace) if item.key in keys]

    def run(self, workspace: Workspace) -> StageResult:
        raise NotImplementedError

    def file(self, workspace: Workspace, key: str) -> str:
        return next(item.file for item in self.items(workspace) if item.key == key)

    def self_checked(self, workspace: Workspace) -> bool:
        return False


class ArticleStage(StageBase):
    """A stage with one item per article of the URL table, keyed by ``file_id``: ``article_items``
    makes the items of given rows, for all of them or for the few the engine re-examines."""

    per_article: ClassVar[bool] = True

    def items(self, workspace: Workspace) -> list[Item]:
        return self.article_items(workspace, workspace.rows())

    def items_for(self, workspace: Workspace, keys: set[str]) -> list[Item]:
        return self.article_items(workspace, [row for row in workspace.rows() if row.file_id in keys])

    def article_items(self, workspace: Workspace, rows: list[UrlRow]) -> list[Item]:
        raise NotImplementedError

    @staticmethod
    def keys_and_rows(workspace: Workspace) -> tuple[list[str], list[str | None]]:
        """Every article's key, and its row's digest (a fingerprint's first column), in table order."""
        digests = workspace.row_digests
        keys = [row.file_id for row in workspace.rows()]
        return keys, [digests[key] for key in keys]
