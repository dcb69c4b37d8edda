"""RefAM (Kukleva et al. 2025, arXiv:2509.22650) for images: FLUX text-to-image attention → argmax → SAM.

    refam = RefAM.from_pretrained("flux1-dev", components={"sam": "facebook/sam-vit-huge"})
    refam.set_image(rgb)
    [result] = refam.predict(["the man in the red shirt"])

Per image: the clean latent ``X₀`` is brought to the collection timestep (750 of 1000 on the
pipeline's 28-step schedule) by the forward process ``X_σ = (1−σ)X₀ + σε`` (the paper's main
setting, its Table 2 / our Table 1 row) or by rectified-flow inversion (``inversion=True``, its
Table 7), both conditioned on ``caption`` (empty by default). Per expression batch: one probed
transformer forward on that latent conditioned on ``ê`` (expression + attention magnets) records
per-token image→token attention in every block (:mod:`editseg.probing.token_attention`); then
:mod:`.refam_maps` filters stop words, magnets, ``</s>`` and GAS tokens, averages the rest, applies
the noun-phrase and spatial-bias switches, takes the argmax and prompts SAM with that point.

Every switch the paper ablates is a field of :class:`RefAMConfig` (see README, "RefAM").
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError
from ..text import normalize_expression
from . import refam_maps as maps
from .refam_text import DEFAULT_SPACY_MODEL, ExpressionParser

from ..results import SegmentationResult
from .base import Method, memory_guard

DEFAULT_T2I = "flux1-dev"
TINY_T2I = "tiny-random-flux1"
TINY_T2I_FLUX2 = "tiny-random-flux2-t2i"
T2I_MODELS = {
    "flux1-dev": "FLUX.1 [dev] (the paper's model; black-forest-labs/FLUX.1-dev)",
    "flux2-klein-4b-t2i": "FLUX.2 [klein] 4B as a text-to-image DiT (our option)",
    "flux2-klein-9b-t2i": "FLUX.2 [klein] 9B as a text-to-image DiT (our option)",
    TINY_T2I: "built in, random FLUX.1 weights (offline trials; output meaningless)",
    TINY_T2I_FLUX2: "built in, random FLUX.2 [klein] weights (offline trials; output meaningless)",
}
DEFAULT_SAM = "facebook/sam-vit-huge"
TINY_MAX_SIDE = 64


@dataclass(frozen=True)
class RefAMConfig:
    """RefAM's settings; defaults are the paper's RefCOCO setting (Table 2 "REFAM").

    - ``attention_magnets`` (Tables 4-6 "AM"), ``magnets``, ``color_magnets`` (Table 5: stop words
      + colour vs stop words only);
    - ``filter_stop_words``, ``filter_eos``: drop stop-word / ``</s>`` maps before averaging (§3.2, §4);
    - ``token_softmax``: App. B's softmax over ê's tokens per head and block (else raw attention);
    - ``gas_ratio``, ``suppress_gas``: GAS detection (10× rule, §3.3) and suppression (§3.4);
    - ``noun_phrase`` (NP), ``spatial_bias`` (SB): Table 6; ``parser``: auto | spacy | rules;
    - ``timestep`` (750), ``num_steps`` (28): collection point on the pipeline's schedule;
    - ``inversion``, ``inversion_gamma``: RF inversion (App. A.1) and its controller γ;
    - ``caption``: the prompt of the trajectory (App. A.2/A.3; "" = the empty prompt);
    - ``skip_blocks_fraction``: drop the first fraction of blocks (§3.3 Table 1; 0 = all blocks);
    - ``mask_choice``: which SAM multimask output to keep;
    - ``random_vector_magnets``: n > 0 adds n random-vector magnets (Table 5 "random vectors (5x)":
      seeded Gaussian vectors rescaled to the mean norm of the prompt's real token embeddings, written
      into the first padding slots after the prompt; combine with ``attention_magnets=False`` for the
      paper's row). Random stop-word sets (Table 5 "random stop words") are ``magnets=(...)``.
    """

    attention_magnets: bool = True
    magnets: tuple[str, ...] = maps.MAGNETS
    color_magnets: tuple[str, ...] = maps.COLOR_MAGNETS
    filter_stop_words: bool = True
    filter_eos: bool = True
    token_softmax: bool = True
    gas_ratio: float = 10.0
    suppress_gas: bool = True
    noun_phrase: bool = True
    spatial_bias: bool = True
    parser: str = "auto"
    spacy_model: str = DEFAULT_SPACY_MODEL
    timestep: float = 750.0
    num_steps: int = 28
    inversion: bool = False
    inversion_gamma: float = 0.5
    caption: str = ""
    skip_blocks_fraction: float = 0.0
    mask_choice: str = "best-score"
    random_vector_magnets: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mask_choice not in maps.MASK_CHOICES:
            raise ConfigError(f"mask_choice must be one of {', '.join(maps.MASK_CHOICES)}; got {self.mask_choice!r}.")
        if not 0 <= self.skip_blocks_fraction < 1:
            raise ConfigError(f"skip_blocks_fraction must be in [0, 1); got {self.skip_blocks_fraction}.")
        if not 0 < self.timestep < 1000:
            raise ConfigError(f"timestep must be in (0, 1000); got {self.timestep}.")
        if self.parser not in ("auto", "spacy", "rules"):
            raise ConfigError(f"parser must be auto, spacy or rules; got {self.parser!r}.")

    @property
    def appended(self) -> tuple[str, ...]:
        return tuple(self.magnets) + tuple(self.color_magnets) if self.attention_magnets else ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _ImageState:
    rgb: Image.Image
    image: Any  # T2IImage
    latents: torch.Tensor
    timestep: torch.Tensor
    sigma: float
    seconds: float


class RefAM(Method):
    """RefAM behind the Method interface: ``set_image`` once, ``predict`` any number of expressions."""

    name: ClassVar[str] = "refam"
    requires: ClassVar[tuple[str, ...]] = ("t2i-dit", "sam")

    def __init__(self, backbone, sam, config: RefAMConfig | None = None, batch_size: int = 4, parser=None):
        self.backbone = backbone
        self.sam = sam
        self.config = config or RefAMConfig()
        self.batch_size = batch_size
        self.parser = parser or ExpressionParser(self.config.parser, self.config.spacy_model)
        self._state: _ImageState | None = None

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        device=None,
        dtype=None,
        offload: str = "none",
        components: Mapping[str, str] | None = None,
        config: RefAMConfig | None = None,
        **options,
    ) -> "RefAM":
        """Load the text-to-image DiT ``model`` (``flux1-dev``, a hub id / folder of a ``FluxPipeline``, or
        ``tiny-random-flux1``) and SAM (``components={"sam": ...}``; default ``facebook/sam-vit-huge``,
        ``tiny-random-sam`` with the tiny DiT). ``options`` are :class:`RefAMConfig` fields."""
        from ..components.sam import SamComponent

        model = model or DEFAULT_T2I
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        batch_size = options.pop("batch_size", 4)
        if config is None:
            unknown = sorted(set(options) - set(RefAMConfig.__dataclass_fields__))
            if unknown:
                raise ConfigError(
                    f"Unknown RefAM option(s) {', '.join(unknown)}; choose from {', '.join(RefAMConfig.__dataclass_fields__)}."
                )
            config = RefAMConfig(**options)
        backbone = load_t2i_backbone(model, device, dtype, offload)
        sam_id = (components or {}).get("sam") or ("tiny-random-sam" if backbone.is_random else DEFAULT_SAM)
        sam = SamComponent.from_pretrained(sam_id, device=device, dtype=torch.float32)
        if backbone.is_random:
            warnings.warn(f"RANDOM WEIGHTS: {model!r} is randomly initialised; RefAM output is meaningless.", stacklevel=2)
        return cls(backbone, sam, config, batch_size=batch_size)

    # -- image -----------------------------------------------------------------------------------
    def set_image(self, image: Image.Image) -> None:
        """Encode the image, bring it to the collection timestep, and give it to SAM."""
        start = time.perf_counter()
        config, backbone = self.config, self.backbone
        with memory_guard(backbone.device), torch.inference_mode():
            prepared = backbone.prepare_image(image)
            timesteps, sigmas = backbone.schedule(prepared.latents.shape[1], config.num_steps)
            index = int(torch.argmin((timesteps.float() - config.timestep).abs()))
            if config.inversion:
                caption = backbone.encode_text([config.caption])
                latents = backbone.invert(prepared, caption, timesteps, sigmas, index, config.inversion_gamma, config.seed)
            else:
                latents = backbone.noised(prepared, sigmas[index], config.seed)
        self.sam.set_image(image)
        self._state = _ImageState(image, prepared, latents, timesteps[index], float(sigmas[index]), time.perf_counter() - start)

    # -- expressions ------------------------------------------------------------------------------
    def predict(self, expressions: Sequence[str]) -> list:
        """One result per expression for the current image (see :meth:`set_image`)."""
        if self._state is None:
            raise ConfigError("No image set: call set_image(image) first.")
        if isinstance(expressions, str):
            expressions = [expressions]
        expressions = [normalize_expression(e) for e in expressions]
        results = []
        with memory_guard(self.backbone.device):
            for start in range(0, len(expressions), self.batch_size):
                results.extend(self._predict_batch(expressions[start : start + self.batch_size]))
        return results

    def blocks(self) -> list[int]:
        """Blocks aggregated: all, or all but the first ``skip_blocks_fraction`` of them."""
        total = self.backbone.num_blocks
        return list(range(int(total * self.config.skip_blocks_fraction), total))

    def _predict_batch(self, expressions: list[str]) -> list:
        from ..probing.token_attention import TokenProbePlan

        config, backbone, state = self.config, self.backbone, self._state
        t0 = time.perf_counter()
        parsed = [self.parser(e) for e in expressions]
        texts, spans = zip(*(maps.expanded_expression(e, config.appended) for e in expressions))
        with torch.inference_mode():
            text = backbone.encode_text(list(texts))
        tokens = []
        for b in range(len(expressions)):
            at = text.starts[b]
            phrase = (at + parsed[b].span[0], at + parsed[b].span[1]) if config.noun_phrase else None
            tokens.append(
                maps.classify_tokens(
                    text.encoder_texts[b], text.offsets[b], text.tracked[b], (at + spans[b][0], at + spans[b][1]), phrase, text.eos[b]
                )
            )
        if config.random_vector_magnets:
            with torch.inference_mode():
                tokens = maps.append_random_vector_magnets(text.embeds, tokens, text.num_real, config.random_vector_magnets, config.seed)
        count = max(len(t) for t in tokens)
        positions = torch.zeros(len(expressions), count, dtype=torch.long)
        valid = torch.zeros(len(expressions), count, dtype=torch.bool)
        for b, row in enumerate(tokens):
            positions[b, : len(row)] = torch.tensor([t.position for t in row])
            valid[b, : len(row)] = True
        blocks = self.blocks()
        plan = TokenProbePlan(backbone.layout_for(state.image, text), positions, valid, frozenset(blocks))
        t1 = time.perf_counter()
        recorder = backbone.probe_forward(state.latents, state.timestep, text, state.image, plan)
        t2 = time.perf_counter()
        which = "image_maps_softmax" if config.token_softmax else "image_maps"
        token_maps = maps.per_token_maps(recorder.stacked(which, blocks))  # B, K, N
        gas = maps.detect_gas(recorder.stacked("text_mass", blocks), valid, config.gas_ratio)
        grid = state.image.geometry.grid
        results = []
        for b, expression in enumerate(expressions):
            row = tokens[b]
            keep = maps.keep_mask(
                row, gas[b, : len(row)].tolist(), config.filter_stop_words, True, config.filter_eos,
                config.noun_phrase, config.suppress_gas,
            )
            keep_t = torch.zeros(1, count, dtype=torch.bool)
            keep_t[0, : len(row)] = torch.tensor(keep)
            heat = maps.minmax(maps.aggregate(token_maps[b : b + 1], keep_t))[0]
            terms = parsed[b].terms if config.spatial_bias else []
            biased = heat * maps.spatial_prior(grid, terms).to(heat.device)
            cell = maps.argmax_cell(biased, grid)
            point = maps.cell_to_pixel(cell, grid, state.image.geometry.input_size)
            masks, scores = self.sam.predict_points([point])
            chosen = maps.choose_mask(masks, scores, config.mask_choice)
            heat_grid = maps.minmax(biased[None])[0].view(*grid)
            heat_input = state.image.geometry.to_input(heat_grid[None])[0].cpu().numpy()
            kept = [t.position for t, k in zip(row, keep) if k]
            results.append(
                SegmentationResult(
                    expression=expression,
                    mask=np.asarray(masks[chosen], dtype=bool),
                    method=self.name,
                    instruction=texts[b],
                    maps={"attention": heat_input.astype(np.float32)},
                    token_maps={"attention": heat_grid.cpu().numpy().astype(np.float32)},
                    point=point,
                    proposals=[{"mask": np.asarray(m, dtype=bool), "score": float(s)} for m, s in zip(masks, scores)],
                    prompt_token_indices=kept,
                    prompt_tokens=[t.text for t, k in zip(row, keep) if k],
                    timings={
                        "image_s": state.seconds,
                        "text_encode_s": t1 - t0,
                        "transformer_s": t2 - t1,
                        "batch_size": float(len(expressions)),
                    },
                    model=backbone.name,
                    config={
                        **config.to_dict(),
                        "sam": getattr(self.sam, "name", ""),
                        "sigma": state.sigma,
                        "collected_timestep": float(state.timestep),
                        "parser": parsed[b].parser,
                        "noun_phrase_text": parsed[b].noun_phrase,
                        "spatial_terms": list(terms),
                        "gas_tokens": [t.text for t, g in zip(row, gas[b, : len(row)].tolist()) if g],
                        "sam_scores": [float(s) for s in scores],
                        "mask_index": chosen,
                    },
                )
            )
        return results


def load_t2i_backbone(model: str, device: torch.device, dtype: torch.dtype, offload: str = "none"):
    """A text-to-image backbone by name (:data:`T2I_MODELS`), hub id or folder: FLUX.1 (``FluxPipeline``)
    or FLUX.2 [klein] (``Flux2KleinPipeline``, names ending in ``-t2i`` or folders holding one)."""
    from ..backbones import flux1_t2i, flux2_t2i, place_pipeline, resolve_model_source
    from ..errors import OFFLINE_HINT, ModelNotFoundError

    if model in (TINY_T2I, TINY_T2I_FLUX2):
        if model == TINY_T2I:
            from ..backbones.tiny_flux1 import build_tiny_flux_pipeline as build
        else:
            from ..backbones.tiny import build_tiny_flux2_klein_pipeline as build
        pipeline = build().to(device)
        if dtype != torch.float32:
            pipeline = pipeline.to(dtype=dtype)
        cls = flux1_t2i.FluxT2IBackbone if model == TINY_T2I else flux2_t2i.Flux2T2IBackbone
        side = TINY_MAX_SIDE if model == TINY_T2I else 128
        return cls(pipeline, name=model, is_random=True, default_max_side=side)
    hub_id = flux2_t2i.ALIASES.get(model.lower()) or flux1_t2i.ALIASES.get(model.lower(), model)
    source = resolve_model_source(hub_id)
    is_flux2 = model.lower() in flux2_t2i.ALIASES or _class_name(source) in ("Flux2KleinPipeline",)
    try:
        if is_flux2:
            from ..backbones.flux2 import load_pipeline as load_flux2

            pipeline = load_flux2(source, dtype)
        else:
            pipeline = flux1_t2i.load_pipeline(source, dtype)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelNotFoundError(
            f"Could not load the text-to-image model {model!r} ({source}): {reason}\n{flux1_t2i.WEIGHTS_HINT} {OFFLINE_HINT}"
        ) from None
    place_pipeline(pipeline, device, offload)
    if is_flux2:
        return flux2_t2i.Flux2T2IBackbone(pipeline, name=model)
    return flux1_t2i.FluxT2IBackbone(pipeline, name=model)


def _class_name(source: str) -> str | None:
    import json
    from pathlib import Path

    index = Path(source) / "model_index.json"
    try:
        return json.loads(index.read_text()).get("_class_name") if index.is_file() else None
    except (OSError, ValueError):
        return None
