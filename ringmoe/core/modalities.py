"""RingMoE's four modality groups (no torch import, so the offline pipeline can use it)."""

# The order fixes the order modalities are stacked on the batch axis.
MODALITIES: tuple[str, ...] = ("optical", "multispectral", "sar_amplitude", "sar_complex")
