"""Configuration: the embedded profiles, the project's ``pvbuild.toml``, validation.

A profile is chosen by ``--profile``, ``doit profile=NAME`` or ``PVBUILD_PROFILE`` and
defaults to ``default``. Every error names the file and the dotted key at fault.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pvbuild.errors import ConfigError
from pvbuild.plugin_types import BACKEND_KINDS
from pvbuild.plugins import Registry, load_plugins

EMBEDDED = "pvbuild/profiles.toml (embedded)"
PROFILE_KEYS = {"inherits", "artifacts", "sources", "annotator", "dataset", "storage", "aws", "training", "endpoint",
                "ask", "evaluation", "publish"}
# An option is refused as a secret when one of its ``_``-separated words is one of these.
SECRET_WORDS = frozenset({"api", "apikey", "key", "secret", "password", "token", "credential", "credentials"})

# Options every source accepts; the ones in RUNTIME_CRAWL_OPTIONS change speed, not output.
# 8 requests in flight per host is Scrapy's default too; a site that wants fewer gets `delay`.
CRAWL_OPTIONS: dict[str, Any] = {
    "plugin": "", "list_url": "", "strategy": "http", "concurrency": 8, "per_host_concurrency": 8,
    "delay": 0.0, "timeout": 30.0, "retries": 2, "refresh_hours": 0.0,
    "exclude": [],  # links never to crawl (a dead link, a page that is not an article)
    "robots_txt": True,  # honour the site's robots.txt (crawl4ai's check)
}
RUNTIME_CRAWL_OPTIONS = frozenset({"concurrency", "per_host_concurrency", "delay", "timeout", "retries",
                                   "refresh_hours", "robots_txt"})
STRATEGIES = ("http", "browser")
# budget_usd: the conversations step stops before any call when annotating the stale articles would cost
# more than this at the model's price (stages/estimate.py); 0: no budget.
ANNOTATOR_OPTIONS: dict[str, Any] = {"plugin": "", "concurrency": 4, "budget_usd": 0.0}
ANNOTATOR_RUNTIME_OPTIONS = frozenset({"budget_usd"})  # no annotator's output depends on them
DATASET_OPTIONS: dict[str, Any] = {
    "format": "instruction",
    "template": {"prompt": "关于光伏政策<{context}>, 提问: {question}", "completion": "{answer}"},
    "chat_user_prefix": "关于光伏政策<{title}>, 用户提问: ",
    "system_prompt": "",
    "validation_ratio": 0.0,
    "seed": 42,
    "articles_per_shard": 2048,  # the dataset is rebuilt, stored and uploaded in shards of about this many
    # Failed articles the model half may go on without: a count, or a ratio of the URL table (0.01).
    "max_failed": 0,
    # General question/answer data mixed in against forgetting (stages/mixing.py): a .jsonl/.csv file, a
    # datasets folder or builtin:general-zh, and its share of the training lines (8:2 → 0.2).
    "mix_file": "", "mix_ratio": 0.2,
}
TEMPLATE_FIELDS = ("context", "question", "answer")  # what an instruction line can hold

# The model half. Backends: "local" (offline, default profile) or the AWS services.
STORAGE_OPTIONS: dict[str, Any] = {"backend": "local", "root": ".pvbuild/object-store", "bucket": "",
                                   "prefix": "llm-fine-tuning"}
AWS_OPTIONS: dict[str, Any] = {
    "region": "", "partition": "aws", "role_arn": "", "endpoint_url": "",
    # What enterprises require of every resource: a KMS key (S3 objects, job output and volumes, endpoint
    # storage), a VPC (training job and model), tags (jobs, models, endpoint configs, endpoints).
    "kms": "", "subnets": [], "security_group_ids": [], "tags": {},
}
AWS_PARTITIONS = {"aws": "", "aws-cn": "cn-", "aws-us-gov": "us-gov-"}  # partition → its regions' prefix
TRAINING_OPTIONS: dict[str, Any] = {
    "backend": "local", "base_model": "llama-3.2-1b-instruct", "hyperparameters": {}, "instance_type": "",
    "accept_eula": False, "lora": True, "model_path": "", "device": "auto", "poll_seconds": 30.0,
    "max_runtime_seconds": 86400, "long_prompts": "drop", "gpus": "auto", "spot": False, "max_wait_seconds": 0,
    "instance_count": 1,  # sagemaker: instances of the training job
    "compile": "auto",  # local trainer: the backbone in CUDA graphs (true, false, or "auto": long runs on one GPU)
    # Several fine-tunes of one dataset, each its own job: [{name, base_model?, hyperparameters?, instance_type?}].
    # None: one job of the section's own base_model and hyperparameters. ``select``: which one deploy serves.
    "candidates": [], "select": "validation_loss",
}
# Held-out lines asked of the base model and of each candidate, scored with chrF (0 questions: no evaluation).
EVALUATION_OPTIONS: dict[str, Any] = {"questions": 0, "max_new_tokens": 48}
# `pvbuild publish`: the Hub dataset repo (or --hub), its licence on the card, and whether it is private.
PUBLISH_OPTIONS: dict[str, Any] = {"hub_repo": "", "license": "", "private": True}
CANDIDATE_OPTIONS: dict[str, Any] = {"name": "", "base_model": "", "hyperparameters": {}, "instance_type": ""}
SELECT_RULES = ("validation_loss",)  # or a candidate's name
ENDPOINT_OPTIONS: dict[str, Any] = {"backend": "local", "instance_type": "", "host": "127.0.0.1", "port": 0,
                                    "startup_timeout": 300.0, "poll_seconds": 30.0, "idle_hours": 0.0,
                                    "instance_count": 1}  # sagemaker: the endpoint's initial instances
ASK_OPTIONS: dict[str, Any] = {
    "system_prompt": "你是一位光伏行业专家，请用中文回答。", "max_new_tokens": 1024, "top_p": 0.9,
    "temperature": 0.6, "repetition_penalty": 1.1, "stop": ["<|eot_id|>", "<|end_of_text|>"], "tokenizer": "",
    "questions": ["分布式光伏项目如何申请补贴？", "新政策对光伏企业有什么影响？", "文章提到了哪些时间节点？"],
}
# Options added after 0.1: at these values they leave an identity as 0.1 computed it, so upgrading
# pvbuild rebuilds nothing.
LATER_OPTIONS: dict[str, Any] = {"long_prompts": "drop", "exclude": [], "candidates": [],
                                 "select": "validation_loss", "instance_count": 1}


def without_later_defaults(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` less those added after 0.1 that still have their default (``LATER_OPTIONS``)."""
    return {key: value for key, value in options.items()
            if not (key in LATER_OPTIONS and value == LATER_OPTIONS[key])}
# Options that change how a step runs, not what it produces.
RUNTIME_MODEL_OPTIONS = frozenset({"startup_timeout", "device", "gpus", "compile", "host", "port", "poll_seconds",
                                   "idle_hours", "max_runtime_seconds", "spot", "max_wait_seconds"})


@dataclass(frozen=True)
class SourceConfig:
    """One configured source: its name (the ``source`` column), plugin and options."""

    name: str
    plugin: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class StageConfig:
    """The plugin and options of a single-plugin stage (the annotator)."""

    plugin: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class Config:
    """A validated profile: paths, sources, annotator and dataset options."""

    profile: str
    project_dir: Path
    config_file: str
    artifacts: Path
    sources: tuple[SourceConfig, ...]
    annotator: StageConfig
    dataset: Mapping[str, Any]
    registry: Registry
    storage: Mapping[str, Any]
    aws: Mapping[str, Any]
    training: Mapping[str, Any]
    endpoint: Mapping[str, Any]
    ask: Mapping[str, Any]
    evaluation: Mapping[str, Any]
    publish: Mapping[str, Any]

    @property
    def state_dir(self) -> Path:
        """Committed build records: deterministic, no timestamps, no absolute paths."""
        return self.artifacts / ".state"

    @property
    def cache_dir(self) -> Path:
        """Machine-local cache (file stat cache): never committed."""
        return self.project_dir / ".pvbuild" / self.profile


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if key == "sources":  # a profile's source list replaces the inherited one
            merged[key] = copy.deepcopy(value)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_toml(path: Path, label: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{label}: invalid TOML: {error}") from error


def _project_profiles(project_dir: Path) -> tuple[str, dict[str, Any]]:
    toml_file = project_dir / "pvbuild.toml"
    if toml_file.is_file():
        return "pvbuild.toml", _read_toml(toml_file, "pvbuild.toml").get("profile", {})
    pyproject = project_dir / "pyproject.toml"
    if pyproject.is_file():
        tool = _read_toml(pyproject, "pyproject.toml").get("tool", {}).get("pvbuild", {})
        if tool:
            return "pyproject.toml [tool.pvbuild]", tool.get("profile", {})
    return EMBEDDED, {}


def _embedded_profiles() -> dict[str, Any]:
    text = resources.files("pvbuild").joinpath("profiles.toml").read_text(encoding="utf-8")
    profiles: dict[str, Any] = tomllib.loads(text)["profile"]
    return profiles


def _resolve(name: str, embedded: Mapping[str, Any], project: Mapping[str, Any], label: str,
             seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if name in seen:
        raise ConfigError(f"{label}: profile.{name}.inherits: inheritance cycle {' -> '.join((*seen, name))}")
    if name not in embedded and name not in project:
        known = sorted(set(embedded) | set(project))
        raise ConfigError(f"unknown profile {name!r}; profiles: {', '.join(known)} (defined in {label})")
    own = _deep_merge(embedded.get(name, {}), project.get(name, {}))
    parent = own.pop("inherits", None if name in embedded or name == "default" else "default")
    if parent is None:
        return own
    return _deep_merge(_resolve(parent, embedded, project, label, (*seen, name)), own)


def suggest(word: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` when a close match exists, else nothing."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Validator:
    """Checks option tables against their defaults, naming ``file: key`` in every error."""

    def __init__(self, label: str, profile: str) -> None:
        self.label = label
        self.prefix = f"profile.{profile}"

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.label}: {self.prefix}.{key}: {message}")

    def options(self, key: str, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(given, Mapping):
            raise self.fail(key, f"expected a table, got {type(given).__name__}")
        resolved = dict(defaults)
        for option, value in given.items():
            if SECRET_WORDS & set(option.lower().split("_")):
                raise self.fail(f"{key}.{option}", "secrets do not belong in configuration; set them in the "
                                "environment (for example OPENAI_API_KEY) so they never reach an artifact")
            if option not in defaults:
                known = sorted(defaults)
                raise self.fail(f"{key}.{option}", f"unknown option{suggest(option, known)}; "
                                f"known options: {', '.join(known)}")
            resolved[option] = self.value(f"{key}.{option}", value, defaults[option])
        return resolved

    def value(self, key: str, value: Any, default: Any) -> Any:
        if default is None or isinstance(default, dict) and isinstance(value, Mapping):
            return value
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif key.endswith(".gpus"):  # "auto", or how many
            ok = isinstance(value, str | int) and not isinstance(value, bool)
        elif key.endswith(".compile"):  # "auto", or a bool: checked with its own message (validate)
            ok = True
        elif key.endswith(".max_failed"):  # a count, or a ratio
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, type(default)) and not (isinstance(value, bool) and not isinstance(default, bool))
        if not ok:
            raise self.fail(key, f"expected {type(default).__name__}, got {value!r}")
        return value

    def plugin(self, key: str, name: str, available: Mapping[str, Any], kind: str) -> None:
        if name not in available:
            names = sorted(available)
            raise self.fail(key, f"unknown {kind} {name!r}{suggest(name, names)}; available: {', '.join(names)}")


def _sources(check: _Validator, tables: Any, registry: Registry) -> tuple[SourceConfig, ...]:
    if not isinstance(tables, Mapping) or not tables:
        raise check.fail("sources", "needs at least one [sources.NAME] table")
    sources = []
    for name, table in sorted(tables.items()):
        plugin = table.get("plugin") or name if isinstance(table, Mapping) else name
        check.plugin(f"sources.{name}.plugin", plugin, registry.crawlers, "crawler")
        site = registry.crawlers[plugin].item
        options = check.options(f"sources.{name}", table, {**CRAWL_OPTIONS, **site.options})
        options["plugin"] = plugin
        if options["strategy"] not in STRATEGIES:
            raise check.fail(f"sources.{name}.strategy", f"must be one of {', '.join(STRATEGIES)}")
        for positive in ("concurrency", "per_host_concurrency"):
            if options[positive] < 1:
                raise check.fail(f"sources.{name}.{positive}", "must be at least 1")
        if not all(isinstance(link, str) and link.strip() for link in options["exclude"]):
            raise check.fail(f"sources.{name}.exclude", "must be a list of links (strings)")
        sources.append(SourceConfig(name=name, plugin=plugin, options=options))
    return tuple(sources)


def _annotator(check: _Validator, table: Any, registry: Registry, project_dir: Path) -> StageConfig:
    if not isinstance(table, Mapping) or "plugin" not in table:
        raise check.fail("annotator.plugin", "is required")
    plugin = table["plugin"]
    check.plugin("annotator.plugin", plugin, registry.annotators, "annotator")
    annotator = registry.annotators[plugin].item
    options = check.options("annotator", table, {**ANNOTATOR_OPTIONS, **annotator.options})
    if options["concurrency"] < 1:
        raise check.fail("annotator.concurrency", "must be at least 1")
    if options["budget_usd"] < 0:
        raise check.fail("annotator.budget_usd", "must be 0 (no budget) or more US dollars")
    if options.get("mode", "live") not in ("live", "batch"):
        raise check.fail("annotator.mode", f"must be \"live\" (a call per article) or \"batch\" (the Batch API, "
                         f"half the price, results within 24 h), not {options['mode']!r}")
    if options.get("prompt_file"):
        prompt_path = project_dir / str(options["prompt_file"])
        if not prompt_path.is_file():
            raise check.fail("annotator.prompt_file", f"file not found: {options['prompt_file']}")
        options["prompt"] = prompt_path.read_text(encoding="utf-8")
    del options["plugin"]
    return StageConfig(plugin=plugin, options=options)


BUILTIN_MIX = "builtin:"  # dataset.mix_file naming a general set shipped in pvbuild/general/


def shipped_general_sets() -> dict[str, Path]:
    """``builtin:<name>`` → its file, for every general set shipped with pvbuild."""
    folder = resources.files("pvbuild") / "general"
    return {f"{BUILTIN_MIX}{entry.name.removesuffix('.jsonl')}": Path(str(entry)) for entry in folder.iterdir()
            if entry.name.endswith(".jsonl")}


def _dataset(check: _Validator, table: Any, registry: Registry, project_dir: Path) -> dict[str, Any]:
    options = check.options("dataset", table or {}, DATASET_OPTIONS)
    formats = list(registry.dataset_formats)  # dataset formats are plugins, in registration order
    if options["format"] not in formats:
        raise check.fail("dataset.format", f"must be one of {', '.join(formats)}{suggest(options['format'], formats)}")
    failed = options["max_failed"]
    if failed < 0 or isinstance(failed, float) and failed >= 1:
        raise check.fail("dataset.max_failed", f"must be a count (0, 1, 2, ...) or a ratio below 1 (0.01), "
                         f"not {failed}")
    if not 0.0 <= options["validation_ratio"] < 1.0:
        raise check.fail("dataset.validation_ratio", "must be at least 0 and below 1")
    mix_file = str(options["mix_file"])
    shipped = sorted(shipped_general_sets())
    if mix_file.startswith(BUILTIN_MIX) and mix_file not in shipped:
        raise check.fail("dataset.mix_file", f"{mix_file!r}: no such general set{suggest(mix_file, shipped)}; "
                         f"shipped: {', '.join(shipped)}")
    if mix_file and not mix_file.startswith(BUILTIN_MIX) and not (project_dir / mix_file).exists():
        raise check.fail("dataset.mix_file", f"{mix_file}: no such file or folder in {project_dir} (a .jsonl or "
                         ".csv file of question/answer rows, a datasets folder, or one of: " + ", ".join(shipped) + ")")
    if not 0.0 < options["mix_ratio"] < 1.0:
        raise check.fail("dataset.mix_ratio", f"must be above 0 and below 1 (the general share: 8:2 is 0.2), "
                         f"not {options['mix_ratio']}")
    if options["articles_per_shard"] < 1:
        raise check.fail("dataset.articles_per_shard", "must be a whole number of at least 1")
    template = options["template"]
    if set(template) != {"prompt", "completion"} or not all(isinstance(v, str) for v in template.values()):
        raise check.fail("dataset.template", "needs exactly the string keys 'prompt' and 'completion'")
    for text in template.values():
        try:
            names = {field for _, field, _, _ in string.Formatter().parse(text) if field}
        except ValueError as error:
            raise check.fail("dataset.template", f"{text!r} is not a valid template: {error}") from error
        unknown = sorted(names - set(TEMPLATE_FIELDS))
        if unknown:
            raise check.fail("dataset.template", f"placeholders {unknown} cannot be filled from the data; use "
                             f"only {', '.join('{' + name + '}' for name in TEMPLATE_FIELDS)}")
    return options


def _model_half(check: _Validator, raw: Mapping[str, Any], registry: Registry) -> dict[str, dict[str, Any]]:
    tables = {name: check.options(name, raw.get(name) or {}, defaults) for name, defaults in (
        ("storage", STORAGE_OPTIONS), ("aws", AWS_OPTIONS), ("training", TRAINING_OPTIONS),
        ("endpoint", ENDPOINT_OPTIONS), ("ask", ASK_OPTIONS), ("evaluation", EVALUATION_OPTIONS),
        ("publish", PUBLISH_OPTIONS))}
    for kind, section in BACKEND_KINDS.items():  # backends are plugins: the registry says what exists
        names = registry.backend_names(kind)
        check.plugin(f"{section}.backend", tables[section]["backend"], dict.fromkeys(names), f"{kind} backend")
    if tables["training"]["backend"] == "sagemaker" and tables["storage"]["backend"] != "s3":
        raise check.fail("storage.backend", "must be 's3' when training.backend is 'sagemaker' (the job reads S3)")
    if tables["endpoint"]["backend"] != tables["training"]["backend"]:
        raise check.fail("endpoint.backend", "must match training.backend")
    check.plugin("training.base_model", tables["training"]["base_model"], registry.base_models, "base model")
    gpus = tables["training"]["gpus"]
    if gpus != "auto" and not (isinstance(gpus, int) and not isinstance(gpus, bool) and gpus >= 1):
        raise check.fail("training.gpus", f"must be \"auto\" (every visible GPU) or a whole number of at least 1, "
                         f"not {gpus!r}")
    training = tables["training"]
    if training["compile"] != "auto" and not isinstance(training["compile"], bool):
        raise check.fail("training.compile", f"must be true, false or \"auto\" (compile on one GPU for long runs), "
                         f"not {training['compile']!r}")
    if training["spot"] and training["max_wait_seconds"] and training["max_wait_seconds"] < training[
            "max_runtime_seconds"]:
        raise check.fail("training.max_wait_seconds", "must be at least max_runtime_seconds (SageMaker's rule for "
                         "spot jobs); 0 means twice max_runtime_seconds")
    for section in ("training", "endpoint"):
        if tables[section]["instance_count"] < 1:
            raise check.fail(f"{section}.instance_count", "must be a whole number of at least 1")
    if tables["endpoint"]["idle_hours"] < 0:
        raise check.fail("endpoint.idle_hours", "must be 0 (never) or more hours")
    check.plugin("training.long_prompts", tables["training"]["long_prompts"], dict.fromkeys(("drop", "truncate")),
                 "way to treat prompts longer than max_input_length")
    training["candidates"] = _candidates(check, training, registry)
    evaluation = tables["evaluation"]
    if evaluation["questions"] < 0 or evaluation["max_new_tokens"] < 1:
        raise check.fail("evaluation", "questions must be 0 (none) or more, max_new_tokens at least 1")
    if evaluation["questions"] and training["backend"] != "local":
        raise check.fail("evaluation.questions", "evaluation runs the models on this machine: it needs "
                         "training.backend = \"local\" (on SageMaker, set questions = 0 and read the leaderboard)")
    _aws(check, tables["aws"])
    return tables


def _candidates(check: _Validator, training: Mapping[str, Any], registry: Registry) -> list[dict[str, Any]]:
    """``training.candidates`` as complete tables (a candidate's base model defaults to the section's), and
    ``training.select`` naming a rule or one of them."""
    given = training["candidates"]
    names: list[str] = []
    found = []
    for index, table in enumerate(given):
        where = f"training.candidates[{index}]"
        candidate = check.options(where, table, CANDIDATE_OPTIONS)
        name = candidate["name"]
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", name):
            raise check.fail(f"{where}.name", f"{name!r}: a candidate needs a name of up to 40 lowercase letters, "
                             "digits and dashes (it names its folder and its jobs)")
        if name in names:
            raise check.fail(f"{where}.name", f"{name!r} is named twice; each candidate needs its own name")
        names.append(name)
        candidate["base_model"] = candidate["base_model"] or training["base_model"]
        check.plugin(f"{where}.base_model", candidate["base_model"], registry.base_models, "base model")
        found.append(candidate)
    select = training["select"]
    if select not in (*SELECT_RULES, *names):
        choices = [*SELECT_RULES, *names]
        raise check.fail("training.select", f"{select!r} is neither a rule nor a candidate{suggest(select, choices)}; "
                         f"one of: {', '.join(choices)}")
    return found


def _aws(check: _Validator, aws: Mapping[str, Any]) -> None:
    """Region and role ARN must belong to the partition (``aws-cn`` regions are ``cn-*``)."""
    partition = aws["partition"]
    if partition not in AWS_PARTITIONS:
        raise check.fail("aws.partition", f"must be one of {', '.join(AWS_PARTITIONS)}")
    prefix = AWS_PARTITIONS[partition]
    region_partition = next((p for p, start in AWS_PARTITIONS.items() if start and aws["region"].startswith(start)),
                            "aws")
    if aws["region"] and region_partition != partition:
        raise check.fail("aws.region", f"{aws['region']!r} is in partition {region_partition!r}, not "
                         f"aws.partition = {partition!r}" + (f" (its regions start with {prefix!r})" if prefix else ""))
    if aws["role_arn"] and not aws["role_arn"].startswith(f"arn:{partition}:iam::"):
        raise check.fail("aws.role_arn", f"expected an IAM role ARN of partition {partition!r}: "
                         f"arn:{partition}:iam::<account>:role/<name>")
    for key, prefix in (("subnets", "subnet-"), ("security_group_ids", "sg-")):
        wrong = [value for value in aws[key] if not (isinstance(value, str) and value.startswith(prefix))]
        if wrong:
            raise check.fail(f"aws.{key}", f"expected ids starting with {prefix!r}, not {wrong}")
    if bool(aws["subnets"]) != bool(aws["security_group_ids"]):
        raise check.fail("aws.subnets", "a VPC needs both subnets and security_group_ids (or neither)")
    bad_tags = [key for key, value in aws["tags"].items() if not isinstance(value, str) or key.startswith("aws:")]
    if bad_tags:
        raise check.fail("aws.tags", f"{bad_tags}: tag values are strings, and keys may not start with 'aws:'")
    if aws["kms"] and aws["kms"].startswith("arn:") and \
            not aws["kms"].startswith(f"arn:{partition}:kms:"):
        raise check.fail("aws.kms", f"a KMS key ARN of partition {partition!r} (arn:{partition}:kms:...), "
                         "or a key id")


def _refuse_misspelled_profiles(embedded: Mapping[str, Any], project: Mapping[str, Any], label: str) -> None:
    """``[profile.dfault]`` is almost surely ``default`` misspelled, not a new profile: a new profile
    whose name is close to an existing one must say ``inherits`` to be taken as new."""
    for name, table in project.items():
        if name in embedded or not isinstance(table, Mapping) or "inherits" in table:
            continue
        others = sorted((set(embedded) | set(project)) - {name})
        hint = suggest(name, others)
        if hint:
            raise ConfigError(f"{label}: [profile.{name}]: unknown profile{hint}; to define a new profile of "
                              f"that name, give it an explicit inherits = \"default\" (or another profile)")


def selected_profile(explicit: str | None = None) -> str:
    return explicit or os.environ.get("PVBUILD_PROFILE") or "default"


def load_config(project_dir: Path | str = ".", profile: str | None = None) -> Config:
    """Resolve, validate and return one profile of the project in ``project_dir``."""
    project = Path(project_dir).resolve()
    name = selected_profile(profile)
    label, project_profiles = _project_profiles(project)
    if not isinstance(project_profiles, Mapping):
        raise ConfigError(f"{label}: 'profile' must be a table of profiles")
    embedded = _embedded_profiles()
    _refuse_misspelled_profiles(embedded, project_profiles, label)
    raw = _resolve(name, embedded, project_profiles, label)
    check = _Validator(label, name)
    for key in raw:
        if key not in PROFILE_KEYS:
            raise check.fail(key, f"unknown section{suggest(key, sorted(PROFILE_KEYS))}; "
                             f"known: {', '.join(sorted(PROFILE_KEYS))}")
    registry = load_plugins(project)
    artifacts = raw.get("artifacts", f"artifacts/{name}")
    if not isinstance(artifacts, str) or Path(artifacts).is_absolute() or ".." in Path(artifacts).parts:
        raise check.fail("artifacts", "must be a relative path inside the project")
    return Config(
        profile=name, project_dir=project, config_file=label, artifacts=project / artifacts,
        sources=_sources(check, raw.get("sources"), registry),
        annotator=_annotator(check, raw.get("annotator"), registry, project),
        dataset=_dataset(check, raw.get("dataset"), registry, project), registry=registry,
        **_model_half(check, raw, registry),
    )
