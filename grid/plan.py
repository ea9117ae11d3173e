"""What a grid must build: every dense and pruned model, each named by the hash of its config.

A model's id is content-addressed, so the same dense model (dataset, arch, seed, recipe, threat) is
trained once and shared by every method and sparsity that prunes it, and finished work is found by
its id and skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from apgrid.grid.spec import GridSpec
from apgrid.trainables.recipes import Deviation, deviations, reason_for
from apgrid.trainables.training import Recipe, recipe_config


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ModelPlan:
    model_id: str
    role: str  # dense | pruned
    dense_model_id: str  # itself for a dense model
    arch: str
    seed: int
    method: str  # "dense" for dense models
    sparsity: float  # target; 0 for dense models
    config: dict  # everything that determines the weights (hashed into model_id)
    # where this model is trained unlike its method's authors (trainables/recipes.py); not hashed
    deviations: tuple[str, ...] = ()

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict) -> ModelPlan:
        return ModelPlan(**d)


def model_card(plan: ModelPlan, dataset: str, metrics: dict, extra: dict | None = None) -> dict:
    """The card.json written beside a model: its identity, config, metrics and taxonomy."""
    from apgrid.trainables.methods import PRUNING_METHODS

    card = {
        "model_id": plan.model_id,
        "role": plan.role,
        "dense_model_id": plan.dense_model_id,
        "arch": plan.arch,
        "seed": plan.seed,
        "method": plan.method,
        "target_sparsity": plan.sparsity,
        "dataset": dataset,
        "config_hash": plan.config_hash,
        "config": plan.config,
        "metrics": metrics,
    }
    if plan.role == "pruned" and plan.method in PRUNING_METHODS:  # not for user checkpoints
        card["taxonomy"] = PRUNING_METHODS[plan.method].taxonomy
        card["deviations"] = list(plan.deviations)
    return {**card, **(extra or {})}


def method_deviations(spec: GridSpec, method) -> list[Deviation]:
    """Where the grid trains `method` (a MethodSpec) unlike its authors' recipe, phase by phase;
    empty for a method whose recipe is not recorded."""
    from apgrid.trainables.methods import PRUNING_METHODS

    entry = PRUNING_METHODS[method.name]
    if entry.recipe is None:
        return []
    phases = {
        "parent": method.dense_recipe(spec),
        "search": method.search_recipe(spec) if entry.search_phase else None,
        "finetune": method.finetune_recipe(spec) if entry.finetunes else None,
    }
    return deviations(entry.recipe, phases, spec.threat_model.eps, entry.trains)


def explained_deviations(spec: GridSpec, method) -> list[tuple[Deviation, str | None]]:
    """Each deviation of `method` with the spec's reason for it (the method's `because`, then
    prune.because), None where the spec gives none."""
    return [(d, reason_for(d, method.because, spec.prune.because)) for d in method_deviations(spec, method)]


def unexplained_deviations(spec: GridSpec) -> list[str]:
    """'method: field' for every deviation the spec gives no reason for."""
    return [
        f"{m.name}: {d.where}"
        for m in spec.prune.methods
        for d, reason in explained_deviations(spec, m)
        if reason is None
    ]


def _with_reason(deviation: Deviation, reason: str | None) -> str:
    return str(deviation) if reason is None else f"{deviation} — because {reason}"


def dense_plan(spec: GridSpec, arch: str, seed: int, recipe: Recipe) -> ModelPlan:
    config = {
        "dataset": spec.dataset.name,
        "arch": arch,
        "seed": seed,
        "threat_model": dataclasses.asdict(spec.threat_model),
        "recipe": recipe_config(recipe),
        **_validation(spec),
    }
    model_id = f"dense-{arch}-seed{seed}-{config_hash(config)[:8]}"
    return ModelPlan(model_id, "dense", model_id, arch, seed, "dense", 0.0, config)


def _validation(spec: GridSpec) -> dict:
    """The validation split changes the training data, so it is part of a trained model's config."""
    return {"validation": spec.dataset.validation} if spec.dataset.validation else {}


def _applies(method, arch: str) -> bool:
    return method.architectures is None or arch in method.architectures


def dense_models(spec: GridSpec) -> list[ModelPlan]:
    """Every dense parent the grid needs: one per (arch, seed, recipe), the recipe being each
    method's (its paper's parent) or dense.recipe; equal recipes are one model."""
    plans = {}
    for arch in spec.dense.architectures:
        recipes = [m.dense_recipe(spec) for m in spec.prune.methods if _applies(m, arch)]
        for recipe in recipes or [spec.dense.recipe]:
            for seed in spec.dense.seeds:
                plan = dense_plan(spec, arch, seed, recipe)
                plans.setdefault(plan.model_id, plan)
    return list(plans.values())


def pruned_models(spec: GridSpec) -> list[ModelPlan]:
    from apgrid.trainables.methods import PRUNING_METHODS

    plans = []
    for arch in spec.dense.architectures:
        for seed in spec.dense.seeds:
            for method in (m for m in spec.prune.methods if _applies(m, arch)):
                plans += _pruned(
                    spec,
                    dense_plan(spec, arch, seed, method.dense_recipe(spec)),
                    method,
                    PRUNING_METHODS[method.name].search_phase,
                )
    prunable = {c.name for c in spec.checkpoints if c.prune}
    parents = checkpoint_models(spec) if prunable else []
    for parent in (p for p in parents if p.config["name"] in prunable):
        for method in (m for m in spec.prune.methods if _applies(m, parent.arch)):
            plans += _pruned(spec, parent, method, PRUNING_METHODS[method.name].search_phase)
    return plans


def _pruned(spec: GridSpec, dense: ModelPlan, method, search_phase: bool) -> list[ModelPlan]:
    plans = []
    found = tuple(_with_reason(d, r) for d, r in explained_deviations(spec, method))
    if "checkpoint" in dense.config:  # a published parent: its training is not the grid's
        found = tuple(d for d in found if not d.startswith("parent."))
    for sparsity in method.sparsities or spec.prune.sparsities:
        config = {
            "dense": dense.model_id,
            "method": method.name,
            "sparsity": sparsity,
            "finetune": recipe_config(method.finetune_recipe(spec)),
            **_validation(spec),
        }
        if search_phase:
            config["search"] = recipe_config(method.search_recipe(spec))
        if method.options:
            config["options"] = method.options
        pct = f"{sparsity * 100:g}"
        model_id = f"{method.name}-sp{pct}-{dense.arch}-seed{dense.seed}-{config_hash(config)[:8]}"
        plans.append(
            ModelPlan(
                model_id,
                "pruned",
                dense.model_id,
                dense.arch,
                dense.seed,
                method.name,
                sparsity,
                config,
                found,
            )
        )
    return plans


def file_digest(path: str) -> str:
    """SHA-256 of a file, computed once per version of it (path, size, modification time): a
    published checkpoint can be hundreds of MB, and the plan is asked for often."""
    stat = Path(path).stat()
    return _digest(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def checkpoint_models(spec: GridSpec) -> list[ModelPlan]:
    """Models evaluated from user checkpoints; the id hashes the file's bytes, so a replaced file
    is a new model and an unchanged one is never re-imported."""
    ids, configs = {}, {}
    for c in spec.checkpoints:
        digest = file_digest(c.path)
        config = {
            "checkpoint": c.path,
            "sha256": digest,
            "dataset": spec.dataset.name,
            "arch": c.arch,
            "name": c.name,
        }
        # what changes the imported model besides the file: its normalisation, HYDRA's sparsity
        how = {
            k: v
            for k, v in (("normalization", c.normalization), ("sparsity", c.sparsity))
            if v not in (None, 0.0)
        }
        key = digest if not how else config_hash({"sha256": digest, **how})
        configs[c.name] = {**config, **how}
        ids[c.name] = (f"ckpt-{c.name}-{key[:8]}", digest)
    plans = []
    for c in spec.checkpoints:
        model_id, digest = ids[c.name]
        role = "pruned" if c.dense else "dense"
        dense_id = ids[c.dense][0] if c.dense else model_id
        config = configs[c.name]
        plans.append(
            ModelPlan(
                model_id, role, dense_id, c.arch, 0, c.method if c.dense else "dense", c.sparsity, config
            )
        )
    return plans


def all_models(spec: GridSpec) -> list[ModelPlan]:
    return dense_models(spec) + pruned_models(spec) + checkpoint_models(spec)


# A published per-GPU rate to turn model passes into GPU-hours: NVIDIA's ResNet-50 v1.5 training
# throughput on one A100 80GB in TF32, 938 images/s (DeepLearningExamples,
# PyTorch/Classification/ConvNets/resnet50v1.5/README.md, "Training performance"), i.e. 938
# forward + backward passes of a 224x224 ResNet-50 a second; another network's passes are scaled
# by its forward FLOPs. Attacks and adversarial training run FP32 kernels (TF32 on an A100).
A100_RESNET50_TRAIN_IMAGES_PER_S = 938


@functools.cache  # a plan asks once per model; the count depends on these three only
def forward_flops(arch: str, image_shape: tuple[int, int, int], num_classes: int) -> float:
    """FLOPs of one sample's forward pass, counted by torch on the meta device (no weights, no data)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from apgrid.trainables.models import ARCHITECTURES

    with torch.device("meta"):
        model = (
            _rn50() if arch == "torchvision-resnet50" else ARCHITECTURES[arch](image_shape[0], num_classes)
        )
        x = torch.empty(1, *image_shape)
    with FlopCounterMode(display=False) as counter:
        model.eval()(x)  # batch norm in training mode refuses a batch of one 1x1 map (resnet18 on digits)
    return float(counter.get_total_flops())


def _rn50():
    from torchvision.models import resnet50

    return resnet50()


@dataclass(frozen=True)
class PlanCost:
    """The work a grid asks for, in model passes (one sample through the network, forward or
    backward), and its A100 GPU-hours at the published rate above."""

    training_passes: float
    evaluation_passes: float
    gpu_hours: float


def recipe_passes(recipe: dict, train_size: int) -> float:
    """Forward + backward passes of a training run: each step attacks (k steps of a forward
    and a backward) and then trains (one forward, one backward)."""
    steps = {"clean": 0, "fgsm-rs": 1, "fgsm": 1}.get(
        recipe.get("trainer", "pgd"), recipe.get("pgd_steps", 7)
    )
    return recipe.get("epochs", 0) * train_size * 2 * (steps + 1)


def plan_cost(spec: GridSpec) -> PlanCost:
    """Model passes of every trial and of the evaluation, from the recipes and the per-sample pass
    counts of the evaluation benchmark (benchmarks/evaluation.py, part 5); no data is read."""
    from apgrid.trainables.data import DATASETS

    info = DATASETS[spec.dataset.name]
    train = info.train_size - spec.dataset.validation
    ev = spec.evaluation.settings
    n = ev.num_samples or info.test_size
    aa = min(n, ev.autoattack_samples or n)
    # per sample: PGD-k and the clean pass; FMN ~2 passes a step (one forward, one backward);
    # AutoAttack standard ~2,500 passes (benchmarks/results: 1,907 forward + 583 backward)
    per_model_eval = n * (ev.pgd_steps * 2 + 1 + 2 * ev.fmn_steps) + aa * 2490
    reference = forward_flops("torchvision-resnet50", (3, 224, 224), 1000)
    training = evaluation = gpu_seconds = 0.0
    for plan in all_models(spec):
        flops = forward_flops(plan.arch, info.image_shape, info.num_classes)
        passes = sum(
            recipe_passes(plan.config[k], train) for k in ("recipe", "search", "finetune") if k in plan.config
        )
        training += passes
        evaluation += per_model_eval
        # one training image = a forward and a backward pass of ResNet-50 on the reference card
        rate = 2 * A100_RESNET50_TRAIN_IMAGES_PER_S * reference / flops
        gpu_seconds += (passes + per_model_eval) / rate
    return PlanCost(training, evaluation, gpu_seconds / 3600)


def fewer_shards_note(asked: int, made: int, n: int, block: int) -> str:
    """Why a grid makes fewer shards than evaluation.shards: a shard holds whole blocks."""
    if made >= asked:
        return ""
    return f" (evaluation.shards {asked} asked: {n} samples make {made} blocks of {block})"


def describe(spec: GridSpec) -> str:
    """The plan in a few lines: trials, shards, the model passes of training and evaluation and
    their A100 GPU-hours (see plan_cost), without reading any data."""
    from apgrid.trainables.data import DATASETS
    from apgrid.trainables.evaluation import shard_ranges

    dense, pruned, ckpt = dense_models(spec), pruned_models(spec), checkpoint_models(spec)
    ev = spec.evaluation
    n = ev.settings.num_samples or DATASETS[spec.dataset.name].test_size
    shards = len(shard_ranges(n, ev.settings.block_size, ev.shards))
    models = len(dense) + len(pruned) + len(ckpt)
    aa = min(n, ev.settings.autoattack_samples or n)
    cost = plan_cost(spec)

    def count(k, what):
        return f"{k} {what}{'s' * (k != 1)}"

    shards_note = fewer_shards_note(ev.shards, shards, n, ev.settings.block_size)

    return (
        f"plan: {count(models, 'model')} ({count(len(dense), 'dense trial')}, "
        f"{count(len(pruned), 'prune trial')}, {count(len(ckpt), 'checkpoint')}); "
        f"evaluation: {n} test samples each (AutoAttack on {aa}), "
        f"{shards} shards a model{shards_note} = {models * shards} shard tasks on {ev.actors} actors; "
        f"~{cost.training_passes / 1e6:.1f}M model passes to train and "
        f"~{cost.evaluation_passes / 1e6:.1f}M to evaluate (forward or backward, one sample "
        f"each), ~{gpu_time(cost.gpu_hours)} on one A100 at NVIDIA's published rate (a floor "
        f"for small networks, which do not fill a GPU)"
    )


def describe_deviations(spec: GridSpec) -> str:
    """Per method, where the grid trains it unlike its authors (what the dry run lists)."""
    from apgrid.trainables.methods import PRUNING_METHODS

    lines, total, unexplained = [], 0, 0
    for method in spec.prune.methods:
        if PRUNING_METHODS[method.name].recipe is None:
            lines.append(f"  {method.name}: no authors' recipe recorded")
            continue
        found = explained_deviations(spec, method)
        total += len(found)
        unexplained += sum(reason is None for _, reason in found)
        lines.append(f"  {method.name}: {len(found) or 'no'} deviation{'s' * (len(found) != 1)}")
        lines += [f"    {_with_reason(d, r)}" if r else f"    UNEXPLAINED {d}" for d, r in found]
    budget = f" (prune.budget {spec.prune.budget:g}: the authors' epochs scaled)" * (spec.prune.budget != 1)
    head = (
        f"deviations from the methods' authors: {total}, {unexplained} unexplained"
        f" (prune.because / a method's because: gives the reason){budget}"
    )
    return "\n".join([head, *lines]) if spec.prune.methods else "deviations: none (no method)"


def gpu_time(hours: float) -> str:
    if hours >= 1:
        return f"{hours:.3g} GPU-hours"
    return f"{hours * 60:.2g} GPU-minutes" if hours * 60 >= 1 else f"{hours * 3600:.2g} GPU-seconds"
