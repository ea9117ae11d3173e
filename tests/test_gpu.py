"""The GPU tier (`pytest -m gpu`): what the CPU tiers can only mock, on a real CUDA device.

Collected everywhere, skipped without CUDA; benchmarks/gpu-check runs it on the GPU machine.
Data are random CIFAR-shaped tensors (3x32x32, 10 classes, seeded): these tests check devices,
not accuracy.
"""

import numpy as np
import pytest
import torch
from torch import nn

from apgrid.trainables import masks as masking
from apgrid.trainables.evaluation import (
    EvalSettings,
    ThreatModel,
    attack_bytes_per_sample,
    auto_batch_size,
    evaluate_samples,
    fit_batch_size,
    memory_budget,
)
from apgrid.trainables.methods.magnitude import prune_magnitude
from apgrid.trainables.methods.scores import hydra_attach_scores, hydra_finalize
from apgrid.trainables.models import ARCHITECTURES, build_model
from apgrid.trainables.training import Recipe, train_epoch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

CUDA = torch.device("cuda")
SHAPE = (3, 32, 32)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
THREAT = ThreatModel(norm="Linf", eps=8 / 255)


def cifar_like(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable random data: one fixed random pattern per class, plus per-sample noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand(10, *SHAPE, generator=torch.Generator().manual_seed(1234))
    y = torch.randint(0, 10, (n,), generator=g)
    x = (0.5 + 0.2 * (patterns[y] - 0.5) + 0.15 * torch.randn(n, *SHAPE, generator=g)).clamp(0, 1)
    return x, y


def trained_small(device) -> nn.Module:
    """cifar-small after two quick PGD-AT epochs on 1,000 random samples (a few seconds)."""
    torch.manual_seed(0)
    model = build_model("cifar-small", 3, 10, MEAN, STD).to(device)
    x, y = cifar_like(1000)
    recipe = Recipe(epochs=2, lr=0.05, batch_size=100, pgd_steps=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9)
    for epoch in range(recipe.epochs):
        train_epoch(
            model,
            optimizer,
            x,
            y,
            recipe=recipe,
            eps=THREAT.eps,
            norm="Linf",
            seed=0,
            epoch=epoch,
            device=device,
        )
    return model.eval()


@pytest.mark.parametrize("arch", sorted(a for a in ARCHITECTURES if a != "digits-cnn"))
def test_every_cifar_architecture_runs_forward_and_backward_on_cuda(arch):
    model = build_model(arch, 3, 10, MEAN, STD).to(CUDA).train()
    x = torch.rand(4, *SHAPE, device=CUDA, requires_grad=True)
    logits = model(x)
    logits.logsumexp(1).sum().backward()
    assert logits.shape == (4, 10) and logits.device.type == CUDA.type
    assert torch.isfinite(logits).all() and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad.device.type == CUDA.type for p in model.parameters() if p.grad is not None)


def test_masks_stay_on_the_device_through_pruning_and_a_training_step():
    """Magnitude masks, HYDRA's masks from learned scores, and masks loaded from a CPU
    checkpoint all live on the model's device, and pruned weights stay zero after a step."""
    torch.manual_seed(0)
    magnitude = build_model("resnet18", 3, 10, MEAN, STD).to(CUDA)
    prune_magnitude(magnitude, 0.9, "local")
    hydra = build_model("resnet18", 3, 10, MEAN, STD).to(CUDA)
    hydra_attach_scores(hydra, 0.9)
    hydra_finalize(hydra)
    loaded = build_model("resnet18", 3, 10, MEAN, STD).to(CUDA)
    masking.apply_masks(loaded, {k: v.cpu() for k, v in masking.masks_of(magnitude).items()})
    x, y = cifar_like(64)
    for model in (magnitude, hydra, loaded):
        masks = masking.masks_of(model)
        assert masks and all(m.device.type == CUDA.type for m in masks.values())
        assert masking.measured_sparsity(model) == pytest.approx(0.9, abs=0.01)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        recipe = Recipe(epochs=1, batch_size=64, pgd_steps=2)
        train_epoch(
            model, optimizer, x, y, recipe=recipe, eps=THREAT.eps, norm="Linf", seed=0, epoch=0, device=CUDA
        )
        assert masking.measured_sparsity(model) == pytest.approx(0.9, abs=0.01)


def test_autoattack_and_fmn_on_cuda_match_the_cpu_on_one_block():
    """One block evaluated by trainables/evaluation.py on both devices. Tolerance: TF32 off, the
    two devices still round differently, so a sample may flip only where its boundary is at eps
    (FMN distance within 10 % of eps on either device); FMN finds the same samples and its
    distances agree within 5 % + 1/255 each."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    gpu_model = trained_small(CUDA)
    cpu_model = build_model("cifar-small", 3, 10, MEAN, STD)
    cpu_model.load_state_dict({k: v.cpu() for k, v in gpu_model.state_dict().items()})
    x, y = cifar_like(32, seed=1)
    settings = EvalSettings(block_size=32, batch_size=32, fmn_steps=50)
    on_cpu = evaluate_samples(cpu_model.eval(), x, y, 0, THREAT, settings, signed_fmn=True, device="cpu")
    on_gpu = evaluate_samples(gpu_model, x, y, 0, THREAT, settings, signed_fmn=True, device=CUDA)
    assert (on_cpu.clean_pred == on_gpu.clean_pred).all()
    near = (np.abs(on_cpu.fmn_eps.abs() - THREAT.eps) < 0.1 * THREAT.eps) | (
        np.abs(on_gpu.fmn_eps.abs() - THREAT.eps) < 0.1 * THREAT.eps
    )
    for flag in ("pgd_correct", "aa_correct"):
        differ = on_cpu[flag].to_numpy(bool) != on_gpu[flag].to_numpy(bool)
        assert not (differ & ~near).any(), (flag, np.flatnonzero(differ & ~near))
    assert (on_cpu.fmn_found == on_gpu.fmn_found).all()
    both = on_cpu.fmn_found.to_numpy(bool)
    np.testing.assert_allclose(on_gpu.fmn_eps[both], on_cpu.fmn_eps[both], rtol=0.05, atol=1 / 255)


def test_auto_batch_size_reads_the_real_card_and_its_estimate_covers_real_use():
    """batch_size: auto on the real card: a whole ResNet-18 block of 250 fits any share down to a
    quarter; a share too small for the block splits it; and the per-sample estimate is not below
    half of what a forward-backward really allocates (the budget is half the share)."""
    model = build_model("resnet18", 3, 10, MEAN, STD).to(CUDA).eval()
    total = torch.cuda.get_device_properties(CUDA).total_memory
    assert memory_budget(CUDA, 0.5) == int(0.25 * total)
    assert auto_batch_size(model, SHAPE, 250, CUDA, share=0.25) == 250
    per_sample = attack_bytes_per_sample(model, SHAPE)
    tiny_share = 100 * per_sample * 2 / total  # a budget of ~100 samples
    assert auto_batch_size(model, SHAPE, 250, CUDA, share=tiny_share) == fit_batch_size(
        250, per_sample, 100 * per_sample
    )
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    x = torch.rand(128, *SHAPE, device=CUDA, requires_grad=True)
    model(x).sum().backward()
    torch.cuda.synchronize()
    used = (torch.cuda.max_memory_allocated() - before) / 128
    assert used < 2 * per_sample, f"{used / 2**20:.1f} MB a sample, estimate {per_sample / 2**20:.1f}"


def test_two_evaluation_actors_share_one_card_at_half_a_gpu(ray_session, tmp_path):
    """The grid's own EvalWorker, two of them at actor_gpus 0.5: both placed at once on the one
    card (the same GPU id), each choosing its batch from half the card, and their shards' rows
    equal to the block evaluated in this process."""
    from apgrid.grid.evaluate import EvalWorker
    from apgrid.grid.store import ModelStore

    if ray_session.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("Ray sees no GPU")
    model = trained_small(CUDA)
    ModelStore(tmp_path).save(
        "m", masking.plain_state_dict(model), masking.masks_of(model), {"arch": "cifar-small"}
    )
    info = {"image_shape": SHAPE, "num_classes": 10, "mean": MEAN, "std": STD}
    actors = [
        EvalWorker.options(num_cpus=1, num_gpus=0.5).remote(str(tmp_path), info, 1, "cuda", 0.5)
        for _ in range(2)
    ]
    batch = ray_session.get([a.batch_size_for.remote("cifar-small", 50) for a in actors], timeout=300)
    assert all(b[0] == 50 and b[2] == memory_budget(CUDA, 0.5) for b in batch)
    x, y = cifar_like(100, seed=2)
    data = ray_session.put({"x": x, "y": y})
    settings = EvalSettings(block_size=50, batch_size=50, fmn_steps=20, autoattack_attacks=("apgd-ce",))
    refs = [
        a.evaluate.remote([data], "m", "cifar-small", True, start, start + 50, THREAT, settings)
        for a, start in zip(actors, (0, 50))
    ]
    results = ray_session.get(refs, timeout=300)
    gpu_ids = {tuple(r[4]) for r in results}
    assert len(gpu_ids) == 1 and len(gpu_ids.pop()) == 1, "both actors on one card"
    rows = [v for r in results for v in r[0].clean_pred.tolist()]
    here = evaluate_samples(model, x, y, 0, THREAT, settings, True, CUDA)
    assert rows == here.clean_pred.tolist()
    for a in actors:
        ray_session.kill(a)
