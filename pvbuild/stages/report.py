"""The report step: a loss-curve PNG and a short HTML page about the run, in ``artifacts/<profile>/report/``.

It shows articles, pairs and tokens, the training and validation loss, and the endpoint's
answers to the ``ask.questions`` (so the report is also a smoke test of the deployed model).
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pvbuild.engine.candidates import Standing
from pvbuild.engine.outcomes import StageResult
from pvbuild.engine.records import Item, digest
from pvbuild.engine.stage import StageBase, StaleItem
from pvbuild.engine.workspace import Workspace
from pvbuild.files import TEMP_SUFFIX, replace_directory, write_artifact
from pvbuild.prices import PRICES_AS_OF, annotation_cost, instance_cost, token_price
from pvbuild.progress import say
from pvbuild.stages.evaluate import BASE, evaluated_names, evaluation_file, mean_scores, scores
from pvbuild.stages.gate import outstanding_failures

# The report is what its inputs build, the same on every machine; the run history is read from git,
# which a fresh folder lacks. So the page names a machine-local script that fills its History section
# (``HOLDER``), written beside the project by ``pvbuild.history`` after a run that wrote the report.
SIDECAR = "history.js"
HOLDER = "pvbuild-history"
HISTORY_STYLE = ("table.history td{padding:0.1em 0.8em;text-align:right}"
                 "table.history td.changed{background:#fff3c4;font-weight:bold}")

REPORT_SEED = 0


def plot_losses(histories: Mapping[str, Mapping[str, list[float]]], path: Path) -> None:
    """Each candidate's training loss per step and validation loss per epoch, in one plot (one colour each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    for index, (name, history) in enumerate(histories.items()):
        colour, label = f"C{index}", f"{name}: " if name else ""
        steps = history.get("step_loss", [])
        epochs = history.get("epoch_validation_loss", [])
        axes.plot(range(1, len(steps) + 1), steps, color=colour, label=f"{label}training loss (per step)")
        if epochs and steps:
            per_epoch = len(steps) / len(epochs)
            axes.plot([per_epoch * (i + 1) for i in range(len(epochs))], epochs, "o--", color=colour,
                      label=f"{label}validation loss (per epoch)")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend(fontsize="small")
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
            if record.get("batch"):  # through the Batch API, at half price: counted apart as well
                totals[f"batch_{name}"] = totals.get(f"batch_{name}", 0) + int(count)
    return totals


def build_metrics(manifest: Mapping[str, Any], training: Mapping[str, Any], tokens: Mapping[str, int],
                  board: list[Standing] | None = None, evaluated: Mapping[str, Mapping[str, Any]] | None = None
                  ) -> dict[str, Any]:
    """The build's numbers, one flat level, for ``report/metrics.json``: committed with the tree, so git
    keeps their history and ``pvbuild diff REV`` compares two builds (as ``dvc metrics diff``). Only
    what the same inputs reproduce: no timings."""
    metrics = {f"data.{name}": manifest.get(name) for name in
               ("articles", "pairs", "train_articles", "validation_articles")}
    mix = manifest.get("mix") or {}
    metrics["data.general_lines"] = (mix.get("general_lines") or {}).get(str(manifest.get("format"))) if mix else None
    metrics |= {f"annotation.{name}": count for name, count in sorted(tokens.items())}
    metrics |= {f"training.{name}": value for name, value in sorted((training.get("metrics") or {}).items())}
    for standing in board or []:  # several candidates: each one's losses, and which one is served
        metrics |= {f"candidates.{standing.name}.{name}": getattr(standing, name)
                    for name in ("train_loss", "validation_loss", "perplexity", "chrf")}
        metrics[f"candidates.{standing.name}.selected"] = standing.selected
    for name, evaluation in sorted((evaluated or {}).items()):  # base models and fine-tuned ones, by chrF
        metrics[f"evaluation.{name.replace(':', '.') or 'model'}.chrf"] = evaluation.get("mean_chrf")
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
            "<p>They are retried on every run, except pages that are gone (HTTP 404, 410): those wait until their "
            "URL row or crawler changes, or <code>pvbuild build --retry-failed</code>.</p>")


def spent(workspace: Workspace, tokens: Mapping[str, int], training: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the paid steps cost at list prices (``pvbuild.prices``): the annotation's recorded tokens, the
    training job's billed seconds. Nothing for what ran locally or has no price."""
    options = workspace.config.annotator.options
    found = []
    price = token_price(str(options.get("model", "")), options.get("price_per_million_tokens"))
    cost = annotation_cost(tokens, price) if tokens.get("prompt_tokens") else None
    if cost is not None:
        found.append((f"annotation cost ({options.get('model')}, list prices of {PRICES_AS_OF})", f"${cost:,.2f}"))
    count = int(workspace.config.training.get("instance_count", 1))
    billed = instance_cost(str(training.get("instance_type", "")), training.get("billable_seconds"), count) \
        if training.get("backend") == "sagemaker" else None
    if billed is not None:
        found.append((f"training cost ({training.get('instance_type')}, list prices of {PRICES_AS_OF})",
                      f"${billed:,.2f}"))
    return found


def _leaderboard_section(board: list[Standing]) -> str:
    """With several candidates: each one's losses and perplexity, best first, the served one marked."""
    if not board:
        return ""
    head = "".join(f"<th>{name}</th>" for name in ("", "candidate", "base model", "training loss",
                                                    "validation loss", "perplexity", "chrF", "training tokens", "job"))
    rows = "".join(
        f"<tr><td>{'★ served' if s.selected else ''}</td><td>{html.escape(s.name)}</td>"
        f"<td>{html.escape(s.base_model)}</td>"
        + "".join(f"<td>{html.escape(for_people(value) if value is not None else '–')}</td>"
                  for value in (s.train_loss, s.validation_loss, s.perplexity, s.chrf, s.train_tokens))
        + f"<td>{html.escape(s.job_name or s.status)}</td></tr>" for s in board)
    return f"<h2>Leaderboard</h2><table class=\"board\"><tr>{head}</tr>{rows}</table>\n"


def _evaluation_section(evaluated: Mapping[str, Mapping[str, Any]]) -> str:
    """Base models and fine-tuned candidates side by side: mean chrF each, then every question's answers."""
    if not evaluated:
        return ""
    names = sorted(evaluated, key=lambda name: (not name.startswith(BASE), name))  # base models first
    label = {name: (f"base model {name.removeprefix(BASE)}" if name.startswith(BASE)
                    else f"fine-tuned {name}" if name else "fine-tuned") for name in names}
    means = "".join(f"<tr><th>{html.escape(label[n])}</th><td>{html.escape(for_people(evaluated[n].get('mean_chrf')))}"
                    "</td></tr>" for n in names)
    first = evaluated[names[0]]["answers"]
    head = "<tr><th>question</th><th>reference</th>" + "".join(f"<th>{html.escape(label[n])}</th>" for n in names)
    rows = []
    for index, asked in enumerate(first):
        cells = "".join(f"<td>{html.escape(evaluated[n]['answers'][index]['answer']) or '<i>(empty)</i>'}"
                        f"<br><small>chrF {for_people(evaluated[n]['answers'][index]['chrf'])}</small></td>"
                        for n in names)
        rows.append(f"<tr><td>{html.escape(asked['question'])}</td><td>{html.escape(asked['reference'])}</td>{cells}"
                    "</tr>")
    return (f"<h2>Evaluation: {len(first)} held-out questions, chrF (0-100, higher is better)</h2>"
            f"<table>{means}</table><table class=\"answers\">{head}</tr>{''.join(rows)}</table>\n")


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
           tokens: Mapping[str, int] | None = None, failed: list[str] | None = None,
           board: list[Standing] | None = None, evaluated: Mapping[str, Mapping[str, Any]] | None = None,
           costs: list[tuple[str, str]] | None = None, history_script: str = "") -> str:
    """The report page. ``history_script``: where the machine-local script that fills the History section
    lies, relative to the page (the same path on every machine, so the page still is)."""
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
             ("billed seconds", _billed(training)), *(costs or []),
             ("model.tar.gz", f"{model.get('uri')} (sha256 {str(model.get('sha256'))[:12]})"),
             # No URL or pid: they change on every deploy, and the same inputs give the same report.
             ("endpoint", f"{endpoint.get('endpoint_name')} ({endpoint.get('backend')}, "
                          f"{endpoint.get('instance_type')})")]
    hyper = sorted((training.get("hyperparameters") or {}).items())
    qa = "\n".join(f"<dt>{html.escape(q)}</dt><dd>{html.escape(a) or '<i>(empty)</i>'}</dd>" for q, a in answers)
    return f"""<!doctype html>
<html lang="zh"><head><meta charset="utf-8"><title>pvbuild report: {html.escape(str(training.get('job_name')))}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}th{{text-align:left;padding-right:1em}}
{HISTORY_STYLE}
dd{{margin:0 0 1em 1em;white-space:pre-wrap}}
table.board td,table.answers td{{padding:0.2em 0.6em;border-bottom:1px solid #ddd;vertical-align:top}}
table.answers{{table-layout:fixed;width:100%}}
table.answers td{{white-space:pre-wrap;overflow-wrap:anywhere}}</style></head><body>
<h1>pvbuild run report</h1>
<table>{_rows(facts)}</table>
{_leaderboard_section(board or [])}<h2>Loss</h2><img src="loss.png" alt="training and validation loss">
{_evaluation_section(evaluated or {})}<h2>Hyperparameters</h2><table>{_rows(hyper)}</table>
<h2>Sample questions</h2><dl>{qa}</dl>{_failed_section(failed or [])}
<h2>History</h2><div id="{HOLDER}"><p>This page is what these inputs build, the same on every machine. The builds
before it, and what changed from one to the next (data counts, tokens, losses, scores), are read from git
and shown here by a script the build keeps beside the project (<code>{html.escape(history_script)}</code>),
which is not here: <code>pvbuild history</code> writes it again, <code>pvbuild history --html</code> writes
the history as a page, <code>pvbuild diff [REV]</code> prints what changed since a revision.</p></div>
{f'<script src="{html.escape(history_script)}"></script>' if history_script else ''}
</body></html>
"""


def _candidates_input(workspace: Workspace) -> dict[str, Any]:
    """With several candidates the leaderboard shows every one: each training record is an input; with
    evaluation.questions, each evaluation file."""
    found, inputs = workspace.candidates(), {}
    if len(found) > 1:
        inputs["candidates"] = digest([[c.name, workspace.output_digest(str(workspace.training_record_of(c)))]
                                       for c in found])
    if workspace.config.evaluation["questions"]:
        files = [str(evaluation_file(workspace, name)) for name in evaluated_names(workspace)]
        inputs["evaluation"] = digest([workspace.hasher.digest(file) for file in files])
    return inputs


def history_script(workspace: Workspace) -> str:
    """The history script's path relative to the report."""
    return Path(os.path.relpath(workspace.config.cache_dir / SIDECAR, workspace.report_dir)).as_posix()


class ReportStage(StageBase):
    name = "report"
    doc = "write the loss curve and the HTML report with the endpoint's sample answers"
    derived_inputs = frozenset({"training", "model", "dataset"})

    def items(self, workspace: Workspace) -> list[Item]:
        training_record = workspace.training_record_of(workspace.winner())
        endpoint = workspace.read_artifact(workspace.endpoint_record)
        return [Item("report", {
            "training": workspace.output_digest(str(training_record)) if workspace.read_artifact(training_record)
            else None,
            "model": endpoint.get("model_sha256") if endpoint else None,
            "ask": workspace.options_identity(workspace.config.ask),
            "dataset": workspace.hasher.digest(workspace.manifest),
            **_candidates_input(workspace)}, str(workspace.report_dir / "report.html"))]

    def refine(self, workspace: Workspace, items: list[Item], found: list[StaleItem]) -> list[StaleItem]:
        """pvbuild 0.1 recorded the digest of the whole training record (timings included) as the
        report's input: the same record is the same input."""
        record = workspace.records(self.name).get("report") or {}
        training = workspace.read_artifact(workspace.training_record_of(workspace.winner()))
        recorded = dict(record.get("inputs", {}))
        if found and training is not None and recorded.get("training") == digest(training):
            recorded["training"] = items[0].inputs["training"]
            if recorded == dict(items[0].inputs) and found[0].reason.startswith("input changed"):
                return []
        return found

    def run(self, workspace: Workspace) -> StageResult:
        item = self.items(workspace)[0]
        manifest = workspace.read_artifact(workspace.manifest) or {}
        winner, records = workspace.winner(), workspace.training_records()
        training = records[winner.name] or {}
        model = workspace.read_artifact(workspace.model_record_of(winner)) or {}
        several = len(records) > 1
        board = workspace.standings(mean_scores(workspace)) if several else []
        evaluated = scores(workspace)
        histories = {name: (record or {}).get("history") or {} for name, record in records.items()}
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
            plot_losses(histories if several else {"": training.get("history") or {}}, built / "loss.png")
            tokens = token_totals(workspace.records("conversations").records.values())
            failed = [entry.reason for entry in outstanding_failures(workspace)]  # within dataset.max_failed
            (built / "report.html").write_text(render(manifest, training, model, endpoint, answers, tokens, failed,
                                                      board, evaluated, spent(workspace, tokens, training),
                                                      history_script(workspace)),
                                               encoding="utf-8")
            write_artifact(built / "metrics.json", build_metrics(manifest, training, tokens, board,
                                                                                evaluated))
            replace_directory(built, target)
        with workspace.finishing("report"):
            workspace.record("report", item)
        say(f"report: {target.relative_to(workspace.config.project_dir)}/report.html")
        return StageResult("report", built=1)


STAGE = ReportStage()
