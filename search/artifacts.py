"""Per-trial files for optuna-dashboard: a learning-curve PNG and the network's torchinfo summary.

The files live in a file-system artifact store, ``results/<study>/artifacts/`` by default
(``artifact_dir``), and the study records which trial each belongs to, so the dashboard lists
them on the trial's page (``python -m search.dashboard`` serves the folder).

Optuna's ``upload_artifact`` records an artifact in the trial's system attrs, which only a running
trial accepts. The search calls ``upload_trial_artifacts`` after a trial has finished, and the
report for trials of older studies, so for a finished trial the record goes into the study's
system attrs under the key optuna-dashboard reads for that trial
(``dashboard:artifacts:<trial_id>:<artifact_id>``), the same record its own upload button wrote.
Uploading is idempotent: a file the trial already has (by name, with its content in the store)
is not uploaded again.
"""

from __future__ import annotations

import json
import mimetypes
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from search.provenance import locate
from search.study import learning_curve
from space import Genotype, build, format_count
from space._io import write_atomic

# Where optuna.artifacts.upload_artifact records a trial's artifact (trial system attrs), and where
# optuna-dashboard also looks for one (study system attrs, followed by the trial id).
TRIAL_PREFIX = "artifacts:"
STUDY_PREFIX = "dashboard:artifacts:"


def artifact_dir(results: Path, study_name: str) -> Path:
    """The artifact folder of a study: ``<results>/<study>/artifacts``."""
    return Path(results) / study_name / "artifacts"


def find_artifact_dir(study: optuna.Study, study_file: Path | None, results: Path | None) -> Path:
    """Where a study's artifacts are on this machine: under ``results`` when given; else the
    folder the search recorded (``artifact_dir`` study attribute), the one beside the study
    file, or ``results/<study>/artifacts`` here, the first that exists (the last if none)."""
    if results is not None:
        return artifact_dir(results, study.study_name)
    recorded = study.user_attrs.get("artifact_dir")
    # Recorded relative to the project root (provenance.portable_path) by a committed result.
    candidates = [Path(locate(recorded))] if isinstance(recorded, str) else []
    if study_file is not None:
        candidates.append(artifact_dir(study_file.parent, study.study_name))
    candidates.append(artifact_dir(Path("results"), study.study_name))
    return next((c for c in candidates if c.is_dir()), candidates[-1])


def artifact_names(trial: FrozenTrial) -> list[str]:
    """The files a trial should have: a curve once it trained an epoch, a summary once it has a
    genotype; none for a failed trial or one rejected over budget (it has no network)."""
    status = str(trial.user_attrs.get("status", ""))
    usable = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    if trial.state not in usable or status.startswith("rejected"):
        return []
    names = []
    if learning_curve(trial):
        names.append(f"trial-{trial.number}-curve.png")
    if "genotype" in trial.user_attrs:
        names.append(f"trial-{trial.number}-summary.txt")
    return names


def trial_artifacts(
    trial: FrozenTrial, study_system_attrs: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """The artifacts recorded for ``trial`` (both places), by file name."""
    records = [v for k, v in trial.system_attrs.items() if k.startswith(TRIAL_PREFIX)]
    prefix = f"{STUDY_PREFIX}{trial._trial_id}:"
    records += [v for k, v in study_system_attrs.items() if k.startswith(prefix)]
    found = {}
    for record in records:  # study records last: for a finished trial they replace its own
        meta = json.loads(record) if isinstance(record, str) else record
        if meta is not None:  # the dashboard marks a deleted artifact with null
            found[meta["filename"]] = meta
    return found


def upload_trial_artifacts(
    study: optuna.Study,
    trial: FrozenTrial,
    *,
    artifact_dir: Path,
    num_classes: int,
    image_size: Sequence[int],
    in_channels: int = 3,
    study_system_attrs: Mapping[str, Any] | None = None,
) -> list[str]:
    """Upload the learning-curve PNG and the torchinfo summary of ``trial`` unless it has them.

    ``image_size`` is (H, W) of the network's input. ``study_system_attrs`` saves one read per
    trial when the caller has them (a report over many trials). Returns the names uploaded.
    """
    wanted = artifact_names(trial)
    if not wanted:
        return []
    if study_system_attrs is None:
        study_system_attrs = study._storage.get_study_system_attrs(study._study_id)
    store = AtomicArtifactStore(artifact_dir)
    have = trial_artifacts(trial, study_system_attrs)
    missing = [name for name in wanted if name not in have or not _stored(store, have[name])]
    if not missing:
        return []
    Path(artifact_dir).mkdir(parents=True, exist_ok=True)
    max_epochs = _max_epochs(study)
    with tempfile.TemporaryDirectory(prefix="nas-artifacts-") as tmp:
        for name in missing:
            path = Path(tmp) / name
            if name.endswith("-curve.png"):
                write_curve_png(path, trial, max_epochs=max_epochs)
            else:
                summary = summary_text(
                    trial, num_classes=num_classes, image_size=image_size, in_channels=in_channels
                )
                path.write_text(summary, encoding="utf-8")
            if name in have:  # recorded, but its content is gone from the store
                _forget(study, trial, have[name]["artifact_id"])
            _upload(study, trial, store, path)
    return missing


def _stored(store: FileSystemArtifactStore, meta: Mapping[str, Any]) -> bool:
    try:
        store.open_reader(meta["artifact_id"]).close()
    except ArtifactNotFound:
        return False
    return True


def _upload(
    study: optuna.Study, trial: FrozenTrial, store: FileSystemArtifactStore, path: Path
) -> None:
    if not trial.state.is_finished():
        upload_artifact(
            artifact_store=store, file_path=str(path), study_or_trial=trial, storage=study._storage
        )
        return
    # A finished trial takes no system attr: record it where the dashboard looks for it.
    # The content goes first, so a crash between the two leaves an orphan file, not a record
    # of a missing file.
    artifact_id = str(uuid.uuid4())
    mimetype, encoding = mimetypes.guess_type(path.name)
    with open(path, "rb") as f:
        store.write(artifact_id, f)
    meta = {
        "artifact_id": artifact_id,
        "filename": path.name,
        "mimetype": mimetype or "application/octet-stream",
        "encoding": encoding,
    }
    study._storage.set_study_system_attr(
        study._study_id, f"{STUDY_PREFIX}{trial._trial_id}:{artifact_id}", json.dumps(meta)
    )


def _forget(study: optuna.Study, trial: FrozenTrial, artifact_id: str) -> None:
    """Mark a record deleted (null), as the dashboard's delete button does. A finished trial's
    own record cannot change: the new one, in the study, then takes its place."""
    key = f"{TRIAL_PREFIX}{artifact_id}"
    if key in trial.system_attrs and not trial.state.is_finished():
        study._storage.set_trial_system_attr(trial._trial_id, key, json.dumps(None))
    elif key not in trial.system_attrs:
        study._storage.set_study_system_attr(
            study._study_id, f"{STUDY_PREFIX}{trial._trial_id}:{artifact_id}", json.dumps(None)
        )


def _max_epochs(study: optuna.Study) -> int | None:
    settings = study.user_attrs.get("settings") or {}
    return (settings.get("train") or {}).get("epochs")


# -- the files --------------------------------------------------------------------------------


def write_curve_png(path: Path, trial: FrozenTrial, *, max_epochs: int | None = None) -> None:
    """Validation accuracy (left axis) and training loss (right axis) per epoch, as a PNG.

    The x axis runs to the study's ``max_epochs``, so a pruned trial shows where it stopped.
    """
    # The object-oriented API draws with Agg without touching pyplot's global state.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    curve = learning_curve(trial)  # (epoch, accuracy) where it was evaluated
    loss = [float(x) for x in trial.user_attrs.get("train_loss", [])]
    fig = Figure(figsize=(7.0, 3.6), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    epochs = [e for e, _ in curve]
    accuracy = [a for _, a in curve]
    ax.plot(epochs, accuracy, marker="o", color="tab:blue", label="validation accuracy")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy", color="tab:blue")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, max(max_epochs or 0, len(loss), *epochs) + 0.5)
    ax.grid(alpha=0.3)
    if loss:
        twin = ax.twinx()
        twin.plot(range(1, len(loss) + 1), loss, color="tab:orange", ls="--", label="train loss")
        twin.set_ylabel("training loss", color="tab:orange")
    params = trial.user_attrs.get("params")
    size = f", {format_count(params)} params" if params else ""
    status = trial.user_attrs.get("status", trial.state.name.lower())
    fig.suptitle(f"trial {trial.number}{size}: {status}", fontsize=11)
    ax.set_title(str(trial.user_attrs.get("key", "")), fontsize=7, color="0.35")
    fig.savefig(path, format="png")


def summary_text(
    trial: FrozenTrial, *, num_classes: int, image_size: Sequence[int], in_channels: int = 3
) -> str:
    """The torchinfo table of the trial's network (built on the meta device: no weights), its
    numbers, and the genotype as TOML, which ``space.Genotype.load`` reads back."""
    import torchinfo

    g = Genotype.from_dict(trial.user_attrs["genotype"])
    height, width = image_size
    with torch.device("meta"):
        model = build(g, num_classes=num_classes, in_channels=in_channels)
    stats = torchinfo.summary(
        model,
        input_size=(1, in_channels, height, width),
        device="meta",
        verbose=0,
        depth=3,
        col_names=("output_size", "num_params", "mult_adds"),
    )
    lines = [
        f"trial {trial.number}: {trial.user_attrs.get('status', trial.state.name.lower())}",
        f"key     {g.key()}",
    ]
    for name in ("params", "macs"):
        if name in trial.user_attrs:
            lines.append(f"{name:<7} {trial.user_attrs[name]:,}")
    if trial.value is not None:
        lines.append(f"val acc {trial.value:.4f}")
    lines += [
        f"input   {in_channels}x{height}x{width}, {num_classes} classes",
        "",
        str(stats),
        "",
        "# genotype (TOML; space.Genotype.load reads it back)",
        g.to_toml(),
    ]
    return "\n".join(lines)


# -- serving ---------------------------------------------------------------------------------


class AtomicArtifactStore(FileSystemArtifactStore):
    """Optuna's file-system store, except that a file appears under its id only once complete
    (written under a temporary name, then renamed): a kill mid-write leaves no truncated
    artifact for the dashboard to serve."""

    def __init__(self, base_path: Path) -> None:
        super().__init__(base_path)
        self.base_path = Path(base_path)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        path = self.base_path / artifact_id
        if path.resolve().parent != self.base_path.resolve():  # ids are plain names
            raise ValueError(f"invalid artifact id {artifact_id!r}")
        write_atomic(path, lambda tmp: _copy_into(content_body, tmp))


def _copy_into(body: BinaryIO, path: Path) -> None:
    with open(path, "wb") as f:
        shutil.copyfileobj(body, f)


class FolderArtifactStore:
    """An artifact store over several folders, for a dashboard of several studies (each keeps
    its artifacts in its own folder): reads look in every folder, writes go to the first."""

    def __init__(self, folders: Sequence[Path]) -> None:
        if not folders:
            raise ValueError("FolderArtifactStore needs at least one folder")
        self._stores = [AtomicArtifactStore(Path(f)) for f in folders]
        self.folders = [Path(f) for f in folders]

    def open_reader(self, artifact_id: str) -> BinaryIO:
        for store in self._stores:
            try:
                return store.open_reader(artifact_id)
            except ArtifactNotFound:
                continue
        raise ArtifactNotFound(f"artifact {artifact_id} is in none of {self.folders}")

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.folders[0].mkdir(parents=True, exist_ok=True)
        self._stores[0].write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        for store in self._stores:
            try:
                store.remove(artifact_id)
                return
            except ArtifactNotFound:
                continue
        raise ArtifactNotFound(f"artifact {artifact_id} is in none of {self.folders}")
