"""Build records: what every artifact was built from, kept so staleness is exact and portable.

Records live under ``<artifacts>/.state/<stage>.json`` (or, past 2,048 records, in shard files
under ``<artifacts>/.state/<stage>/``): sorted, no timestamps, no absolute paths, so they can be
committed and checked on a fresh clone. While a stage runs, each
finished item is appended to ``<stage>.journal`` at once, so an interrupted run loses no
finished work; the journal is folded into the JSON file when the stage ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import marshal
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any, NamedTuple

import xxhash

from pvbuild.engine.shards import ARTICLES_PER_SHARD, shard_count, shard_indices
from pvbuild.engine.summaries import (
    ItemColumns,
    ShardSummary,
    columns_digest,
    read_summary,
    sha256,
    shard_blobs,
    shard_keys,
    summarise,
    write_summary,
)
from pvbuild.errors import StateError
from pvbuild.files import DIRECTORY_MODE, TEMP_SUFFIX, atomic_write_bytes, atomic_write_text, replace_directory

EDITED = "output edited since it was built"


# One encoder for every call: json.dumps with these options builds a new one each time, a third
# of the cost of writing 10,000 records.
_CANONICAL = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def blob_id(data: bytes) -> str:
    """The id git gives a file of these bytes (SHA-1 of a ``blob`` header and the bytes). Records of
    per-article files keep it beside their digest, so that on a fresh clone a file that git finds
    unchanged since checkout has a known digest without being read (``engine.gitindex``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def check_bytes(data: bytes) -> str:
    """A digest that is only compared, never an identity: xxh3-128 (about 17 times SHA-256's speed
    on this machine). The dataset's record keeps it beside each file's SHA-256, so that a check that
    must read the dataset's files (no stat cache, no git) reads 900 MB at 100,000 articles in a
    tenth of the time (``FileHasher.check_digest``)."""
    return str(xxhash.xxh3_128_hexdigest(data))


def file_output(data: bytes) -> dict[str, str]:
    """What a record of a per-article file says of its output: its digest and its git blob id."""
    return {"output": digest_bytes(data), "blob": blob_id(data)}


def digest(value: Any) -> str:
    """A short, stable digest of any JSON-able value (or of bytes)."""
    return digest_bytes(value if isinstance(value, bytes) else canonical_json(value).encode("utf-8"))


def strings_digest(values: list[str] | list[list[str]]) -> str:
    """``digest`` of a list of strings (or of lists of strings), about 2x faster (no encoder set-up).

    It builds the very bytes ``canonical_json`` would (``json.dumps`` escapes strings with
    ``encode_basestring`` when ``ensure_ascii`` is off), so the records do not change.
    """
    def encoded(strings: list[str]) -> str:
        return "[" + ",".join(map(encode_basestring, strings)) + "]"
    text = "[" + ",".join(map(encoded, values)) + "]" if values and isinstance(values[0], list) \
        else encoded(values)  # type: ignore[arg-type]
    return digest_bytes(text.encode("utf-8"))


def records_files(state_dir: Path, stage: str) -> dict[str, list[int]]:
    """Each of a stage's records files and its journal, by name, with mtime and size (not read)."""
    paths = [state_dir / f"{stage}.json", state_dir / f"{stage}.journal"]
    folder = state_dir / stage
    if folder.is_dir():
        paths += sorted(folder.glob("*-of-*.json"))
    found = {}
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            info = path.stat()
            found[path.name] = [info.st_mtime_ns, info.st_size]
    return found


def keys_in_files(keys: list[str], files: Mapping[str, Any], names: set[str]) -> list[str]:
    """Those of ``keys`` whose records are in one of the files ``names`` (of the stage's ``files``,
    as ``records_files`` gives them)."""
    shards = [name for name in files if "-of-" in name]
    if not shards:  # one file holds every record
        return list(keys) if names else []
    count = int(shards[0].split("-of-")[1].removesuffix(".json"))
    wanted = {index for index in range(count) if _shard_file(index, count) in names}
    return [key for key, index in zip(keys, shard_indices(keys, count), strict=True) if index in wanted]


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StateError(f"{path}: cannot read {what}: {error}; delete it to rebuild from scratch") from error


class Item(NamedTuple):
    """One unit of a stage: a key (usually a file_id), the digests of its inputs, its output file.

    A named tuple and a string path: a check builds 20,000 of them, and frozen dataclasses and
    Path objects would cost a fifth of it."""

    key: str
    inputs: Mapping[str, str | None]  # None: the input does not exist yet
    file: str

    @property
    def output(self) -> Path:
        return Path(self.file)


class StageRecords:
    """The records of one stage, keyed by item key.

    Up to ``per_shard`` records live in ``<stage>.json``; more are split by key into
    ``<stage>/<i>-of-<n>.json`` (``engine.shards``), so a change rewrites the shard files of the
    keys that changed, not every record. A machine-local marshal copy of each file (under
    ``cache_dir``) is used while the file is unchanged: parsing JSON was a tenth of a no-op.

    Shard files are read as their keys are asked for (``get``, ``loaded_for``, ``put``): one edited
    article at 100,000 reads one shard of each stage's records, not 64. ``records`` (every record)
    reads the rest first. A layout that is not exactly ``n`` files numbered ``0..n-1`` is read whole.
    Beside the shards, their summary (``engine.summaries``) lets a fresh clone's check leave unparsed
    the shards whose items are as recorded (``vouched``, ``keys``).
    """

    def __init__(self, state_dir: Path, stage: str, cache_dir: Path | None = None,
                 per_shard: int = ARTICLES_PER_SHARD) -> None:
        self.path = state_dir / f"{stage}.json"
        self.folder = state_dir / stage
        self.journal = state_dir / f"{stage}.journal"
        self.cache_dir = cache_dir
        self.per_shard = per_shard
        self._records: dict[str, dict[str, Any]] = {}
        self.changed: set[str] = set()  # keys put or dropped since the files were written
        self.recounted = False  # a key was added or dropped since the files were written: the layout may change
        # Input digests that records put since gave up, and that they brought: identities.json is
        # checked against every record only when one it holds may no longer be referenced.
        self.released: set[str] = set()
        self.added: set[str] = set()
        self.replayed = False  # a journal was found: a run was killed, and what it recorded may name new identities
        # Unread shards whose bytes their summary vouches for: index -> (the summary's items digest, keys).
        self._vouched: dict[int, tuple[str | None, list[str]]] | None = None
        self.files = self._files()
        self.layout = len(self.files) if self.files and self.files[0].parent == self.folder else 1
        self._unread = self._numbered_shards()  # shard index -> its file, not read yet
        if not self._unread:
            for path in self.files:
                self._records.update(self._read(path))
        self._replay_journal()

    def _numbered_shards(self) -> dict[int, Path]:
        """The shard files by index, when they are exactly ``0..n-1`` of one layout ``n`` (else none: the
        files are read whole, as a layout left half-changed may hold a key in a file its index does not name)."""
        if self.layout <= 1:
            return {}
        numbered = {index: self.folder / _shard_file(index, self.layout) for index in range(self.layout)}
        return numbered if set(numbered.values()) == set(self.files) else {}

    @property
    def records(self) -> dict[str, dict[str, Any]]:
        """Every record (the shard files not read yet are read now)."""
        self.read_all()
        return self._records

    def read_all(self) -> None:
        """Read the shard files not read yet."""
        if self._unread:
            self._read_shards(list(self._unread))

    def read_unsummarised(self) -> None:
        """Read the shard files that no summary vouches for (those it does may never need parsing)."""
        if self._unread:
            vouched = self._summarised()
            self._read_shards([index for index in self._unread if index not in vouched])

    def keys(self) -> list[str]:
        """Every record's key; those of shards a summary vouches for are read off the file's lines."""
        self.read_unsummarised()
        vouched = self._summarised() if self._unread else {}
        return [*self._records, *(key for index in self._unread for key in vouched[index][1])]

    def blob_digests(self) -> dict[str, str]:
        """Git blob id -> output digest of every record that has one (``engine.gitindex``); those of shards a
        summary vouches for are read off the file's lines, so that those shards stay unparsed."""
        self.read_unsummarised()
        known = {record["blob"]: record["output"] for record in self._records.values() if "blob" in record}
        for index in self._unread:
            with contextlib.suppress(OSError):  # gone since: its files are then read, not trusted
                known |= shard_blobs(self._unread[index].read_bytes())
        return known

    def vouched(self, items: ItemColumns) -> set[str]:
        """The keys of ``items`` (every item of the stage) in unread shards whose summary says that their
        records have exactly these keys, inputs and outputs: those items are up to date, and their shards
        need not be parsed (a fresh clone's check)."""
        if not self._unread:
            return set()
        vouched = self._summarised()
        keys, names = items.keys, sorted(items.inputs)
        shards: dict[int, list[int]] = {}
        for position, index in enumerate(shard_indices(keys, self.layout)):
            if index in vouched:
                shards.setdefault(index, []).append(position)
        settled: set[str] = set()
        for index, positions in shards.items():
            positions.sort(key=keys.__getitem__)
            held = [keys[position] for position in positions]
            inputs = {name: [items.inputs[name][position] for position in positions] for name in names}
            expected = vouched[index][0]
            if expected is not None and expected == columns_digest(
                    held, inputs, [items.outputs[position] for position in positions]):
                settled.update(held)
        return settled

    def _summarised(self) -> dict[int, tuple[str | None, list[str]]]:
        """The unread shards whose file has the bytes its summary was made from (read and digested once;
        none while a journal was replayed: the records then differ from the files)."""
        if self._vouched is None:
            self._vouched = {}
            summary = {} if self.replayed else read_summary(self.folder)
            for index, path in self._unread.items():
                entry = summary.get(path.name)
                if entry is None:
                    continue
                try:
                    data = path.read_bytes()
                except OSError:
                    continue  # reported by whoever parses it
                if sha256(data) == entry.file:
                    keys = shard_keys(data)
                    if len(keys) == entry.records:
                        self._vouched[index] = (entry.items, keys)
        return {index: found for index, found in self._vouched.items() if index in self._unread}

    def loaded_for(self, wanted: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The records table, with the shards that hold the ``wanted`` keys read: enough to look up any of
        them (``wanted`` is only gone through while some shard is unread)."""
        if self._unread:
            keys = list(wanted)
            if 2 * len(keys) > self.per_shard * self.layout:  # about every record: read all, without hashing keys
                return self.records
            self._read_shards(sorted({index for index in shard_indices(keys, self.layout) if index in self._unread}))
        return self._records

    def _read_shards(self, indices: list[int]) -> None:
        for index in indices:
            path = self._unread.pop(index)
            self._records.update(self._read(path))

    def _files(self) -> list[Path]:
        """The records files as they are: the shard files, or the one file, or none."""
        if self.folder.is_dir():
            shards = sorted(self.folder.glob("*-of-*.json"))
            if shards:
                return shards
        return [self.path] if self.path.is_file() else []

    def _cached(self, path: Path) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{path.name}.marshal"

    def _read(self, path: Path) -> dict[str, dict[str, Any]]:
        info = path.stat()
        signature = [path.name, info.st_mtime_ns, info.st_size]
        cache = self._cached(path)
        if cache is not None:
            with contextlib.suppress(OSError, ValueError, EOFError, TypeError):
                cached = marshal.loads(cache.read_bytes())
                if isinstance(cached, list) and len(cached) == 2 and cached[0] == signature:
                    return cached[1]
        loaded = _read_json(path, "build records")
        if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
            raise StateError(f"{path}: build records are not a table of records; delete it to rebuild from scratch")
        self._keep(path, signature, loaded)
        return loaded

    def _keep(self, path: Path, signature: list[Any] | None, records: dict[str, Any]) -> None:
        """The marshal copy of one records file (``signature``: its name, mtime and size)."""
        cache = self._cached(path)
        if cache is None:
            return
        if signature is None:
            info = path.stat()
            signature = [path.name, info.st_mtime_ns, info.st_size]
        with contextlib.suppress(OSError):
            atomic_write_bytes(cache, marshal.dumps([signature, records]))

    def _write(self, path: Path, keys: list[str]) -> ShardSummary:
        """Write the records of ``keys`` (sorted) to ``path``; what its summary says of it."""
        data = _records_text(self._records, keys).encode("utf-8")
        atomic_write_bytes(path, data)
        self._keep(path, None, {key: self._records[key] for key in keys})
        return summarise(data, self._records, keys)

    def _replay_journal(self) -> None:
        if not self.journal.is_file():
            return
        self.replayed = True
        for line in self.journal.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: that item is simply rebuilt
            self._replace(entry["key"], entry.get("record"))

    def get(self, key: str) -> dict[str, Any] | None:
        return self.loaded_for([key]).get(key)

    def input_values(self) -> set[str]:
        """Every input digest the records hold (what ``identities.json`` must keep)."""
        values: set[str] = set()
        for record in self.records.values():
            values |= _input_values(record)
        return values

    def _replace(self, key: str, record: dict[str, Any] | None) -> None:
        table = self.loaded_for([key])  # its whole shard: commit() rewrites it
        old = table.pop(key, None) if record is None else table.get(key)
        brought = _input_values(record) if record is not None else set()
        if old is not None:
            self.released |= _input_values(old) - brought
        self.added |= brought
        if record is not None:
            table[key] = record
        self.recounted |= (old is None) != (record is None)
        self.changed.add(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        self._replace(key, record)
        self._append({"key": key, "record": record})

    def drop(self, key: str) -> None:
        if key in self.loaded_for([key]):
            self._replace(key, None)
            self._append({"key": key, "record": None})

    def _append(self, entry: Mapping[str, Any]) -> None:
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        with self.journal.open("a", encoding="utf-8") as stream:
            stream.write(canonical_json(entry) + "\n")

    def commit(self) -> None:
        """Fold the journal into the records files (sorted, one record per line for clean diffs): the
        shards holding a changed key, or every file when the number of shards changes. While no key came
        or went, the number of records is the one the files were laid out for, and the shards not read
        stay as they are; else every shard is read, to count them."""
        count = self.layout if self._unread and not self.recounted else shard_count(len(self.records), self.per_shard)
        if count == 1:
            if self.changed or self.layout != 1 or not self.path.is_file():
                self._write(self.path, sorted(self.records))
                if self.folder.is_dir():
                    shutil.rmtree(self.folder)
        elif count != self.layout:
            self._write_all_shards(count)
        else:
            shards: dict[int, list[str]] = {index: [] for index in shard_indices(list(self.changed), count)}
            keys = list(self._records)  # the shards read: among them, every shard holding a changed key
            for key, index in zip(keys, shard_indices(keys, count), strict=True):
                if index in shards:
                    shards[index].append(key)
            written = {_shard_file(index, count): self._write(self.folder / _shard_file(index, count), sorted(keys))
                       for index, keys in sorted(shards.items())}
            self._save_summary(count, written)
        self.layout, self.changed, self.recounted = count, set(), False
        self.files = self._files()
        with contextlib.suppress(FileNotFoundError):
            self.journal.unlink()

    def _save_summary(self, count: int, written: dict[str, ShardSummary]) -> None:
        """The summary, with the shards just ``written``. A shard it lacks (records older than summaries),
        or whose file is no longer the one its line describes (rewritten by a pvbuild without summaries, a
        merge), is read and summarised again, so that the summary is the one a clean build writes; one
        that cannot be read is left out (check then reads it, and says what is wrong)."""
        summary = read_summary(self.folder)
        names = [_shard_file(index, count) for index in range(count)]
        checked = self._checked_shards()
        left_out = set()
        for index, name in enumerate(names):
            entry = summary.get(name)
            try:
                if name in written or (entry is not None and self._as_summarised(name, index, entry, checked)):
                    continue
                written[name] = summarise((self.folder / name).read_bytes(), self._records, self._shard_keys(index))
            except FileNotFoundError:
                pass  # no such file: nothing to summarise
            except (OSError, StateError):
                left_out.add(name)
        now = {name: written.get(name) or summary[name] for name in names
               if name not in left_out and (name in written or name in summary)}
        if now != summary:
            write_summary(self.folder, now)
        self._check_shards(checked, {name: entry.file for name, entry in written.items()})

    def _shard_keys(self, index: int) -> list[str]:
        """The sorted keys of shard ``index`` (of the present layout), its file read if it is not yet."""
        if index in self._unread:
            table = self._read(self._unread[index])  # (unread still, should it fail)
            del self._unread[index]
            self._records.update(table)
            return sorted(table)
        keys = list(self._records)
        return sorted(key for key, at in zip(keys, shard_indices(keys, self.layout), strict=True) if at == index)

    def _as_summarised(self, name: str, index: int, entry: ShardSummary, checked: dict[str, list[Any]]) -> bool:
        """Whether shard ``index``'s file has the bytes its summary line describes: found so by this run's
        pass, or by this machine before and not changed since (its stat), or else by its SHA-256 now."""
        if self._vouched is not None and index in self._vouched:
            return True
        path = self.folder / name
        info = path.stat()
        if checked.get(path.name) == [info.st_mtime_ns, info.st_size, entry.file]:
            return True
        if sha256(path.read_bytes()) != entry.file:
            return False
        checked[path.name] = [info.st_mtime_ns, info.st_size, entry.file]
        return True

    def _checked_shards(self) -> dict[str, list[Any]]:
        """Machine-local: each shard file's mtime, size and SHA-256 when this machine last found it to be
        what its summary line describes (a commit then need not read the other shards to know it)."""
        if self.cache_dir is None:
            return {}
        with contextlib.suppress(OSError, ValueError, EOFError, TypeError):
            loaded = marshal.loads((self.cache_dir / "summary-checked.marshal").read_bytes())
            return loaded if isinstance(loaded, dict) else {}
        return {}

    def _check_shards(self, checked: dict[str, list[Any]], written: dict[str, str]) -> None:
        """Remember the files just written (by name, their SHA-256) with the others found as summarised."""
        for name, file_digest in written.items():
            with contextlib.suppress(OSError):
                info = (self.folder / name).stat()
                checked[name] = [info.st_mtime_ns, info.st_size, file_digest]
        if self.cache_dir is not None:
            with contextlib.suppress(OSError):
                atomic_write_bytes(self.cache_dir / "summary-checked.marshal", marshal.dumps(checked))

    def _write_all_shards(self, count: int) -> None:
        """A new layout in a folder of its own, swapped in whole: a crash leaves the old one."""
        groups: list[list[str]] = [[] for _ in range(count)]
        keys = list(self.records)
        for key, index in zip(keys, shard_indices(keys, count), strict=True):
            groups[index].append(key)
        building = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", suffix=TEMP_SUFFIX, dir=self.folder.parent))
        try:
            building.chmod(DIRECTORY_MODE)
            summary = {}
            for index, keys in enumerate(groups):
                keys.sort()
                data = _records_text(self._records, keys).encode("utf-8")
                atomic_write_bytes(building / _shard_file(index, count), data)
                summary[_shard_file(index, count)] = summarise(data, self._records, keys)
            write_summary(building, summary)
            replace_directory(building, self.folder)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        self._check_shards({}, {name: entry.file for name, entry in summary.items()})
        self.path.unlink(missing_ok=True)
        for index, keys in enumerate(groups):  # the files' mtimes are final only once they are in place
            self._keep(self.folder / _shard_file(index, count), None, {key: self._records[key] for key in keys})


def _input_values(record: Mapping[str, Any]) -> set[str]:
    inputs = record.get("inputs")
    return {value for value in inputs.values() if isinstance(value, str)} if isinstance(inputs, dict) else set()


def _shard_file(index: int, count: int) -> str:
    return f"{index:05d}-of-{count:05d}.json"


def _records_text(records: Mapping[str, Any], keys: list[str]) -> str:
    lines = [f"{json.dumps(key, ensure_ascii=False)}: {canonical_json(records[key])}" for key in keys]
    return "{\n" + ",\n".join(lines) + ("\n}\n" if lines else "}\n")


def stale_reason(item: Item, record: Mapping[str, Any] | None, output_digest: str | None) -> str | None:
    """Why ``item`` must be rebuilt, or None when its output is up to date."""
    if record is None:
        return "never built"
    recorded = record.get("inputs", {})
    changed = [] if item.inputs == recorded else sorted(
        name for name in set(item.inputs) | set(recorded) if item.inputs.get(name) != recorded.get(name))
    if changed:
        return f"input changed: {', '.join(changed)}"
    if output_digest is None:
        return "output missing"
    if output_digest != record.get("output"):
        return EDITED
    return None


def stale_items(items: list[Item], records: StageRecords, outputs: list[str | None]) -> Iterator[tuple[Item, str]]:
    """The stale items and why, given each item's output digest. The up-to-date case is tested first,
    inline: it is nearly every item of a no-op."""
    table = records.loaded_for(item.key for item in items)
    for item, output in zip(items, outputs, strict=True):
        record = table.get(item.key)
        if record is not None and output is not None and output == record.get("output") \
                and item.inputs == record.get("inputs"):
            continue
        reason = stale_reason(item, record, output)
        if reason is not None:
            yield item, reason


class IdentityStore:
    """What each configuration/plugin digest in the records stood for (``identities.json``), so a
    changed input can be explained key by key. Sorted, one identity per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._known: dict[str, Any] | None = None

    def known(self) -> dict[str, Any]:
        if self._known is None:
            loaded = _read_json(self.path, "identities") if self.path.is_file() else {}
            self._known = loaded if isinstance(loaded, dict) else {}
        return self._known

    def save(self, identities: Mapping[str, Any], records: StageRecords,
             referenced: Callable[[], set[str]]) -> None:
        """Add this run's identities and drop those no record refers to any more, so the file holds
        what a clean build of the same inputs would hold. ``records``: the stage just committed;
        only when its records gave up an identity, or brought one they do not hold, are all
        records asked (``referenced``: every input digest of every record). The file is read again
        first: with ``doit -n N`` another process may have added identities since this one read it."""
        self._known = None
        known = self.known()
        new = {key: value for key, value in identities.items() if key not in known}
        released, added = records.released, records.added
        records.released, records.added = set(), set()
        if not released & known.keys() and new.keys() <= added:
            self._write({**known, **new})
        else:
            self.reconcile(identities, referenced())

    def reconcile(self, identities: Mapping[str, Any], every: set[str]) -> None:
        """Keep what the file and this run know (``identities``) of the input digests in ``every`` (those
        the records hold), and nothing else: what a clean build of the same inputs writes."""
        self._known = None
        self._write({key: value for key, value in {**self.known(), **identities}.items() if key in every})

    def _write(self, kept: dict[str, Any]) -> None:
        if kept == self._known and self.path.is_file():
            return
        self._known = kept
        lines = [f"{json.dumps(key)}: {canonical_json(kept[key])}" for key in sorted(kept)]
        atomic_write_text(self.path, "{\n" + ",\n".join(lines) + ("\n}\n" if lines else "}\n"))
