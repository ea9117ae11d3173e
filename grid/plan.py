"""What a grid must build: every dense and pruned model, each named by the hash of its config.

A model's id is content-addressed, so the same dense model (dataset, arch, seed, recipe, threat) is
trained once and shared by every method and sparsity that prunes it, and finished work is found by
its id and skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from grid.spec import GridSpec


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ModelPlan:
    model_id: str
    role: str                 # dense | pruned
    dense_model_id: str       # itself for a dense model
    arch: str
    seed: int
    method: str               # "dense" for dense models
    sparsity: float           # target; 0 for dense models
    config: dict              # everything that determines the weights (hashed into model_id)

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "ModelPlan":
        return ModelPlan(**d)


def dense_models(spec: GridSpec) -> list[ModelPlan]:
    plans = []
    for arch in spec.dense.architectures:
        for seed in spec.dense.seeds:
            config = {"dataset": spec.dataset.name, "arch": arch, "seed": seed,
                      "threat_model": dataclasses.asdict(spec.threat_model),
                      "recipe": dataclasses.asdict(spec.dense.recipe)}
            model_id = f"dense-{arch}-seed{seed}-{config_hash(config)[:8]}"
            plans.append(ModelPlan(model_id, "dense", model_id, arch, seed, "dense", 0.0, config))
    return plans


def pruned_models(spec: GridSpec) -> list[ModelPlan]:
    plans = []
    for dense in dense_models(spec):
        for method in spec.prune.methods:
            for sparsity in spec.prune.sparsities:
                config = {"dense": dense.model_id, "method": method, "sparsity": sparsity,
                          "finetune": dataclasses.asdict(spec.prune.finetune)}
                if method == "hydra":
                    config["score"] = dataclasses.asdict(spec.prune.score)
                pct = f"{sparsity * 100:g}"
                model_id = f"{method}-sp{pct}-{dense.arch}-seed{dense.seed}-{config_hash(config)[:8]}"
                plans.append(ModelPlan(model_id, "pruned", dense.model_id, dense.arch, dense.seed,
                                       method, sparsity, config))
    return plans


def all_models(spec: GridSpec) -> list[ModelPlan]:
    return dense_models(spec) + pruned_models(spec)
