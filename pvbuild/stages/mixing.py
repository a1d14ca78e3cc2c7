"""Mixing general conversation data into the domain data (``dataset.mix_file``, ``dataset.mix_ratio``),
as the reference pipeline suggests against forgetting (8:2 domain:general, ``mix_ratio = 0.2``).

The general set is question/answer rows (an optional ``context``) from a JSONL or CSV file, a Hugging
Face ``datasets`` folder (``save_to_disk``), or ``builtin:general-zh`` (a small Chinese set shipped with
pvbuild for the offline profile). For each dataset format, as many rows as make ``mix_ratio`` of the
training lines are drawn (seeded by ``dataset.seed``, without replacement) and written by the format
itself into ``<data file>-general.jsonl`` (``train-general.jsonl``, ``chat-general.jsonl``), which the
upload puts in the training channel beside the domain shards. The domain files do not change, so a
new ratio rewrites one file per format. The validation split stays domain only.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from pvbuild.config import BUILTIN_MIX, shipped_general_sets
from pvbuild.errors import ConfigError, PvbuildError
from pvbuild.plugin_types import DatasetFormat, Dialogue, Message

MIX_OPTIONS = frozenset({"mix_file", "mix_ratio"})  # not part of the shards' identity: the mix is its own file


def general_name(data_file: str) -> str:
    """``train.jsonl`` → ``train-general.jsonl``."""
    path = PurePosixPath(data_file)
    return str(path.with_name(f"{path.stem}-general{path.suffix}"))


def mix_path(project_dir: Path, mix_file: str) -> Path:
    """Where the general set is: one shipped with pvbuild (checked in config), or a project-relative path."""
    return shipped_general_sets()[mix_file] if mix_file.startswith(BUILTIN_MIX) else project_dir / mix_file


def load_general(path: Path, where: str) -> list[dict[str, str]]:
    """The general set's rows, each with a question and an answer (and a context, "" if none)."""
    if not path.exists():
        raise ConfigError(f"{where}: dataset.mix_file: {path} does not exist (a .jsonl or .csv file, a datasets "
                          "folder, or builtin:general-zh)")
    if path.is_dir():
        from datasets import load_from_disk

        rows: list[dict[str, Any]] = [dict(row) for row in load_from_disk(str(path))]
        places = [f"{path} row {index}" for index in range(len(rows))]
    elif path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as stream:
            rows = list(csv.DictReader(stream))
        places = [f"{path}:{index + 2}" for index in range(len(rows))]  # line 1 is the header
    else:
        rows, places = [], []
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if text.strip():
                try:
                    rows.append(json.loads(text))
                except ValueError as error:
                    raise PvbuildError(f"{path}:{number}: not a JSON object ({error})") from error
                places.append(f"{path}:{number}")
    found = []
    for row, place in zip(rows, places, strict=True):
        if not isinstance(row, Mapping) or not all(isinstance(row.get(key), str) and row[key].strip()
                                                   for key in ("question", "answer")):
            raise PvbuildError(f"{place}: a general row needs a non-empty \"question\" and \"answer\"")
        found.append({"question": row["question"], "answer": row["answer"], "context": str(row.get("context") or "")})
    if not found:
        raise PvbuildError(f"{path}: the general set has no rows")
    return found


def mixed_files(rows: Sequence[Mapping[str, str]], ratio: float, seed: int, formats: Sequence[DatasetFormat],
                domain_lines: Mapping[str, int], options: Mapping[str, Any]) -> tuple[dict[str, bytes],
                                                                                      dict[str, int]]:
    """Per format, its general file and how many rows it holds: ``ratio`` of all training lines, at most
    every row there is."""
    files: dict[str, bytes] = {}
    counts: dict[str, int] = {}
    general_options = {**options, "chat_user_prefix": ""}  # the domain's prefix names an article: none here
    for dataset_format in formats:
        domain = domain_lines.get(dataset_format.name, 0)
        wanted = min(len(rows), round(domain * ratio / (1 - ratio)))
        chosen = random.Random(seed).sample(list(rows), wanted)
        dialogues = [Dialogue(row["context"], [Message("user", row["question"]), Message("assistant", row["answer"])])
                     for row in chosen]
        data_file = dataset_format.channels["training"][0]
        written = dataset_format.write(dialogues, [], general_options)
        files[general_name(data_file)] = written[data_file].encode("utf-8") if chosen else b""
        counts[dataset_format.name] = wanted
        if not chosen:  # too few domain lines for one general row: no file
            del files[general_name(data_file)]
    return files, counts


def mix_identity(project_dir: Path, options: Mapping[str, Any], digest_file: Any) -> list[Any] | None:
    """What the general file depends on besides the domain lines: the set's bytes and the ratio (None: no mix)."""
    if not options["mix_file"]:
        return None
    path = mix_path(project_dir, str(options["mix_file"]))
    parts = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(part.relative_to(path)) if path.is_dir() else part.name, digest_file(str(part))] for part in parts] \
        + [float(options["mix_ratio"])]
