"""MLLM instruction refinement (He et al. §3.2 and appendix A3): a vision-language model rewrites
``remove <expression>`` into a clear editing instruction for the image.

    refiner = InstructionRefiner.from_pretrained("Qwen/Qwen2.5-VL-7B-Instruct")   # or .from_backbone(backbone)
    refinement = refiner.refine(image, "the man on the left")
    refinement.instruction   # e.g. "Remove the man on the left from the image."

The paper refines "following a built-in image editing pipeline" (ReasonEdit's) without printing
the prompt; ours is :data:`REFINE_PROMPT` (also in the README). The refined instruction must still
contain the expression verbatim so that the method can locate its tokens (the paper's choice):
matching is case-insensitive and the expression's own spelling is spliced back in; when the
model dropped or reworded it, the plain ``remove <expression>`` is used and ``fallback`` is True.

Refinements are cached on disk (JSONL, one record a line) keyed by a hash of the image pixels, the
expression and the refiner's identity (model name + prompt + decoding settings), so an eval or a
sweep never asks twice. Decoding is greedy (deterministic).

Under transformers 5, Qwen2.5-VL needs the processor's ``mm_token_type_ids`` to build its 3-D
(M-RoPE) image positions; they are passed to ``generate`` (issue 13 §4.2).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError
from ..text import make_instruction, normalize_expression

REFINE_PROMPT = (
    "You are helping an image-editing model. Rewrite the editing instruction below into one clear, "
    "specific editing instruction for this image. Keep the action \"remove\". Copy the description of the "
    "object exactly as written, word for word. Do not add objects or details. "
    "Answer with the rewritten instruction only.\nInstruction: {instruction}"
)
DEFAULT_VLM = "Qwen/Qwen2.5-VL-7B-Instruct"
DEFAULT_MAX_NEW_TOKENS = 48
CACHE_ENV = "EDITSEG_CACHE_DIR"


@dataclass(frozen=True)
class Refinement:
    """One refinement: the instruction to use, the model's raw answer, whether the plain
    instruction was used instead (``fallback``), whether it came from the cache, and the refiner id."""

    expression: str
    instruction: str
    raw: str
    fallback: bool
    refiner: str
    cached: bool = False

    def record(self) -> dict[str, Any]:
        """Fields for ``result.config`` / evaluation records."""
        return {
            "refined_instruction": self.instruction,
            "refiner": self.refiner,
            "refiner_raw": self.raw,
            "refiner_fallback": self.fallback,
        }


def image_hash(image: Image.Image) -> str:
    """sha256 of the RGB pixels and size (not of the file: the same picture gives the same key)."""
    rgb = np.asarray(image.convert("RGB"))
    digest = hashlib.sha256(f"{rgb.shape}".encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()[:32]


class RefinementCache:
    """Append-only JSONL cache ``{"key": ..., "raw": ...}`` (the model's raw answers)."""

    def __init__(self, path: str | os.PathLike | None = None):
        if path is None:
            base = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "editseg"
            path = Path(base) / "refinements.jsonl"
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self._entries[entry["key"]] = entry["raw"]
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line from an interrupted run

    @staticmethod
    def key(image_digest: str, expression: str, refiner: str) -> str:
        return hashlib.sha256(json.dumps([image_digest, expression, refiner]).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        return self._entries.get(key)

    def put(self, key: str, raw: str, **meta: Any) -> None:
        with self._lock:
            self._entries[key] = raw
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "raw": raw, **meta}, ensure_ascii=False) + "\n")

    def __len__(self) -> int:
        return len(self._entries)


def splice_expression(answer: str, expression: str) -> str | None:
    """The first line of ``answer`` with the expression's own spelling restored, or None when the
    expression (case-insensitively) is not in it."""
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    if not lines:
        return None
    text = lines[0].strip().strip('"').strip("'").strip()
    at = text.lower().find(expression.lower())
    if at < 0:
        return None
    return text[:at] + expression + text[at + len(expression) :]


class InstructionRefiner:
    """A Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration`` + its processor) that refines instructions.

    ``base_template`` is the instruction refined and the fallback (the paper's "remove {expression}").
    """

    kind = "mllm"

    def __init__(
        self,
        model,
        processor,
        name: str,
        cache: RefinementCache | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        prompt: str = REFINE_PROMPT,
        base_template: str = "remove",
    ):
        if "{instruction}" not in prompt:
            raise ConfigError("The refinement prompt must contain '{instruction}'.")
        self.model = model
        self.processor = processor
        self.name = name
        self.cache = cache
        self.max_new_tokens = max_new_tokens
        self.prompt = prompt
        self.base_template = base_template
        self._image: Image.Image | None = None
        self._image_digest: str | None = None
        self._latest: dict[str, Refinement] = {}

    @property
    def identity(self) -> str:
        """Model name, a hash of the prompt and the decoding settings: the cache key's refiner part."""
        prompt_hash = hashlib.sha256(self.prompt.encode()).hexdigest()[:8]
        return f"{self.name}|prompt:{prompt_hash}|greedy|max_new_tokens:{self.max_new_tokens}"

    @classmethod
    def from_pretrained(
        cls, model: str = DEFAULT_VLM, device=None, dtype=None, cache: RefinementCache | str | None = None, **kwargs
    ) -> "InstructionRefiner":
        """Load a Qwen2.5-VL checkpoint (hub id or folder) and its processor."""
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        from ..errors import OFFLINE_HINT, ModelNotFoundError

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        try:
            vlm = Qwen2_5_VLForConditionalGeneration.from_pretrained(model, dtype=dtype).to(device).eval()
            processor = AutoProcessor.from_pretrained(model)
        except (OSError, ValueError) as error:
            raise ModelNotFoundError(
                f"Could not load the refiner VLM {model!r}: {str(error).strip().splitlines()[0] if str(error).strip() else error}. "
                f"Download a Qwen2.5-VL checkpoint (e.g. {DEFAULT_VLM}) or pass --refiner-model. " + OFFLINE_HINT
            ) from None
        except ImportError as error:
            raise ConfigError(f"The Qwen2.5-VL processor needs torchvision: pip install 'editseg[vlm]' ({error}).") from None
        return cls(vlm, processor, name=model, cache=_as_cache(cache), **kwargs)

    @classmethod
    def from_backbone(cls, backbone, cache: RefinementCache | str | None = None, **kwargs) -> "InstructionRefiner":
        """Reuse the Qwen2.5-VL a loaded backbone already holds (Step1X-Edit, Qwen-Image-Edit)."""
        pipeline = getattr(backbone, "pipeline", None)
        vlm = getattr(pipeline, "text_encoder", None)
        processor = getattr(pipeline, "processor", None)
        if vlm is None or processor is None or "Qwen2_5_VL" not in type(vlm).__name__ or not hasattr(vlm, "generate"):
            raise ConfigError(
                f"{getattr(backbone, 'name', backbone)!r} holds no Qwen2.5-VL to reuse; name one with --refiner-model "
                f"(e.g. {DEFAULT_VLM})."
            )
        name = f"{getattr(backbone, 'name', 'backbone')}:text_encoder"
        return cls(vlm, processor, name=name, cache=_as_cache(cache), **kwargs)

    # -- image ---------------------------------------------------------------------------------
    def set_image(self, image: Image.Image) -> None:
        """The image later :meth:`__call__` calls refer to."""
        self._image = image.convert("RGB")
        self._image_digest = image_hash(self._image)
        self._latest = {}

    def __call__(self, expression: str) -> str:
        """The refined instruction for ``expression`` in the current image (``Segmenter`` hook)."""
        if self._image is None:
            raise ConfigError("The instruction refiner has no image: call set_image(image) first.")
        refinement = self.refine(self._image, expression)
        self._latest[refinement.expression] = refinement
        return refinement.instruction

    def record_for(self, expression: str) -> dict[str, Any]:
        """Record fields of the refinement last made for ``expression`` in the current image ({} if none)."""
        refinement = self._latest.get(normalize_expression(expression))
        return refinement.record() if refinement is not None else {}

    # -- refinement ------------------------------------------------------------------------------
    def inputs(self, image: Image.Image, instruction: str) -> dict:
        """Processor outputs for one image + the prompt (incl. ``mm_token_type_ids``)."""
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt.format(instruction=instruction)}]}
        ]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.processor(text=[text], images=[image], return_tensors="pt")
        if "mm_token_type_ids" not in inputs:  # processors that do not return them (older transformers)
            image_token = self.model.config.image_token_id
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == image_token).to(torch.int32)
        return inputs

    @torch.no_grad()
    def generate(self, image: Image.Image, instruction: str) -> str:
        """The model's greedy answer (new tokens only, special tokens removed)."""
        inputs = self.inputs(image, instruction)
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        batch = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items() if torch.is_tensor(v)}
        output = self.model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = output[0, batch["input_ids"].shape[1] :]
        return self.processor.tokenizer.decode(new_tokens, skip_special_tokens=True)

    def refine(self, image: Image.Image, expression: str) -> Refinement:
        """Refine ``remove <expression>`` for ``image`` (cached)."""
        expression = normalize_expression(expression)
        base = make_instruction(expression, self.base_template)
        digest = self._image_digest if image is self._image and self._image_digest else image_hash(image)
        key = RefinementCache.key(digest, expression, self.identity)
        raw = self.cache.get(key) if self.cache is not None else None
        cached = raw is not None
        if raw is None:
            raw = self.generate(image.convert("RGB"), base)
            if self.cache is not None:
                self.cache.put(key, raw, expression=expression, refiner=self.identity, image=digest)
        spliced = splice_expression(raw, expression)
        return Refinement(
            expression=expression,
            instruction=spliced if spliced is not None else base,
            raw=raw,
            fallback=spliced is None,
            refiner=self.identity,
            cached=cached,
        )


def _as_cache(cache: RefinementCache | str | os.PathLike | None) -> RefinementCache | None:
    if cache is None or isinstance(cache, RefinementCache):
        return cache
    return RefinementCache(cache)


__all__ = [
    "DEFAULT_VLM",
    "REFINE_PROMPT",
    "InstructionRefiner",
    "Refinement",
    "RefinementCache",
    "image_hash",
    "splice_expression",
]
