"""The gpu-marked tests can be collected on the GPU machine, which lacks some of what this one has.

scripts/device_check.sh runs ``pytest -m gpu`` on the files that hold gpu-marked tests. That
machine has no psycopg, kaleido, onnx, onnxruntime, onnxscript or playwright (nor are they carried,
see scripts/device_prepare.sh), so a top-level import of any of them on the way to those tests (a
conftest, a helper module) stops the collection there and no gpu test runs. Here the same
collection runs in a subprocess in which those packages cannot be imported, as if absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import ROOT

# Installed here, absent on the GPU machine.
ABSENT_ON_DEVICE = ("psycopg", "kaleido", "onnx", "onnxruntime", "onnxscript", "playwright")

# Imported at the interpreter's start (site imports ``sitecustomize`` from the path, after the .pth
# files): the finder of installed packages is replaced by one that does not see these, so
# ``import onnx`` raises ModuleNotFoundError and ``importlib.util.find_spec("onnx")`` is None (torch
# probes for onnx so), as if they were not installed.
BLOCKER = textwrap.dedent(
    f"""
    import sys
    from importlib.machinery import PathFinder

    ABSENT = {ABSENT_ON_DEVICE!r}


    class WithoutAbsent(PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.partition(".")[0] in ABSENT:
                return None
            return super().find_spec(name, path, target)


    sys.meta_path[sys.meta_path.index(PathFinder)] = WithoutAbsent
    """
)


# What device_check.sh greps for; split, so that this file is not one of those it finds.
GPU_MARK = "pytest.mark" + ".gpu"


def gpu_test_files() -> list[Path]:
    """The files device_check.sh passes to pytest: the test files that mention the gpu mark."""
    return [p for p in sorted((ROOT / "tests").rglob("test_*.py")) if GPU_MARK in p.read_text()]


def without_device_absentees(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp / "sitecustomize.py").write_text(BLOCKER)
    path = os.pathsep.join(filter(None, [str(tmp), str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args],
        env={**os.environ, "PYTHONPATH": path},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_gpu_tests_collect_without_the_packages_the_gpu_machine_lacks(tmp_path: Path) -> None:
    files = gpu_test_files()
    assert len(files) >= 4, files  # training, autoaugment, trial overhead, families
    # The blocker works: none of the packages imports, installed here or not.
    probe = textwrap.dedent(
        f"""
        import importlib
        for name in {ABSENT_ON_DEVICE!r}:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError:
                continue
            raise SystemExit(f"{{name}} imported")
        """
    )
    blocked = without_device_absentees(tmp_path, "-c", probe)
    assert blocked.returncode == 0, blocked.stderr

    done = without_device_absentees(
        tmp_path, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider",
        *(str(p.relative_to(ROOT)) for p in files),
    )  # fmt: skip
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    collected = [line for line in done.stdout.splitlines() if "::" in line]
    for path in files:
        assert any(line.startswith(f"{path.relative_to(ROOT)}::") for line in collected), (
            f"no gpu test of {path.relative_to(ROOT)} collected:\n{log}"
        )
