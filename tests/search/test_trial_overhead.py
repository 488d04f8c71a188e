"""Less work per trial: validation only where Hyperband reads it, one evaluation batch shape, and
the memory of a pruned trial freed at once."""

from __future__ import annotations

import gc
import weakref

import optuna
import pytest
import torch

import search.study
import search.training
from search.run import main as run_main
from search.study import rung_epochs
from search.training import TrainConfig, predict_logits
from tests.search.searchkit import search_args


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(("low", "high", "factor"), [(1, 15, 3), (1, 10, 3), (2, 30, 2), (1, 1, 3)])
def test_rung_epochs_are_where_optunas_hyperband_reads(low: int, high: int, factor: int) -> None:
    pruner = optuna.pruners.HyperbandPruner(
        min_resource=low, max_resource=high, reduction_factor=factor
    )
    pruner._try_initialization(optuna.create_study())
    # Each bracket is successive halving; its rungs are the steps at which it compares trials.
    read = {high}
    for bracket in pruner._pruners:
        k = 0
        while (step := low * factor ** (bracket._min_early_stopping_rate + k)) <= high:
            read.add(step)
            k += 1
    assert rung_epochs(low, high, factor) == read


def test_validation_runs_at_the_rungs_only_unless_asked(tmp_path, monkeypatch) -> None:
    calls: list[int] = []
    real = search.training.evaluate

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(search.training, "evaluate", counted)
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: False)
    assert run_main(search_args(tmp_path, "--epochs", "4", trials=1)) == 0
    t = optuna.load_study(study_name="tiny", storage="sqlite:///results/tiny.db").trials[0]
    assert list(t.intermediate_values) == [1, 3, 4] and len(calls) == 3  # rungs 1, 3; last 4

    calls.clear()
    preset = tmp_path / "every.toml"
    preset.write_text("[search]\neval_every_epoch = true\n")
    args = search_args(tmp_path, "--epochs", "4", "--study-name", "every", trials=1)
    assert run_main([*args, "--config", str(preset)]) == 0
    t = optuna.load_study(study_name="every", storage="sqlite:///results/every.db").trials[0]
    assert list(t.intermediate_values) == [1, 2, 3, 4] and len(calls) == 4


def test_a_pruned_trial_frees_its_model_without_the_garbage_collector(
    tmp_path, monkeypatch
) -> None:
    models: list[weakref.ref] = []
    real_build = search.study.build

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        models.append(weakref.ref(model))
        return model

    monkeypatch.setattr(search.study, "build", build)
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)
    gc.collect()
    gc.disable()
    try:
        assert run_main(search_args(tmp_path, "--epochs", "3", trials=2)) == 0
        trials = optuna.load_study(study_name="tiny", storage="sqlite:///results/tiny.db").trials
        assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
        assert models and all(ref() is None for ref in models)  # freed by reference counting
    finally:
        gc.enable()


def _spy_predict(device: torch.device) -> tuple[list[tuple[int, ...]], torch.Tensor, bool]:
    """Shapes the model saw, and whether predict_logits gave its own logits, for 23 images at
    an evaluation batch of 10 on ``device``."""
    shapes: list[tuple[int, ...]] = []

    class Spy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3 * 4 * 4, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shapes.append(tuple(x.shape))
            return self.linear(x.flatten(1))

    model = Spy().to(device)
    images = torch.randint(0, 256, (23, 3, 4, 4), dtype=torch.uint8)
    norm = search.augment.Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    config = TrainConfig(eval_batch_size=10, bf16=False, channels_last=False)
    logits = predict_logits(
        model, images, normalization=norm, config=config, device=device, views=2
    )
    x = norm.apply(images.float().to(device) / 255)
    with torch.no_grad():
        same = torch.allclose(logits[0], model(x), atol=1e-5) and torch.allclose(
            logits[1], model(x.flip(3)), atol=1e-5
        )
    return shapes[:-2], logits, same  # without the two reference calls above


def test_evaluation_gives_each_images_own_logits() -> None:
    shapes, logits, same = _spy_predict(torch.device("cpu"))
    assert logits.shape == (2, 23, 5) and same
    assert [s[0] for s in shapes] == [10, 10, 10, 10, 3, 3]  # no padding off the GPU


@pytest.mark.gpu
def test_evaluation_on_cuda_uses_one_batch_shape() -> None:
    shapes, logits, same = _spy_predict(torch.device("cuda"))
    assert {s[0] for s in shapes} == {10} and same  # 10, 10, then 3 padded to 10
    assert logits.shape == (2, 23, 5)


def test_a_study_from_before_a_training_setting_existed_resumes(tmp_path) -> None:
    assert run_main(search_args(tmp_path, trials=1)) == 0
    study = optuna.load_study(study_name="tiny", storage="sqlite:///results/tiny.db")
    settings = study.user_attrs["settings"]
    del settings["train"]["cuda_graph"]  # as a study of an older version recorded it
    study.set_user_attr("settings", settings)
    assert run_main(search_args(tmp_path, trials=2)) == 0
    assert len(study.trials) == 2
    # A setting that differs from what the study ran with is still refused.
    settings["train"]["cuda_graph"] = True
    study.set_user_attr("settings", settings)
    assert run_main(search_args(tmp_path, trials=3)) == 2
