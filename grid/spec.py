"""The grid spec: YAML validated into typed objects before anything starts.

Every problem raises SpecError with one line that names the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from apgrid.analysis.settings import AnalysisSettings as AnalysisSpec
from apgrid.errors import show_value as _show
from apgrid.trainables.attacks import AUTOATTACK_ENSEMBLES
from apgrid.trainables.data import DATASETS
from apgrid.trainables.evaluation import EvalSettings, ThreatModel
from apgrid.trainables.fields import (
    MAX_INT,
    FieldError,
    LayerSparsity,
    check_keys,
    choice,
    flag,
    mapping,
    number,
    output_folder,
    whole,
)
from apgrid.trainables.methods import PRUNING_METHODS
from apgrid.trainables.models import ARCHITECTURES
from apgrid.trainables.training import LINF_ONLY, NEUTRAL, TRAINERS, Recipe

AUTOATTACK_VERSIONS = tuple(AUTOATTACK_ENSEMBLES)
EXAMPLES = Path(__file__).parent / "examples"
DEFAULT_SPEC = EXAMPLES / "demo.yaml"
# Spec fields outside a grid's identity (GridSpec.fingerprint): changing them on an existing grid
# keeps its finished work. Shards stay inside: they fix the ranges that partial results are kept in.
WHERE_AND_REPORT = ("output", "tracking_uri", "storage", "ray_address", "analysis")
HOW_IT_RUNS = ("resources", "max_failures", "evaluation.actors")
NOT_IDENTITY = WHERE_AND_REPORT + HOW_IT_RUNS  # dotted paths into the spec's layout


def identity(body: dict) -> dict:
    """`body` (a spec's to_dict) less what computes nothing, in place: where the grid is written,
    tracked and run (NOT_IDENTITY), where its data lives (None, so grids without a root keep their
    fingerprint), the reasons for its deviations and what papers reported. The fingerprint, the
    grid run's MLflow params and a refused launch's "it differs in" read this."""
    for path in NOT_IDENTITY:
        *parents, leaf = path.split(".")
        node = body
        for key in parents:
            node = node[key]
        node.pop(leaf, None)
    body["dataset"]["root"] = None
    for section in (body["prune"], *body["prune"]["methods"], *body["checkpoints"]):
        section.pop("because", None)
        section.pop("reported", None)
    return body


MAX_SEED = 2**32 - 1  # seeds: what numpy and torch generators accept
SPARSITY = {"low": 0.0, "high": 1.0, "high_open": True}  # a pruned fraction
SHARE = {"low": 0.0, "high": 1024.0}  # CPUs or GPUs per trial or actor


# A spec problem, phrased as 'field: what is wrong; what is allowed': the one error type of spec
# fields and method options alike (trainables/fields.py).
SpecError = FieldError


@dataclass(frozen=True)
class DatasetSpec:
    name: str = field(default="digits", metadata={"choices": tuple(DATASETS)})
    root: str | None = None
    download: bool = False
    # training samples held out for model selection (recipe select: best)
    validation: int = field(default=0, metadata={"min": 0})


@dataclass(frozen=True)
class DenseSpec:
    architectures: tuple[str, ...] = field(
        default=("digits-cnn",), metadata={"choices": tuple(ARCHITECTURES)}
    )
    seeds: tuple[int, ...] = field(default=(0,), metadata={"min": 0, "max": MAX_SEED})
    recipe: Recipe = Recipe()
    # true: every method prunes the one parent `recipe` trains (a benchmark that compares pruning
    # alone); false: each method's parent follows its authors' where `recipe` leaves a field unset
    shared: bool = False


@dataclass(frozen=True)
class MethodSpec:
    """One pruning method of the grid, optionally limited to some architectures and sparsities."""

    name: str
    # None: every dense architecture
    architectures: tuple[str, ...] | None = field(default=None, metadata={"choices": tuple(ARCHITECTURES)})
    sparsities: tuple[float, ...] | None = field(default=None, metadata=SPARSITY)  # None: prune.sparsities
    options: dict = field(default_factory=dict)  # the method's options, defaults filled in
    finetune: Recipe | None = None  # None: prune.finetune
    search: Recipe | None = None  # None: prune.search
    dense: Recipe | None = None  # the parent's recipe; None: dense.recipe
    # why this grid departs from the method's authors: {deviation pattern: one-line reason}, the
    # pattern a deviation's field as the dry run names it (finetune.epochs, selection) or a
    # shell-style wildcard (finetune.*, *.eps); over prune.because. Outside the grid's identity.
    because: dict = field(default_factory=dict)
    # what the method's paper reported for the models it prunes: ({arch, sparsity, clean, robust,
    # attack, source}, ...), shown in Table 1 beside AutoAttack's; computes nothing, so outside
    # the grid's identity like `because`
    reported: tuple[dict, ...] = ()

    def reported_for(self, arch: str, sparsity: float) -> dict | None:
        """The paper's figures for this method's model of `arch` at `sparsity`, if given."""
        for entry in self.reported:
            if entry["arch"] == arch and entry["sparsity"] == sparsity:
                return {k: v for k, v in entry.items() if k not in ("arch", "sparsity")}
        return None

    def dense_recipe(self, spec: GridSpec) -> Recipe:
        """The recipe of the dense parent this method prunes (its paper's: HYDRA a TRADES parent)."""
        return self.dense or spec.dense.recipe

    def finetune_recipe(self, spec: GridSpec) -> Recipe:
        return self.finetune or spec.prune.finetune

    def search_recipe(self, spec: GridSpec) -> Recipe:
        return self.search or spec.prune.search


@dataclass(frozen=True)
class PruneSpec:
    methods: tuple[MethodSpec, ...] = tuple(MethodSpec(m) for m in ("lwm-local", "lwm-global", "hydra"))
    sparsities: tuple[float, ...] = field(default=(0.9, 0.95), metadata=SPARSITY)
    finetune: Recipe = Recipe(epochs=5, lr=0.01)
    # the mask-search phase: HYDRA's score optimisation, the ADMM phase of R-ADMM and ATMC
    search: Recipe = Recipe(epochs=5, lr=0.1, weight_decay=1e-4)
    # the share of each method's authors' epochs a grid trains for (CPU-scale grids: 0.05); values
    # the spec sets itself are not scaled. Every scaled value is listed as a deviation.
    budget: float = field(default=1.0, metadata={"low": 0.001, "high": 1.0})
    # why every method departs from its authors where it does (MethodSpec.because's layout)
    because: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointSpec:
    """A trained model to evaluate without training it (e.g. a published AP checkpoint)."""

    name: str
    arch: str = field(metadata={"choices": tuple(ARCHITECTURES)})
    path: str
    dense: str | None = None  # name of the dense checkpoint this one was pruned from
    method: str = "external"
    # pruned fraction (HYDRA's popup_scores keep the rest)
    sparsity: float = field(default=0.0, metadata=SPARSITY)
    # the input normalisation a bare network was trained with: "none" or {mean, std}; None for
    # a checkpoint that carries apgrid's normalisation layer (an apgrid model)
    normalization: str | dict | None = None
    # what its paper reported: {clean, robust, attack}; Table 1 shows reported - AutoAttack
    reported: dict | None = None
    prune: bool = False  # a dense checkpoint the grid's methods prune, as a trained parent


@dataclass(frozen=True)
class EvaluationSpec(EvalSettings):
    """The evaluation section as the YAML writes it: the settings every model is evaluated with,
    and how the grid spreads the work (shards of the test samples, actors)."""

    shards: int = field(default=4, metadata={"min": 1})
    actors: int = field(default=2, metadata={"min": 1})

    @property
    def settings(self) -> EvalSettings:
        """What the evaluation of one model needs (trainables.evaluation)."""
        return EvalSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(EvalSettings)})


@dataclass(frozen=True)
class Resources:
    trial_cpus: float = field(default=1, metadata=SHARE)
    trial_gpus: float = field(default=0, metadata=SHARE)
    actor_cpus: float = field(default=1, metadata=SHARE)
    actor_gpus: float = field(default=0, metadata=SHARE)
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})


@dataclass(frozen=True)
class GridSpec:
    name: str
    output: str
    tracking_uri: str | None = None
    storage: str | None = None
    ray_address: str | None = None
    max_failures: int = field(default=2, metadata={"min": 0})
    dataset: DatasetSpec = DatasetSpec()
    threat_model: ThreatModel = ThreatModel()
    dense: DenseSpec = DenseSpec()
    prune: PruneSpec = PruneSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    resources: Resources = Resources()
    checkpoints: tuple[CheckpointSpec, ...] = ()
    analysis: AnalysisSpec = AnalysisSpec()

    @property
    def output_dir(self) -> Path:
        return output_folder(self.output)

    @property
    def resolved_tracking_uri(self) -> str:
        """Absolute URI: Tune changes each trial's working directory."""
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{self.output_dir / 'mlflow.db'}"

    @property
    def storage_path(self) -> str:
        return self.storage or str(self.output_dir / "ray")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Identity of the grid's work: what it computes, not where it is written or tracked nor
        what it runs on, so a grid can move to other machines and keep its finished work. Hashed
        in the layout grids were first fingerprinted in (evaluation settings nested), so that
        folders written before the spec mirrored its YAML keep their identity."""
        body = identity(_without_neutral(self.to_dict()))
        evaluation = body["evaluation"]
        own = {f.name for f in dataclasses.fields(EvalSettings)}
        body["evaluation"] = {
            "settings": {k: v for k, v in evaluation.items() if k in own},
            **{k: v for k, v in evaluation.items() if k not in own},
        }
        settings = body["evaluation"]["settings"]
        if settings["autoattack_attacks"] is None:  # added later: grids launched before keep theirs
            del settings["autoattack_attacks"]
        if not settings.get("fmn_tuning_trials"):  # HO-FMN off: its settings compute nothing
            for key in [k for k in settings if k.startswith("fmn_tuning_")]:
                del settings[key]
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _without_neutral(body):
    """The spec's layout less the fields added after grids were launched, where they hold the value
    that computes what those grids computed (recipes' NEUTRAL fields, no validation split, no
    per-method dense recipe): such grids keep their identity."""
    if isinstance(body, dict):
        neutral = {
            **NEUTRAL,
            "validation": 0,
            "dense": None,
            "budget": 1.0,
            "shared": False,
        }
        return {k: _without_neutral(v) for k, v in body.items() if not (k in neutral and neutral[k] == v)}
    if isinstance(body, (list, tuple)):
        return [_without_neutral(v) for v in body]
    return body


# -- parsing ------------------------------------------------------------------------------------


def load_spec(
    path: str | Path | None = None, output: str | None = None, overrides: list[str] = ()
) -> GridSpec:
    """Read and validate a YAML spec (the demo when path is None); `output` overrides spec.output,
    and each override 'key.path=value' (value read as YAML) the field it names."""
    path = Path(path) if path else DEFAULT_SPEC
    packaged = EXAMPLES / path.with_suffix(".yaml").name
    if not path.is_file() and path.parent == Path(".") and packaged.is_file():
        path = packaged  # `apgrid launch thin-ice.yaml` (or `thin-ice`): a packaged example by name
    if not path.is_file():
        raise SpecError(f"spec: no such file {path} (packaged examples: `apgrid list examples`)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"spec: {path} is not a YAML text file (not UTF-8)") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise SpecError(f"spec: {path} is not valid YAML{where}: {problem[:160]}") from None
    for override in overrides:
        raw = _override(raw, override)
    if output is not None:
        raw = {**(raw or {}), "output": output}
    return parse_spec(raw)


def _override(raw, text: str) -> dict:
    """The spec with one field set: 'evaluation.num_samples=100', 'dense.seeds=[0, 1]'."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--set: {_show(text)} is not KEY.PATH=VALUE")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise SpecError(f"--set {key}: {_show(value)} is not a YAML value") from None
    raw = dict(raw) if isinstance(raw, dict) else {}
    node, parts = raw, key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        node[part] = dict(child) if isinstance(child, dict) else {}
        node = node[part]
    node[parts[-1]] = parsed
    return raw


def parse_spec(raw: Any) -> GridSpec:
    if not isinstance(raw, dict):
        raise SpecError("spec: the top level must be a mapping of fields (name, output, dataset, ...)")
    _check_keys(raw, GridSpec, "")
    dataset = _dataset(raw.get("dataset", {}))
    augment = DATASETS[dataset.name].augment
    dense = _dense(raw.get("dense", {}), augment)
    if "dense" not in raw and raw.get("checkpoints"):  # a grid of checkpoints trains nothing
        dense = dataclasses.replace(dense, architectures=())
    threat = _threat(raw.get("threat_model", {}))  # FGSM's recipes are Linf-only: prune reads it
    spec = parse_fields(
        GridSpec,
        raw,
        "",
        name=_name(raw["name"]) if "name" in raw else dataclasses.MISSING,
        output=_output(raw["output"]) if "output" in raw else dataclasses.MISSING,
        # default: MLflow's own variable, else a SQLite store in the output folder
        tracking_uri=_optional_string(
            raw.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or None, "tracking_uri"
        ),
        dataset=dataset,
        threat_model=threat,
        dense=dense,
        prune=_prune(raw.get("prune", {}), augment, dense.recipe, _grid_context(raw, dataset, threat, dense)),
        evaluation=_evaluation(raw.get("evaluation", {})),
        resources=parse_fields(Resources, raw.get("resources", {}), "resources"),
        checkpoints=_checkpoints(raw.get("checkpoints", [])),
        analysis=parse_fields(AnalysisSpec, raw.get("analysis", {}), "analysis"),
    )
    _check_cross_fields(spec)
    return spec


def _check_cross_fields(spec: GridSpec) -> None:
    from apgrid.trainables.data import DIGITS_TEST_SIZE

    n = spec.evaluation.settings.num_samples
    if spec.dataset.name == "digits" and n is not None and n > DIGITS_TEST_SIZE:
        raise SpecError(
            f"evaluation.num_samples: {n} is more than the digits test split ({DIGITS_TEST_SIZE})"
        )
    # evaluation.shards is an upper bound, never refused: a shard holds whole blocks, so fewer
    # blocks make fewer shards (the plan and the evaluate stage say how many)
    if spec.dataset.name != "digits" and not spec.dataset.root and not spec.dataset.download:
        raise SpecError(f"dataset.root: required for {spec.dataset.name} (a folder holding the data)")
    aa = spec.evaluation.settings.autoattack_samples
    if n is not None and aa is not None and aa > n:
        raise SpecError(f"evaluation.autoattack_samples: {aa} is more than num_samples ({n})")
    parents = {*spec.dense.architectures, *(c.arch for c in spec.checkpoints if c.prune)}
    for c in spec.checkpoints:
        if c.prune and c.dense is not None:
            raise SpecError(
                f"checkpoints.{c.name}.prune: only a dense checkpoint is pruned by the "
                f"grid's methods; this one names its dense parent ({c.dense})"
            )
    for m in spec.prune.methods:
        for arch in m.architectures or ():
            if arch not in parents:
                raise SpecError(
                    f"prune.methods.{m.name}.architectures: '{arch}' is not in "
                    f"dense.architectures ({', '.join(spec.dense.architectures)})"
                )
        archs, sparsities = m.architectures or tuple(parents), m.sparsities or spec.prune.sparsities
        for entry in m.reported:
            if entry["arch"] not in archs or entry["sparsity"] not in sparsities:
                raise SpecError(
                    f"prune.methods.{m.name}.reported: {entry['arch']} at {entry['sparsity']:g} is "
                    f"no model of this grid (architectures {', '.join(archs)}; sparsities "
                    f"{', '.join(f'{x:g}' for x in sparsities)})"
                )
        if PRUNING_METHODS[m.name].needs_validation and spec.dataset.validation == 0:
            raise SpecError(
                f"prune.methods.{m.name}: needs a validation split while it trains; set "
                f"dataset.validation to the number of training samples to hold out"
            )
        for key, option in PRUNING_METHODS[m.name].options.items():
            if isinstance(option, LayerSparsity):
                for layer in m.options[key]:
                    _check_layer_name(spec, m, key, layer)
    _check_architectures(spec)
    _check_recipes(spec)
    channels = DATASETS[spec.dataset.name].image_shape[0]
    for c in spec.checkpoints:
        if isinstance(c.normalization, dict) and len(c.normalization["mean"]) != channels:
            raise SpecError(
                f"checkpoints.{c.name}.normalization: {len(c.normalization['mean'])} "
                f"values for {spec.dataset.name}'s {channels} channels"
            )
    names = [c.name for c in spec.checkpoints]
    for c in spec.checkpoints:
        if c.dense is not None and c.dense not in names:
            raise SpecError(
                f"checkpoints.{c.name}.dense: '{c.dense}' is not a checkpoint name; "
                f"allowed: {', '.join(names)}"
            )


def _recipes(spec: GridSpec):
    """Every recipe of the spec with its field name."""
    yield "dense.recipe", spec.dense.recipe
    yield "prune.finetune", spec.prune.finetune
    yield "prune.search", spec.prune.search
    for m in spec.prune.methods:
        for part in ("dense", "finetune", "search"):
            if getattr(m, part) is not None:
                yield f"prune.methods.{m.name}.{part}", getattr(m, part)


def _check_recipes(spec: GridSpec) -> None:
    for where, recipe in _recipes(spec):
        if recipe.trainer in LINF_ONLY and spec.threat_model.norm != "Linf":
            # FGSM (Goodfellow et al. 2015) and FGSM-RS (Wong et al. 2020) are Linf attacks: a signed
            # gradient step of the threat's size
            allowed = ", ".join(t for t in TRAINERS if t not in LINF_ONLY)
            raise SpecError(
                f"{where}.trainer: {recipe.trainer} is an Linf attack and the threat model is "
                f"{spec.threat_model.norm}; allowed under {spec.threat_model.norm}: {allowed}"
            )
        if recipe.select == "best" and spec.dataset.validation == 0:
            raise SpecError(
                f"{where}.select: best needs a validation split; set "
                f"dataset.validation to the number of training samples to hold out"
            )


def _check_architectures(spec: GridSpec) -> None:
    """Refuse, before anything starts, an architecture that cannot take the dataset's images
    (a digits CNN on CIFAR-10 would fail only at run time, after its retries)."""
    name = spec.dataset.name
    for where, arch in [
        *(("dense.architectures", a) for a in spec.dense.architectures),
        *((f"checkpoints.{c.name}.arch", c.arch) for c in spec.checkpoints),
    ]:
        if not takes_images(arch, name):
            shape = "x".join(map(str, DATASETS[name].image_shape))
            fits = [a for a in ARCHITECTURES if takes_images(a, name)]
            raise SpecError(
                f"{where}: {arch} cannot take {name}'s {shape} images; allowed for {name}: {', '.join(fits)}"
            )


@functools.cache
def takes_images(arch: str, dataset: str) -> bool:
    """Whether the architecture's forward pass accepts the dataset's images and gives one logit
    per class (tried on the meta device: shapes only, no memory, no arithmetic)."""
    import torch

    from apgrid.trainables.models import build_model

    info = DATASETS[dataset]
    channels = info.image_shape[0]
    try:
        with torch.device("meta"):
            model = build_model(arch, channels, info.num_classes, [0.0] * channels, [1.0] * channels)
            out = model(torch.empty(2, *info.image_shape))
    except (RuntimeError, ValueError):
        return False
    return tuple(out.shape) == (2, info.num_classes)


def _check_layer_name(spec: GridSpec, method: MethodSpec, key: str, layer: str) -> None:
    import torch

    from apgrid.trainables.masks import prunable_layers
    from apgrid.trainables.models import build_model

    info = DATASETS[spec.dataset.name]
    for arch in method.architectures or spec.dense.architectures:
        with torch.device("meta"):
            model = build_model(
                arch,
                info.image_shape[0],
                info.num_classes,
                [0.0] * info.image_shape[0],
                [1.0] * info.image_shape[0],
            )
        allowed = [n for n, _ in prunable_layers(model)]
        if layer not in allowed:
            shown = ", ".join(allowed[:8]) + (", ..." if len(allowed) > 8 else "")
            raise SpecError(
                f"prune.methods.{method.name}.{key}: {_show(layer)} is not a "
                f"prunable layer of {arch}; allowed: {shown}"
            )


# -- every field checked by its type and metadata --------------------------------------------


def parse_fields(cls, raw, where: str, base=None, bounds: dict | None = None, extra=(), **given):
    """`cls` from the mapping `raw` of the spec's section `where`: each field in `given` as given
    (a section with its own parser, a value needing more than a check); every other one read from
    `raw`, else from `base` (a recipe laid over another) or its default, and checked by its type
    and its metadata (min/max, low/high, choices), which `bounds` may override per field. A field
    without a default is required. `extra`: keys `raw` may hold beside the fields (options)."""
    raw = _mapping(raw, where or "spec")
    prefix = f"{where}." if where else ""
    _check_keys(raw, cls, prefix, extra)
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if given.get(f.name, dataclasses.MISSING) is not dataclasses.MISSING:
            values[f.name] = given[f.name]
            continue
        if f.name in raw:
            value = raw[f.name]
        elif base is not None:
            value = getattr(base, f.name)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            raise SpecError(f"{prefix}{f.name}: missing; it is required")
        meta = {**f.metadata, **(bounds or {}).get(f.name, {})}
        values[f.name] = check_value(value, prefix + f.name, hints[f.name], meta)
    return cls(**values)


def check_value(value, where: str, hint, meta: dict):
    """One value against its field's type (`X | None` takes None; a tuple takes a list or one
    item, not an empty list) and metadata bounds; the one-line SpecError names `where`."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if hint is bool:
        return flag(value, where)
    if hint is int:
        return whole(value, where, meta.get("min"), meta.get("max", MAX_INT))
    if hint is float:
        return number(value, where, meta["low"], meta["high"], meta.get("high_open", False))
    if hint is str:
        return choice(value, where, meta["choices"]) if "choices" in meta else _string(value, where)
    if typing.get_origin(hint) is tuple:
        may_be_empty = meta.get("empty") or (meta.get("choices") and args[0] is str)
        if isinstance(value, (list, tuple)) and not value and may_be_empty:
            return ()  # a list of names may be empty (analysis.transfer_attacks: none), milestones too
        items = _list(list(value) if isinstance(value, tuple) else value, where)
        return tuple(check_value(v, where, args[0], meta) for v in items)
    raise TypeError(f"{where}: {hint} has no generic check; give it a parser")  # a programming error


def _check_keys(raw: dict, cls, prefix: str, extra: tuple[str, ...] = ()) -> None:
    check_keys(raw, [f.name for f in dataclasses.fields(cls)] + list(extra), prefix)


def _mapping(value, where: str) -> dict:
    return {} if value is None else mapping(value, where)


def _name(value) -> str:
    name = _string(value, "name")
    if not (name.isascii() and name.replace("-", "").replace("_", "").isalnum()):
        raise SpecError(f"name: {_show(name)} may hold only letters, digits, '-' and '_'")
    return name


def _output(value) -> str:
    output = _string(value, "output")
    output_folder(output)
    return output


def _string(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(f"{where}: must be a non-empty string, got {_show(value)}")
    if not value.isprintable():  # control characters, NUL: no path, URI or name holds them
        raise SpecError(f"{where}: {_show(value)} holds control characters")
    return value


def _optional_string(value, where: str) -> str | None:
    return None if value is None else _string(value, where)


def _list(value, where: str) -> list:
    value = [value] if not isinstance(value, list) else value
    if not value:
        raise SpecError(f"{where}: must list at least one value")
    return value


def _dataset(raw) -> DatasetSpec:
    root = _optional_string(_mapping(raw, "dataset").get("root"), "dataset.root")
    # Resolved against the launch directory, like `output`: Ray workers run elsewhere.
    return parse_fields(
        DatasetSpec, raw, "dataset", root=str(Path(root).expanduser().resolve()) if root else None
    )


def _threat(raw) -> ThreatModel:
    raw = _mapping(raw, "threat_model")
    eps = raw.get("eps", ThreatModel.eps)
    if isinstance(eps, str):  # "8/255" keeps the exact value the papers use
        try:
            num, den = (float(p) for p in eps.split("/"))
            raw = {**raw, "eps": num / den}
        except (ValueError, ZeroDivisionError):
            raise SpecError(
                f"threat_model.eps: {_show(eps)} is not a number or a fraction like 8/255"
            ) from None
    threat = parse_fields(ThreatModel, raw, "threat_model")
    if threat.eps == 0:
        raise SpecError("threat_model.eps: must be above 0")
    return threat


def _recipe(raw, where: str, default: Recipe, min_epochs: int = 1, augment: str | None = None) -> Recipe:
    """A recipe laid over `default`. Pretraining and the search phase need an epoch; fine-tuning
    may have none (`min_epochs` 0: the pruned model as the criterion left it). `augment`: the
    dataset's default augmentation, for a grid-level recipe that does not name one."""
    raw = _mapping(raw, where)
    if augment is not None and "augment" not in raw:
        raw = {**raw, "augment": augment}
    return parse_fields(Recipe, raw, where, base=default, bounds={"epochs": {"min": min_epochs}})


def _dense(raw, augment: str) -> DenseSpec:
    recipe = _recipe(_mapping(raw, "dense").get("recipe"), "dense.recipe", DenseSpec.recipe, augment=augment)
    return parse_fields(DenseSpec, raw, "dense", recipe=recipe)


@dataclass(frozen=True)
class _GridContext:
    """What a method's authors' recipe is laid under: the spec's own recipe fields per phase (its
    grid-level prune.finetune, prune.search and dense.recipe as written), the dataset's
    augmentation, and what the grid can train (a validation split for `select: best`, FGSM-RS
    only under Linf)."""

    given: dict
    augment: str
    validation: int
    norm: str
    budget: float = 1.0
    shared_parent: bool = False  # dense.shared: no method's parent follows its authors'


def _grid_context(raw: dict, dataset: DatasetSpec, threat: ThreatModel, dense: DenseSpec) -> _GridContext:
    prune = _mapping(raw.get("prune", {}), "prune")
    given = {
        "finetune": _mapping(prune.get("finetune"), "prune.finetune"),
        "search": _mapping(prune.get("search"), "prune.search"),
        "parent": _mapping(_mapping(raw.get("dense", {}), "dense").get("recipe"), "dense.recipe"),
    }
    return _GridContext(
        given,
        DATASETS[dataset.name].augment,
        dataset.validation,
        threat.norm,
        shared_parent=dense.shared,
    )


def _prune(raw, augment: str, dense: Recipe, context: _GridContext) -> PruneSpec:
    raw = _mapping(raw, "prune")
    default_methods = [m.name for m in PruneSpec.methods]
    finetune = _recipe(
        raw.get("finetune"), "prune.finetune", PruneSpec.finetune, min_epochs=0, augment=augment
    )
    search = _recipe(raw.get("search"), "prune.search", PruneSpec.search, augment=augment)
    budget_field = PruneSpec.__dataclass_fields__["budget"]
    budget = check_value(raw.get("budget", 1.0), "prune.budget", float, budget_field.metadata)
    context = dataclasses.replace(context, budget=budget)
    grid = {"finetune": finetune, "search": search, "parent": dense}
    listed = raw.get("methods", default_methods)
    # an empty list is a dense-only grid: the dense models are trained and evaluated, none pruned
    methods = () if listed == [] else tuple(_method(m, grid, context) for m in _list(listed, "prune.methods"))
    seen = [m.name for m in methods]
    if len(set(seen)) != len(seen):
        raise SpecError(f"prune.methods: a method is listed twice ({', '.join(seen)})")
    return parse_fields(
        PruneSpec,
        raw,
        "prune",
        methods=methods,
        finetune=finetune,
        search=search,
        budget=budget,
        because=_because(raw.get("because"), "prune.because"),
    )


def _because(raw, where: str) -> dict:
    """{deviation pattern: reason}, both non-empty one-line strings."""
    out = {}
    for pattern, reason in _mapping(raw, where).items():
        out[_string(pattern, where)] = _string(reason, f"{where}.{pattern}")
    return out


def _method(raw, grid: dict[str, Recipe], context: _GridContext) -> MethodSpec:
    """A method name, or a mapping {name, architectures, sparsities, finetune, search, dense,
    <options>}. Each phase's recipe is the method's authors' (trainables/recipes.py; epochs scaled
    by prune.budget) under the fields the spec sets: the grid's prune.finetune / prune.search /
    dense.recipe, then the method's own (`dense`: the parent it prunes is trained with that). A
    method with `finetunes_like_parent` fine-tunes on its parent's recipe where the spec sets nothing."""
    if isinstance(raw, str):
        raw = {"name": raw}
    raw = _mapping(raw, "prune.methods")
    name = choice(raw.get("name"), "prune.methods", PRUNING_METHODS)
    where = f"prune.methods.{name}"
    entry = PRUNING_METHODS[name]
    given = {
        **_mapping(raw.get("options"), f"{where}.options"),
        **{k: v for k, v in raw.items() if k in entry.options},
    }
    options = entry.check_options(given, where)
    phases = {}
    parts = (("dense", "parent", 1), ("finetune", "finetune", 0), ("search", "search", 1))
    resolved = dict(grid)
    for part, phase, min_epochs in parts:
        own = _mapping(raw.get(part), f"{where}.{part}")
        if part == "dense" and context.shared_parent:
            if own:
                raise SpecError(f"{where}.dense: with dense.shared every method prunes dense.recipe's model")
            phases["dense"] = None  # the grid's, as dense_recipe reads it
            continue
        # a method that trains its pruned network as its parent was trained (Li20's rewound ticket)
        # starts its fine-tuning from the parent's recipe, not the grid's fine-tuning one
        base = resolved["parent"] if phase == "finetune" and entry.finetunes_like_parent else grid[phase]
        recipe = _authors_under_spec(entry, phase, base, own, context, f"{where}.{part}", min_epochs)
        resolved[phase] = recipe
        phases[part] = None if recipe == grid[phase] else recipe  # None: the grid's, as before
    return parse_fields(
        MethodSpec,
        raw,
        where,
        extra=tuple(entry.options),  # read above: the fields' loop leaves them
        name=name,
        options=options,
        because=_because(raw.get("because"), f"{where}.because"),
        reported=_method_reported(raw.get("reported"), f"{where}.reported"),
        **phases,
    )


ATTACK_FIELDS = ("pgd_steps", "step_size", "beta")  # the authors' attack, only with their trainer


def _authors_under_spec(entry, phase, grid: Recipe, own: dict, context, where, min_epochs) -> Recipe:
    """The method's authors' values for `phase` where the spec sets nothing, each only where this
    grid can train it (their attack with their trainer, best-epoch selection with a validation
    split, FGSM and FGSM-RS under Linf); what the spec sets — the grid's recipe, then the method's
    own — wins."""
    authors = dict(entry.recipe.recipe_values(phase)) if entry.recipe else {}
    explicit = {**context.given[phase], **own}
    trainer = explicit.get("trainer", authors.get("trainer", grid.trainer))
    if authors.get("trainer") in LINF_ONLY and context.norm != "Linf" and "trainer" not in explicit:
        authors.pop("trainer")
        trainer = grid.trainer
    if trainer != authors.get("trainer"):
        for key in ATTACK_FIELDS:
            authors.pop(key, None)
    if authors.get("select") == "best" and not context.validation:
        authors.pop("select")
    authors_epochs = authors.get("epochs")
    if authors_epochs and context.budget != 1.0:
        authors["epochs"] = max(min_epochs, round(authors_epochs * context.budget))
    epochs = explicit.get("epochs", authors.get("epochs"))
    if authors.get("milestones") and authors_epochs and epochs and epochs != authors_epochs:
        # their step epochs at the same share of a shorter (or longer) schedule
        authors["milestones"] = tuple(
            max(1, round(m * epochs / authors_epochs)) for m in authors["milestones"]
        )
    authors.pop("augment", None)  # augmentation follows the dataset
    if not authors and not own:
        return grid
    return _recipe({**authors, **explicit}, where, grid, min_epochs=min_epochs, augment=context.augment)


def _checkpoints(raw) -> tuple[CheckpointSpec, ...]:
    if raw in (None, []):
        return ()
    if not isinstance(raw, list):
        raise SpecError("checkpoints: must be a list of {name, arch, path, dense, method, sparsity}")
    out = []
    for item in raw:
        item = _mapping(item, "checkpoints")
        _check_keys(item, CheckpointSpec, "checkpoints.")
        for required in ("name", "arch", "path"):
            if required not in item:
                raise SpecError(f"checkpoints.{required}: missing; it is required")
        name = _name(item["name"])
        where = f"checkpoints.{name}"
        path = Path(_string(item["path"], f"{where}.path")).expanduser()
        if not path.is_file():
            where_from = "" if path.is_absolute() else f" (relative to {Path.cwd()}, where apgrid runs)"
            raise SpecError(f"{where}.path: {path} is not a file{where_from}")
        out.append(
            parse_fields(
                CheckpointSpec,
                item,
                where,
                name=name,
                path=str(path.resolve()),
                normalization=_normalization(item.get("normalization"), f"{where}.normalization"),
                reported=_reported(item.get("reported"), f"{where}.reported"),
            )
        )
    return tuple(out)


def _normalization(value, where: str):
    if value is None or value == "none":
        return value
    value = _mapping(value, where)
    if set(value) != {"mean", "std"}:
        raise SpecError(f"{where}: 'none' or {{mean: [...], std: [...]}}, got {_show(value)}")
    out = {}
    for key in ("mean", "std"):
        numbers = _list(value[key], f"{where}.{key}")
        out[key] = [number(v, f"{where}.{key}", 0.0 if key == "mean" else 1e-6, 1.0) for v in numbers]
    if len(out["mean"]) != len(out["std"]):
        raise SpecError(f"{where}: mean and std need one value per channel each")
    return out


def _method_reported(value, where: str) -> tuple[dict, ...]:
    """A method's `reported`: one {arch, sparsity, clean, robust, attack, source} per model (none:
    absent, or [] as a grid's spec.yaml writes it)."""
    if value is None or value == []:
        return ()
    out = []
    for i, item in enumerate(_list(value, where)):
        at = f"{where}[{i}]"
        item = _mapping(item, at)
        for key in ("arch", "sparsity"):
            if key not in item:
                raise SpecError(f"{at}: names the model by arch and sparsity (missing {key})")
        arch = choice(item["arch"], f"{at}.arch", ARCHITECTURES)
        sparsity = number(item["sparsity"], f"{at}.sparsity", 0.0, 1.0, high_open=True)
        figures = _reported({k: v for k, v in item.items() if k not in ("arch", "sparsity")}, at)
        out.append({"arch": arch, "sparsity": sparsity, **figures})
    seen = [(e["arch"], e["sparsity"]) for e in out]
    if len(set(seen)) != len(seen):
        raise SpecError(f"{where}: a model (arch, sparsity) is listed twice")
    return tuple(out)


def _reported(value, where: str):
    """What the model's paper reported: accuracies in [0, 1] (`clean`, `robust`; `aa_clean`,
    `aa_robust`: what a re-evaluation with AutoAttack measured on the authors' model, as the
    thin-ice paper's A.A. columns), the attack's name and the source."""
    if value is None:
        return None
    value = _mapping(value, where)
    figures = ("clean", "robust", "aa_clean", "aa_robust")
    check_keys(value, (*figures, "attack", "source"), f"{where}.")
    out = {k: number(value[k], f"{where}.{k}", 0.0, 1.0) for k in figures if k in value}
    for k in ("attack", "source"):
        if k in value:
            out[k] = _string(value[k], f"{where}.{k}")
    return out


def _evaluation(raw) -> EvaluationSpec:
    raw = _mapping(raw, "evaluation")
    evaluation = parse_fields(
        EvaluationSpec,
        raw,
        "evaluation",
        autoattack_attacks=None,
        batch_size=_batch_size(raw.get("batch_size", EvaluationSpec.batch_size)),
    )
    attacks = _autoattack_attacks(raw.get("autoattack_attacks"), evaluation.autoattack_version)
    return dataclasses.replace(evaluation, autoattack_attacks=attacks)


def _autoattack_attacks(value, version: str) -> tuple[str, ...] | None:
    """A subset of the version's ensemble, kept in the version's order (None: all of it, however
    it is written, so that naming every attack is the same grid as naming none)."""
    if value is None:
        return None
    ensemble = AUTOATTACK_ENSEMBLES[version]
    names = _list(value, "evaluation.autoattack_attacks")
    for name in names:
        if name not in ensemble:
            raise SpecError(
                f"evaluation.autoattack_attacks: {_show(name)} is not in AutoAttack "
                f"{version}'s ensemble; allowed: {', '.join(ensemble)}"
            )
    chosen = tuple(a for a in ensemble if a in names)
    return None if chosen == ensemble else chosen


def _batch_size(value) -> int | str:
    """'auto' (the whole block unless memory forbids; see trainables.evaluation) or a number."""
    if value == "auto":
        return value
    if isinstance(value, str):
        raise SpecError(f"evaluation.batch_size: 'auto' or a whole number, got {value!r}")
    return whole(value, "evaluation.batch_size", minimum=1)
