"""Videos: per-frame masks for a few expressions, optional temporal smoothing, mask/overlay videos.

Frames are decoded and encoded with PyAV (FFmpeg's libraries, bundled in its wheels; ``pip install
'editseg[video]'``). Each kept frame is one ``set_image`` + one ``predict`` of all expressions.

**Text encoded once.** Where the backbone's text encoder does not look at the image
(``Backbone.text_sees_image`` is False: FLUX.2 [klein], FLUX.1 Kontext), each expression batch is
encoded on the first frame and the encoding reused for every later frame
(:func:`text_encoded_once`); VLM text encoders (Qwen-Image-Edit, Step1X-Edit) see each frame, so
there it is encoded per frame.

Limits: ``fps`` keeps at most that many frames per second of video (frames are picked by their
timestamps; the outputs play at the reduced rate), ``max_frames`` stops after that many kept
frames (with a warning), ``max_pixels`` refuses frames above that size.

**Temporal smoothing** (``smooth=K``, odd, 1 = off): the output mask of frame *t* is the per-pixel
majority vote of the masks of frames *t-K//2 … t+K//2* (the window is cut at the clip's ends; a
tie counts as foreground). It removes single-frame flicker and holes at the cost of K//2 frames of
look-ahead; the raw per-frame masks are not kept. Frames stream through a window of K masks and
K//2+1 frames, so memory does not grow with the clip.

Outputs in ``out_dir`` per expression (``<slug>`` from the expression): ``<slug>.mask.mp4``
(white on black; lossy, read it back with a threshold at 128), ``<slug>.overlay.mp4`` and, with
``png``, ``<slug>/frame_000000.png`` (exact masks); always ``records.jsonl``: one line per frame
and expression with the exact mask as COCO RLE.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from ..errors import ConfigError, EditsegError, ImageLoadError
from ..images import DEFAULT_MAX_PIXELS
from ..masks import encode_rle, save_mask_png
from ..viz import overlay

DEFAULT_MAX_FRAMES = 300


class VideoError(EditsegError):
    """A video cannot be read or written as asked."""


def _av() -> Any:
    try:
        import av
    except ModuleNotFoundError:
        raise VideoError("Video needs PyAV: pip install 'editseg[video]'") from None
    return av


@dataclass(frozen=True)
class Frame:
    index: int  # in the source video
    time_s: float
    image: Image.Image


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int | None  # as declared by the container (may be missing)


def probe(path: str | Path) -> VideoInfo:
    """Size, frame rate and declared frame count of the first video stream."""
    av = _av()
    with _open(av, path) as container:
        stream = _stream(container, path)
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        return VideoInfo(stream.codec_context.width, stream.codec_context.height, rate, stream.frames or None)


def _open(av: Any, path: str | Path) -> Any:
    if not Path(path).is_file():
        raise VideoError(f"Video not found: {path}")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as error:
        raise VideoError(f"Cannot read {path} as a video ({error}).") from None


def _stream(container: Any, path: str | Path) -> Any:
    if not container.streams.video:
        raise VideoError(f"{path} has no video stream.")
    return container.streams.video[0]


def read_frames(
    path: str | Path, fps: float | None = None, max_frames: int = DEFAULT_MAX_FRAMES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Iterator[Frame]:
    """Decoded RGB frames, at most ``fps`` per second and ``max_frames`` in all."""
    if fps is not None and fps <= 0:
        raise ConfigError(f"fps must be positive, got {fps}.")
    if max_frames < 1:
        raise ConfigError(f"max_frames must be at least 1, got {max_frames}.")
    av = _av()
    with _open(av, path) as container:
        stream = _stream(container, path)
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > max_pixels:
            raise ImageLoadError(f"{path}: frames are {width}x{height}, above the limit of {max_pixels:,} pixels.")
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        next_time, kept = 0.0, 0
        try:
            for index, frame in enumerate(container.decode(stream)):
                time_s = float(frame.time) if frame.time is not None else index / rate
                if fps is not None:
                    if time_s + 1e-6 < next_time:
                        continue
                    next_time += 1.0 / fps
                    while next_time <= time_s:  # sources with gaps
                        next_time += 1.0 / fps
                if kept == max_frames:
                    warnings.warn(f"{path}: stopping after --max-frames {max_frames} frames.", stacklevel=2)
                    return
                kept += 1
                yield Frame(index, time_s, frame.to_image().convert("RGB"))
        except av.error.FFmpegError as error:
            raise VideoError(f"{path}: decoding failed after {kept} frames ({error}).") from None


class VideoWriter:
    """RGB frames → an H.264 (libx264, yuv420p) file; MPEG-4 Part 2 where libx264 is missing."""

    def __init__(self, path: Path, fps: float, width: int, height: int):
        av = _av()
        from fractions import Fraction

        self.width, self.height = width + width % 2, height + height % 2  # yuv420p needs even sizes
        self.container = av.open(str(path), mode="w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
        if codec == "libx264":
            self.stream.options = {"crf": "18", "preset": "veryfast"}
        self._av = av

    def write(self, rgb: np.ndarray) -> None:
        pad = ((0, self.height - rgb.shape[0]), (0, self.width - rgb.shape[1]), (0, 0))
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(np.pad(rgb, pad, mode="edge")), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


@contextmanager
def text_encoded_once(segmenter: Any) -> Iterator[dict]:
    """Within the block, the segmenter's backbone encodes each distinct (expressions, instructions)
    batch once and reuses it for every image, where its text encoder ignores the image. Yields the
    cache (empty and unused otherwise). The clip's cache stands in for the segmenter's own
    text-encoding cache (:class:`~editseg.backbones.text_cache.TextEncodingCache`) during the block,
    so that every batch the clip needs reaches ``encode_text`` once."""
    cache: dict = {}
    backbone = getattr(segmenter, "backbone", None)
    if backbone is None or getattr(backbone, "text_sees_image", True):
        yield cache
        return
    method = getattr(segmenter, "method", None)
    shared = getattr(method, "text_cache", None)
    if shared is not None:
        from ..backbones.text_cache import TextEncodingCache

        method.text_cache = TextEncodingCache(0)
    encode = backbone.encode_text
    shadowed = vars(backbone).get("encode_text")  # an instance-level wrapper already there, if any

    def encode_once(expressions, instructions, image=None, **options):
        key = (tuple(expressions), tuple(instructions), tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = encode(expressions, instructions, image=image, **options)
        return cache[key]

    backbone.encode_text = encode_once  # an instance attribute: shadows the method for this block only
    try:
        yield cache
    finally:
        if shared is not None:
            method.text_cache = shared
        if shadowed is None:
            del backbone.encode_text
        else:
            backbone.encode_text = shadowed


def smooth_window(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Per-pixel majority vote (ties are foreground) of a window of bool masks."""
    return np.mean(np.stack([np.asarray(m, dtype=bool) for m in masks]), axis=0) >= 0.5


def slug(text: str, limit: int = 40) -> str:
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:limit].rstrip("-") or "expression"


def segment_video(
    segmenter: Any,
    path: str | Path,
    expressions: Sequence[str],
    out_dir: str | Path,
    config: Any = None,
    fps: float | None = None,
    max_frames: int = DEFAULT_MAX_FRAMES,
    smooth: int = 1,
    mask_video: bool = True,
    overlay_video: bool = True,
    png: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment ``expressions`` in every kept frame of ``path``; write the outputs (module docstring)."""
    from tqdm import tqdm

    if not expressions:
        raise ConfigError("Give at least one expression.")
    if smooth < 1 or smooth % 2 == 0:
        raise ConfigError(f"smooth must be an odd window length >= 1 (1 = off), got {smooth}.")
    info = probe(path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = _unique_slugs(expressions)
    out_fps = min(info.fps, fps) if fps else info.fps
    writers: dict[tuple[str, str], VideoWriter] = {}
    if png:
        for name in names:
            (out_dir / name).mkdir(exist_ok=True)
    radius = smooth // 2
    pending: deque[Frame] = deque()  # decoded, waiting for their look-ahead
    history: deque[list[np.ndarray]] = deque()  # per kept frame, per expression; frames first_kept ...
    first_kept, decoded, emitted = 0, 0, 0
    total = None if info.frames is None else min(max_frames, info.frames if not fps else int(info.frames * fps / info.fps) + 1)
    with open(out_dir / "records.jsonl", "w", encoding="utf-8") as records, tqdm(
        total=total, unit="frame", desc="video", disable=not progress, dynamic_ncols=True
    ) as bar:  # fmt: skip

        def emit(frame: Frame, window: list[list[np.ndarray]]) -> None:
            for e, (expression, name) in enumerate(zip(expressions, names)):
                mask = smooth_window([m[e] for m in window]) if len(window) > 1 else window[0][e]
                records.write(json.dumps({
                    "frame": emitted, "source_frame": frame.index, "time_s": round(frame.time_s, 6),
                    "expression": expression, "mask_rle": encode_rle(mask), "mask_area": int(mask.sum()),
                }) + "\n")  # fmt: skip
                if png:
                    save_mask_png(mask, out_dir / name / f"frame_{emitted:06d}.png")
                if mask_video:
                    _writer(writers, (name, "mask"), out_dir, out_fps, frame).write(np.repeat(mask[..., None] * np.uint8(255), 3, 2))
                if overlay_video:
                    _writer(writers, (name, "overlay"), out_dir, out_fps, frame).write(np.asarray(overlay(frame.image, mask)))

        def flush(final: bool) -> None:
            nonlocal emitted, first_kept
            while pending and (final or decoded - 1 >= emitted + radius):
                low, high = max(0, emitted - radius), min(decoded - 1, emitted + radius)
                emit(pending.popleft(), [history[i - first_kept] for i in range(low, high + 1)])
                emitted += 1
                while first_kept < emitted - radius:  # no longer in any window
                    history.popleft()
                    first_kept += 1

        try:
            with text_encoded_once(segmenter):
                for frame in read_frames(path, fps=fps, max_frames=max_frames, max_pixels=max_pixels):
                    segmenter.set_image(frame.image)
                    results = segmenter.predict(list(expressions), config)
                    history.append([np.asarray(r.mask, dtype=bool) for r in results])
                    pending.append(frame)
                    decoded += 1
                    bar.update(1)
                    flush(final=False)
                flush(final=True)
        finally:
            for writer in writers.values():
                writer.close()
    if emitted == 0:
        raise VideoError(f"{path}: no frames decoded.")
    files = sorted(p.name for p in out_dir.iterdir() if p.is_file())
    return {"frames": emitted, "fps": out_fps, "width": info.width, "height": info.height, "files": files}


def _writer(writers: dict, key: tuple[str, str], out_dir: Path, fps: float, frame: Frame) -> VideoWriter:
    if key not in writers:
        writers[key] = VideoWriter(out_dir / f"{key[0]}.{key[1]}.mp4", fps, frame.image.width, frame.image.height)
    return writers[key]


def _unique_slugs(expressions: Sequence[str]) -> list[str]:
    names: list[str] = []
    for expression in expressions:
        name, n = slug(expression), 2
        while name in names:
            name, n = f"{slug(expression)}-{n}", n + 1
        names.append(name)
    return names
