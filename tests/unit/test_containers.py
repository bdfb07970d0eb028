"""The container recipes parse and install exactly what pyproject.toml allows (no Docker engine runs here)."""

from __future__ import annotations

import io
import re
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
PINNED = re.compile(r"\b(torch|deepspeed|megatron-core)==([0-9][\w.+-]*)")


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {Requirement(line).name: Requirement(line) for line in project["dependencies"]}


def _pins(text: str) -> dict[str, str]:
    return dict(PINNED.findall(text))


def _parse(name: str) -> DockerfileParser:
    parser = DockerfileParser(fileobj=io.BytesIO((REPO / name).read_bytes()))
    assert parser.structure, f"{name}: no instructions parsed"
    return parser


@pytest.mark.parametrize("recipe", ["Dockerfile", "apptainer.def"])
def test_container_pins_satisfy_pyproject(recipe: str) -> None:
    text = (REPO / recipe).read_text()
    pins = _pins(text)
    assert set(pins) == {"torch", "deepspeed", "megatron-core"}, pins
    requirements = _requirements()
    for name, version in pins.items():
        assert requirements[name].specifier.contains(version), f"{recipe}: {name}=={version} vs {requirements[name]}"
    assert str(requirements["torch"].specifier) == f"=={pins['torch']}"  # torch is pinned exactly, both places


def test_gpu_dockerfile_parses_and_prebuilds_deepspeed_ops() -> None:
    parser = _parse("Dockerfile")
    instructions = [entry["instruction"] for entry in parser.structure]
    # The base image is an ARG that the parser resolves: a CUDA devel image (nvcc for the DeepSpeed ops).
    assert instructions.count("FROM") == 1 and re.fullmatch(r"nvidia/cuda:[\d.]+-cudnn-devel-\S+", parser.baseimage)
    runs = " ".join(entry["value"] for entry in parser.structure if entry["instruction"] == "RUN")
    assert "DS_BUILD_FUSED_ADAM=1" in runs and "ds_report" in runs and "pip install -e ." in runs
    assert "/whl/cu" in runs  # the CUDA build of torch, not the default wheel


def test_cpu_dockerfile_parses_and_installs_the_test_extra() -> None:
    parser = _parse("Dockerfile.cpu")
    assert parser.baseimage.startswith("python:3.11")
    assert any(
        "pip install" in e["value"] and ".[dev]" in e["value"] for e in parser.structure if e["instruction"] == "RUN"
    )
