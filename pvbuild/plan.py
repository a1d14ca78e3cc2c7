"""``pvbuild plan``: what the next ``doit`` would do, step by step, and what its paid steps would cost at
list prices — before anything is spent. The stale items are ``check``'s; the annotation estimate is
``stages.estimate``'s; SageMaker training and endpoints are priced per instance-hour (how long a job
runs is not known in advance: the last job of the same candidate, where there is one, says how long
it billed)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from pvbuild.check import check, stale_ones
from pvbuild.engine.workspace import Workspace
from pvbuild.prices import INSTANCE_PRICES, PRICES_AS_OF, instance_cost
from pvbuild.stages.deploy import endpoint_instance_type
from pvbuild.stages.estimate import annotation_estimate
from pvbuild.stages.train import training_instance_type


@dataclass
class Plan:
    """Per stage, how many items the next build would rebuild (``upstream``: those only an upstream change may
    touch), and the paid steps' cost lines."""

    steps: dict[str, int] = field(default_factory=dict)
    upstream: dict[str, int] = field(default_factory=dict)
    costs: list[str] = field(default_factory=list)
    annotation: dict[str, Any] | None = None
    prices_as_of: str = PRICES_AS_OF


def plan(workspace: Workspace) -> Plan:
    findings = stale_ones(check(workspace))
    direct = [finding for finding in findings if "upstream:" not in finding.reason]
    result = Plan(steps=dict(Counter(finding.stage for finding in direct)),
                  upstream=dict(Counter(finding.stage for finding in findings if finding not in direct)))
    keys = [finding.key for finding in findings if finding.stage == "conversations"]
    if keys or result.upstream.get("conversations"):
        estimate = annotation_estimate(workspace, keys)
        result.annotation = asdict(estimate)
        money = f"about ${estimate.usd:,.2f}" if estimate.usd is not None else "no price (free, or set "\
            "annotator.price_per_million_tokens)"
        line = (f"annotation: {estimate.articles} article(s) with {estimate.model or workspace.config.annotator.plugin}"
                f", ~{estimate.prompt_tokens:,} prompt + ~{estimate.completion_tokens:,} completion tokens, {money}")
        if estimate.uncrawled:
            line += f"; {estimate.uncrawled} more not crawled yet (plan again after `doit markdown`)"
        result.costs.append(line)
    if workspace.config.training["backend"] == "sagemaker":
        result.costs += _cloud_lines(workspace, findings)
    return result


def _cloud_lines(workspace: Workspace, findings: list[Any]) -> list[str]:
    lines = []
    count = int(workspace.config.training.get("instance_count", 1))
    by_key = {candidate.key("train"): candidate for candidate in workspace.candidates()}
    for finding in findings:
        candidate = by_key.get(finding.key) if finding.stage == "train" else None
        if candidate is None:
            continue
        instance = training_instance_type(workspace, candidate)
        hourly = INSTANCE_PRICES.get(instance)
        last = workspace.read_training(candidate)
        before = instance_cost(instance, last.billable_seconds, count) if last else None
        lines.append(f"training{f' {candidate.name}' if candidate.name else ''}: {count} x {instance} at "
                     f"{f'${hourly * count:,.2f}/h' if hourly else 'no listed price'} while the job runs"
                     + (f" (its last job billed {last.billable_seconds} s, ${before:,.2f})"
                        if last and before is not None else ""))
    if any(finding.stage == "deploy" for finding in findings):
        instance = endpoint_instance_type(workspace)
        hourly = INSTANCE_PRICES.get(instance)
        count = int(workspace.config.endpoint.get("instance_count", 1))
        lines.append(f"endpoint: {count} x {instance} at {f'${hourly * count:,.2f}/h' if hourly else 'no listed price'}"
                     " for as long as it stays up (endpoint.idle_hours, pvbuild teardown)")
    return lines


def text(result: Plan, profile: str) -> str:
    if not result.steps and not result.upstream:
        return f"pvbuild plan: profile {profile}: up to date, doit would do nothing"
    stages = sorted(set(result.steps) | set(result.upstream))
    lines = [f"pvbuild plan: profile {profile}: doit would rebuild"]
    for stage in stages:
        may = f" (+{result.upstream[stage]} if what comes before changes them)" if result.upstream.get(stage) else ""
        lines.append(f"  {stage}: {result.steps.get(stage, 0)}{may}")
    if result.costs:
        lines.append(f"paid steps (list prices of {result.prices_as_of}):")
        lines += [f"  {line}" for line in result.costs]
    return "\n".join(lines)
