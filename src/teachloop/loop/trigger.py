"""When to start an iteration, and whether today's training budget allows it: pure functions.

``due(cfg, new_examples=..., last_started=..., now=...)`` returns the reason
an iteration should start now, or None:

* ``every``: at least ``every`` new usable examples arrived since the last
  iteration's snapshot (new = candidates whose arrival time -- when their
  feedback was given, their trace graded, or their dataset row first
  recorded -- is after the loop's cursor, counted after the source and
  metadata filters, before dedupe);
* ``interval_minutes``: that long has passed since the last iteration started
  (or the loop has never run) and at least ``min_examples`` new examples
  arrived -- a schedule never trains on nothing new (so a loop whose sources
  can never grow is refused by ``validate_loop_config`` instead).

``budget_left(cfg, spent_s)`` is the training time left today (UTC) in
seconds. This module knows nothing of the store.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from teachloop.loop.config import BudgetConfig, TriggerConfig


def due(cfg: TriggerConfig, *, new_examples: int, last_started: datetime | None, now: datetime) -> str | None:
    """Why an iteration is due now, or None (see the module docstring)."""
    if cfg.every is not None and new_examples >= cfg.every:
        return f"{new_examples} new usable examples (trigger every {cfg.every})"
    if cfg.interval_minutes is not None and new_examples >= cfg.min_examples:
        if last_started is None:
            return f"schedule: first run, {new_examples} new usable examples"
        elapsed = now - last_started
        if elapsed >= timedelta(minutes=cfg.interval_minutes):
            return (f"schedule: {elapsed.total_seconds() / 60:.1f} min since the last iteration "
                    f"(every {cfg.interval_minutes:g} min), {new_examples} new usable examples")
    return None


def day_start(now: datetime) -> datetime:
    """Midnight UTC of ``now``'s day."""
    now = now.astimezone(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def budget_left(cfg: BudgetConfig, spent_s: float) -> float:
    """Seconds of training left today."""
    return max(0.0, cfg.train_minutes_per_day * 60 - spent_s)


__all__ = ["budget_left", "day_start", "due"]
