"""Open the search in optuna-dashboard, with the per-trial artifacts.

    python -m search.dashboard                          (the one study file in results/)
    python -m search.dashboard --storage sqlite:///results/cifar10-400k.db --port 8081

Finds the storage (default: the only ``results/*.db`` or ``results/*.journal``) and the artifact
folders of its studies (``results/<study>/artifacts``), prints the address and serves until
Ctrl-C. ``python -m search.report`` puts the Pareto figure, a note and the artifacts there.
The same without this command: ``optuna-dashboard sqlite:///results/<study>.db
--artifact-dir results/<study>/artifacts``.

Exit 0 when stopped with Ctrl-C, 2 on bad input (one line on stderr).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import optuna

from search.artifacts import FolderArtifactStore, find_artifact_dir
from search.storage import open_existing_storage
from space._cli import ArgumentParser
from space._io import check_path
from space.errors import UserError


def find_storage(results: Path) -> str:
    """The storage URL of the only study file in ``results``."""
    found = sorted([*results.glob("*.db"), *results.glob("*.journal")])
    if len(found) == 1:
        scheme = "sqlite" if found[0].suffix == ".db" else "journal"
        return f"{scheme}:///{found[0]}"
    if not found:
        raise UserError(
            f"no study in {results}/ (no *.db or *.journal file): run python -m search.run "
            "first, or give --storage"
        )
    raise UserError(
        f"{len(found)} study files in {results}/ ({', '.join(p.name for p in found)}): "
        "pick one with --storage"
    )


def check_port(host: str, port: int) -> None:
    """Fail with one line, before the server starts, when the address is taken or wrong."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be 0 to 65535, but got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"--host {host!r}: cannot resolve it ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            reason = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise UserError(
                f"cannot serve on {host}:{port} ({reason}); pick another --port"
            ) from None


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m search.dashboard",
        description="Serve a study in optuna-dashboard, with its trials' artifacts.",
    )
    p.add_argument(
        "--storage",
        help="sqlite:///FILE.db, journal:///FILE.journal or postgresql+psycopg://... "
        "(default: the only *.db or *.journal in the results folder)",
    )
    p.add_argument(
        "--study-name",
        help="print this study's page (default: the storage's only study, else the list)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument(
        "--results",
        type=Path,
        help="results folder: study files and <study>/artifacts (default: the artifact folder "
        "the search recorded, else beside the study file, else results)",
    )
    p.add_argument(
        "--artifact-dir",
        type=Path,
        help="artifact folder (default <results>/<study>/artifacts of every study)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        if args.artifact_dir is not None:
            check_path(args.artifact_dir, what="--artifact-dir")
            if os.path.exists(args.artifact_dir) and not os.path.isdir(args.artifact_dir):
                raise UserError(
                    f"--artifact-dir {args.artifact_dir}: not a folder (expected the folder of a "
                    "study's artifacts, results/<study>/artifacts)"
                )
        if args.results is not None:
            check_path(args.results, what="--results")
            if os.path.exists(args.results) and not os.path.isdir(args.results):
                raise UserError(f"--results {args.results}: not a folder")
        url = args.storage or find_storage(args.results or Path("results"))
        spec, storage = open_existing_storage(url)

        ids = {
            name: storage.get_study_id_from_name(name)
            for name in optuna.study.get_all_study_names(storage)
        }
        if args.study_name is not None and args.study_name not in ids:
            raise UserError(
                f"--study-name {args.study_name!r}: no such study in {spec.url!r} (studies "
                f"there: {', '.join(ids) or 'none'})"
            )
        check_port(args.host, args.port)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    # One folder per study; the dashboard's own uploads go to the first.
    folders = (
        [args.artifact_dir]
        if args.artifact_dir is not None
        else [
            find_artifact_dir(
                optuna.load_study(study_name=name, storage=storage), spec.path, args.results
            )
            for name in ([args.study_name] if args.study_name else ids)
        ]
    )
    if not folders:
        folders = [(args.results or Path("results")) / "artifacts"]
    store = FolderArtifactStore(folders)
    base = f"http://{_url_host(args.host)}:{args.port}/dashboard"
    print(f"storage    {spec.url}")
    print(f"artifacts  {', '.join(str(f) for f in folders)}")
    if args.study_name is not None or len(ids) == 1:
        name = args.study_name or next(iter(ids))
        print(f"study      {name}: {base}/studies/{ids[name]}")
    print(f"dashboard  {base}  (Ctrl-C to stop)", flush=True)

    from optuna_dashboard import run_server

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how one stops it
        run_server(storage, host=args.host, port=args.port, artifact_store=store)
    return 0


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


if __name__ == "__main__":
    sys.exit(main())
