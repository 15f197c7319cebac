"""Which precision really runs for each request on each kind of device, and the reason recorded for it."""

import pytest
import torch

from finetune_pipeline.core import device
from finetune_pipeline.core.device import resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("native_bf16, requested, used, reason", [
    (False, "fp16", "no", "fp16 autocast on a CPU is several times slower than fp32, and this CPU has no native "
                          "bf16: fp32"),
    (False, "bf16", "no", "this CPU has no native bf16 (AVX512-BF16 or AMX): emulated bf16 is slower than fp32, "
                          "so fp32"),
    (True, "fp16", "bf16", "fp16 autocast on a CPU is several times slower than fp32; this CPU has native bf16, "
                           "which is faster and needs no loss scaling"),
    (True, "bf16", "bf16", ""),
    (False, "no", "no", ""),
    (True, "no", "no", ""),
])
def test_on_a_cpu(monkeypatch, native_bf16, requested, used, reason):
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: native_bf16)
    precision = resolve_precision(requested, CPU)
    assert (precision.used, precision.reason) == (used, reason)
    assert "fp16" not in precision.reason or requested == "fp16"  # a bf16 request is never explained by fp16


@pytest.mark.parametrize("native_bf16, requested, used", [
    (False, "bf16", "fp16"), (True, "bf16", "bf16"), (False, "fp16", "fp16"), (True, "fp16", "fp16"),
])
def test_on_a_gpu(monkeypatch, native_bf16, requested, used):
    monkeypatch.setattr(device, "cuda_has_native_bf16", lambda: native_bf16)
    precision = resolve_precision(requested, CUDA)
    assert precision.used == used
    assert precision.needs_grad_scaler == (used == "fp16")
    if requested != used:
        assert precision.reason.startswith("this GPU has no native bf16") and "T4" in precision.reason


def test_emulated_bf16_on_a_gpu_does_not_count_as_native(monkeypatch):
    """A T4 (compute capability 7.5): is_bf16_supported() says True by counting emulation unless asked not to."""
    asked = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return including_emulation  # what torch answers on a T4

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert resolve_precision("bf16", CUDA).used == "fp16"
    assert asked == [False]
