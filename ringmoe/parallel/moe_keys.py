"""State-dict names of the expert-parallel layer, kept free of deepspeed imports so checkpoint tools can use
them without initialising DeepSpeed."""

# Where DeepSpeed's MoE (wrapped as ``<routed>.moe``) keeps what the single-device ``RoutedExperts`` calls
# ``gate`` and ``experts``.
DS_GATE = "moe.deepspeed_moe.gate.wg."
DS_EXPERTS = "moe.deepspeed_moe.experts.deepspeed_experts."


def is_expert_key(key: str) -> bool:
    return DS_EXPERTS in key


def to_single_device_key(key: str) -> str:
    """Map a DeepSpeed MoE state-dict key (expert index already global) to the single-device model's key."""
    if DS_GATE in key:
        return key.replace(DS_GATE, "gate.")
    if DS_EXPERTS in key:
        return key.replace(DS_EXPERTS, "experts.")
    return key
