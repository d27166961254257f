"""The rule that picks a default among candidate methods from a study's validation numbers (docs/experiments.md).

Written and committed before the runs it decides on: the highest mean validation accuracy over the seeds
wins; means closer than one validation image are a tie, broken by the lower mean validation loss; losses
closer than `LOSS_TIE` are a tie too, and then the incumbent stays if it is among them (otherwise the first
criterion, accuracy, decides among them). Test numbers never enter.
"""

from __future__ import annotations

from dataclasses import dataclass

LOSS_TIE = 0.005  # mean validation losses closer than this are a tie


@dataclass(frozen=True)
class Decision:
    chosen: str
    steps: tuple  # how the rule got there, one sentence each
    tied: bool  # the rule ended in a tie on loss (the next step is cross-validation)


def choose_default(methods: dict, candidates: tuple, validation_images: int, seed_count: int) -> Decision:
    """Apply the rule to a study's methods (`summarize`'s), among `candidates`, the first of which is the incumbent.

    Every candidate must have run on all `seed_count` seeds (the rule is over all of them); `validation_images`
    sets the tie.
    """
    missing = [name for name in candidates if len(methods.get(name, {}).get("seeds", {})) != seed_count]
    if missing:
        raise ValueError(f"the rule needs every candidate on all {seed_count} seeds; not yet: {', '.join(missing)}")
    incumbent = candidates[0]
    accuracy = {name: methods[name]["validation_accuracy"]["mean"] for name in candidates}
    loss = {name: methods[name]["validation_loss"]["mean"] for name in candidates}
    unmeasured = [name for name in candidates if accuracy[name] is None or loss[name] is None]
    if unmeasured or not validation_images:
        raise ValueError(f"no validation numbers for {', '.join(unmeasured) or 'the study'}: the rule cannot apply")
    accuracy_tie = 1.0 / validation_images
    best = max(candidates, key=lambda name: accuracy[name])
    # Means of counts over seeds: a difference of exactly one image is not a tie, whatever the float rounding.
    tied = [name for name in candidates if accuracy[best] - accuracy[name] < accuracy_tie - 1e-9]
    steps = [f"highest mean validation accuracy: {best} ({accuracy[best]:.4f})"]
    if len(tied) == 1:
        return Decision(best, tuple(steps), tied=False)
    steps.append(
        f"within one validation image ({accuracy_tie:.4f}) of it: "
        + ", ".join(f"{name} ({accuracy[name]:.4f})" for name in tied)
    )
    lowest = min(tied, key=lambda name: loss[name])
    still = [name for name in tied if loss[name] - loss[lowest] < LOSS_TIE]
    steps.append(f"lowest mean validation loss among them: {lowest} ({loss[lowest]:.4f})")
    if len(still) == 1:
        return Decision(lowest, tuple(steps), tied=False)
    within = f"within {LOSS_TIE} of it: " + ", ".join(f"{name} ({loss[name]:.4f})" for name in still)
    if incumbent in still:
        steps.append(within + f"; a tie, so the incumbent {incumbent} stays")
        return Decision(incumbent, tuple(steps), tied=True)
    chosen = max(still, key=lambda name: accuracy[name])
    steps.append(within + f"; a tie without the incumbent, so the higher mean validation accuracy: {chosen}")
    return Decision(chosen, tuple(steps), tied=True)
