"""What a model costs: parameters, non-zeros, size on disk and measured inference speed.

The compressed-models benchmark (arXiv 2308.08160, Sec. 4) reports inference time and model size
before and after pruning. Structured pruning removes filters, so the dense file and the dense
kernels really shrink. Unstructured masks only zero weights: the file shrinks only in a sparse
encoding, and dense kernels run exactly as fast as before. The table says so instead of hiding it.
"""

from __future__ import annotations

import io
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from apgrid.trainables.masks import plain_state_dict


@dataclass(frozen=True)
class ModelCost:
    parameters: int  # every parameter the network holds (removed filters are gone)
    nonzero: int  # of those, the non-zero ones
    file_bytes: int  # torch.save of the fp32 state dict, as apgrid stores it
    sparse_bytes: int  # a sparse encoding: one bit per weight plus the fp32 non-zeros
    latency_ms: float  # median time of one forward pass on a batch
    throughput: float  # samples per second at that median
    batch_size: int
    device: str

    def as_dict(self) -> dict:
        return asdict(self)


def size_bytes(model: nn.Module) -> tuple[int, int]:
    """(torch.save size of the dense fp32 state dict, bitmap + non-zero values size)."""
    state = plain_state_dict(model)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    sparse_bits = sum(
        t.numel() + 32 * int((t != 0).sum()) if t.is_floating_point() else 8 * t.element_size() * t.numel()
        for t in state.values()
    )
    return buffer.getbuffer().nbytes, (sparse_bits + 7) // 8


@torch.inference_mode()
def latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    device: torch.device,
    batch_size: int = 128,
    repeats: int = 10,
    warmup: int = 3,
) -> float:
    """Median seconds of one forward pass on a batch of random inputs (CUDA synchronised)."""
    model = model.to(device).eval()
    x = torch.rand(batch_size, *input_shape, device=device)
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def model_cost(
    model: nn.Module,
    input_shape: tuple[int, ...],
    device: torch.device,
    batch_size: int = 128,
    repeats: int = 10,
) -> ModelCost:
    """Costs of a model whose masks (if any) are folded into its weights."""
    file_bytes, sparse_bytes = size_bytes(model)
    seconds = latency(model, input_shape, device, batch_size, repeats)
    params = list(model.parameters())
    return ModelCost(
        parameters=sum(p.numel() for p in params),
        nonzero=sum(int((p != 0).sum()) for p in params),
        file_bytes=file_bytes,
        sparse_bytes=sparse_bytes,
        latency_ms=seconds * 1000,
        throughput=batch_size / seconds,
        batch_size=batch_size,
        device=str(device),
    )
