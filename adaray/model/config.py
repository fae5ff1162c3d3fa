"""ModelConfig: every hyperparameter of AdaSFFuse (MODEL.md) as a typed, validated field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from adaray.config import ConfigError

Head = Literal["pixels", "weights", "pyramid"]
HEADS: tuple[str, ...] = get_args(Head)
Detail = Literal["map", "larger"]
DETAILS: tuple[str, ...] = get_args(Detail)
# The fields that choose the output head (the rest is the body: blocks, widths, SSD).
HEAD_FIELDS = ("head", "levels", "per_level_maps", "detail")


@dataclass(frozen=True)
class ModelConfig:
    """AdaSFFuse hyperparameters; defaults are the paper's (MODEL.md, "Defaults")."""

    channels: int = 64  # C: embedding width; the high band runs at 3C
    n_hi: int = 2  # SF-Mamba blocks on the detail (high) band
    n_lo: int = 2  # SF-Mamba blocks on the approximation (low) band
    n_fuse: int = 4  # SF-Mamba blocks at full resolution
    d_state: int = 64  # N: SSM state size per head
    headdim: int = 64  # P: channels per SSD head; must divide expand * width
    expand: int = 2  # d_inner = expand * width
    ngroups: int = 1  # G: groups sharing B and C
    chunk_size: int = 64  # SSD chunk length (a speed knob, not a math one)
    mlp_ratio: int = 2  # gated MLP hidden width = mlp_ratio * width
    dropout: float = 0.0
    # Output head: "pixels" predicts the fused luma (the paper's); "weights" a per-pixel weight
    # w of source A (fused = w a + (1 - w) b); "pyramid" blends the sources' Laplacian
    # pyramids with the Gaussian pyramid of w (`levels` band-pass levels).
    head: Head = "pixels"
    levels: int = 4  # pyramid head: band-pass levels (fewer where an image is too small)
    per_level_maps: bool = False  # pyramid head: one weight map per level (and the base)
    # Pyramid head's band-pass levels: weighted by the map ("map"), or each coefficient taken
    # from the source whose coefficient is larger in magnitude ("larger", the classical
    # Laplacian rule), the map then weighting the base only.
    detail: Detail = "map"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        if self.channels < 4 or self.channels % 4:
            raise ConfigError(f"channels: must be a positive multiple of 4, got {self.channels}")
        for name in ("n_hi", "n_lo", "n_fuse"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("d_state", "headdim", "expand", "ngroups", "chunk_size", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.head not in HEADS:
            raise ConfigError(f"head: unknown head {self.head!r} (known: {', '.join(HEADS)})")
        if self.levels < 1:
            raise ConfigError(f"levels: must be >= 1, got {self.levels}")
        if self.per_level_maps and self.head != "pyramid":
            raise ConfigError(f"per_level_maps: only the pyramid head has levels (head is "
                              f"{self.head!r})")
        if self.detail not in DETAILS:
            raise ConfigError(f"detail: unknown rule {self.detail!r} (known: "
                              f"{', '.join(DETAILS)})")
        if self.detail != "map" and self.head != "pyramid":
            raise ConfigError(f"detail: only the pyramid head has band-pass levels (head is "
                              f"{self.head!r})")
        if self.detail == "larger" and self.per_level_maps:
            raise ConfigError("per_level_maps: with detail 'larger' only the base is weighted "
                              "by a map, so one map per level has nothing to weight")
        for width in (self.channels, 3 * self.channels):
            d_inner = self.expand * width
            if d_inner % self.headdim:
                raise ConfigError(
                    f"headdim: {self.headdim} does not divide d_inner = expand * width = "
                    f"{self.expand} * {width} = {d_inner}"
                )
            if (d_inner // self.headdim) % self.ngroups:
                raise ConfigError(
                    f"ngroups: {self.ngroups} does not divide the {d_inner // self.headdim} "
                    f"heads of a width-{width} block"
                )
