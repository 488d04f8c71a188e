"""search.dashboard without a browser: finding the study, the artifact folders, bad input.
(tests/search/test_dashboard_browser.py drives the running server through Chromium.)"""

from __future__ import annotations

import io
import socket
from pathlib import Path

import optuna
import pytest
from optuna.artifacts.exceptions import ArtifactNotFound

from search.artifacts import AtomicArtifactStore, FolderArtifactStore
from search.dashboard import find_storage
from search.dashboard import main as dashboard_main


def test_finds_the_one_study_file(tmp_path: Path) -> None:
    (tmp_path / "a.db").touch()
    assert find_storage(tmp_path) == f"sqlite:///{tmp_path / 'a.db'}"
    (tmp_path / "a.db").unlink()
    (tmp_path / "b.journal").touch()
    assert find_storage(tmp_path) == f"journal:///{tmp_path / 'b.journal'}"


def test_artifacts_are_read_from_every_folder_and_written_to_the_first(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    second.mkdir()
    (second / "abc").write_bytes(b"curve")
    store = FolderArtifactStore([first, second])
    with store.open_reader("abc") as f:
        assert f.read() == b"curve"
    store.write("new", io.BytesIO(b"note"))
    assert (first / "new").read_bytes() == b"note"
    store.remove("abc")
    assert not (second / "abc").exists()
    with pytest.raises(ArtifactNotFound):
        store.open_reader("abc")


def test_an_artifact_appears_only_once_complete(tmp_path: Path) -> None:
    class Breaks(io.BytesIO):  # a copy killed halfway: the first chunk, then an error
        def read(self, size: int = -1) -> bytes:
            if self.tell() > 0:
                raise OSError("killed")
            return super().read(4)

    store = AtomicArtifactStore(tmp_path)
    with pytest.raises(OSError, match="killed"):
        store.write("half", Breaks(b"0123456789"))
    assert list(tmp_path.iterdir()) == []
    store.write("whole", io.BytesIO(b"0123456789"))
    assert [p.name for p in tmp_path.iterdir()] == ["whole"]
    assert (tmp_path / "whole").read_bytes() == b"0123456789"
    with pytest.raises(ValueError, match="invalid artifact id"):
        store.write("../outside", io.BytesIO(b"x"))


def study_file(folder: Path, name: str) -> None:
    optuna.create_study(storage=f"sqlite:///{folder / name}.db", study_name=name)


@pytest.mark.parametrize(
    "case, expect",
    [
        ("no-file", "no study in results/"),
        ("two-files", "2 study files in results/ (a.db, b.db)"),
        ("unknown-study", "no such study"),
        ("port-taken", "pick another --port"),
        ("bad-port", "--port must be 0 to 65535"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    case: str, expect: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    args: list[str] = []
    if case == "two-files":
        study_file(results, "a")
        study_file(results, "b")
    elif case != "no-file":
        study_file(results, "a")
    if case == "unknown-study":
        args = ["--study-name", "nope"]
    taken = socket.socket()
    try:
        if case == "port-taken":
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            args = ["--port", str(taken.getsockname()[1])]
        elif case == "bad-port":
            args = ["--port", "70000"]
        before = sorted(p.name for p in tmp_path.rglob("*"))
        assert dashboard_main(args) == 2
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expect in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
