"""Prove it: search under a budget, retrain the winners beside hand-designed networks of the same
budget under the identical recipe, and write the comparison.

    python -m search.campaign --config configs/campaign/cpu-400k.toml

A campaign preset (``configs/campaign/*.toml``) names the budgets, the data, the search, how many
of the best distinct searched trials to retrain, the seeds, the retraining recipe, and for every
budget the reference architectures that train beside the winners with the same recipe, epochs,
data and seeds. For each budget in turn the campaign runs the three existing commands, as a user
would type them (each is printed first, so any step can be rerun by hand):

1. ``python -m search.run --config <work>/search-<budget>.toml`` (a preset it writes);
2. ``python -m search.retrain ... --top N --seeds S --arch <reference> ...``;
3. ``python -m search.report ...``.

Working files (studies, trained models, reports) go to ``results/campaigns/<name>/``; the result
to keep and commit goes to ``results/reference/<name>/``: ``leaderboard.csv``, ``pareto.png`` and
``.html`` (the winners as stars, the references as diamonds), ``README.md`` (the table, the
verdict against the seed spread, the command, the machine, the versions and the wall time), the
preset as run, and each study database when it is small. The result is rewritten after every
stage, also when a stage is interrupted, so a campaign cut short leaves a readable partial
leaderboard. Running the same command again continues where it stopped: finished trials, models
and epochs are kept. ``--summarize`` only rewrites the result from what exists.

With ``swap_recipes = true`` every reference also trains with the best searched trial's
augmentation, and the best searched architecture with the standard CIFAR recipe (crop 4, flip,
label smoothing 0.1): rows with ``recipe`` ``searched`` and ``standard`` beside ``own``, which
tell the architecture's share of a margin from the recipe's.

Exit 0 when every stage finished, 1 when one failed, 2 on bad input (one line on stderr, nothing
written), 130 when interrupted (run the same command again to continue).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna

from search import provenance
from search.campaign.log import Log
from search.campaign.preset import BudgetPlan, Campaign, load_campaign
from search.campaign.result import (
    keep_preset,
    load_study_if_any,
    planned_models,
    verdict,
    write_result,
)
from search.config import DataConfig
from search.data import Decoded, decode, save_cache, split, split_as_configured
from search.study import STANDARD_RECIPE
from search.training import TrainConfig
from space import Genotype
from space._cli import ArgumentParser
from space._io import check_writable_folder, write_json_atomic, write_text_atomic
from space._toml import dumps_toml
from space.errors import UserError


def _stage(
    log: Log,
    stage: str,
    budget: str,
    module: str,
    argv: list[str],
    entry: Callable[[list[str]], int],
    settings: str | None = None,
) -> int:
    """Run one command in this process, as typed, and log its wall time and exit code."""
    print(f"\n$ python -m {module} {' '.join(argv)}", flush=True)
    started = time.time()
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        with log.running(stage, budget):
            code = entry(argv)
    except KeyboardInterrupt:
        code = 130
    except SystemExit as exc:  # argparse in a command: a bug of ours, reported as such
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        # search.run installs its own Ctrl-C handling; the next stage gets the campaign's back.
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    log.stage(stage, budget, time.time() - started, code, settings)
    return code


def run_budget(
    campaign: Campaign, b: BudgetPlan, log: Log, *, progress: bool, until: str = "report"
) -> int:
    """Search, retrain and report one budget (up to the stage ``until``); the first exit code
    that is not 0."""
    from search import report, retrain
    from search import run as search_run

    quiet = [] if progress else ["--no-progress"]
    tables = campaign.search_tables(b)
    # A search that ended (trials done, or its timeout) is not run again: a timeout-bound one
    # would search on. Where the data lives does not count; what it holds the study checks.
    # How many trainings run at once, and where, changes no result: not in the digest.
    search_table = {
        k: v for k, v in tables["search"].items() if k not in ("concurrency", "mps", "device")
    }
    digest = hashlib.sha256(
        dumps_toml(
            {
                **tables,
                "search": search_table,
                "data": {k: v for k, v in tables["data"].items() if k != "source"},
            }
        ).encode()
    ).hexdigest()[:16]
    if log.finished("search", b.label, digest):
        print(f"\nsearch at {b.label}: finished in an earlier session with these settings")
    else:
        preset = campaign.work / f"search-{b.label}.toml"
        write_text_atomic(
            preset,
            f"# Written by python -m search.campaign from {campaign.preset}: the search of "
            f"budget {b.label}.\n" + dumps_toml(tables),
        )
        argv = ["--config", str(preset), *quiet]
        code = _stage(log, "search", b.label, "search.run", argv, search_run.main, digest)
        if code != 0:
            return code
    if until == "search":
        return 0

    url = campaign.storage_url(b)
    models = plan_models(campaign, b)
    if not any(m["source"] == "search" for m in models):
        print(
            f"error: the search at {b.label} has no complete trial within its budget, so there is "
            "nothing to compare; run more trials (raise trials or timeout)",
            file=sys.stderr,
        )
        return 1
    write_json_atomic(campaign.study_dir(b) / "models.json", models)
    extra = [m["arch"] for m in models if m["arch"] is not None]
    retrain_preset = campaign.work / f"retrain-{b.label}.toml"
    write_text_atomic(
        retrain_preset,
        f"# Written by python -m search.campaign from {campaign.preset}: the retraining recipe "
        "(the study's batch size and learning rate unless set here).\n"
        + dumps_toml({"train": campaign.retrain_recipe(b)}),
    )
    argv = [
        "--storage",
        url,
        "--study-name",
        b.study,
        "--top",
        str(campaign.top(b)),
        "--seeds",
        str(campaign.retrain.seeds),
        "--config",
        str(retrain_preset),
        "--data",
        str(campaign.data["source"]),
        "--device",
        campaign.config.device,
        "--out",
        str(campaign.study_dir(b)),
        *(["--subset", str(campaign.retrain.subset)] if campaign.retrain.subset else []),
        *[a for path in extra for a in ("--arch", path)],
        *([] if campaign.retrain.export else ["--no-export"]),
        *(
            ["--concurrency", str(campaign.config.concurrency)]
            if campaign.config.concurrency > 1
            else []
        ),
        *(["--mps"] if campaign.config.mps else []),
        *quiet,
    ]
    code = _stage(log, "retrain", b.label, "search.retrain", argv, retrain.main)
    if code != 0 or until == "retrain":
        return code
    return _stage(
        log,
        "report",
        b.label,
        "search.report",
        ["--storage", url, "--study-name", b.study],
        report.main,
    )


def plan_models(campaign: Campaign, b: BudgetPlan) -> list[dict[str, Any]]:
    """What retrains at budget ``b``: the best searched trials (as ``search.retrain`` picks
    them), the references, and with ``swap_recipes`` each side with the other's augmentation
    (architecture files written under ``<study>/recipes/``). ``arch`` is the file passed to
    ``--arch``, None for searched trials."""
    from search.retrain import select_trials

    study = load_study_if_any(campaign.storage_url(b), b.study)
    winners = select_trials(study, b.budget, campaign.top(b)) if study is not None else []
    race = {
        e["name"]: e
        for e in ((study.user_attrs.get("race") or {}) if study else {}).get("entries", [])
    }
    # The first is the search's choice (best validation accuracy): the one the verdict weighs.
    models = [
        {
            "name": c.name,
            "source": "search",
            "recipe": "own",
            "base": c.name,
            "arch": None,
            "chosen": i == 0,
            "val_acc": c.val_acc,
            "race_val_acc": race.get(c.name, {}).get("race_val_acc"),
        }
        for i, c in enumerate(winners)
    ]
    models += [
        {
            "name": p.stem,
            "source": "reference",
            "recipe": "own",
            "base": p.stem,
            "arch": str(p),
            "race_val_acc": race.get(p.stem, {}).get("race_val_acc"),
        }
        for p in b.references
    ]
    if campaign.config.swap_recipes and winners:
        best = winners[0]
        folder = campaign.study_dir(b) / "recipes"
        for p in b.references:
            if Genotype.load(p).augment == best.genotype.augment:
                continue  # the same recipe already: its own row says it all
            name = f"{p.stem}+searched"
            path = folder / f"{name}.toml"
            Genotype.load(p).replace(augment=best.genotype.augment).save(
                path, header=f"{p.stem} with the augmentation of {best.name} ({b.study})"
            )
            models.append(
                {
                    "name": name,
                    "source": "reference",
                    "recipe": "searched",
                    "base": p.stem,
                    "arch": str(path),
                }
            )
        name = f"{best.name}+standard"
        path = folder / f"{name}.toml"
        if best.genotype.augment == STANDARD_RECIPE:
            return models  # it searched its way to the standard recipe: nothing to swap
        best.genotype.replace(augment=STANDARD_RECIPE).save(
            path, header=f"{best.name} of {b.study} with the standard CIFAR recipe"
        )
        models.append(
            {
                "name": name,
                "source": "search",
                "recipe": "standard",
                "base": best.name,
                "arch": str(path),
            }
        )
    return models


# -- the command ------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m search.campaign",
        description="Search under each budget of a campaign preset, retrain the winners beside "
        "the reference networks under the same recipe, and write the comparison to "
        "results/reference/<name>/. Running it again continues where it stopped.",
    )
    p.add_argument("--config", type=Path, required=True, help="campaign preset (TOML)")
    p.add_argument("--data", help="override [data] source (the same images at another path)")
    p.add_argument("--device", help="override [campaign] device: auto, cpu, cuda, cuda:N")
    p.add_argument("--results", type=Path, default=Path("results"), help="default results")
    p.add_argument("--out", type=Path, help="result folder (default results/reference/<name>)")
    p.add_argument(
        "--summarize",
        action="store_true",
        help="train nothing: rewrite the result from what exists",
    )
    p.add_argument(
        "--until",
        choices=("search", "retrain", "report"),
        default="report",
        help="stop after this stage of every budget (a campaign split across device calls: "
        "search in one, the rest in the next); default: all of them",
    )
    p.add_argument("--no-progress", action="store_true", help="log lines only, no bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        campaign = load_campaign(
            args.config, data=args.data, device=args.device, results=args.results, out=args.out
        )
        check_plans(campaign)
        check_writable_folder(campaign.work)
        check_writable_folder(campaign.out)
        if args.summarize:
            if not campaign.work.is_dir():  # a fresh clone: its committed result stays as it is
                raise UserError(
                    f"--summarize: nothing to summarize, {campaign.work}/ does not exist "
                    f"(run the campaign first; {campaign.out}/ is left as it is)"
                )
            write_result(campaign, Log.open(campaign.work / "log.json"))
            print(f"wrote {campaign.out}/")
            return 0
        decoded = check_data(campaign, progress=not args.no_progress)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted before the campaign started: nothing was written", file=sys.stderr)
        return 130

    fresh = not campaign.work.exists()
    campaign.work.mkdir(parents=True, exist_ok=True)
    keep_preset(campaign)  # the result's campaign.toml: the preset as run, whatever comes later
    save_cache(decoded)  # the stages read the data from the cache
    del decoded
    log = Log.open(campaign.work / "log.json")
    log.machine = provenance.machine(campaign.config.device)
    log.start()
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's stop, like Ctrl-C
    code = 0
    try:
        for b in campaign.budgets:
            code = run_budget(campaign, b, log, progress=not args.no_progress, until=args.until)
            if code != 0:
                break
    except KeyboardInterrupt:
        code = 130
    except UserError as exc:  # between the stages: a study that vanished, say
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    if fresh and code == 2 and len(log.sessions[-1]["stages"]) == 1:
        # The first search refused its input: it said why; nothing ran, so nothing is left.
        shutil.rmtree(campaign.work, ignore_errors=True)
        with contextlib.suppress(OSError):
            campaign.work.parent.rmdir()  # results/campaigns, when it held nothing else
        return 2
    try:
        rows = write_result(campaign, log)
    except KeyboardInterrupt:
        rows, code = None, 130
    if rows is not None:
        print(f"\ncampaign {campaign.name}: {len(rows)} model(s) in {campaign.out}/leaderboard.csv")
        for b in campaign.budgets:
            print(verdict(rows, b.budget, planned_models(campaign, b)).replace("**", ""))
    if code == 130:
        print("interrupted: run the same command again to continue", file=sys.stderr)
    elif code != 0:
        print(f"stopped: a stage exited with code {code} (see above)", file=sys.stderr)
    return code


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def check_data(campaign: Campaign, *, progress: bool) -> Decoded:
    """Decode the data once (nothing is written) and check what only the images tell: every
    budget's ``max_macs`` against its space at this image size, and that the search's and the
    retraining's splits can be made. Returns the decoded data, to cache once the campaign goes
    ahead, so that its stages read it from there."""
    from search import run as search_run

    data = DataConfig(**campaign.data)
    decoded = decode(data.source, image_size=data.image_size, progress=progress)
    image_size = tuple(decoded.train.images.shape[2:])
    parser = search_run.build_parser()
    for b in campaign.budgets:
        plan = search_run.resolve(parser.parse_args([]), presets=campaign.search_tables(b))
        search_run.check_macs_floor(plan, image_size)
    split_as_configured(decoded, data)
    split(decoded, val_size=0, subset=campaign.retrain.subset, seed=data.split_seed)
    return decoded


def check_plans(campaign: Campaign) -> None:
    """Every budget's search resolves (budget floor, space, device, storage), and the retraining
    recipe merges: all of it before anything is written."""
    from search import run as search_run

    parser = search_run.build_parser()
    for b in campaign.budgets:
        search_run.resolve(parser.parse_args([]), presets=campaign.search_tables(b))
    TrainConfig(**campaign.retrain_train)
    source = str(campaign.data["source"])
    if source.lower() not in ("cifar10", "cifar100") and not Path(source).expanduser().exists():
        raise UserError(
            f"data {source!r}: no such file or folder (expected cifar10, cifar100, a folder "
            "ROOT/{train,test}/<class>/*.png|jpg, or a .tar/.tar.gz of one; --data overrides "
            "the preset's)"
        )


if __name__ == "__main__":
    sys.exit(main())
