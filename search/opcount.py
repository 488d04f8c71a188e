"""Count the ATen operations a piece of PyTorch code dispatches.

On a GPU, small networks and batched augmentations are bound by kernel launches rather than by
arithmetic, so the number of ATen operations per call is the figure to keep down. This counts
them on any device (CPU included), without a profiler.

What is counted: every call that reaches the dispatcher's Python key, i.e. what a
``TorchDispatchMode`` sees. That is below autograd, so composite operations are counted as the
ATen operations they decompose into (``F.linear`` is ``aten.t`` + ``aten.addmm``), and view
operations (``view``, ``slice``, ``select``, ``expand``, ``unbind``, ...) count like any other,
although they launch no kernel. Factory functions (``zeros``, ``randint``, ...) count too. An
operation's own internal calls are not counted: ``aten.sort`` is one operation however many
kernels it launches. Python scalars and shape arithmetic cost nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["count_aten_ops", "counting_aten_ops"]

T = TypeVar("T")


class _CountingMode(TorchDispatchMode):
    def __init__(self, counts: Counter[str]) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        self.counts[str(func)] += 1  # e.g. "aten.add.Tensor": op and overload
        return func(*args, **(kwargs or {}))


@contextmanager
def counting_aten_ops() -> Iterator[Counter[str]]:
    """Count the ATen operations dispatched inside the ``with`` block, by name.

    Yields a ``Counter`` from overload names (``"aten.add.Tensor"``) to calls, filled as the block
    runs; ``sum(counts.values())`` is the total. See the module docstring for what counts.
    """
    counts: Counter[str] = Counter()
    with _CountingMode(counts):
        yield counts


def count_aten_ops(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, int]:
    """``(fn(*args, **kwargs), number of ATen operations it dispatched)``, views included."""
    with counting_aten_ops() as counts:
        result = fn(*args, **kwargs)
    return result, sum(counts.values())
