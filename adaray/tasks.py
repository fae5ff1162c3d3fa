"""The task table: the one place that knows each fusion task's defaults.

Loss weights and targets follow MODEL.md ("Per-task defaults from the reference
implementation"); folder names follow the seed layout (`<root>/<split>/IVF/infrared|visible`,
...) and the datasets in shared/data/fusion. The CLI, data discovery, losses, tune and serve
all read this table; nothing else hard-codes a task default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from adaray.errors import ConfigError

IntensityTarget = Literal["max", "mean", "focus"]
SsimWeighting = Literal["gradient", "equal"]


@dataclass(frozen=True)
class TaskSpec:
    """Defaults of one fusion task."""

    name: str  # CLI name: ivf, mef, mff, mif
    folder: str  # folder name in the seed layout: IVF, MEF, MFF, MIF
    title: str
    a_dirs: tuple[str, ...]  # accepted folder names for source A (first is canonical)
    b_dirs: tuple[str, ...]  # accepted folder names for source B
    w_int: float
    w_grad: float
    w_ssim: float
    intensity_target: IntensityTarget
    ssim_weighting: SsimWeighting
    w_vif: float = 0.0  # information-fidelity term (1 - differentiable VIF / 2); 0 = off
    focus_window: int = 7  # side of the window of the "focus" target's gradient energy


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("ivf", "IVF", "infrared-visible", ("infrared", "ir"), ("visible", "vi"),
                 20.0, 20.0, 10.0, "max", "gradient"),
        TaskSpec("mef", "MEF", "multi-exposure", ("low", "under"), ("over",),
                 20.0, 20.0, 10.0, "mean", "equal"),
        TaskSpec("mff", "MFF", "multi-focus", ("imageA", "A", "near"), ("imageB", "B", "far"),
                 20.0, 20.0, 10.0, "mean", "gradient"),
        TaskSpec("mif", "MIF", "medical", ("CT", "PET", "SPECT"), ("MRI",),
                 20.0, 100.0, 50.0, "max", "gradient"),
    )
}


def get_task(name: str) -> TaskSpec:
    """Look up a task by CLI name or folder name (case-insensitive)."""
    spec = TASKS.get(name.lower())
    if spec is None:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return spec
