"""Which sampler finds better networks in the same number of trials? The search stage of a
campaign preset, run once per sampler and seed, and the best validation accuracy found after n
trials, per sampler, over the seeds.

    python scripts/bench_sampler.py --config configs/campaign/cpu-400k.toml \\
        --samplers tpe random --seeds 0 1 2 --parallel 2

Each (sampler, seed) is the preset's search at its first budget (its space, trials, trial
recipe, data and pruning), without the references, the race or the recipe stage, so that every
trial counted is one the sampler drew: a study of its own in ``<out>/<sampler>-<seed>.db``.
Killed, the same command resumes every study. ``--parallel N`` runs N searches at once (on a
CPU, one core each). Prints, and writes to ``<out>/samplers.json`` and ``samplers.md``: for each
sampler the best validation accuracy among the feasible complete trials after n trials (mean
and standard deviation over the seeds, and each seed's), at a few values of n, and the minutes
each search's trials trained. Exit 0, 1 when a search failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from search.campaign.preset import load_campaign  # noqa: E402
from search.provenance import portable_path  # noqa: E402
from search.study import SAMPLERS, is_feasible_complete  # noqa: E402
from space._toml import dumps_toml  # noqa: E402
from space.errors import UserError  # noqa: E402


def search_preset(config: Path, *, sampler: str, seed: int, out: Path) -> tuple[Path, str, int]:
    """Write the search preset of one (sampler, seed); returns (path, study name, budget)."""
    campaign = load_campaign(config, data=None, device=None, results=out, out=None)
    b = campaign.budgets[0]
    tables = campaign.search_tables(b)
    name = f"{sampler}-{seed}"
    tables["search"].update(
        sampler=sampler,
        seed=seed,
        study_name=name,
        # relative to the project root where inside it (the searches run there): a study that
        # names no folder of this machine
        storage=f"sqlite:///{portable_path(out / f'{name}.db')}",
        results=portable_path(out),
        references=[],
        race_top=0,
        recipe_trials=0,
        concurrency=1,
    )
    path = out / f"{name}.toml"
    path.write_text(f"# bench_sampler: {config} with sampler {sampler}, seed {seed}\n")
    with path.open("a") as f:
        f.write(dumps_toml(tables))
    return path, name, b.budget


def best_so_far(storage: str, name: str, budget: int) -> list[float | None]:
    """The best validation accuracy among feasible complete trials after each trial. A failed
    trial (one killed with its run, and drawn again when the search resumed) is not counted."""
    study = optuna.load_study(study_name=name, storage=storage)
    best: float | None = None
    out = []
    for t in sorted(study.trials, key=lambda t: t.number):
        if t.state == TrialState.FAIL:
            continue
        if is_feasible_complete(t, budget) and (best is None or t.value > best):  # type: ignore[operator]
            best = t.value
        out.append(best)
    return out


def search_minutes(storage: str, name: str) -> float:
    """Minutes the study's complete and pruned trials took, summed (right across resumed
    invocations; a trial killed with its run counts nothing, its end being the restart's)."""
    study = optuna.load_study(study_name=name, storage=storage)
    ended = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    seconds = sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in ended
        if t.datetime_start and t.datetime_complete
    )
    return round(seconds / 60, 1)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/bench_sampler.py", description=__doc__)
    p.add_argument("--config", type=Path, required=True, help="a campaign preset")
    p.add_argument("--samplers", nargs="+", default=["tpe", "random"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--parallel", type=int, default=1, help="searches at once")
    p.add_argument("--out", type=Path, help="default results/bench/samplers-<preset>")
    p.add_argument("--at", nargs="+", type=int, help="trial counts to report (default: quarters)")
    args = p.parse_args(argv)
    out = args.out or ROOT / "results" / "bench" / f"samplers-{args.config.stem}"
    try:
        bad = [s for s in args.samplers if s not in SAMPLERS]
        if bad:
            raise UserError(f"--samplers: unknown {', '.join(bad)}; allowed: {', '.join(SAMPLERS)}")
        if args.parallel < 1:
            raise UserError(f"--parallel must be >= 1, but got {args.parallel}")
        out.mkdir(parents=True, exist_ok=True)
        runs = [
            (s, seed, *search_preset(args.config, sampler=s, seed=seed, out=out))
            for s in args.samplers
            for seed in args.seeds
        ]
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    threads = max(1, (os.cpu_count() or 1) // args.parallel)

    def search(run: tuple) -> int:
        _, _, preset, name, _ = run
        started = time.time()
        log = out / f"{name}.log"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        with log.open("a") as f:
            code = subprocess.call(
                [sys.executable, "-m", "search.run", "--config", str(preset), "--no-progress"],
                cwd=ROOT,
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        print(f"{name}: exit {code} in {(time.time() - started) / 60:.1f} min ({log})", flush=True)
        return code

    with ThreadPoolExecutor(args.parallel) as pool:
        done = list(pool.map(search, runs))
    curves = {
        (s, seed): best_so_far(f"sqlite:///{out / name}.db", name, budget)
        for s, seed, _, name, budget in runs
    }
    trials = min(len(c) for c in curves.values())
    at = args.at or sorted({max(1, trials // 4), trials // 2, 3 * trials // 4, trials})
    table = {}
    for s in args.samplers:
        rows = {}
        for n in at:
            values = [curves[(s, seed)][n - 1] for seed in args.seeds]
            found = [v for v in values if v is not None]
            rows[n] = {
                "mean": statistics.fmean(found) if found else None,
                "sd": statistics.stdev(found) if len(found) > 1 else None,
                "seeds": values,
            }
        table[s] = rows
    minutes = {name: search_minutes(f"sqlite:///{out / name}.db", name) for *_, name, _ in runs}
    result = {
        "config": str(args.config),
        "seeds": args.seeds,
        "trials": trials,
        "at": at,
        "best_val_acc": table,
        "minutes": minutes,
    }
    (out / "samplers.json").write_text(json.dumps(result, indent=2))
    head = "| sampler | " + " | ".join(f"best after {n} trials" for n in at) + " |"
    lines = [head, "| --- |" + " ---: |" * len(at)]
    for s, rows in table.items():
        cells = []
        for n in at:
            r = rows[n]
            cells.append(
                "n/a"
                if r["mean"] is None
                else f"{100 * r['mean']:.2f}%" + (f" ± {100 * r['sd']:.2f}" if r["sd"] else "")
            )
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "samplers.md").write_text(text)
    print(text)
    return 0 if all(code == 0 for code in done) else 1


if __name__ == "__main__":
    sys.exit(main())
