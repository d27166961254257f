"""`tfqat run --quick --model NAME` for each of the seven networks: it finishes, and what each method gave.

    python benchmarks/networks.py --data ../shared/data/flower_photos --out benchmarks/results

Each network runs in a fresh process, as a user runs it, with random weights (--weights none: a smoke
test of the workflow, not a measurement of accuracy), in its own folder under a temporary directory.
Writes networks.md and networks.json: per network its preprocessing, the int8 input scale and zero point,
the methods that ran and the peers that could not take it, the verifier's verdict and the time.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tfqat.flowers.methods import METHODS
from tfqat.flowers.networks import NETWORKS

POWER_OF_TWO = {name for name, method in METHODS.items() if method.recipe is not None}  # tfqat's own methods


def run_one(name: str, data: str, folder: Path, methods: str) -> dict:
    argv = [sys.executable, "-m", "tfqat.cli", "run", "--quick", "--model", name, "--weights", "none",
            "--data", data, "--out", str(folder), "--methods", methods]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    row = {"network": name, "exit_code": done.returncode, "seconds": time.perf_counter() - start}
    if done.returncode != 0:
        row["error"] = (done.stderr.strip().splitlines() or [""])[-1]
        return row
    results = json.loads((folder / "results.json").read_text())
    models = results["models"]
    int8 = {k: v for k, v in models.items() if "verify" in v}
    row.update(
        preprocessing=NETWORKS[name].preprocessing,
        ran=sorted(models),
        not_run=results.get("not_run", {}),
        verified={k: v["verify"]["passed"] for k, v in int8.items() if k in POWER_OF_TWO},
    )
    if int8:
        from tfqat.tflite import litert

        spec = litert.describe(folder / int8[min(int8)]["file"]).inputs[0]
        row["input"] = [spec.scale, spec.zero_point]
    return row


def markdown(rows, command: str) -> str:
    lines = [
        "| network | preprocessing | int8 input (scale, zero point) | exit | methods run | verifier (tfqat's) | peers not run | time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if row["exit_code"]:
            lines.append(f"| {row['network']} | | | {row['exit_code']} | {row.get('error', '')} | | | {row['seconds']:.0f} s |")
            continue
        verdict = "all pass" if row["verified"] and all(row["verified"].values()) else ", ".join(k for k, v in row["verified"].items() if not v)
        not_run = "; ".join(f"`{k}`: {v[:90]}" for k, v in row["not_run"].items()) or "none"
        lines.append(
            f"| {row['network']} | {row['preprocessing']} | {', '.join(f'{v:g}' for v in row.get('input', []))} | 0 | "
            f"{', '.join(row['ran'])} | {verdict} | {not_run} | "
            f"{row['seconds']:.0f} s |"
        )
    return "\n".join(lines) + f"\n\nCommand: `{command}`\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--methods", default="ptq,ptq_tuned,qat_tqt,tflite_ptq,tfmot_qat")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.networks.split(","):
            rows.append(run_one(name, args.data, Path(tmp) / name, args.methods))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "networks.json").write_text(json.dumps(rows, indent=2) + "\n")
    command = "python benchmarks/networks.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / "networks.md").write_text(markdown(rows, command))
    print(markdown(rows, command))
    return 0 if all(row["exit_code"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
