"""The recipe registry: what ``model.recipe`` names, declared in one module per recipe.

A recipe is everything that differs between ways of pretraining on this stack: the pretraining model, what one
micro-batch does, the FLOPs it costs, which part of the trained model is released (and as what HuggingFace
model), how evaluation calls that part, and how ``model-info`` breaks it down. Code outside the recipe modules
asks the registry (``recipe_of(model_config)``) and never compares recipe names.

Built-ins: ``ringmoe`` (``ringmoe.recipes.simmim``) and ``skysense`` (``ringmoe.recipes.skysense``). A recipe of
your own is one module that subclasses ``Recipe`` and decorates it with ``@register``, named in the model
config as ``model.recipe: <name>`` with ``model.recipe_module: <importable module or path/to/file.py>``; the
model config travels with every checkpoint, so consolidation, export and evaluation find it again.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence, TypeVar

import torch
from torch import nn

from ringmoe.config.schema import ModelConfig, RunConfig, load_config
from ringmoe.core.errors import ConfigError
from ringmoe.recipes.step import Step

BUILTIN_MODULES = {"ringmoe": "ringmoe.recipes.simmim", "skysense": "ringmoe.recipes.skysense"}
HF_CODE = Path(__file__).resolve().parents[1] / "export" / "hf_code"


@dataclass(frozen=True)
class HFRelease:
    """How a recipe's released encoder is exported: ``configuration_<model_type>.py.in`` and
    ``modeling_<model_type>.py.in`` in ``code`` define ``config_class`` and ``architecture``; ``interface`` is how
    evaluation calls the loaded model (``ringmoe.eval.encoder.FrozenEncoder``); the rest is the model card."""

    model_type: str
    config_class: str
    architecture: str
    interface: str
    title: str
    summary: str
    input_shape: str  # with {size} for "H, W"
    code: Path = HF_CODE


class Recipe:
    """Subclass, set the class attributes, implement ``build_model`` and ``build_step``, decorate with
    ``@register``. The defaults fit a recipe that trains a ``RingMoEEncoder`` held as ``model.encoder``."""

    name: ClassVar[str]
    released_prefix: ClassVar[str] = "encoder."  # consolidated tensors of the released encoder
    hf: ClassVar[HFRelease | None] = None  # None: `ringmoe export` refuses with a clear error
    reads_places: ClassVar[bool] = False  # data.places_per_batch > 0 (spatiotemporal places) or single images
    online_probe: ClassVar[bool] = False  # train.online_probe can score its released encoder

    def validate(self, config: RunConfig) -> None:
        """Recipe-specific checks of a run config alone (no data read): every command that loads one runs them."""

    def prepare(self, config: RunConfig) -> Any:
        """What the step needs that can fail on the run's data (e.g. targets laid out from the dataset's sensors),
        built before any process group starts so such errors come first; handed to ``build_step``."""
        return None

    def build_model(self, config: ModelConfig) -> nn.Module:
        """The single-device pretraining model (the caller has seeded torch)."""
        raise NotImplementedError

    def after_parallelize(self, model: nn.Module) -> None:
        """Called on the parallelized model before the engine builds its optimizer."""

    def build_step(
        self, config: RunConfig, prepared: Any, generator: torch.Generator, device, dtype, data_group
    ) -> Step:
        """The micro-batch step; ``prepared``: what ``prepare`` returned; ``generator``: the run's one saved random
        stream (masks, views); ``data_group``: the data-parallel ranks (None: this process alone)."""
        raise NotImplementedError

    def flops_per_sample(self, config: ModelConfig) -> float:
        """Forward FLOPs of one sample (0: unknown; throughput then reports no MFU)."""
        return 0.0

    def released(self, model: nn.Module) -> tuple[nn.Module, str]:
        """The released encoder of a pretraining model and how evaluation calls it."""
        return model.encoder, "ringmoe"

    def hf_config(self, config: ModelConfig) -> dict[str, Any]:
        """The encoder's entries of the exported ``config.json``."""
        raise NotImplementedError

    def describe(self, config: ModelConfig, layouts: Sequence[Any] = ()) -> list[str]:
        """``ringmoe model-info``'s lines for this recipe's model (built on the meta device); ``layouts``: the
        ``--memory`` layouts (``ringmoe.models.memory.Layout``) a recipe with a memory model reports."""
        with torch.device("meta"):
            model = self.build_model(config)
        total = sum(p.numel() for p in model.parameters())
        released = sum(p.numel() for p in self.released(model)[0].parameters())
        return [f"{config.name} ({self.name} recipe): {released:,} released parameters, {total:,} in pretraining"]


_REGISTERED: dict[str, Recipe] = {}
R = TypeVar("R", bound=type[Recipe])


def register(cls: R) -> R:
    """Class decorator: make ``cls.name`` resolvable by ``model.recipe``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"recipe class {cls.__qualname__} needs a non-empty `name`")
    known = _REGISTERED.get(name)
    if known is not None and type(known).__qualname__ != cls.__qualname__:
        raise ConfigError(f"recipe {name!r} is registered twice ({type(known).__qualname__}, {cls.__qualname__})")
    _REGISTERED[name] = cls()
    return cls


def recipe_of(config: ModelConfig) -> Recipe:
    """The recipe ``config.recipe`` names (importing ``config.recipe_module`` or the built-in module first)."""
    if config.recipe not in _REGISTERED:
        module = config.recipe_module or BUILTIN_MODULES.get(config.recipe)
        if module:
            _import(module)
    recipe = _REGISTERED.get(config.recipe)
    if recipe is None:
        where = f" (model.recipe_module {config.recipe_module!r} does not register it)" if config.recipe_module else ""
        raise ConfigError(
            f"model.recipe {config.recipe!r} is not a registered recipe{where}; built-in: {sorted(BUILTIN_MODULES)}; "
            "a recipe of your own needs model.recipe_module"
        )
    return recipe


def recipe_for_hf(model_type: str) -> Recipe | None:
    """The built-in or already imported recipe that exports HuggingFace ``model_type``, if any."""
    for module in BUILTIN_MODULES.values():
        _import(module)
    return next((r for r in _REGISTERED.values() if r.hf is not None and r.hf.model_type == model_type), None)


def build_pretraining_model(config: ModelConfig, seed: int | None = None) -> nn.Module:
    """Same code for tiny and paper-scale configs; ``seed`` makes initial weights identical on every rank."""
    config.validate()
    recipe = recipe_of(config)
    if seed is not None:
        torch.manual_seed(seed)
    return recipe.build_model(config)


def validate_run(config: RunConfig) -> RunConfig:
    """``config.validate()`` plus its recipe's checks."""
    config.validate()
    recipe = recipe_of(config.model)
    places = config.data.places_per_batch > 0
    if places != recipe.reads_places:
        wants = "places (data.places_per_batch > 0)" if recipe.reads_places else "single images (places_per_batch 0)"
        raise ConfigError(
            f"model.recipe={config.model.recipe!r} with data.places_per_batch={config.data.places_per_batch}: the "
            f"{recipe.name} recipe reads {wants}"
        )
    recipe.validate(config)
    return config


def load_run_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """A run YAML plus ``key=value`` overrides, validated with its recipe's checks."""
    return validate_run(load_config(path, overrides))


def _import(module: str) -> None:
    if module.endswith(".py"):
        path = Path(module).resolve()
        if not path.is_file():
            raise ConfigError(f"model.recipe_module {module!r}: no such file (relative paths start at {Path.cwd()})")
        name = f"ringmoe_user_recipe_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
        if name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded
        spec.loader.exec_module(loaded)
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"model.recipe_module {module!r} cannot be imported ({exc})") from None
