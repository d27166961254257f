"""How far QAT moved a run's trained thresholds: each TQT model's log2-thresholds after training against its
calibrated start, and how many changed their power of two (the only way a threshold acts on the model).

A threshold starts half a bin inside its power of two (`tfqat.quantization.tqt.log2_threshold_from_exponent`),
so it must move 0.5 to change the scale. Reads a finished run or study seed folder (its settings, float model
and `<method>.weights.h5`), writes nothing there:

    python benchmarks/threshold_moves.py --run /work/study/seed1 --data ../shared/data/flower_photos

A start from AdaRound (`qat_tqt_tuned`) runs AdaRound again first, as the run did (minutes per method).
"""

import argparse
import sys

import numpy as np

from runtimes import load_run


def moves(run, method) -> dict:
    """role -> (moves, powers of two changed) of `method`'s thresholds, from its calibrated start to its weights."""
    from tfqat.quantization.freeze import trained_thresholds

    model = run.pow2_model(run.recipe(method))
    thresholds = trained_thresholds(model)
    start = [variable.numpy().ravel() * gain for _, variable, gain in thresholds]
    model.load_weights(str(run.weights_file(method.name)))
    moved, changed = {}, {}
    for (tensor, variable, gain), before in zip(thresholds, start):
        after = variable.numpy().ravel() * gain
        moved.setdefault(tensor.role, []).extend(after - before)
        changed[tensor.role] = changed.get(tensor.role, 0) + int(np.count_nonzero(np.ceil(after) != np.ceil(before)))
    return {role: (moved[role], changed[role]) for role in moved}


def _row(name: str, moved, changed: int) -> str:
    moved = np.abs(np.asarray(moved))
    return f"| {name} | {moved.size} | {changed} | {np.median(moved):.3f} | {np.quantile(moved, 0.9):.3f} | {moved.max():.3f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished run or study seed folder")
    parser.add_argument("--data", required=True, help="the flower photos the run used")
    parser.add_argument("--methods", help="comma-separated trained-threshold methods (default: those with weights there)")
    args = parser.parse_args()
    from tfqat.flowers.methods import METHODS, method as find_method

    run = load_run(args.run, args.data)
    if args.methods:
        names = args.methods.split(",")
    else:
        names = [n for n, m in METHODS.items() if m.recipe is not None and m.recipe.trained_thresholds and m.recipe.train]
        names = [n for n in names if run.weights_file(n).is_file()]
    if not names:
        sys.exit(f"--run {args.run}: no trained-threshold weights there")
    print(f"{args.run}, seed {run.options.seed}: |log2-threshold move| over QAT, and powers of two changed\n")
    print("| method, role | thresholds | powers of two changed | median move | 90th pct | max |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in names:
        method = find_method(name)
        if not (method.recipe and method.recipe.trained_thresholds):
            sys.exit(f"--methods: {name} has no trained thresholds")
        if not run.weights_file(name).is_file():
            sys.exit(f"--methods: {name} has no {name}.weights.h5 in {args.run}")
        by_role = moves(run, method)
        print(_row(name, [m for moved, _ in by_role.values() for m in moved], sum(c for _, c in by_role.values())))
        for role, (moved, changed) in sorted(by_role.items()):
            print(_row(f"{name}, {role}", moved, changed))


if __name__ == "__main__":
    main()
