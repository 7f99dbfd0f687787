"""Say the answer: a paired comparison as an estimate with its interval, and as a quotable sentence.

Every screen, report and command that shows a paired difference (a pruned model against the dense
one, a mask against random/magnitude/wiki, one stored run against another) formats it with
``format_estimate`` and states it with ``decide``; the intervals are the ones ``metrics`` computes
(Newcombe for accuracy differences, bootstrap for log-likelihoods, MOVER for averages), never
re-derived here. The rules:

* the interval excludes 0: "A beats B by +4.4 points [+2.0, +6.9] on 2,376 paired examples"
  (or "A trails B by ...");
* it includes 0 and the run has ended: "no difference detected": the interval rules out any
  difference larger than the larger of its two ends, which is what the sentence quotes;
* it includes 0 and the run is still going: "not decided yet", with how many more examples per
  task would, at the present spread, narrow the interval to the present estimate (an interval's
  half-width shrinks as 1/√n). Never said of a run that ended;
* no interval (one example, or no variance): "too few examples", never a number pretending to be one.

``reconcile`` adds the one sentence for accuracy and gold log-likelihood pointing opposite ways.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from diet_explore.core.numbers import number
from diet_explore.evaluation.metrics import MAIN, TOO_FEW

MINUS = "\u2212"  # a real minus sign: "−0.45" reads as negative at a glance


@dataclass(frozen=True)
class Scale:
    """How one metric kind is shown: value × ``factor`` with ``digits`` decimals, then ``unit``."""

    factor: float
    digits: int
    unit: str
    signed: bool = True  # a difference carries its sign; a share (agreement) does not


#: Per paired metric: accuracy differences in percentage points, log-likelihoods in nats per char.
SCALES: dict[str, Scale] = {
    MAIN: Scale(100.0, 1, " points"),
    "acc": Scale(100.0, 1, " points"),
    "acc_norm": Scale(100.0, 1, " points"),
    "agreement": Scale(100.0, 1, "%", signed=False),
    "gold_ll_per_char": Scale(1.0, 3, " nats/char"),
    "choice_kl": Scale(1.0, 3, " nats"),
}
WHAT = {
    MAIN: "accuracy",
    "acc": "accuracy",
    "acc_norm": "accuracy (length-normalised)",
    "gold_ll_per_char": "gold log-likelihood",
}


def _num(value: float, scale: Scale, signed: bool = True, minus: str = MINUS) -> str:
    return number(value * scale.factor, scale.digits, signed=signed and scale.signed, minus=minus)  # never "−0.0"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_estimate(
    delta: float | None,
    low: float | None = None,
    high: float | None = None,
    metric: str = MAIN,
    *,
    unit: bool = False,
    note: str | None = None,
    minus: str = MINUS,
) -> str:
    """THE "Δ [low, high]" text: ``+4.4 [+2.0, +6.9]`` (× the metric's ``SCALES`` factor, its unit
    after the estimate when ``unit``); "—" when there is no estimate; the estimate and "(no
    interval: too few examples)" when there is no interval (whatever ``note`` says why). ``minus``:
    the sign of a negative number (the real minus sign on a page; "-" in a markdown report)."""
    if _missing(delta):
        return "—"
    scale = SCALES.get(metric, SCALES["gold_ll_per_char"])
    text = _num(delta, scale, minus=minus) + (scale.unit if unit else "")
    if _missing(low) or _missing(high):
        return f"{text} (no interval: {TOO_FEW})"
    return f"{text} [{_num(low, scale, minus=minus)}, {_num(high, scale, minus=minus)}]"


def format_entry(entry: Mapping[str, Any] | None, metric: str = MAIN, *, unit: bool = False, minus: str = MINUS) -> str:
    """``format_estimate`` of a ``metrics`` paired entry (``{"delta", "ci_low", "ci_high", "n", "note"?}``)."""
    entry = entry or {}
    low, high = entry.get("ci_low"), entry.get("ci_high")
    return format_estimate(entry.get("delta"), low, high, metric, unit=unit, note=entry.get("note"), minus=minus)


@dataclass(frozen=True)
class Decision:
    verdict: str  # "better", "worse", "no difference", "not decided", "too few", "no data"
    sentence: str

    @property
    def decided(self) -> bool:
        return self.verdict in ("better", "worse", "no difference")


def _count(n: int) -> str:
    return f"{n:,} paired example{'s' if n != 1 else ''}"


def more_per_task(entry: Mapping[str, Any], tasks: int = 1) -> int | None:
    """Examples per task that, at the present spread, narrow ``entry``'s interval to its estimate
    (half-width ∝ 1/√n, so n' = n·(half-width/|Δ|)²), minus those already paired; None when the
    estimate is 0 (no finite number settles it) or there is no interval."""
    delta, low, high, n = entry.get("delta"), entry.get("ci_low"), entry.get("ci_high"), int(entry.get("n") or 0)
    if _missing(delta) or _missing(low) or _missing(high) or n == 0 or delta == 0:
        return None
    half = (high - low) / 2
    needed = n * (half / abs(delta)) ** 2
    return max(1, math.ceil((needed - n) / max(tasks, 1)))


def decide(
    entry: Mapping[str, Any] | None,
    *,
    candidate: str,
    reference: str,
    metric: str = MAIN,
    running: bool = False,
    tasks: int = 1,
) -> Decision:
    """The verdict on ``candidate − reference`` from a paired entry (module docstring for the rules).
    ``running``: the comparison is still gaining examples (only then "not decided yet");
    ``tasks``: how many tasks the examples are spread over (the "per task" of the estimate)."""
    entry = entry or {}
    delta, low, high, n = entry.get("delta"), entry.get("ci_low"), entry.get("ci_high"), int(entry.get("n") or 0)
    scale = SCALES.get(metric, SCALES["gold_ll_per_char"])
    what = WHAT.get(metric, metric)
    if _missing(delta) or n == 0:
        return Decision(
            "not decided" if running else "no data",
            f"{candidate} vs {reference}: not decided yet, no paired examples scored yet"
            if running
            else f"{candidate} vs {reference}: no paired examples",
        )
    shown = format_estimate(delta, low, high, metric, unit=True, note=entry.get("note"))
    if _missing(low) or _missing(high):
        if running:
            return Decision(
                "not decided", f"{candidate} vs {reference}: not decided yet, {shown} on {_count(n)}, too few for an interval"
            )
        return Decision("too few", f"{candidate} vs {reference}: {TOO_FEW} for an interval ({shown} on {_count(n)})")
    if low > 0 or high < 0:
        verb = "beats" if low > 0 else "trails"
        on = f" in {what}" if metric != MAIN else ""
        return Decision(
            "better" if low > 0 else "worse",
            f"{candidate} {verb} {reference}{on} by {shown} on {_count(n)}" + (" so far" if running else ""),
        )
    bound = max(abs(low), abs(high))
    if running:
        more = more_per_task(entry, tasks)
        settle = (
            f"; at this rate about {more:,} more examples per task would settle ±{_num(abs(delta), scale, False)}{scale.unit}"
            if more is not None
            else ""
        )
        return Decision("not decided", f"{candidate} vs {reference}: not decided yet, {shown} on {_count(n)}{settle}")
    return Decision(
        "no difference",
        f"no difference detected between {candidate} and {reference}{' in ' + what if metric != MAIN else ''}: "
        f"the interval rules out more than ±{_num(bound, scale, False)}{scale.unit} ({shown} on {_count(n)})",
    )


def reconcile(
    main: Mapping[str, Any] | None,
    gold_ll: Mapping[str, Any] | None,
    *,
    candidate: str,
    reference: str,
) -> str | None:
    """One sentence when accuracy and gold log-likelihood point opposite ways and at least one of
    them is decided (its interval excludes 0); None when they agree or neither says anything."""
    main, gold_ll = main or {}, gold_ll or {}
    if _missing(main.get("delta")) or _missing(gold_ll.get("delta")) or main["delta"] * gold_ll["delta"] >= 0:
        return None

    def excludes_zero(e: Mapping[str, Any]) -> bool:
        return not _missing(e.get("ci_low")) and not _missing(e.get("ci_high")) and (e["ci_low"] > 0 or e["ci_high"] < 0)

    if not (excludes_zero(main) or excludes_zero(gold_ll)):
        return None
    acc_side, ll_side = (candidate, reference) if main["delta"] > 0 else (reference, candidate)
    return (
        f"Accuracy and gold log-likelihood disagree: accuracy leans to {acc_side} ({format_entry(main, MAIN, unit=True)}), "
        f"gold log-likelihood to {ll_side} ({format_entry(gold_ll, 'gold_ll_per_char', unit=True)}); trust accuracy for "
        "the benchmark score, gold log-likelihood for which mask keeps more of the model (it moves on every example, "
        "not only those near a decision, so it settles with fewer examples)."
    )


def decision_sentences(
    average: Mapping[str, Any] | None,
    *,
    candidate: str,
    reference: str,
    running: bool = False,
    tasks: int = 1,
) -> list[str]:
    """What a page says under a paired comparison (``average``: ``{metric: entry}``, e.g. a
    ``paired_metrics`` result's ``"average"``): the verdict on the main metric, the one on gold
    log-likelihood, and the reconciling sentence when the two disagree."""
    average = average or {}
    out = [
        decide(average.get(MAIN), candidate=candidate, reference=reference, running=running, tasks=tasks).sentence,
    ]
    if average.get("gold_ll_per_char"):
        ll = decide(
            average.get("gold_ll_per_char"),
            candidate=candidate,
            reference=reference,
            metric="gold_ll_per_char",
            running=running,
            tasks=tasks,
        )
        out.append(ll.sentence)
    both = reconcile(average.get(MAIN), average.get("gold_ll_per_char"), candidate=candidate, reference=reference)
    return out + ([both] if both else [])
