"""RNG state of a rank as named uint8 tensors (safetensors-friendly: no pickle)."""

from __future__ import annotations

import torch


def capture(mask_rng: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state(), "mask": mask_rng.get_state()}
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            state[f"torch_cuda_{index}"] = cuda_state
    return state


def restore(state: dict[str, torch.Tensor], mask_rng: torch.Generator) -> None:
    torch.set_rng_state(state["torch_cpu"])
    mask_rng.set_state(state["mask"])
    cuda = [state[f"torch_cuda_{i}"] for i in range(len(state)) if f"torch_cuda_{i}" in state]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
