from __future__ import annotations

import itertools
import math
import re
import threading

import pytest
import torch
from torch import nn

from search.augment import Normalization
from search.data import ImageSet, load_dataset
from search.training import (
    TTA_VIEWS,
    EpochStats,
    TrainConfig,
    TrainConfigError,
    TrainingDiverged,
    evaluate,
    fit,
    lr_at,
    parameter_groups,
    predict_logits,
)
from space import Genotype, build
from space.genotype import Augment
from tests.images import make_image_folder

CPU = torch.device("cpu")
TINY = Genotype.from_key("S8_B1x8_B1x16s~stride_cbn_avg_lin_h0~p2_f1_c0_none_m9_x0_k0_l0")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp("d") / "tiny", train_per_class=40)
    return load_dataset(root, val_size=15, cache_dir=root.parent / "cache")


def norm(ds) -> Normalization:
    return Normalization(ds.mean, ds.std)


def run(data, config: TrainConfig, *, augment: Augment | None = None, **kwargs):
    torch.manual_seed(config.seed)  # the initial weights, as the entry points do
    model = build(TINY, num_classes=3)
    history = fit(
        model,
        data.train,
        augment=augment or TINY.augment,
        normalization=norm(data),
        num_classes=3,
        config=config,
        device=CPU,
        eval_set=data.val,
        **kwargs,
    )
    return model, history


def test_lr_schedule_warmup_then_cosine() -> None:
    peak, warmup, total = 0.4, 10, 110
    lrs = [lr_at(s, total_steps=total, warmup_steps=warmup, peak=peak) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / warmup)
    assert lrs[warmup - 1] == pytest.approx(peak)  # the peak on the last warmup step
    assert all(a < b for a, b in itertools.pairwise(lrs[:warmup]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[warmup:]))
    for s in (warmup, 35, 60, 109):  # cosine from peak to 0 over the remaining steps
        expected = peak * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))) / 2
        assert lrs[s] == pytest.approx(expected)
    assert lr_at(total, total_steps=total, warmup_steps=warmup, peak=peak) == pytest.approx(0.0)
    assert lr_at(0, total_steps=5, warmup_steps=0, peak=1.0) == pytest.approx(1.0)


def test_no_weight_decay_on_bn_and_biases() -> None:
    model = build(TINY.replace(stem_bias=True), num_classes=3)
    decay, no_decay = parameter_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 4 or p.ndim == 2 for p in decay["params"])
    bn_and_bias = [
        p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()
    ] + [model.stem[0].bias, model.head.bias]
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in bn_and_bias}


def test_loss_goes_down_and_the_net_learns(data) -> None:
    config = TrainConfig(epochs=6, batch_size=16, lr=0.1, warmup_epochs=1, tta_views=2)
    _, history = run(data, config)
    losses = [e.train_loss for e in history.epochs]
    assert losses[-1] < 0.6 * losses[0]
    assert history.curve[-1] >= 0.8  # three separable colours
    assert len(history.epochs) == 6 and all(e.images_per_s > 0 for e in history.epochs)


def test_progress_bar_shows_running_loss_accuracy_and_speed(data, monkeypatch, capsys) -> None:
    monkeypatch.setattr("search.training.SYNC_EVERY", 1)
    run(data, TrainConfig(epochs=1, batch_size=16, lr=0.1), progress=True)
    shown = capsys.readouterr().err.split("\r")
    mid_epoch = [line for line in shown if "2/" in line.split("|")[-1] and "lr=" in line]
    assert mid_epoch, shown  # a postfix written after step 2, before the epoch ended
    for shown_figure in (r"loss=\d\.\d{3}", r"acc=[01]\.\d{3}", r"img_s=\d+", r"lr=0\.\d+"):
        assert re.search(shown_figure, mid_epoch[0]), mid_epoch[0]


def test_same_seed_same_result_other_seed_differs(data) -> None:
    config = TrainConfig(epochs=2, batch_size=16, lr=0.1, seed=7)
    aug = Augment(
        crop_padding=2, cutout=4, auto="trivialaugment", mixup_alpha=0.2, cutmix_alpha=1.0
    )
    a, ha = run(data, config, augment=aug)
    b, hb = run(data, config, augment=aug)
    _, hc = run(data, TrainConfig(epochs=2, batch_size=16, lr=0.1, seed=8), augment=aug)
    assert [e.train_loss for e in ha.epochs] == [e.train_loss for e in hb.epochs]
    for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    assert [e.train_loss for e in ha.epochs] != [e.train_loss for e in hc.epochs]


def test_nan_loss_stops_with_a_reason(data) -> None:
    config = TrainConfig(epochs=3, batch_size=16, lr=1e30, warmup_epochs=0)
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) in epoch 1"):
        run(data, config)


def test_raising_from_on_epoch_stops_training(data) -> None:
    seen: list[EpochStats] = []

    class Stop(Exception):
        pass

    def on_epoch(stats: EpochStats) -> None:
        seen.append(stats)
        if stats.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        run(data, TrainConfig(epochs=5, batch_size=16), on_epoch=on_epoch)
    assert [s.epoch for s in seen] == [1, 2]
    assert seen[0].eval_acc is not None


def test_stop_event_ends_training_at_the_next_step(data) -> None:
    # As Ctrl-C does: the handler only sets the event, mid-step; fit raises at the next step.
    stop = threading.Event()
    model = build(TINY, num_classes=3)
    forwards = []

    def count(module, inputs):
        forwards.append(inputs[0].shape[0])
        if len(forwards) == 3:
            stop.set()

    model.register_forward_pre_hook(count)
    epochs: list[EpochStats] = []
    with pytest.raises(KeyboardInterrupt):
        fit(
            model,
            data.train,
            augment=TINY.augment,
            normalization=norm(data),
            num_classes=3,
            config=TrainConfig(epochs=3, batch_size=16),
            device=CPU,
            eval_set=data.val,
            on_epoch=epochs.append,
            stop=stop,
        )
    assert len(forwards) == 3 and not epochs  # no fourth step, no evaluation, no epoch end


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_from_checkpoint_equals_uninterrupted(data, tmp_path, ema: float) -> None:
    config = TrainConfig(epochs=4, batch_size=16, lr=0.1, seed=3, ema_decay=ema)
    aug = Augment(crop_padding=2, mixup_alpha=0.3, cutout=3)
    whole, whole_history = run(data, config, augment=aug)

    checkpoint = tmp_path / "state.pt"

    class Killed(Exception):
        pass

    def kill_after_two(stats: EpochStats) -> None:
        if stats.epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        run(data, config, augment=aug, checkpoint=checkpoint, on_epoch=kill_after_two)
    assert checkpoint.exists()
    resumed_epochs: list[int] = []
    resumed, history = run(
        data,
        config,
        augment=aug,
        checkpoint=checkpoint,
        on_epoch=lambda s: resumed_epochs.append(s.epoch),
    )
    assert resumed_epochs == [3, 4]  # epochs 1-2 were not trained again
    assert [e.train_loss for e in history.epochs] == [e.train_loss for e in whole_history.epochs]
    for p, q in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q)


def test_checkpoint_of_another_config_is_refused(data, tmp_path) -> None:
    checkpoint = tmp_path / "state.pt"
    run(data, TrainConfig(epochs=1, batch_size=16), checkpoint=checkpoint)
    from space.errors import UserError

    with pytest.raises(UserError, match="another training config"):
        run(data, TrainConfig(epochs=2, batch_size=16), checkpoint=checkpoint)


def test_ema_model_is_returned(data) -> None:
    plain, _ = run(data, TrainConfig(epochs=2, batch_size=16, seed=1))
    averaged, _ = run(data, TrainConfig(epochs=2, batch_size=16, seed=1, ema_decay=0.9))
    weights = [
        (p, q) for p, q in zip(plain.parameters(), averaged.parameters(), strict=True) if p.ndim > 1
    ]
    assert any(not torch.allclose(p, q) for p, q in weights)


class FlipInvariant(nn.Module):
    """Logits of an image and of its mirror are the same by construction."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv(x) + self.conv(x.flip(3))).mean((2, 3))


def test_tta_shapes_and_flip_invariant_model_equals_plain(data) -> None:
    torch.manual_seed(0)
    model = FlipInvariant()
    config = TrainConfig(tta_views=2)
    logits = predict_logits(
        model, data.test.images, normalization=norm(data), config=config, device=CPU, views=10
    )
    assert logits.shape == (10, len(data.test), 3)
    assert torch.allclose(logits[0], logits[1], atol=1e-5)
    plain, tta = evaluate(model, data.test, normalization=norm(data), config=config, device=CPU)
    assert plain == tta
    # With translations the views differ, and the TTA score is computed from all of them.
    assert not torch.allclose(logits[0], logits[2])


def test_tta_views_are_the_transformations_they_claim() -> None:
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    from search.training import view

    assert torch.equal(view(x, True, 0, 0), x.flip(3))
    shifted = view(x, False, 2, 0)
    assert torch.equal(shifted[:, :, 2:], x[:, :, :-2])  # content moved down two rows
    assert len(TTA_VIEWS) == 10 and TTA_VIEWS[0] == (False, 0, 0)


def test_evaluate_counts_correct_predictions() -> None:
    class Oracle(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # Predict class 1 for every image.
            return torch.tensor([[0.0, 1.0, 0.0]]).expand(x.shape[0], 3)

    labels = torch.tensor([1, 1, 0, 2])
    images = ImageSet(torch.zeros(4, 3, 4, 4, dtype=torch.uint8), labels)
    plain, tta = evaluate(
        Oracle(),
        images,
        normalization=Normalization((0, 0, 0), (1, 1, 1)),
        config=TrainConfig(tta_views=4),
        device=CPU,
    )
    assert plain == tta == 0.5


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("batch_size", -1),
        ("lr", float("nan")),
        ("ema_decay", 1.0),
        ("tta_views", 11),
    ],
)
def test_bad_train_config(field: str, value) -> None:
    with pytest.raises(TrainConfigError, match=field):
        TrainConfig(**{field: value})


@pytest.mark.gpu
def test_fit_on_cuda_with_bf16_and_channels_last(data) -> None:
    model = build(TINY, num_classes=3)
    config = TrainConfig(epochs=2, batch_size=16, lr=0.1)
    history = fit(
        model,
        data.train,
        augment=Augment(auto="randaugment", mixup_alpha=0.2),
        normalization=norm(data),
        num_classes=3,
        config=config,
        device=torch.device("cuda"),
        eval_set=data.val,
    )
    assert len(history.epochs) == 2 and math.isfinite(history.epochs[-1].train_loss)


def test_cuda_graph_off_the_gpu_is_the_eager_run(data) -> None:
    # The graph only replaces the model's forward and backward on CUDA; elsewhere the setting
    # must change nothing at all.
    aug = Augment(crop_padding=2, cutout=4, auto="trivialaugment", cutmix_alpha=1.0)
    eager, he = run(data, TrainConfig(epochs=2, batch_size=16, lr=0.1), augment=aug)
    graphed, hg = run(
        data, TrainConfig(epochs=2, batch_size=16, lr=0.1, cuda_graph=True), augment=aug
    )
    assert [e.train_loss for e in he.epochs] == [e.train_loss for e in hg.epochs]
    for p, q in zip(eager.state_dict().values(), graphed.state_dict().values(), strict=True):
        assert torch.equal(p, q)


def test_compile_and_cuda_graph_are_one_or_the_other() -> None:
    with pytest.raises(TrainConfigError, match="compile and cuda_graph"):
        TrainConfig(compile=True, cuda_graph=True)


def test_a_checkpoint_from_before_a_setting_existed_resumes(data, tmp_path) -> None:
    config = TrainConfig(epochs=2, batch_size=16, lr=0.1)
    path = tmp_path / "state.pt"
    run(data, TrainConfig(epochs=1, batch_size=16, lr=0.1), checkpoint=path)
    state = torch.load(path, weights_only=False)
    state["config"] = {**config.to_dict()}
    del state["config"]["cuda_graph"]  # as an older version wrote it
    torch.save(state, path)
    _, history = run(data, config, checkpoint=path)
    assert len(history.epochs) == 2  # resumed after the recorded epoch, not refused


@pytest.mark.gpu
@pytest.mark.parametrize(
    "key",
    [
        TINY.key(),
        "S16_M1x16-e2_M1x24s-k5-e2-se0.25~stride_cbn_avg_lin_h0_silu~p4_f1_c0_none_m9_x0_k0_l0",
        "S16_C1x16-e2_C1x24s-k5-e2-se0.25~patch_cbn_avg_lin_h0_gelu_ln~p4_f1_c0_none_m9_x0_k0_l0",
    ],
)
def test_cuda_graph_agrees_with_eager_on_cuda(data, key: str) -> None:
    # One network of each block family: the capture must take every one of their layers.
    genotype = Genotype.from_key(key)
    cuda = torch.device("cuda")
    results = []
    for graph in (False, True):
        torch.manual_seed(0)
        model = build(genotype, num_classes=3)
        config = TrainConfig(epochs=3, batch_size=16, lr=0.1, bf16=False, cuda_graph=graph)
        history = fit(
            model,
            data.train,
            augment=Augment(crop_padding=2, cutmix_alpha=1.0),
            normalization=norm(data),
            num_classes=3,
            config=config,
            device=cuda,
            eval_set=data.val,
        )
        results.append((model, history))
    (eager, he), (graphed, hg) = results
    assert "forward" not in vars(graphed)  # the graphed forward does not outlive fit
    for a, b in zip(he.epochs, hg.epochs, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-3, abs=1e-4)
    for p, q in zip(eager.state_dict().values(), graphed.state_dict().values(), strict=True):
        assert torch.allclose(p.float(), q.float(), rtol=1e-3, atol=1e-4)
