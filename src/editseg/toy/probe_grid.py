"""One probed forward per (sample, timestep) read every way the paper's analyses need.

For each sample, :func:`probe_grid` probes the timesteps of one ``num_steps`` schedule in increasing
order (they share one denoising trajectory, so step ``k`` resumes after step ``k - 1``) with CAM/RAM
terms at every block and clean-token features at every block. From those probes, without another
forward:

- metrics of any method config at each timestep (Fig. 3: CAM / RAM over double / single / all
  blocks; Table 2, Fig. 5 tau, single attention blocks at the first timestep);
- FSL with its feature block and timestep varied while the region proposal stays at the method's
  timestep (Fig. 4; switch ``fsl_attention``);
- the separability J(t, l) of every block and timestep (appendix A1, eqs. A1-A3), and the same J
  with the foreground labels shuffled (what J reads when the labels carry no information);
- per-block attention mass: the mean image→prompt mass ``c_l`` (eq. 3 before the sum over blocks)
  on target tokens and on background tokens.

Ambiguities of the paper, as switches (defaults first):

- ``grid_rule`` — how the ground truth reaches the token grid for J and the attention mass
  ("resize ground-truth masks to the spatial resolution of clean image tokens"): ``"nearest"``
  (the pixel under each token's centre, :func:`~editseg.evaluation.separability.mask_to_token_grid`,
  as ``editseg eval-separability``) or ``"coverage"`` (more than half of the token's pixels).
- ``normalize`` — L2-normalise features before J (the paper does: "All feature vectors are
  ℓ2-normalized"); ``False`` gives the raw-feature J.
- ``fsl_attention`` — Fig. 4 varies the FSL timestep t': ``"method"`` keeps the region proposal
  (RAM) at the first probed timestep (index 0, the method's, unless ``timesteps`` leave it out)
  and reads only the features at t'; ``"same"`` takes RAM
  and features from the same probe at t'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..config import MethodConfig
from ..data.shapes import ShapesSample
from ..evaluation.metrics import MetricAccumulator, argmax_in_mask, separability_score
from ..evaluation.separability import mask_to_token_grid
from ..geometry import ImageGeometry
from ..methods.early_grounding import ground, masks_at_input
from .analysis import token_coverage

GRID_RULES = ("nearest", "coverage")
FSL_ATTENTION = ("method", "same")


def grid_mask(mask: np.ndarray, geometry: ImageGeometry, rule: str = "nearest") -> np.ndarray:
    """The (H, W) ground truth on the clean-token grid (rows, cols) under ``rule`` (see module doc)."""
    if rule == "nearest":
        return mask_to_token_grid(mask, geometry)
    if rule == "coverage":
        if geometry.input_size != geometry.resized_size or geometry.crop[:2] != (0, 0):
            raise ValueError("the 'coverage' rule needs an image the token grid tiles exactly (no resize or crop)")
        return (token_coverage(mask, geometry.grid) > 0.5).numpy()
    raise ValueError(f"grid_rule must be one of {GRID_RULES}, got {rule!r}")


@dataclass
class Tally:
    """Running metrics of one configuration: masks (mIoU, oIoU) and RAM / CAM argmax hits."""

    accumulator: MetricAccumulator = field(default_factory=MetricAccumulator)
    ram_hits: list[bool] = field(default_factory=list)
    cam_hits: list[bool] = field(default_factory=list)

    def add(self, mask: np.ndarray, truth: np.ndarray, sample_id: str, ram=None, cam=None) -> None:
        self.accumulator.add_masks(mask, truth, sample_id=sample_id)
        if ram is not None:
            self.ram_hits.append(bool(argmax_in_mask(ram, truth)))
        if cam is not None:
            self.cam_hits.append(bool(argmax_in_mask(cam, truth)))

    def row(self, label: str) -> dict:
        """A table row: label, mIoU, oIoU, RAM PA, CAM PA (None where not measured)."""
        summary = self.accumulator.summary()
        mean = lambda hits: float(np.mean(hits)) if hits else None  # noqa: E731
        return {"label": label, "mIoU": float(summary["mIoU"]), "oIoU": float(summary["oIoU"]),
                "ram_pa": mean(self.ram_hits), "cam_pa": mean(self.cam_hits)}


@dataclass
class GridReadout:
    """What :func:`probe_grid` measured. ``rows[label][t]`` are table rows; arrays are indexed
    (sample, timestep position, block); J is NaN where a sample's grid mask is all fg or all bg."""

    timesteps: list[int]
    num_steps: int
    blocks: list[int]
    rows: dict[str, dict[int, dict]]
    fsl: dict[int, dict[int, dict]]  # feature block -> timestep -> row (Fig. 4)
    separability: np.ndarray
    separability_shuffled: np.ndarray
    mass_target: np.ndarray  # mean c_l on target tokens
    mass_background: np.ndarray  # mean c_l on background tokens
    settings: dict = field(default_factory=dict)


def probe_grid(
    segmenter,
    samples: Sequence[ShapesSample],
    rows: Sequence[tuple[str, MethodConfig]],
    timesteps: Sequence[int],
    num_steps: int,
    *,
    base: MethodConfig | None = None,
    site: str = "attn",
    grid_rule: str = "nearest",
    normalize: bool = True,
    fsl_attention: str = "method",
    shuffle_seed: int = 0,
) -> GridReadout:
    """Probe every sample at every timestep once and read ``rows`` (configs whose forward key
    equals ``base``'s apart from the timestep), Fig. 4 FSL, J(t, l) and the attention mass."""
    base = base or MethodConfig()
    timesteps = sorted({int(t) for t in timesteps})
    if not timesteps or not all(0 <= t < num_steps for t in timesteps):
        raise ValueError(f"timesteps must lie in 0-{num_steps - 1}, got {timesteps}")
    if grid_rule not in GRID_RULES:
        raise ValueError(f"grid_rule must be one of {GRID_RULES}, got {grid_rule!r}")
    if fsl_attention not in FSL_ATTENTION:
        raise ValueError(f"fsl_attention must be one of {FSL_ATTENTION}, got {fsl_attention!r}")
    method = segmenter.method
    blocks = list(range(segmenter.backbone.num_blocks))
    shape = (len(samples), len(timesteps), len(blocks))
    sep, shuffled = np.full(shape, np.nan), np.full(shape, np.nan)
    target, background = np.full(shape, np.nan), np.full(shape, np.nan)
    tallies = {label: {t: Tally() for t in timesteps} for label, _ in rows}
    fsl_tallies = {b: {t: Tally() for t in timesteps} for b in blocks}
    rng = np.random.default_rng(shuffle_seed)
    all_blocks = base.replace(attention_blocks="all", mode="ram")
    for s, sample in enumerate(samples):
        segmenter.set_image(sample.image)
        geometry = method.image.geometry
        fg = grid_mask(sample.mask, geometry, grid_rule).reshape(-1)
        permuted = rng.permutation(fg)
        first, anchor = None, None
        for k, t in enumerate(timesteps):
            at_t = all_blocks.replace(timestep_index=t, num_inference_steps=num_steps)
            probe = segmenter.probe([sample.expression], [at_t], features={site: blocks}, reuse_text=first)
            first = first or probe
            anchor = anchor or probe  # the first timestep's probe: the region proposal of Fig. 4
            recorder = probe.recorder
            for label, config in rows:
                result = method.results(probe, config.replace(timestep_index=t, num_inference_steps=num_steps))[0]
                tallies[label][t].add(result.mask, sample.mask, sample.id, result.ram_tokens, result.cam_tokens)
            attention = anchor.recorder if fsl_attention == "method" else recorder
            for b in blocks:
                config = method.resolved(base.replace(mode="full", feature_site=site, feature_block=b, attention_blocks="all"))
                order = sorted(segmenter.backbone.resolve_blocks(config.attention_blocks))
                maps = ground(attention.stacked("cam", order), attention.stacked("ram", order),
                              recorder.features[(site, b)], geometry.grid, config)
                mask = masks_at_input(maps, geometry, config)[0].cpu().numpy()
                fsl_tallies[b][t].add(mask, sample.mask, sample.id)
                c = recorder.cam[b][0].float().cpu().numpy()
                if fg.any():
                    target[s, k, b] = float(c[fg].mean())
                if not fg.all():
                    background[s, k, b] = float(c[~fg].mean())
                if fg.any() and not fg.all():
                    features = recorder.features[(site, b)][0].float().cpu().numpy()
                    sep[s, k, b] = separability_score(features, fg, normalize=normalize)
                    shuffled[s, k, b] = separability_score(features, permuted, normalize=normalize)
    settings = {"site": site, "grid_rule": grid_rule, "normalize": normalize, "fsl_attention": fsl_attention,
                "shuffle_seed": shuffle_seed}
    return GridReadout(
        timesteps=timesteps, num_steps=num_steps, blocks=blocks,
        rows={label: {t: tally.row(label) for t, tally in per_t.items()} for label, per_t in tallies.items()},
        fsl={b: {t: tally.row(f"feature block {b}, t={t}") for t, tally in per_t.items()} for b, per_t in fsl_tallies.items()},
        separability=sep, separability_shuffled=shuffled, mass_target=target, mass_background=background,
        settings=settings,
    )

