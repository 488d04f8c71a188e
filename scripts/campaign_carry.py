"""Carry a campaign from one device call to the next: pack its folders, unpack them again.

A device call lasts at most 10 minutes; a campaign may need two. ``scripts/device_check.sh``
packs what the campaign has done into one tarball that comes back from the device, and the next
call, carrying it in, unpacks it before running the same campaign again, which continues where
it stopped (finished trials, models and epochs are kept).

    python scripts/campaign_carry.py pack NAME --results results --out campaign-NAME.tar.gz
    python scripts/campaign_carry.py unpack campaign-NAME.tar.gz --results results

What is packed: ``<results>/campaigns/NAME/`` and ``<results>/reference/NAME/`` without what the
campaign does not need to continue or to report: trained weights of finished runs and their
exports (a finished run is read back from its ``metrics.json``). The training state of runs cut
in the middle (``state.pt``) is packed, smallest first, as long as the tarball stays under
``--limit-mb``; a state left out only means that run starts over. Unpacking refuses members
that would land outside the results folder.
Exit 0 on success, 2 on bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

# Not needed to continue a campaign or to write its result.
SKIPPED_SUFFIXES = (".safetensors", ".torchscript.pt", ".onnx", ".onnx.data")
STATE = "state.pt"


def campaign_files(results: Path, name: str) -> tuple[list[Path], list[Path]]:
    """(files always packed, training states packed while they fit)."""
    files, states = [], []
    for root in (results / "campaigns" / name, results / "reference" / name):
        if not root.is_dir():
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if path.name == STATE:
                states.append(path)
            elif not path.name.endswith(SKIPPED_SUFFIXES) and not path.name.endswith(".tmp"):
                files.append(path)
    return files, states


def pack(results: Path, name: str, out: Path, *, limit_mb: float) -> tuple[int, list[Path]]:
    """Write the tarball; returns (members, training states left out)."""
    files, states = campaign_files(results, name)
    if not files:
        raise ValueError(f"nothing to pack: {results}/campaigns/{name}/ holds no campaign")
    limit = int(limit_mb * 2**20)
    base = results.parent
    size = sum(p.stat().st_size for p in files)
    kept, left_out = [], []
    for state in sorted(states, key=lambda p: p.stat().st_size):
        if size + state.stat().st_size <= limit:
            kept.append(state)
            size += state.stat().st_size
        else:
            left_out.append(state)
    with tarfile.open(out, "w:gz") as tar:
        for path in files + kept:
            tar.add(path, arcname=path.relative_to(base).as_posix())
    return len(files) + len(kept), left_out


def unpack(tarball: Path, results: Path) -> int:
    """Extract the tarball at the results folder's parent; returns the number of members."""
    base = results.parent.resolve()
    top = results.name
    with tarfile.open(tarball, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            target = (base / m.name).resolve()
            if not (m.isfile() or m.isdir()) or not m.name.startswith(f"{top}/"):
                raise ValueError(f"{tarball}: member {m.name!r} is not a file under {top}/")
            if base not in target.parents:
                raise ValueError(f"{tarball}: member {m.name!r} would land outside {base}")
        tar.extractall(base, members=members, filter="data")
    return len(members)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/campaign_carry.py", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="pack a campaign's folders into a tarball")
    a.add_argument("name", help="the campaign's name ([campaign] name, or the preset's stem)")
    a.add_argument("--results", type=Path, default=Path("results"))
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--limit-mb", type=float, default=20.0, help="keep the tarball under this")
    b = sub.add_parser("unpack", help="unpack a tarball made by pack")
    b.add_argument("tarball", type=Path)
    b.add_argument("--results", type=Path, default=Path("results"))
    args = p.parse_args(argv)
    try:
        if args.command == "pack":
            count, left_out = pack(args.results, args.name, args.out, limit_mb=args.limit_mb)
            size = args.out.stat().st_size / 2**20
            print(f"packed {count} files of campaign {args.name} into {args.out} ({size:.1f} MB)")
            for state in left_out:
                print(f"  left out {state} (over --limit-mb): that run starts over")
        else:
            count = unpack(args.tarball, args.results)
            print(f"unpacked {count} members of {args.tarball} under {args.results.parent}/")
    except (OSError, ValueError, tarfile.TarError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
