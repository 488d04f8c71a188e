"""TorchScript and ONNX exports, and search.predict, for the block families added with issue 17
(mbconv, convnext) and the new options on the ResNet blocks (kernel, SE, activation, norm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from search.checkpoint import ModelInfo, load_model, save_model
from search.export import TOLERANCE, export_onnx, export_torchscript, onnx_available
from search.predict import main as predict_main
from space import Genotype, build

FAMILIES = {
    # inverted residuals with SE, SiLU, BatchNorm, 5x5 depthwise, stride-2 and projection
    "mbconv": "S16_M1x16-e1_M2x24s-k5-e6-se0.25_M1x32s-e3~stride_cbn_avg_lin_h0_silu"
    "~p4_f1_c0_none_m9_x0_k0_l0",
    # ConvNeXt blocks with LayerNorm, GELU, 7x7 depthwise, the patch downsampling layer
    "convnext": "S16_C2x16-k7_C2x32s-k7-se0.25_C1x48s-k3-e2~patch_cbn_avgmax_lin_h0_gelu_ln"
    "~p4_f1_c0_none_m9_x0_k0_l0",
    # the ResNet blocks with the new options
    "resnet-options": "S16_B1x16-k5-se0.25_N1x32s-e2_P1x32-k7~conv_acbn_max_conv_h0_gelu_ln"
    "~p4_f1_c0_none_m9_x0_k0_l0",
}
CLASSES = ("ant", "bee", "cat")


def trained_looking(key: str) -> torch.nn.Module:
    """The network with random norm statistics and layer scales, as after training: at
    initialisation the zeroed last norms and 1e-6 layer scales would hide a wrong branch."""
    torch.manual_seed(0)
    model = build(Genotype.from_key(key), num_classes=len(CLASSES))
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and tensor.ndim == 1:
                if name.endswith("running_var"):
                    tensor.uniform_(0.5, 2.0)
                else:
                    tensor.normal_(0.0, 0.5)
    return model.eval()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_torchscript_export_agrees(family: str, tmp_path) -> None:
    model = trained_looking(FAMILIES[family])
    result = export_torchscript(model, tmp_path / "m.pt", in_channels=3, image_size=(32, 32))
    assert result.path.exists()
    assert result.max_abs_diff is not None and result.max_abs_diff <= TOLERANCE
    # and independently of the exporter's own check, on other input
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        diff = (torch.jit.load(str(result.path))(x) - model(x)).abs().max().item()
    assert diff <= TOLERANCE


@pytest.mark.slow
@pytest.mark.skipif(not onnx_available(), reason="needs onnx and onnxscript")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_onnx_export_agrees(family: str, tmp_path) -> None:
    import onnxruntime

    model = trained_looking(FAMILIES[family])
    result = export_onnx(model, tmp_path / "m.onnx", in_channels=3, image_size=(32, 32))
    assert result.path.exists()
    assert result.max_abs_diff is not None and result.max_abs_diff <= TOLERANCE
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = torch.randn(7, 3, 32, 32)  # another batch size: the batch is free
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert (torch.from_numpy(logits) - model(x)).abs().max().item() <= TOLERANCE


def test_predict_with_a_convnext_model_file(tmp_path, capsys) -> None:
    model = trained_looking(FAMILIES["convnext"])
    info = ModelInfo(
        genotype=Genotype.from_key(FAMILIES["convnext"]),
        classes=CLASSES,
        in_channels=3,
        image_size=(32, 32),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    path = tmp_path / "model.safetensors"
    save_model(path, model, info)
    loaded, _ = load_model(path)
    images = []
    rng = np.random.default_rng(0)
    for i in range(2):
        image = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(image)
        images.append(image)
    capsys.readouterr()
    assert predict_main([str(path), *map(str, images), "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for image, line in zip(images, lines, strict=True):
        # The same probabilities as the model itself on the resized, normalised image
        with Image.open(image) as img:
            array = np.asarray(img.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32)
        x = (torch.from_numpy(array).permute(2, 0, 1)[None] / 255 - 0.5) / 0.25
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)[0]
        ranked = [r.split() for r in line.split(": ", 1)[1].split("  ")]
        for name, prob in ranked:
            assert float(prob) == pytest.approx(probs[CLASSES.index(name)].item(), abs=1.5e-3)
    for p, q in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(p, q)
