"""The ATen operation counter, on functions whose operations can be listed by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from search.opcount import count_aten_ops, counting_aten_ops


def test_counts_each_op_and_view_once() -> None:
    x = torch.arange(6.0).view(2, 3)

    def f(t: torch.Tensor) -> torch.Tensor:
        return (t.view(-1) + 1).sum()  # aten.view, aten.add, aten.sum

    result, ops = count_aten_ops(f, x)
    assert ops == 3
    assert result.item() == 21.0


def test_names_the_overloads() -> None:
    x = torch.ones(2, 3)
    with counting_aten_ops() as counts:
        torch.zeros(3)  # a factory: aten.zeros
        x[0, 1:]  # select on dim 0, slice on dim 1
        x.mul(2).mul_(3)  # out of place, then in place
        F.linear(x, torch.ones(4, 3))  # composite: transpose the weight, then multiply
    assert counts == {
        "aten.zeros.default": 1,
        "aten.select.int": 1,
        "aten.slice.Tensor": 1,
        "aten.mul.Tensor": 1,
        "aten.mul_.Tensor": 1,
        "aten.ones.default": 1,  # the weight
        "aten.t.default": 1,
        "aten.mm.default": 1,
    }


def test_counts_grow_with_the_calls_and_stop_outside() -> None:
    x = torch.ones(4)

    def twice_per_step(t: torch.Tensor, steps: int, *, scale: float) -> torch.Tensor:
        for _ in range(steps):
            t = (t * scale).neg()
        return t

    result, ops = count_aten_ops(twice_per_step, x, 5, scale=2.0)
    assert ops == 10
    assert torch.equal(result, -torch.full((4,), 32.0))
    with counting_aten_ops() as counts:
        pass
    x + 1  # after the block: not counted
    assert sum(counts.values()) == 0
