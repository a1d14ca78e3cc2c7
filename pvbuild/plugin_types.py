"""The types a plugin builds: source sites, annotators and base models.

They live in one small module so that a plugin file needs ``import pvbuild``
and nothing else.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CssSite:
    """A source site whose list pages and articles are static HTML described by CSS selectors.

    ``list_url`` is a template with a ``{page}`` placeholder; the pages crawled run from the
    ``first_page`` to the ``last_page`` option. Each item of a list page is matched by
    ``item_selector``; inside it ``title_selector`` gives the title text, ``link_selector``'s
    ``href`` the article link (relative links are resolved against the list page) and
    ``date_selector`` the date text. The article body is the markdown of ``article_selector``.
    """

    name: str
    list_url: str
    item_selector: str
    article_selector: str
    title_selector: str = "a"
    link_selector: str = "a"
    date_selector: str = "span"
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=lambda: {"first_page": 1, "last_page": 1})

    def list_urls(self, options: Mapping[str, Any]) -> list[str]:
        """The list pages to crawl; the ``list_url`` option, when set, replaces the site's template
        (a mirror, or a local copy in tests)."""
        first, last = int(options["first_page"]), int(options["last_page"])
        template = str(options.get("list_url") or self.list_url)
        return [template.format(page=page) for page in range(first, last + 1)]

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[Callable[[str], str]]:
        """Yield a function mapping a canonical URL to the URL actually fetched.

        Real sites fetch what they link to; the bundled sample site overrides this to
        start a local server, so its canonical links stay stable across runs.
        """
        yield lambda url: url


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: str
    content: str


@dataclass(frozen=True)
class Article:
    """An article handed to an annotator: its URL row and its markdown body."""

    file_id: str
    title: str
    link: str
    date: str
    source: str
    markdown: str


@dataclass(frozen=True)
class Annotation:
    """What an annotator returns for one article: the conversation and the tokens it cost."""

    messages: list[Message]
    usage: Mapping[str, int] = field(default_factory=dict)
    cut_from: int = 0  # the article's length in characters when only its start was sent (0: all of it)


class AnnotationError(Exception):
    """This article could not be annotated; the others go on and it is retried next run."""


class FatalAnnotationError(AnnotationError):
    """No article can be annotated (bad credentials, no quota): stop the whole stage now."""


ROLES = ("user", "assistant")


def validate_conversation(messages: Iterable[Message]) -> list[Message]:
    """At least one pair, roles alternating user/assistant from a user turn, nothing empty."""
    checked = list(messages)
    if not checked:
        raise AnnotationError("the conversation is empty")
    for index, message in enumerate(checked):
        expected = ROLES[index % 2]
        if message.role != expected:
            raise AnnotationError(f"message {index + 1} has role {message.role!r}, expected {expected!r} "
                                  "(roles must alternate user, assistant)")
        if not isinstance(message.content, str) or not message.content.strip():
            raise AnnotationError(f"message {index + 1} ({message.role}) is empty")
    if len(checked) % 2:
        raise AnnotationError("the conversation ends with a user turn that has no answer")
    return checked


def question_key(question: str) -> str:
    """What makes two questions the same question: case, width, spaces and punctuation aside
    ("补贴标准是什么？" and "补贴标准 是什么?" are one)."""
    import unicodedata

    folded = unicodedata.normalize("NFKC", question).casefold()
    return "".join(ch for ch in folded if not (ch.isspace() or unicodedata.category(ch).startswith("P")))


def drop_repeated_questions(messages: list[Message]) -> tuple[list[Message], int]:
    """The conversation without the pairs whose question an earlier pair already asked (annotators
    repeat themselves, and a repeated question weighs its answer twice in training), and how many went."""
    kept: list[Message] = []
    seen: set[str] = set()
    for question, answer in zip(messages[::2], messages[1::2], strict=True):
        key = question_key(question.content)
        if key not in seen:
            seen.add(key)
            kept += [question, answer]
    return kept, (len(messages) - len(kept)) // 2


class BatchJournal:
    """Where a batch annotator writes down the batches it submitted the moment they exist, so that a
    rerun (after Ctrl-C, or while they are still running) re-attaches instead of paying again.

    An entry is a JSON object keyed by its ``"input_file"`` (what exists first); the annotator decides
    the rest (the batch id, what each request's digest was). The file is machine-local.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[dict[str, Any]]:
        import json

        return json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else []

    def put(self, entry: dict[str, Any]) -> None:
        """Add ``entry``, or replace the one with its input file, and write the journal at once."""
        kept = [old for old in self.entries() if old["input_file"] != entry["input_file"]]
        self._write([*kept, entry])

    def drop(self, input_file: str) -> None:
        self._write([old for old in self.entries() if old["input_file"] != input_file])

    def _write(self, entries: list[dict[str, Any]]) -> None:
        import json

        from pvbuild.files import atomic_write_text

        if entries:
            atomic_write_text(self.path, json.dumps(entries, indent=1, sort_keys=True))
        else:
            self.path.unlink(missing_ok=True)


Delivery = Callable[[str, "Annotation | AnnotationError"], None]


class AnnotatorRun:
    """One annotation run: created by ``Annotator.start`` and closed when the stage ends.

    A live run answers ``annotate`` per article (the stage calls it concurrently). A run with
    ``batched`` set gets every stale article at once through ``annotate_all``, and hands each
    article's annotation (or the error that failed it) to ``deliver`` as it comes; the stage checks
    and writes it exactly as a live answer. ``status`` takes a short line for the progress bar.
    """

    batched: bool = False

    async def annotate(self, article: Article) -> Annotation:
        raise NotImplementedError

    async def annotate_all(self, articles: list[Article], journal: BatchJournal, deliver: Delivery,
                           status: Callable[[str], None]) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release clients and connections."""


class Annotator:
    """Turns an article into a conversation. Subclass it and register an instance.

    ``options`` holds the defaults of every option the annotator accepts (configuration may
    override them, and unknown keys are rejected). ``runtime_options`` names the options that
    do not change the output (concurrency, timeouts): editing them re-annotates nothing.
    """

    name: str = ""
    description: str = ""
    options: Mapping[str, Any] = {}
    runtime_options: frozenset[str] = frozenset({"concurrency"})

    def identity(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """What decides the output: every option except the runtime ones."""
        return {key: value for key, value in sorted(options.items()) if key not in self.runtime_options}

    def start(self, options: Mapping[str, Any]) -> AnnotatorRun:
        raise NotImplementedError

    def sent_text(self, options: Mapping[str, Any], article: Article) -> str | None:
        """What one call sends for ``article`` (instructions and article), for ``pvbuild plan``'s token
        estimate; None when the annotator does not say (the estimate then counts the markdown)."""
        return None


@dataclass(frozen=True)
class BaseModel:
    """A base model to fine-tune: where it comes from, what data it trains on, how it is served.

    On SageMaker the JumpStart model id and version name it. The local trainer loads
    ``local_model`` (a Hugging Face hub id or a local directory; the tokenizer's when empty),
    or, when ``build_local`` is set, calls it with the dataset's texts, a directory and a seed
    to build the model there (the ``tiny`` model does), or, when ``prepare_local`` is set, calls
    it with a cache folder and trains the model directory it returns (``smollm2-135m`` converts
    its GGUF file there once). ``tokenizer`` says where ``ask`` finds the tokenizer and chat
    template (empty: the one saved with the fine-tuned model).
    """

    name: str
    jumpstart_model_id: str
    jumpstart_model_version: str
    dataset_format: str
    hyperparameters: Mapping[str, Any]
    training_instance_types: tuple[str, ...]
    inference_instance_types: tuple[str, ...]
    tokenizer: str
    description: str = ""
    local_model: str = ""
    build_local: Callable[[Sequence[str], Path, int], None] | None = None
    prepare_local: Callable[[Path], Path] | None = None
    # Hyperparameter names the model's training accepts beyond those with defaults above (JumpStart's
    # documented list); a name in neither is refused before anything runs, with "did you mean".
    accepted_hyperparameters: tuple[str, ...] = ()

    def hyperparameter_names(self) -> set[str]:
        return set(self.hyperparameters) | set(self.accepted_hyperparameters)


BACKEND_KINDS = {"store": "storage", "training": "training", "endpoint": "endpoint"}  # kind -> config section


@dataclass(frozen=True)
class ServiceContext:
    """What a backend factory is given: its configuration section, the AWS section (credentials come
    from boto3's chain, never from here), where the project and its machine-local cache are, and for
    training and endpoint backends the profile's object store."""

    options: Mapping[str, Any]
    aws: Mapping[str, Any]
    project_dir: Path
    cache_dir: Path
    store: Any = None


@dataclass(frozen=True)
class Backend:
    """A service a plugin provides: an object store (``kind="store"``), a training service
    (``"training"``) or an endpoint service (``"endpoint"``), chosen by ``storage.backend``,
    ``training.backend`` or ``endpoint.backend``. ``make`` builds it from a ``ServiceContext``; it
    must satisfy ``pvbuild.services.stores.ObjectStore``, ``pvbuild.services.training.TrainingBackend``
    or ``pvbuild.services.endpoints.EndpointBackend``."""

    kind: str
    name: str
    make: Callable[[ServiceContext], Any]
    description: str = ""
    # A training service whose jobs read one data file per channel (JumpStart's scripts, as AWS
    # documents them): a sharded dataset's shards are uploaded joined into one file.
    one_file_per_channel: bool = False

    def __post_init__(self) -> None:
        if self.kind not in BACKEND_KINDS:
            raise ValueError(f"backend kind must be one of {', '.join(BACKEND_KINDS)}, not {self.kind!r}")

    @property
    def key(self) -> str:
        """Names are per kind ("local" is a store, a trainer and an endpoint): the registry key."""
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class Dialogue:
    """One article's conversation as a dataset format sees it: the article's title and the turns."""

    title: str
    messages: Sequence[Message]

    def pairs(self) -> list[tuple[str, str]]:
        return [(self.messages[i].content, self.messages[i + 1].content) for i in range(0, len(self.messages), 2)]


@dataclass(frozen=True)
class DatasetFormat:
    """A training data format, chosen by ``dataset.format``. ``write(train, validation, options)``
    returns ``{file name: text}`` (an empty validation split writes no validation file);
    ``channels`` names the files each SageMaker input channel gets, the data file first;
    ``hyperparameter`` is the JumpStart flag that is True for this format (and False for the others)."""

    name: str
    hyperparameter: str
    channels: Mapping[str, tuple[str, ...]]
    write: Callable[[Sequence[Dialogue], Sequence[Dialogue], Mapping[str, Any]], dict[str, str]]
    description: str = ""
