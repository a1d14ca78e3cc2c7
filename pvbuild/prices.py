"""List prices, for the cost figures in the report and the leaderboard: what the paid steps cost at the
prices of ``PRICES_AS_OF`` (USD, on-demand, us-east-1). Prices change and differ by region and contract
(aws-cn bills in CNY): ``annotator.price_per_million_tokens`` and ``[prices]`` in ``pvbuild.toml``
override these, and every figure says which date's list it used."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PRICES_AS_OF = "2026-11"
BATCH_PRICE = 0.5  # the Batch API's share of the list price
# OpenAI chat models: USD per million input and output tokens (the Batch API: half of these).
TOKEN_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60), "gpt-4.1": (2.00, 8.00), "gpt-4.1-mini": (0.40, 1.60),
}
# SageMaker training and hosting instances: USD per instance-hour.
INSTANCE_PRICES: dict[str, float] = {
    "ml.g5.xlarge": 1.408, "ml.g5.2xlarge": 1.515, "ml.g5.12xlarge": 7.09, "ml.g5.24xlarge": 10.18,
    "ml.g5.48xlarge": 20.36, "ml.p4d.24xlarge": 37.69, "ml.p5.48xlarge": 113.07,
}


def token_price(model: str, configured: Any) -> tuple[float, float] | None:
    """Input and output USD per million tokens: the configured pair, else the list's, else None."""
    if isinstance(configured, list | tuple) and len(configured) == 2:
        return float(configured[0]), float(configured[1])
    return TOKEN_PRICES.get(model)


def annotation_cost(tokens: Mapping[str, int], price: tuple[float, float] | None) -> float | None:
    """What the recorded tokens cost, or None without a price."""
    if price is None:
        return None

    def at_list_price(prefix: str) -> float:
        prompt, completion = tokens.get(f"{prefix}prompt_tokens", 0), tokens.get(f"{prefix}completion_tokens", 0)
        return prompt * price[0] + completion * price[1]

    # ``batch_*`` counts are the part of the totals that went through the Batch API, at half price.
    return (at_list_price("") - at_list_price("batch_") * (1 - BATCH_PRICE)) / 1e6


def instance_cost(instance_type: str, seconds: float | None, instances: int = 1) -> float | None:
    """What ``seconds`` of ``instances`` instances cost, or None without a price or seconds."""
    hourly = INSTANCE_PRICES.get(instance_type)
    if hourly is None or seconds is None:
        return None
    return hourly * instances * seconds / 3600
