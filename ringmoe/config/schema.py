"""The run config: one dataclass per stage, validated on load.

``ringmoe train --config configs/tiny.yaml train.steps=20`` loads the YAML into ``RunConfig`` and applies the
overrides; an unknown key or a wrong type raises ``ConfigError`` naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ringmoe.core.batch import MODALITIES
from ringmoe.core.encoder_config import EncoderConfig
from ringmoe.core.errors import ConfigError
from ringmoe.core.structured import load_structured


@dataclass
class FusionConfig:
    """Used by the SkySense recipe (``model.recipe: skysense``): the multi-modal temporal fusion transformer over the
    per-date features of the spatial encoders (``depth`` blocks of ``heads`` heads; ``experts`` routed
    collaborative experts per FFN beside the always-on one, 0: dense), the projection heads' width and the
    geo-context prototypes (``prototype_cells`` sets of ``prototypes_per_cell``)."""

    depth: int = 2
    heads: int = 4
    experts: int = 0
    projection_dim: int = 64
    prototype_cells: int = 64
    prototypes_per_cell: int = 8


@dataclass
class ModelConfig(EncoderConfig):
    """The model of a run: the encoder's hyper-parameters (``EncoderConfig``, defined there once) and what
    pretraining adds around it.

    ``recipe``: the registered recipe that builds and trains the model (``ringmoe.recipes.registry``): ``ringmoe``
    (this encoder with SimMIM decoders), ``skysense`` (one such encoder per modality as spatial encoders, a
    temporal fusion transformer, a student/EMA-teacher pair; see ``fusion``) or one of your own, registered by
    the module ``recipe_module`` names (importable name or path to a ``.py`` file)."""

    name: str = "ringmoe_tiny"
    aux_loss_coef: float = 0.001
    # ST-MoE router z-loss weight (0: off; 0.001 is the ST-MoE value). The z-loss is logged either way.
    router_z_loss_coef: float = 0.0
    # Recompute each block's activations in backward instead of storing them (memory for ~1/3 more compute).
    activation_checkpointing: bool = False
    # SimMIM masking.
    mask_patch_size: int = 16
    mask_ratio: float = 0.6
    # Extra decoder outputs per modality for the physical targets. Derived from ``RunConfig.objective`` when a run
    # config is validated (so it travels with the model config into checkpoints); not set by hand.
    decoder_extra_channels: dict[str, int] = field(default_factory=dict)
    # Output width of the projection head for the two-view contrast (0: no head). Derived from
    # ``RunConfig.objective.views`` like ``decoder_extra_channels``; not set by hand.
    projection_dim: int = 0
    recipe: str = "ringmoe"
    recipe_module: str = ""
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def validate(self) -> None:
        stages = len(self.depths)
        fusion = self.fusion
        if (
            min(fusion.depth, fusion.heads, fusion.projection_dim, fusion.prototype_cells, fusion.prototypes_per_cell)
            < 1
        ):
            raise ConfigError(f"model.fusion {fusion}: every size must be >= 1")
        if fusion.experts < 0 or (self.embed_dim * 2 ** (stages - 1)) % fusion.heads:
            raise ConfigError(
                f"model.fusion: experts={fusion.experts} must be >= 0 and heads={fusion.heads} must divide the "
                f"final width {self.embed_dim * 2 ** (stages - 1)}"
            )
        for key in ("num_heads", "modal_experts", "collab_experts"):
            if len(getattr(self, key)) != stages:
                raise ConfigError(f"model.{key} has {len(getattr(self, key))} entries, model.depths has {stages}")
        if self.shared_expert_multiple and (
            len(self.shared_expert_multiple) != stages or min(self.shared_expert_multiple) < 1
        ):
            raise ConfigError(
                f"model.shared_expert_multiple {self.shared_expert_multiple}: one integer >= 1 per stage, or empty"
            )
        unknown = sorted(set(self.in_chans) - set(MODALITIES))
        if unknown:
            raise ConfigError(f"model.in_chans: unknown modalities {unknown}; known: {list(MODALITIES)}")
        final_stride = self.patch_size * 2 ** (stages - 1)
        if self.img_size % final_stride:
            raise ConfigError(f"model.img_size {self.img_size} is not divisible by the final stride {final_stride}")
        if self.img_size % self.mask_patch_size or self.mask_patch_size % self.patch_size:
            raise ConfigError(
                f"model.mask_patch_size {self.mask_patch_size} must divide img_size and be a multiple of patch_size"
            )
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"model.mask_ratio {self.mask_ratio} must be in (0, 1)")
        for stage, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**stage) % heads:
                raise ConfigError(f"model.num_heads[{stage}]={heads} does not divide width {self.embed_dim * 2**stage}")

    def shared_multiple(self, stage: int) -> int:
        return self.shared_expert_multiple[stage] if self.shared_expert_multiple else 1

    def expert_ffns_per_token(self, stage: int) -> int:
        """Expert FFNs of width mlp_ratio x width one token runs through in a block of ``stage``."""
        routed = int(self.modal_experts[stage] > 0) + int(self.collab_experts[stage] > 0)
        return routed + (self.shared_multiple(stage) if self.shared_expert else 0)


@dataclass
class DataConfig:
    """Streaming loader over a dataset written by ``ringmoe-data build`` (see ``ringmoe.data.loader``).

    ``shards``: the dataset root: a local directory, an fsspec URL (``file://``, ``s3://``, ``memory://``...,
    read with one ranged read per sample) or a webdataset ``pipe:`` command with ``{path}`` where the file name
    goes (``pipe:aws s3 cp s3://bucket/ds/{path} -``; shards are then streamed whole). ``source_weights``:
    mixing weight per source within its modality; empty means proportional to each source's sample count, and
    a modality with any weight given needs one for each of its sources (0 leaves a source out).
    ``shard_cache``: whole shards kept decoded per worker when streaming ``pipe:`` shards. ``strict``: a bad
    sample or shard raises ``DataError`` instead of being quarantined and replaced.

    Places (spatiotemporal recipes such as SkySense): ``places_per_batch`` > 0 reads the ``pair`` and
    ``sequence`` streams instead, ``places_per_batch`` footprints per batch, each with up to ``max_dates[m]``
    dates of modality ``m`` (default 1; longer sequences keep evenly spaced dates); a date whose valid share is
    below ``min_date_valid_fraction`` counts as absent. ``source_weights`` then weigh the streams.
    """

    shards: str = "runs/demo/shards"
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    batch_size_per_modality: int = 2
    # Per modality, a batch size that replaces batch_size_per_modality (e.g. fewer of a modality with few samples).
    modality_batch_sizes: dict[str, int] = field(default_factory=dict)
    shuffle_buffer: int = 32
    num_workers: int = 0
    seed: int = 0
    source_weights: dict[str, float] = field(default_factory=dict)
    shard_cache: int = 4
    strict: bool = False
    places_per_batch: int = 0
    max_dates: dict[str, int] = field(default_factory=dict)
    min_date_valid_fraction: float = 0.5

    def dates_of(self, modality: str) -> int:
        return self.max_dates.get(modality, 1)

    def batch_size_of(self, modality: str) -> int:
        return self.modality_batch_sizes.get(modality, self.batch_size_per_modality)

    def images_per_batch(self) -> int:
        return sum(self.batch_size_of(m) for m in self.modalities)

    def validate(self) -> None:
        if not self.modalities:
            raise ConfigError("data.modalities is empty; every batch needs at least one modality")
        unknown = sorted(set(self.modalities) - set(MODALITIES))
        if unknown:
            raise ConfigError(f"data.modalities: unknown {unknown}; known: {list(MODALITIES)}")
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"data.modalities {self.modalities} lists a modality twice")
        for key, low in (("batch_size_per_modality", 1), ("shuffle_buffer", 1), ("num_workers", 0), ("shard_cache", 1)):
            if getattr(self, key) < low:
                raise ConfigError(f"data.{key}={getattr(self, key)} must be >= {low}")
        # Entries for modalities this run does not read are allowed (a run narrowed by `data.modalities=[...]`).
        unknown = sorted(set(self.modality_batch_sizes) - set(MODALITIES))
        if unknown or any(size < 1 for size in self.modality_batch_sizes.values()):
            raise ConfigError(
                f"data.modality_batch_sizes {dict(self.modality_batch_sizes)}: sizes must be >= 1 and keys modalities "
                f"of {list(MODALITIES)}" + (f" (unknown: {unknown})" if unknown else "")
            )
        for source, weight in self.source_weights.items():
            if not math.isfinite(weight) or weight < 0:
                raise ConfigError(f"data.source_weights.{source}={weight} must be a finite number >= 0")
        if self.places_per_batch < 0:
            raise ConfigError(f"data.places_per_batch={self.places_per_batch} must be >= 0 (0: single images)")
        stray = sorted(set(self.max_dates) - set(self.modalities))
        if stray or any(count < 1 for count in self.max_dates.values()):
            raise ConfigError(
                f"data.max_dates {dict(self.max_dates)}: keys must be among data.modalities {self.modalities} "
                "and counts >= 1"
            )
        if not 0.0 <= self.min_date_valid_fraction <= 1.0:
            raise ConfigError(f"data.min_date_valid_fraction={self.min_date_valid_fraction} must be in [0, 1]")


@dataclass
class ParallelConfig:
    """Parallel layout; the DeepSpeed JSON is generated from this, never kept by hand."""

    expert_parallel_size: int = 1
    tensor_parallel_size: int = 1
    zero_stage: int = 1


SAR_AMPLITUDE_LOSSES = ("l1_db", "gamma_nll")


@dataclass
class ComplexSARTargets:
    """Physical targets from each pixel's scattering matrix, predicted by the sar_complex decoder."""

    span: bool = True  # total power, sum of |S_pq|^2
    pauli: bool = True  # |HH+VV|^2/2, |HH-VV|^2/2, 2|HV|^2 (HV symmetrized)
    h_a_alpha: bool = False  # entropy, anisotropy, mean alpha of the boxcar-averaged coherency matrix
    window: int = 5  # boxcar side (pixels) for the coherency matrix
    # Power targets: dB mapped to [0, 1]. Covers the calibrated (x normalization.scale) Capella span, -9 to 26 dB.
    db_range: list[float] = field(default_factory=lambda: [-30.0, 30.0])
    weight: float = 1.0

    def channels(self) -> int:
        return self.span + 3 * self.pauli + 3 * self.h_a_alpha


@dataclass
class SARAmplitudeLoss:
    """``l1_db``: L1 on the dB channels. ``gamma_nll``: negative log-likelihood of multi-look intensity with
    ``looks`` equivalent looks (speckle-aware; see ``ringmoe.objectives.sar_amplitude``)."""

    loss: str = "l1_db"
    looks: float = 4.4  # the ENL of Sentinel-1 IW GRD high resolution


@dataclass
class SpectralTargets:
    """Spectral indices predicted by a reflectance modality's decoder; bands found by wavelength in the registry."""

    ndvi: bool = False  # (NIR - red) / (NIR + red)
    ndwi: bool = False  # (green - NIR) / (green + NIR), McFeeters
    weight: float = 1.0

    def channels(self) -> int:
        return self.ndvi + self.ndwi


@dataclass
class ViewContrast:
    """Two augmented views of every image (the first masked for SimMIM when ``reconstruction_weight`` > 0) pulled
    together by an InfoNCE loss (SimCLR's NT-Xent, per modality; negatives: the other images of every
    data-parallel rank) on a projection of the pooled final features (``ringmoe.objectives.image_views``).
    ``weight`` 0: off, plain SimMIM.

    Augmentations are geometric (random resized crop of ``crop_scale`` of the area, flips, 90 degree rotations:
    overhead imagery has no up) and photometric (per-channel gain and offset of up to ``gain`` of each channel's
    spread; complex SAR gets one gain per image so phase stays intact)."""

    weight: float = 0.0
    temperature: float = 0.2
    projection_dim: int = 128
    crop_scale: list[float] = field(default_factory=lambda: [0.25, 1.0])
    gain: float = 0.2

    def validate(self) -> None:
        scale = list(self.crop_scale)
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ConfigError(f"objective.views.crop_scale {scale} must be [low, high] with 0 < low <= high <= 1")
        if not math.isfinite(self.weight) or self.weight < 0 or self.temperature <= 0 or self.projection_dim < 1:
            raise ConfigError(
                f"objective.views: weight={self.weight} >= 0, temperature={self.temperature} > 0 and "
                f"projection_dim={self.projection_dim} >= 1 are required"
            )
        if not 0.0 <= self.gain < 1.0:
            raise ConfigError(f"objective.views.gain={self.gain} must be in [0, 1)")


@dataclass
class ObjectiveConfig:
    """Per-modality SimMIM reconstruction plus physics-informed targets (``ringmoe.objectives``), and optionally
    a contrast between two views of each image (``views``).

    ``modality_weights``: weight of each modality's terms in the total (missing: 1.0, i.e. equal by default).
    ``reconstruction_weight``: weight of the SimMIM terms (reconstruction and physical targets) against the view
    contrast. ``normalized_target``: reconstruct each mask block's pixels standardized per channel (MAE's
    per-patch normalisation) instead of raw values.
    """

    modality_weights: dict[str, float] = field(default_factory=dict)
    reconstruction_weight: float = 1.0
    normalized_target: bool = False
    views: ViewContrast = field(default_factory=ViewContrast)
    sar_complex: ComplexSARTargets = field(default_factory=ComplexSARTargets)
    sar_amplitude: SARAmplitudeLoss = field(default_factory=SARAmplitudeLoss)
    multispectral: SpectralTargets = field(default_factory=lambda: SpectralTargets(ndvi=True, ndwi=True))
    optical: SpectralTargets = field(default_factory=SpectralTargets)

    def decoder_extra_channels(self, modalities: Sequence[str]) -> dict[str, int]:
        extra = {
            "sar_complex": self.sar_complex.channels(),
            "multispectral": self.multispectral.channels(),
            "optical": self.optical.channels(),
        }
        return {m: extra[m] for m in modalities if extra.get(m)}

    def validate(self) -> None:
        unknown = sorted(set(self.modality_weights) - set(MODALITIES))
        if unknown:
            raise ConfigError(f"objective.modality_weights: unknown modalities {unknown}; known: {list(MODALITIES)}")
        self.views.validate()
        if not math.isfinite(self.reconstruction_weight) or self.reconstruction_weight < 0:
            raise ConfigError(f"objective.reconstruction_weight={self.reconstruction_weight} must be finite and >= 0")
        if self.reconstruction_weight == 0 and self.views.weight == 0:
            raise ConfigError("objective.reconstruction_weight and objective.views.weight are both 0: nothing to learn")
        for modality, weight in self.modality_weights.items():
            if not math.isfinite(weight) or weight < 0:
                raise ConfigError(f"objective.modality_weights.{modality}={weight} must be a finite number >= 0")
        if self.sar_amplitude.loss not in SAR_AMPLITUDE_LOSSES:
            raise ConfigError(f"objective.sar_amplitude.loss {self.sar_amplitude.loss!r} not in {SAR_AMPLITUDE_LOSSES}")
        if not self.sar_amplitude.looks >= 1:
            raise ConfigError(f"objective.sar_amplitude.looks={self.sar_amplitude.looks} must be >= 1")
        window = self.sar_complex.window
        if window < 1 or window % 2 == 0:
            raise ConfigError(f"objective.sar_complex.window={window} must be odd and >= 1 (a centred boxcar)")
        db_range = list(self.sar_complex.db_range)
        if len(db_range) != 2 or db_range[1] <= db_range[0]:
            raise ConfigError(f"objective.sar_complex.db_range {db_range} must be [low, high] with low < high")


@dataclass
class ContrastiveConfig:
    """SkySense objective (``model.recipe: skysense``; ``ringmoe.recipes.skysense``): multi-granularity
    contrastive learning (``pixel``, ``object``, ``image``, ``cross_modal`` terms) and geo-context prototypes
    (``prototypes``). ``weights``: per term, missing = 1.0. The teacher's EMA momentum rises from
    ``teacher_momentum`` to 1 on a cosine over the run; views differ by a per-channel gain, noise and dropped
    dates."""

    weights: dict[str, float] = field(default_factory=dict)
    temperature: float = 0.2
    clusters: int = 4  # k-means regions per image for the object term
    max_pixels: int = 1024  # positions drawn for the pixel term
    # Geo-context regions: a cell_degrees grid over region_bounds (west, south, east, north), one prototype set of
    # model.fusion.prototype_cells per cell; places outside the bounds get no prototype term (counted). The default,
    # 45 degree cells over the globe (4 x 8 = 32 regions), fits the default 64 sets; run configs set their own.
    cell_degrees: float = 45.0
    region_bounds: list[float] = field(default_factory=lambda: [-180.0, -90.0, 180.0, 90.0])
    prototype_momentum: float = 0.99
    teacher_momentum: float = 0.99
    view_gain: float = 0.1
    view_noise: float = 0.02
    view_drop_date: float = 0.3

    def validate(self) -> None:
        terms = ("pixel", "object", "image", "cross_modal", "prototypes")
        unknown = sorted(set(self.weights) - set(terms))
        if unknown:
            raise ConfigError(f"contrastive.weights: unknown terms {unknown}; known: {list(terms)}")
        if any(not math.isfinite(w) or w < 0 for w in self.weights.values()):
            raise ConfigError(f"contrastive.weights {dict(self.weights)} must be finite and >= 0")
        if self.temperature <= 0 or self.clusters < 1 or self.max_pixels < 2 or self.cell_degrees <= 0:
            raise ConfigError(
                f"contrastive: temperature={self.temperature} > 0, clusters={self.clusters} >= 1, "
                f"max_pixels={self.max_pixels} >= 2 and cell_degrees={self.cell_degrees} > 0 are required"
            )
        for key in ("prototype_momentum", "teacher_momentum", "view_drop_date"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"contrastive.{key}={getattr(self, key)} must be in [0, 1)")
        west, south, east, north = self.region_bounds if len(self.region_bounds) == 4 else (0, 0, 0, 0)
        if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
            raise ConfigError(
                f"contrastive.region_bounds {list(self.region_bounds)}: [west, south, east, north] in degrees, "
                "west < east within [-180, 180], south < north within [-90, 90]"
            )


@dataclass
class OnlineProbeConfig:
    """A kNN probe on a small labelled set every ``every`` optimizer steps (0: off), so a long run shows its
    representation quality rising or collapsing. ``dataset``/``root``/``options``: an evaluation adapter as in
    ``configs/eval/*.yaml`` (``root`` relative to the working directory); ``subset``: labelled images used,
    stratified; with split files the memory bank is ``train`` and the queries ``test``, otherwise a seeded half
    of each class."""

    every: int = 0
    dataset: str = "class_folders"
    root: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    subset: int = 500
    k: int = 20
    batch_size: int = 64

    def validate(self) -> None:
        if self.every < 0 or self.subset < 4 or self.k < 1 or self.batch_size < 1:
            raise ConfigError(
                f"train.online_probe: every={self.every} >= 0, subset={self.subset} >= 4, k={self.k} >= 1 and "
                f"batch_size={self.batch_size} >= 1 are required"
            )
        if self.every and not self.root:
            raise ConfigError("train.online_probe.root is empty: name the labelled set to probe")


@dataclass
class TrainConfig:
    steps: int = 20
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 2
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 5.0
    gradient_accumulation_steps: int = 1
    precision: str = "fp32"  # fp32 | bf16 | fp16
    seed: int = 0
    log_every: int = 1
    output_dir: str = "runs/demo/train"
    save_every: int = 0  # 0: only at the end (and on a preemption signal)
    keep_last: int = 3  # complete checkpoints kept; older ones are removed after a save (0: keep all)
    # "" starts fresh; "auto" resumes from the newest complete checkpoint under output_dir/checkpoints (fresh
    # if there is none, so a requeued job and its first run use one command); or a checkpoint directory.
    resume: str = ""
    # A step whose loss is NaN/inf on any rank is skipped (no update) and counted; this many in a row abort.
    max_nonfinite_steps: int = 5
    # A directory written by `ringmoe consolidate` or `ringmoe prune` whose weights start a fresh run (fine-tuning
    # a pruned model); its model config must equal this run's model section. Ignored when resuming.
    init_from: str = ""
    # Metric callbacks, in the order they run (ringmoe.train.callbacks.METRIC_CALLBACKS: throughput/MFU, router load
    # and heatmaps, accounting); [] only to measure their cost. Checkpointing, metric sinks and preemption always run.
    callbacks: list[str] = field(default_factory=lambda: ["throughput", "router_load", "accounting"])
    peak_tflops_per_device: float = 0.0  # for MFU, e.g. 989 for H100 SXM bf16 dense; 0: MFU not logged
    watts_per_device: float = 700.0  # for the energy estimate (H100 SXM board power)
    online_probe: OnlineProbeConfig = field(default_factory=OnlineProbeConfig)


@dataclass
class ExportConfig:
    dtype: str = "float32"  # float32 | bfloat16
    max_shard_size: str = "2GB"


PRUNE_STRATEGIES = ("modality_aware", "global", "random", "to_dense")


@dataclass
class PruneDownstreamConfig:
    """Downstream retention (``ringmoe.prune.downstream``): a linear probe on each encoder's frozen pooled features,
    trained on ``label_fraction`` of the set's ``train`` split and scored on ``test``; retention = pruned /
    unpruned test accuracy, with a ``confidence`` paired bootstrap interval (``bootstrap`` resamplings).

    ``root``: a labelled set with split files (``<root>/splits/{train,val,test}.txt``), relative to the working
    directory unless absolute; empty: skipped. ``dataset``: its adapter (``ringmoe.eval.datasets.ADAPTERS``);
    ``sensor``: the sensor its images are read as; ``options``: the adapter's other keyword arguments. The
    defaults read EuroSAT RGB (JPEGs as the optical modality), so ``prune.downstream.root=<eurosat_rgb>`` is all
    it takes. ``limit_per_class``: at most this many images per class and split (0: all), for a quick pass.
    """

    dataset: str = "class_folders"
    root: str = ""
    sensor: str = "worldview2_rgb"
    options: dict[str, Any] = field(default_factory=dict)
    limit_per_class: int = 0
    label_fraction: float = 1.0
    batch_size: int = 64  # images per encoder forward
    weight_decay: float = 1e-3  # of the probe, as ``eval.weight_decay``
    bootstrap: int = 1000
    confidence: float = 0.95

    def validate(self) -> None:
        if self.limit_per_class < 0 or self.batch_size < 1:
            raise ConfigError(
                f"prune.downstream.limit_per_class={self.limit_per_class} must be >= 0 and "
                f"prune.downstream.batch_size={self.batch_size} >= 1"
            )
        if not 0.0 < self.label_fraction <= 1.0:
            raise ConfigError(f"prune.downstream.label_fraction={self.label_fraction} must be in (0, 1]")
        if self.bootstrap < 100 or not 0.0 < self.confidence < 1.0:
            raise ConfigError(
                f"prune.downstream.bootstrap={self.bootstrap} must be >= 100 and "
                f"prune.downstream.confidence={self.confidence} in (0, 1)"
            )


@dataclass
class PruneConfig:
    """Expert pruning of a consolidated checkpoint (``ringmoe prune``, ``ringmoe.prune``).

    ``strategy``: which experts each router keeps. ``modality_aware``: by each deployment modality's share of
    the measured contribution (gate-weighted expert output norm); ``global``: by the contribution summed over
    all calibration tokens; ``random``: a seeded random choice (the baseline that pruning must beat);
    ``to_dense``: no routed expert anywhere, the shared expert alone is a plain dense FFN.
    How many experts per stage: ``modal_experts``/``collab_experts`` if given, else the counts closest to
    ``budget`` encoder parameters (``"1B"``, ``"800M"``). ``modalities``: the deployment set (empty: every
    modality of the model); the others lose their patch embedding, decoder and modal routers.
    ``merge``: fold each removed expert into the kept expert its tokens are rerouted to, weighted by gate mass,
    instead of dropping it (``merge_align``: match hidden units first). ``downstream``: the linear-probe
    retention check on a labelled set, beside the reconstruction one (``eval_batches``).
    """

    strategy: str = "modality_aware"
    budget: str = ""
    modal_experts: list[int] = field(default_factory=list)
    collab_experts: list[int] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    merge: bool = False
    merge_align: bool = True
    # Refit each kept expert's output scale on the calibration tokens (see ``ringmoe.prune.rescale``): a pruned
    # router's softmax runs over fewer experts, which raises every kept expert's weight.
    rescale: bool = True
    # ``to_dense`` only: also fold each block's most important collaborative expert into the dense FFN (which
    # becomes twice as wide) instead of dropping it; the router goes either way.
    dense_fold_collab: bool = False
    calibration_batches: int = 16
    calibration_masked: bool = True  # route SimMIM-masked inputs, as in pretraining and the retention check
    eval_batches: int = 8  # held-out batches (after the calibration ones) for the retention check; 0: skip
    seed: int = 0  # masks of calibration and evaluation, and the ``random`` strategy
    device: str = "cpu"  # calibration and evaluation device, e.g. cuda
    dtype: str = "float32"  # float32 | bfloat16 (calibration and evaluation only; weights keep their dtype)
    downstream: PruneDownstreamConfig = field(default_factory=PruneDownstreamConfig)

    def validate(self) -> None:
        if self.strategy not in PRUNE_STRATEGIES:
            raise ConfigError(f"prune.strategy {self.strategy!r} not in {PRUNE_STRATEGIES}")
        unknown = sorted(set(self.modalities) - set(MODALITIES))
        if unknown:
            raise ConfigError(f"prune.modalities: unknown {unknown}; known: {list(MODALITIES)}")
        if self.calibration_batches < 1 or self.eval_batches < 0:
            raise ConfigError(
                f"prune.calibration_batches={self.calibration_batches} must be >= 1 and "
                f"prune.eval_batches={self.eval_batches} >= 0"
            )
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"prune.dtype {self.dtype!r} not in float32|bfloat16")
        for key in ("modal_experts", "collab_experts"):
            if any(count < 0 for count in getattr(self, key)):
                raise ConfigError(f"prune.{key} {getattr(self, key)} has a negative count")
        self.downstream.validate()


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)

    def validate(self) -> None:
        self.model.validate()
        self.data.validate()
        self.objective.validate()
        self.prune.validate()
        self.contrastive.validate()
        no_embedding = sorted(set(self.data.modalities) - set(self.model.in_chans))
        if no_embedding:
            raise ConfigError(
                f"data.modalities {no_embedding} have no patch embedding in model.in_chans {list(self.model.in_chans)}"
            )
        derived = self.objective.decoder_extra_channels(list(self.model.in_chans))
        if self.model.decoder_extra_channels and self.model.decoder_extra_channels != derived:
            raise ConfigError(
                f"model.decoder_extra_channels {dict(self.model.decoder_extra_channels)} disagrees with the targets "
                f"of the objective section {derived}; leave it unset, it is derived from the objective"
            )
        self.model.decoder_extra_channels = derived
        projection = self.objective.views.projection_dim if self.objective.views.weight > 0 else 0
        if self.model.projection_dim and self.model.projection_dim != projection:
            raise ConfigError(
                f"model.projection_dim {self.model.projection_dim} disagrees with objective.views {projection}; "
                "leave it unset, it is derived from the objective"
            )
        self.model.projection_dim = projection
        ep = self.parallel.expert_parallel_size
        for key in ("modal_experts", "collab_experts"):
            for stage, count in enumerate(getattr(self.model, key)):
                if count and count % ep:
                    raise ConfigError(
                        f"model.{key}[{stage}]={count} is not divisible by parallel.expert_parallel_size={ep}"
                    )
        tp = self.parallel.tensor_parallel_size
        for stage, heads in enumerate(self.model.num_heads):
            if heads % tp:
                raise ConfigError(
                    f"model.num_heads[{stage}]={heads} is not divisible by parallel.tensor_parallel_size={tp}"
                )
        if self.parallel.zero_stage not in (0, 1, 2):
            raise ConfigError(f"parallel.zero_stage {self.parallel.zero_stage}: MoE supports ZeRO stage 0, 1 or 2")
        if not 0 <= self.train.min_lr <= self.train.lr:
            raise ConfigError(f"train.lr={self.train.lr} and train.min_lr={self.train.min_lr}: need 0 <= min_lr <= lr")
        self.train.online_probe.validate()
        if self.train.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"train.precision {self.train.precision!r} not in fp32|bf16|fp16")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    config = load_structured(RunConfig, path, overrides)
    config.validate()
    return config


def load_model_config(path: str | Path, overrides: Sequence[str] = ()) -> ModelConfig:
    """A model YAML (``configs/model/*.yaml``), or the ``model`` section of a run YAML, strictly validated."""
    import yaml  # omegaconf's own dependency

    try:
        top = yaml.safe_load(Path(path).read_text(encoding="utf-8")) if Path(path).is_file() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if isinstance(top, dict) and "model" in top:
        return load_config(path, [f"model.{o}" if not o.startswith("model.") else o for o in overrides]).model
    config = load_structured(ModelConfig, path, overrides)
    config.validate()
    return config
