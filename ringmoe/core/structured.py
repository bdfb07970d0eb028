"""Strict YAML -> dataclass loading shared by every config in the project.

OmegaConf's structured mode rejects keys the dataclass does not declare and values of the wrong type; this
module turns its exceptions into a ``ConfigError`` that names the file and the dotted key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ringmoe.core.errors import ConfigError

T = TypeVar("T")


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    message = getattr(exc, "msg", None) or str(exc)
    message = message.split("\n")[0]
    return f"key {key!r}: {message}" if key else message


def _replace_mappings(merged: DictConfig, given: DictConfig) -> None:
    """A mapping given for a plain-dict field replaces the default instead of being merged into it
    (``model.in_chans: {sar_amplitude: 3}`` means that one modality, not that one added to the defaults)."""
    for key in given:
        value = given._get_node(key)
        if isinstance(value, DictConfig) and key in merged:
            if OmegaConf.get_type(merged, key) is dict:
                merged[key] = value
            else:
                _replace_mappings(merged[key], value)


def _merge(schema: type, data: DictConfig) -> DictConfig:
    merged = OmegaConf.merge(OmegaConf.structured(schema), data)
    _replace_mappings(merged, data)
    return merged


def _apply_overrides(merged: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Dotted edits merge (``model.in_chans.optical=4`` changes one entry); a ``{...}`` value replaces the whole
    mapping, as it would in the YAML file."""
    for override in overrides:
        key, value = override.split("=", 1)
        if value.lstrip().startswith("{"):
            OmegaConf.update(merged, key, OmegaConf.from_dotlist([f"value={value}"]).value, merge=False)
        else:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([override]))
    return merged


def load_structured(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load ``path`` (optional) into ``schema`` and apply ``a.b=c`` command-line overrides, strictly."""
    where = str(path) if path else "<defaults>"
    try:
        if path is None:
            merged = OmegaConf.structured(schema)
        elif not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
        else:
            merged = _merge(schema, OmegaConf.load(path))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
            merged = _apply_overrides(merged, overrides)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{where}: {_describe(exc)}") from None
    except (TypeError, ValueError) as exc:  # OmegaConf raises these bare for e.g. list-index overrides
        raise ConfigError(f"{where}: overrides {list(overrides)} do not fit the config's structure ({exc})") from None


def from_dict(schema: type[T], data: dict, where: str) -> T:
    """Strictly load an already-parsed mapping (e.g. from a checkpoint's JSON) into ``schema``."""
    try:
        return OmegaConf.to_object(_merge(schema, OmegaConf.create(data)))  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{where}: {_describe(exc)}") from None


def to_yaml(config: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_dict(config: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)  # type: ignore[return-value]
