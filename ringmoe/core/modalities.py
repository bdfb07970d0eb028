"""RingMoE's four modality groups (no torch import, so the offline pipeline can use it)."""

# The order fixes the order modalities are stacked on the batch axis.
MODALITIES: tuple[str, ...] = ("optical", "multispectral", "sar_amplitude", "sar_complex")

# Channels each modality group feeds to its patch embedding. Every source of a group maps its bands onto this.
MODALITY_CHANNELS: dict[str, int] = {
    "optical": 3,  # red, green, blue
    "multispectral": 4,  # blue, green, red, near-infrared
    "sar_amplitude": 3,  # co-pol and cross-pol backscatter in dB, and their ratio (co - cross, dB)
    "sar_complex": 8,  # I and Q of HH, HV, VH, VV
}
