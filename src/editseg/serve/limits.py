"""What one request may ask of the service, and how much may wait. Each limit has its own 4xx."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ConfigError

DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20


@dataclass(frozen=True)
class ServeLimits:
    """Limits of the service; every field is a command-line option of ``editseg serve``.

    - ``max_upload_bytes``: request body size (HTTP 413 above it; checked on ``Content-Length``
      before reading and again while reading, so chunked uploads cannot sneak past);
    - ``max_pixels``: width x height of the decoded image (422);
    - ``max_expressions`` / ``max_expression_chars``: per request (422);
    - ``queue_size``: requests waiting for the model; a full queue answers 429 with ``Retry-After``;
    - ``timeout_s``: per request, queueing included (504); a client may ask for less, not more;
    - ``max_batch_expressions``: expressions the worker takes from the queue for one model turn.
    """

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = 4096 * 4096
    max_expressions: int = 16
    max_expression_chars: int = 300
    queue_size: int = 64
    timeout_s: float = 60.0
    max_batch_expressions: int = 32

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_expressions", "max_expression_chars", "queue_size",
                     "max_batch_expressions"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be positive, got {self.timeout_s}.")

    def to_dict(self) -> dict:
        return asdict(self)
