"""Where the run computes (CPU, CUDA, MPS), in which precision, and how much memory it takes."""

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runtime.distributed import World


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[requested]:
        raise UserInputError(
            f"training.device: '{requested}' is not available on this machine; set it to \"auto\" or \"cpu\""
        )
    return torch.device(requested)


def allow_tf32(device: torch.device) -> bool:
    """On NVIDIA GPUs from Ampere on, float32 matmuls and convolutions may use TF32 tensor cores: several
    times faster, with a 10-bit mantissa that fine-tuning does not notice. True when enabled."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def cpu_has_fast_bf16() -> bool:
    """True when the CPU does bf16 in hardware (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Precision:
    requested: str  # what the config asked for: no | fp16 | bf16
    used: str  # what actually runs
    reason: str  # why they differ ("" when they do not)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.used)

    @property
    def needs_grad_scaler(self) -> bool:
        # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range and does not
        return self.used == "fp16"


CPU_FP16_IS_SLOW = "fp16 autocast on a CPU is several times slower than fp32"


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """Honour the requested precision where the device does it natively; otherwise fall back, and say why."""
    if requested == "no":
        return Precision(requested, "no", "")
    if device.type == "cpu":
        if cpu_has_fast_bf16():
            if requested == "fp16":
                return Precision(requested, "bf16", f"{CPU_FP16_IS_SLOW}; this CPU has native bf16, which is "
                                 "faster and needs no loss scaling")
            return Precision(requested, "bf16", "")
        if requested == "fp16":
            return Precision(requested, "no", f"{CPU_FP16_IS_SLOW}, and this CPU has no native bf16: fp32")
        return Precision(requested, "no", "this CPU has no native bf16 (AVX512-BF16 or AMX): emulated bf16 is "
                         "slower than fp32, so fp32")
    if device.type == "cuda" and requested == "bf16" and not cuda_has_native_bf16():
        return Precision(requested, "fp16", "this GPU has no native bf16 (it needs compute capability 8.0, Ampere, "
                         "or newer; a T4 is 7.5): emulated bf16 is slow, so fp16 with loss scaling")
    if device.type == "mps" and requested == "bf16":
        return Precision(requested, "fp16", "bf16 autocast is not supported on MPS; fp16 instead")
    return Precision(requested, requested, "")


def cuda_has_native_bf16() -> bool:
    """Native bf16 only: without the argument, is_bf16_supported() also counts the emulation that older GPUs
    (a T4 in Colab) run at a fraction of fp16's speed."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


@dataclass(frozen=True)
class Placement:
    """Where and how a run computes, decided once (preparation.prepare_run) and handed down as one value: the device,
    the precision that really runs there, and the processes of a torchrun launch (size 1 without torchrun)."""

    device: torch.device
    precision: Precision
    processes: World = World()


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    if precision.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.autocast_dtype)


def memory_reading(device: torch.device) -> tuple[str, float]:
    """(log key, MiB): peak allocated CUDA memory on a GPU, the process's resident memory otherwise."""
    if device.type == "cuda":
        return "cuda_peak_mb", torch.cuda.max_memory_allocated(device) / 2**20
    return "rss_mb", psutil.Process().memory_info().rss / 2**20


PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_process_memory() -> None:
    """Start the peak over (Linux only): runs that share a process, as a sweep's do, each get their own peak."""
    with contextlib.suppress(OSError):
        PROC_CLEAR_REFS.write_text("5")  # "5" resets the kernel's high-water mark of resident memory


def peak_process_memory_mb() -> float:
    """The process's peak resident memory since it started, or on Linux since the last reset."""
    with contextlib.suppress(OSError):
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):  # "VmHWM:   812345 kB", the resettable high-water mark
                return int(line.split()[1]) / 2**10
    info = psutil.Process().memory_info()
    if hasattr(info, "peak_wset"):  # Windows
        return info.peak_wset / 2**20
    import resource  # POSIX only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux
