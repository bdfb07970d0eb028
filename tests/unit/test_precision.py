"""Which precision a machine can train in is the accelerator's answer; the product turns a no into a config error
that names the setting and what to use instead, before any process group or engine exists."""

from __future__ import annotations

import pytest

from ringmoe.core.errors import ConfigError
from ringmoe.parallel.engine import check_precision_supported, unsupported_precision_message

# Both answers of the CPU accelerator, whatever this machine's CPU gives: an AVX-512 FP16/AMX CPU supports both,
# an AMD EPYC without AVX-512 supports bf16 only.
WITH_FP16 = {"bf16": True, "fp16": True}
WITHOUT_FP16 = {"bf16": True, "fp16": False}


def test_fp32_always_runs_and_supported_precisions_pass() -> None:
    for supported in (WITH_FP16, WITHOUT_FP16, {"bf16": False, "fp16": False}):
        assert unsupported_precision_message("fp32", supported, "CPU") is None
    assert unsupported_precision_message("fp16", WITH_FP16, "CPU") is None
    assert unsupported_precision_message("bf16", WITHOUT_FP16, "CPU") is None


def test_unsupported_precision_names_the_key_the_device_and_what_runs() -> None:
    assert unsupported_precision_message("fp16", WITHOUT_FP16, "CPU") == (
        "train.precision=fp16 is not supported by the CPU accelerator on this machine; use bf16 or fp32"
    )
    assert unsupported_precision_message("bf16", {"bf16": False, "fp16": True}, "CUDA") == (
        "train.precision=bf16 is not supported by the CUDA accelerator on this machine; use fp16 or fp32"
    )
    assert unsupported_precision_message("bf16", {"bf16": False, "fp16": False}, "CPU").endswith("; use fp32")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_check_agrees_with_deepspeeds_accelerator_on_this_machine(precision: str) -> None:
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    answer = {"fp32": True, "bf16": accelerator.is_bf16_supported(), "fp16": accelerator.is_fp16_supported()}
    if answer[precision]:
        check_precision_supported(precision)
    else:
        with pytest.raises(ConfigError, match=f"train.precision={precision} is not supported"):
            check_precision_supported(precision)
