"""The report step: a loss-curve PNG and a short HTML page about the run, in ``artifacts/<profile>/report/``.

It shows articles, pairs and tokens, the training and validation loss, and the endpoint's
answers to the ``ask.questions`` (so the report is also a smoke test of the deployed model).
"""

from __future__ import annotations

import html
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pvbuild.engine.outcomes import StageResult
from pvbuild.engine.records import Item, digest
from pvbuild.engine.stage import StageBase, StaleItem
from pvbuild.engine.workspace import Workspace
from pvbuild.files import TEMP_SUFFIX, replace_directory, write_artifact
from pvbuild.progress import say
from pvbuild.stages.gate import outstanding_failures

REPORT_SEED = 0


def plot_losses(history: Mapping[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = history.get("step_loss", [])
    epochs = history.get("epoch_validation_loss", [])
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    axes.plot(range(1, len(steps) + 1), steps, label="training loss (per step)")
    if epochs and steps:
        per_epoch = len(steps) / len(epochs)
        axes.plot([per_epoch * (i + 1) for i in range(len(epochs))], epochs, "o-", label="validation loss (per epoch)")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)


def token_totals(records: Any) -> dict[str, int]:
    """The annotator's tokens over every article, as its records keep them."""
    totals: dict[str, int] = {}
    for record in records:
        for name, count in (record.get("usage") or {}).items():
            totals[name] = totals.get(name, 0) + int(count)
    return totals


def build_metrics(manifest: Mapping[str, Any], training: Mapping[str, Any], tokens: Mapping[str, int]
                  ) -> dict[str, Any]:
    """The build's numbers, one flat level, for ``report/metrics.json``: committed with the tree, so git
    keeps their history and ``pvbuild diff REV`` compares two builds (as ``dvc metrics diff``). Only
    what the same inputs reproduce: no timings."""
    metrics = {f"data.{name}": manifest.get(name) for name in
               ("articles", "pairs", "train_articles", "validation_articles")}
    metrics |= {f"annotation.{name}": count for name, count in sorted(tokens.items())}
    metrics |= {f"training.{name}": value for name, value in sorted((training.get("metrics") or {}).items())}
    return {name: value for name, value in metrics.items() if value is not None}


def for_people(value: Any) -> str:
    """A number as people read it: four significant figures for a fraction, thousands separated."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(for_people(v))}</td></tr>" for k, v in pairs)


def _failed_section(failed: list[str]) -> str:
    """The articles the model half went on without (dataset.max_failed), each with its reason."""
    if not failed:
        return ""
    items = "".join(f"<li>{html.escape(reason)}</li>" for reason in failed)
    return (f"\n<h2>Left out after failing ({len(failed)}, within dataset.max_failed)</h2><ul>{items}</ul>"
            "<p>They are retried on every run.</p>")


def _billed(training: Mapping[str, Any]) -> str:
    """Billable seconds, and with managed spot what they were of the training time."""
    billable, trained = training.get("billable_seconds"), training.get("training_seconds")
    saving = (training.get("metrics") or {}).get("spot_saving")
    if billable is None or training.get("backend") == "local":
        return "none (trained locally)"
    if saving is None or not trained:
        return for_people(billable)
    return f"{for_people(billable)} of {for_people(trained)} trained (managed spot saved {saving:.0%})"


def _left_out(training: Mapping[str, Any]) -> str:
    """How many training lines were left out, and which (the first ten)."""
    dropped = list(training.get("dropped_examples") or [])
    if not dropped:
        return "0"
    more = f", and {len(dropped) - 10} more (training.json lists them)" if len(dropped) > 10 else ""
    return f"{len(dropped)}: {', '.join(dropped[:10])}{more}"


def render(manifest: Mapping[str, Any], training: Mapping[str, Any], model: Mapping[str, Any],
           endpoint: Mapping[str, Any], answers: list[tuple[str, str]],
           tokens: Mapping[str, int] | None = None, failed: list[str] | None = None) -> str:
    metrics = training.get("metrics") or {}
    tokens = tokens or {}
    facts = [("articles", manifest.get("articles")), ("question/answer pairs", manifest.get("pairs")),
             ("annotation tokens (prompt / completion)",
              f"{for_people(tokens.get('prompt_tokens', 0))} / {for_people(tokens.get('completion_tokens', 0))}"),
             ("dataset format", manifest.get("format")), ("training tokens (all epochs)", metrics.get("train_tokens")),
             ("base model", training.get("base_model", {}).get("name")), ("training job", training.get("job_name")),
             ("final training loss", metrics.get("train_loss")),
             ("final validation loss", metrics.get("validation_loss")),
             ("examples left out (no room for a completion within max_input_length)", _left_out(training)),
             ("billed seconds", _billed(training)),
             ("model.tar.gz", f"{model.get('uri')} (sha256 {str(model.get('sha256'))[:12]})"),
             # No URL or pid: they change on every deploy, and the same inputs give the same report.
             ("endpoint", f"{endpoint.get('endpoint_name')} ({endpoint.get('backend')}, "
                          f"{endpoint.get('instance_type')})")]
    hyper = sorted((training.get("hyperparameters") or {}).items())
    qa = "\n".join(f"<dt>{html.escape(q)}</dt><dd>{html.escape(a) or '<i>(empty)</i>'}</dd>" for q, a in answers)
    return f"""<!doctype html>
<html lang="zh"><head><meta charset="utf-8"><title>pvbuild report: {html.escape(str(training.get('job_name')))}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}th{{text-align:left;padding-right:1em}}
dd{{margin:0 0 1em 1em;white-space:pre-wrap}}</style></head><body>
<h1>pvbuild run report</h1>
<table>{_rows(facts)}</table>
<h2>Loss</h2><img src="loss.png" alt="training and validation loss">
<h2>Hyperparameters</h2><table>{_rows(hyper)}</table>
<h2>Sample questions</h2><dl>{qa}</dl>{_failed_section(failed or [])}
</body></html>
"""


class ReportStage(StageBase):
    name = "report"
    doc = "write the loss curve and the HTML report with the endpoint's sample answers"
    derived_inputs = frozenset({"training", "model", "dataset"})

    def items(self, workspace: Workspace) -> list[Item]:
        training = workspace.read_artifact(workspace.training_record)
        endpoint = workspace.read_artifact(workspace.endpoint_record)
        return [Item("report", {
            "training": workspace.output_digest(str(workspace.training_record)) if training else None,
            "model": endpoint.get("model_sha256") if endpoint else None,
            "ask": workspace.options_identity(workspace.config.ask),
            "dataset": workspace.hasher.digest(workspace.manifest)}, str(workspace.report_dir / "report.html"))]

    def refine(self, workspace: Workspace, items: list[Item], found: list[StaleItem]) -> list[StaleItem]:
        """pvbuild 0.1 recorded the digest of the whole training record (timings included) as the
        report's input: the same record is the same input."""
        record = workspace.records(self.name).get("report") or {}
        training = workspace.read_artifact(workspace.training_record)
        recorded = dict(record.get("inputs", {}))
        if found and training is not None and recorded.get("training") == digest(training):
            recorded["training"] = items[0].inputs["training"]
            if recorded == dict(items[0].inputs) and found[0].reason.startswith("input changed"):
                return []
        return found

    def run(self, workspace: Workspace) -> StageResult:
        item = self.items(workspace)[0]
        manifest = workspace.read_artifact(workspace.manifest) or {}
        training = workspace.read_artifact(workspace.training_record) or {}
        model = workspace.read_artifact(workspace.model_record) or {}
        endpoint = workspace.read_artifact(workspace.endpoint_record) or {}
        from pvbuild.stages.asking import Asker  # the tokenizer's transformers: only when a report is made

        asker = Asker(workspace)
        # Seeded: the same model gives the same answers, so the same inputs give the same report.
        answers = [(question, asker.ask(question, seed=REPORT_SEED)) for question in workspace.config.ask["questions"]]
        target = workspace.report_dir
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".report-", suffix=TEMP_SUFFIX) as scratch:
            built = Path(scratch) / "report"
            built.mkdir()
            plot_losses(training.get("history") or {}, built / "loss.png")
            tokens = token_totals(workspace.records("conversations").records.values())
            failed = [entry.reason for entry in outstanding_failures(workspace)]  # within dataset.max_failed
            (built / "report.html").write_text(render(manifest, training, model, endpoint, answers, tokens, failed),
                                               encoding="utf-8")
            write_artifact(built / "metrics.json", build_metrics(manifest, training, tokens))
            replace_directory(built, target)
        with workspace.finishing("report"):
            workspace.record("report", item)
        say(f"report: {target.relative_to(workspace.config.project_dir)}/report.html")
        return StageResult("report", built=1)


STAGE = ReportStage()
