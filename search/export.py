"""Export a trained model to TorchScript and ONNX, each checked against PyTorch.

    python -m search.export results/<study>/retrain/trial-17/seed-0/model.safetensors

writes ``model.torchscript.pt`` and ``model.onnx`` beside the model file (or ``--out DIR``).
Both take a float batch (N, C, H, W) normalised as the model was trained (``ModelInfo.mean`` and
``std``) and return (N, classes) logits; the batch size is free. The ONNX file is run with
onnxruntime on random input and must agree with PyTorch within ``TOLERANCE``; the ONNX export
needs the ``export`` extra (``pip install -e '.[export]'``: onnx, onnxruntime, onnxscript).
An export that fails its check is removed. Exit 0 when every export passed its check, 1 when a
check failed or the disk is full, 2 on bad input.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from search.checkpoint import load_model
from space._cli import ArgumentParser
from space._io import check_writable_folder, disk_full_message, write_atomic
from space.errors import UserError

TOLERANCE = 1e-4  # max |logit difference| between an export and PyTorch on random input


@dataclass(frozen=True)
class ExportResult:
    path: Path
    max_abs_diff: float | None  # None when the check could not run

    @property
    def ok(self) -> bool:
        return self.max_abs_diff is None or self.max_abs_diff <= TOLERANCE


def _example(in_channels: int, size: tuple[int, int], n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, in_channels, *size, generator=generator)


def export_torchscript(
    model: torch.nn.Module, path: Path, *, in_channels: int, image_size: tuple[int, int]
) -> ExportResult:
    """Trace the model to TorchScript; check the saved file on a batch of another size."""
    model = model.eval().cpu()
    with warnings.catch_warnings():
        # torch.jit is deprecated in recent PyTorch in favour of torch.export, but TorchScript
        # files still load in C++ and older runtimes; silence the notice, keep the format.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, _example(in_channels, image_size, 2))
        write_atomic(path, lambda tmp: torch.jit.save(traced, str(tmp)))
        with _removed_unless_checked(path):
            loaded = torch.jit.load(str(path))
            x = _example(in_channels, image_size, 5)
            with torch.no_grad():
                diff = (loaded(x) - model(x)).abs().max().item()
    return _checked(ExportResult(path, diff))


@contextlib.contextmanager
def _removed_unless_checked(path: Path) -> Iterator[None]:
    """A file whose check cannot run is removed: no unchecked export is left to be used."""
    try:
        yield
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _checked(result: ExportResult) -> ExportResult:
    """A file that misses the tolerance is removed as well (the result still says by how much)."""
    if not result.ok:
        result.path.unlink(missing_ok=True)
    return result


def onnx_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript"))


def export_onnx(
    model: torch.nn.Module, path: Path, *, in_channels: int, image_size: tuple[int, int]
) -> ExportResult:
    """Export to ONNX with a free batch size; check with onnxruntime when it is installed."""
    if not onnx_available():
        raise UserError(
            "ONNX export needs onnx and onnxscript: pip install -e '.[export]' (or skip it)"
        )
    model = model.eval().cpu()
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's progress notes and deprecations
        program = torch.onnx.export(
            model,
            (_example(in_channels, image_size, 2),),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            verbose=False,
        )
        write_atomic(path, lambda tmp: program.save(str(tmp)))
    if importlib.util.find_spec("onnxruntime") is None:
        return ExportResult(path, None)
    import onnxruntime

    with _removed_unless_checked(path):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = _example(in_channels, image_size, 5)
        (logits,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            diff = (torch.from_numpy(logits) - model(x)).abs().max().item()
    return _checked(ExportResult(path, diff))


def export_all(
    model_file: Path, out: Path, *, onnx: bool = True, missing_only: bool = False
) -> list[ExportResult]:
    """Both exports of a model file into ``out`` (``missing_only``: those not there yet)."""
    model, info = load_model(model_file)
    exporters = [("model.torchscript.pt", export_torchscript)]
    if onnx:
        exporters.append(("model.onnx", export_onnx))
    return [
        export(model, out / name, in_channels=info.in_channels, image_size=info.image_size)
        for name, export in exporters
        if not (missing_only and (out / name).exists())
    ]


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(
        prog="python -m search.export",
        description="Export a model.safetensors to TorchScript and ONNX, checked against PyTorch.",
    )
    p.add_argument("model", type=Path, help="a model.safetensors written by a run")
    p.add_argument("--out", type=Path, help="output folder (default: beside the model)")
    p.add_argument("--no-onnx", action="store_true", help="TorchScript only")
    args = p.parse_args(argv)
    try:
        out = args.out or args.model.parent
        load_model(args.model)  # a bad file fails here, before anything is written
        check_writable_folder(out)
        if not args.no_onnx and not onnx_available():
            raise UserError(
                "ONNX export needs onnx and onnxscript: pip install -e '.[export]', or --no-onnx"
            )
        results = export_all(args.model, out, onnx=not args.no_onnx)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a full disk: one line; anything else is a bug of ours
        full = disk_full_message(exc, out)
        if full is None:
            raise
        print(f"error: {full}; free some space and run the command again", file=sys.stderr)
        return 1
    for r in results:
        check = (
            "not checked (no onnxruntime)"
            if r.max_abs_diff is None
            else (
                f"max |diff| vs PyTorch {r.max_abs_diff:.2e} "
                f"({'ok' if r.ok else f'over the tolerance {TOLERANCE:g}: removed'})"
            )
        )
        print(f"{r.path}  {check}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
