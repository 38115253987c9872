"""Markdown tables of the paper's comparisons from `jsaectl compare --json` output
(used by examples/reproduce_paper.sh; the README's "Reproducing the paper" tables).

    python examples/paper_tables.py sweep SWEEP.json
    python examples/paper_tables.py random SWEEP.json RANDOM.json [--lam 2.67]
"""

from __future__ import annotations

import argparse
import json

ROWS = [
    ("\\|J\\| > 0.005 per token (of k²)", "j>0.005", "count"),
    ("\\|J\\| > 0.01", "j>0.01", "count"),
    ("\\|J\\| > 0.015", "j>0.015", "count"),
    ("\\|J\\| > 0.02", "j>0.02", "count"),
    ("\\|J\\| > 0.04", "j>0.04", "count"),
    ("scale-free: \\|J\\| > 1 × the token's rms \\|J\\|", "j>1rms", "count"),
    ("\\|J\\| > 2 × rms", "j>2rms", "count"),
    ("\\|J\\| > 4 × rms", "j>4rms", "count"),
    ("entries holding 90% of Σ\\|J\\|", "j_mass90", "count"),
    ("Gini coefficient of \\|J\\| (per token)", "j_gini", "{:.3f}"),
    ("mean \\|J\\|", "mean_abs_j", "{:.2g}"),
    ("explained variance, input / output SAE", ("ev_in", "ev_out"), "{:.3f}"),
    ("CE-loss score, input / output SAE", ("ce_score_in", "ce_score_out"), "{:.3f}"),
    ("KL score, input / output SAE", ("kl_score_in", "kl_score_out"), "{:.3f}"),
    ("dead latents, input / output", ("dead_in", "dead_out"), "{:.1%}"),
    ("CE clean / with the MLP output zeroed (nats)", ("ce_clean", "ce_zero"), "{:.3f}"),
]


def _cell(run: dict, key, fmt: str) -> str:
    if fmt == "count":
        return f"{run[key]:.1f} ({run[key + '_frac']:.1%})"
    keys = key if isinstance(key, tuple) else (key,)
    return " / ".join("–" if run.get(k) is None or run[k] != run[k] else fmt.format(run[k]) for k in keys)  # NaN: undefined


def table(columns: list[tuple[str, dict]]) -> str:
    lines = ["| | " + " | ".join(name for name, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
    for label, key, fmt in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(run, key, fmt) for _, run in columns) + " |")
    first = columns[0][1]
    lines.append(f"\n(k = {first['k']}, so k² = {first['k'] ** 2} entries per token; {first['tokens']:,} held-out tokens for "
                 f"reconstruction and |J|, {first.get('eval_tokens', 0):,} for the CE/KL scores.)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=("sweep", "random"))
    parser.add_argument("files", nargs="+")
    parser.add_argument("--lam", type=float, default=2.67, help="the trained-model run to set beside the random one")
    args = parser.parse_args()
    sweep = json.load(open(args.files[0]))
    if args.which == "sweep":
        print(table([(f"λ = {run['lam']:g}" + (" (plain pair)" if run["lam"] == 0 else ""), run) for run in sweep]))
    else:
        trained = next(run for run in sweep if abs(run["lam"] - args.lam) < 1e-9)
        random = json.load(open(args.files[1]))[0]
        print(table([(f"trained model, λ = {args.lam:g}", trained), (f"random init, λ = {random['lam']:g}", random)]))


if __name__ == "__main__":
    main()
