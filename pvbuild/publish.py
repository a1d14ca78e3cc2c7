"""``pvbuild publish``: the built dataset to the Hugging Face Hub, with a dataset card made from the
build records (sources, counts, annotator, template, format, the general data mixed in, licence).

Only a dataset that is up to date is published (the card describes what was built, so a stale one
would be described wrongly). The JSONL files go up as they are (the Hub's viewer and
``datasets.load_dataset(REPO)`` read them through the card's ``configs``); the Arrow folder, a
``save_to_disk`` layout, stays home. The token comes from ``HF_TOKEN`` (or ``huggingface-cli login``),
never from configuration; ``HF_ENDPOINT`` points the client at another Hub (tests: a stand-in).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pvbuild import __version__
from pvbuild.engine.workspace import Workspace
from pvbuild.errors import PvbuildError

# Annotator options that say how the data was made (and are no secret): shown on the card.
CARD_ANNOTATOR_OPTIONS = ("model", "temperature", "pairs", "max_article_chars")


def published_files(manifest: Mapping[str, Any]) -> list[str]:
    """The dataset's JSONL files and template, not the Arrow folder (a local ``save_to_disk`` layout)."""
    return sorted(name for name in manifest["files"] if not name.startswith("arrow/"))


def _size_category(count: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if count < limit:
            return label
    return "n>1M"


def card(workspace: Workspace, manifest: Mapping[str, Any], repo: str, license_id: str) -> str:
    """The dataset card (README.md): the Hub's metadata block, then what the build records say."""
    from huggingface_hub import DatasetCard, DatasetCardData

    files = published_files(manifest)
    data_file = str(manifest.get("train_file") or "train.jsonl")
    stem = data_file.rsplit(".", 1)[0]
    validation = "validation" if manifest.get("format") == "instruction" else "chat_validation"
    splits = [{"split": "train", "path": f"{stem}*.jsonl"}]
    if any(name.startswith(validation) for name in files):
        splits.append({"split": "validation", "path": f"{validation}*.jsonl"})
    metadata = DatasetCardData(
        license=license_id or "other", language=["zh"], task_categories=["text-generation"],
        size_categories=[_size_category(int(manifest.get("pairs") or 0))], tags=["pvbuild", "sft", "synthetic"],
        pretty_name=repo.rsplit("/", 1)[-1], configs=[{"config_name": "default", "data_files": splits}])
    config = workspace.config
    sources = "\n".join(f"- `{source.name}` (plugin `{source.plugin}`)" for source in config.sources)
    annotator = ", ".join(f"{key} = {config.annotator.options[key]!r}" for key in CARD_ANNOTATOR_OPTIONS
                          if key in config.annotator.options)
    mix = manifest.get("mix") or {}
    lines = ", ".join(f"{count} {fmt} lines" for fmt, count in sorted((mix.get("general_lines") or {}).items()))
    mixed = (f"\nGeneral data mixed in: `{mix['file']}`, {mix['ratio']:.0%} of the training lines "
             f"({lines}).\n") if mix else ""
    template = json.dumps(config.dataset["template"], ensure_ascii=False)
    body = f"""
# {repo.rsplit('/', 1)[-1]}

Question/answer conversations about crawled articles, written by an LLM annotator, for supervised
fine-tuning (SageMaker JumpStart's {manifest.get('format')} format). Built by pvbuild {__version__}.

## Sources

{sources}

## Counts

| articles | question/answer pairs | training articles | validation articles |
| --- | --- | --- | --- |
| {' | '.join(str(manifest.get(name)) for name in ('articles', 'pairs', 'train_articles', 'validation_articles'))} |
{mixed}
## How it was made

- Annotator: plugin `{config.annotator.plugin}`{f' ({annotator})' if annotator else ''}
- Format: `{manifest.get('format')}`; instruction template: `{template}`
- Validation split: {config.dataset['validation_ratio']:.0%} of the articles, seed {config.dataset['seed']}

## Files

{chr(10).join(f'- `{name}`' for name in files)}

## Licence

{f'`{license_id}`.' if license_id else 'Not declared: set publish.license in pvbuild.toml.'}

The articles belong to their publishers; check their terms before you share derived data.
"""
    return str(DatasetCard(f"---\n{metadata.to_yaml()}\n---\n{body}"))


def _built_manifest(workspace: Workspace) -> dict[str, Any]:
    manifest = workspace.read_artifact(workspace.manifest)
    if manifest is None:
        raise PvbuildError(f"{workspace.manifest}: no dataset built yet; run doit first")
    return manifest


def publish(workspace: Workspace, repo: str, private: bool, license_id: str) -> str:
    """Create the dataset repo (if new) and commit the files and the card in one commit; its URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    manifest = _built_manifest(workspace)
    text = card(workspace, manifest, repo, license_id)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(workspace.dataset_dir / name))
                  for name in published_files(manifest)]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=text.encode("utf-8")))
    # HF_ENDPOINT read now, not when huggingface_hub was first imported (transformers may import it earlier).
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    try:
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        commit = api.create_commit(repo, operations, repo_type="dataset",
                                   commit_message=f"pvbuild: dataset {str(manifest.get('pairs'))} pairs")
    except Exception as error:  # noqa: BLE001 - the hub client's HTTP and transport errors, one message for all
        raise PvbuildError(f"publishing to {repo} at {api.endpoint}: {type(error).__name__}: {error}") from error
    return str(commit.commit_url)


def local_card(workspace: Workspace, repo: str, license_id: str, target: Path) -> Path:
    """``--dry-run``: the card written beside the dataset's files, nothing sent."""
    target.write_text(card(workspace, _built_manifest(workspace), repo, license_id), encoding="utf-8")
    return target
