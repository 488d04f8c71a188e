"""Train one architecture file end to end.

    python -m search.train configs/reference/resnet20.toml --data data/cifar10-jpeg --epochs 30

Trains on the training split (the validation split carved off), evaluates on validation after
every epoch, and ends with validation and test accuracy, with and without test-time
augmentation. Everything lands in ``results/train/<architecture>/`` (see
``search.experiment``); a killed run resumes when the same command runs again.
Exit 0 on success, 1 when training diverged or the disk is full, 2 on bad input, 130 when
interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from search.config import DataConfig, configure_torch, load_sections, merge, resolve_device
from search.data import check_split_arguments, decode, save_cache, split_as_configured
from search.experiment import Experiment, recorded_settings, run_experiment
from search.training import EpochStats, TrainConfig, TrainingDiverged
from space._cli import ArgumentParser
from space._io import check_path, check_writable_folder, disk_full_message
from space.errors import UserError
from space.genotype import Genotype


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m search.train",
        description="Train one architecture file and report validation and test accuracy.",
    )
    p.add_argument("arch", type=Path, help="architecture TOML file (see configs/reference/)")
    p.add_argument("--config", type=Path, help="TOML preset with [data] and [train] tables")
    p.add_argument("--data", help="cifar10, cifar100, an image folder or a .tar/.tar.gz of one")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate at the batch size")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--ema", type=float, dest="ema_decay", help="EMA decay per step; 0 = off")
    p.add_argument("--tta-views", type=int, help="test-time augmentation views, 1 to 10")
    p.add_argument("--seed", type=int, help="training seed (initial weights, order, augmentation)")
    p.add_argument("--subset", type=int, help="keep the first N training images per class")
    p.add_argument("--val-size", type=int, help="validation images carved from train")
    p.add_argument("--image-size", type=int, help="resize images to this square side")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile on CUDA")
    p.add_argument("--out", type=Path, help="output folder (default results/train/<arch name>)")
    p.add_argument("--fresh", action="store_true", help="discard a previous run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_path(args.arch, what=f"architecture file {str(args.arch)[:80]!r}")
        genotype = Genotype.load(args.arch)
        device = resolve_device(args.device)
        presets = (
            load_sections(args.config, {"data": DataConfig, "train": TrainConfig})
            if args.config
            else {}
        )
        data = merge(
            DataConfig,
            presets.get("data", {}),
            {
                "source": args.data,
                "subset": args.subset,
                "val_size": args.val_size,
                "image_size": args.image_size,
            },
            where="data settings",
        )
        train = merge(
            TrainConfig,
            presets.get("train", {}),
            {
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "weight_decay": args.weight_decay,
                "warmup_epochs": args.warmup_epochs,
                "ema_decay": args.ema_decay,
                "tta_views": args.tta_views,
                "seed": args.seed,
                "compile": args.compile,
            },
            where="training settings",
        )
        out = args.out or Path("results") / "train" / args.arch.stem
        check_writable_folder(out)
        configure_torch(device)
        progress = not args.no_progress
        check_split_arguments(val_size=data.val_size, subset=data.subset)
        # Decoded into memory; the cache is written once the run folder is known to be usable.
        decoded = decode(data.source, image_size=data.image_size, progress=progress)
        # Without --val-size, a resumed run keeps the validation size it recorded.
        recorded = None if args.fresh else recorded_settings(out)
        recorded_val = ((recorded or {}).get("data") or {}).get("val_size")
        data, dataset = split_as_configured(decoded, data, recorded_val_size=recorded_val)
        print(f"data    {dataset.describe()}")
        print(f"device  {device}")

        def log_epoch(stats: EpochStats) -> None:
            val = f"  val {stats.eval_acc:.4f}" if stats.eval_acc is not None else ""
            tqdm.write(
                f"epoch {stats.epoch:>3}/{train.epochs}  loss {stats.train_loss:.4f}  "
                f"acc {stats.train_acc:.4f}{val}  {stats.images_per_s:,.0f} img/s  "
                f"{stats.seconds:.1f} s"
            )

        experiment = Experiment(name=args.arch.stem, genotype=genotype, data=data, train=train)
        metrics = run_experiment(
            experiment,
            dataset,
            out,
            device=device,
            fresh=args.fresh,
            progress=progress,
            on_epoch=log_epoch,
            on_start=lambda: save_cache(decoded),
        )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:  # before Exception, which it is too
        print(f"error: training diverged: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a full disk: one line; anything else is a bug of ours
        full = disk_full_message(exc, out)
        if full is None:
            raise
        print(
            f"error: {full}; the finished epochs are kept: free some space and run the same "
            "command again",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    print_metrics(metrics, out)
    return 0


def print_metrics(metrics: dict, out: Path) -> None:
    print(
        f"\n{metrics['name']}: {metrics['params']:,} parameters, {metrics['macs'] / 1e6:.1f}M MACs"
    )
    views = metrics["tta_views"]
    for split in ("val", "test"):
        if f"{split}_acc" in metrics:
            print(
                f"  {split:<5} accuracy {metrics[f'{split}_acc']:.4f}   "
                f"with TTA ({views} views) {metrics[f'{split}_acc_tta']:.4f}"
            )
    print(
        f"  {metrics['epochs']} epochs in {metrics['train_minutes']:.1f} min on "
        f"{metrics['device']}, {metrics['images_per_s']:,.0f} img/s"
    )
    print(f"  saved to {out}/ (model.safetensors, metrics.json, history.csv, config.json)")


if __name__ == "__main__":
    sys.exit(main())
