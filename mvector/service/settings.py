"""The settings of one service instance (the options of ``mvector serve``), checked when made.

>>> ServiceConfig(max_upload_mb=2).max_upload_bytes
2097152
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from mvector.errors import ConfigError
from mvector.inference.ann_index import SEARCH_INDEXES
from mvector.service.budget import default_audio_budget_mb

__all__ = ["ServiceConfig", "MB", "FORM_OVERHEAD", "SMALL_BODY"]

MB = 1024 * 1024
FORM_OVERHEAD = 64 * 1024  # multipart boundaries, headers and small text fields
SMALL_BODY = 16 * 1024  # JSON bodies (POST /v1/keys) and the bodies routes without uploads may carry


@dataclass
class ServiceConfig:
    """Settings of one service instance (the options of ``mvector serve``).

    >>> ServiceConfig(max_upload_mb=2).max_upload_bytes
    2097152
    """

    model_path: Optional[str] = None
    audio_db_path: str = "audio_db"
    threshold: Optional[float] = None
    backend: str = "auto"
    use_gpu: bool | None = None
    keep_audio: bool = False
    max_upload_mb: float = 10.0
    max_files: int = 10
    max_duration: float = 60.0
    min_duration: float = 0.5
    max_queue: int = 64
    max_batch: int = 16
    threads: Optional[int] = None
    decode_threads: int = 2
    cors_origins: tuple = field(default_factory=tuple)
    max_requests: int = 64
    max_connections: int = 256
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_audio_mb: Optional[float] = None
    audio_wait: float = 2.0
    refusal_limit: int = 60
    audit_retention_days: float = 90.0
    forwarded_allow_ips: tuple = field(default_factory=tuple)
    replica_name: Optional[str] = None
    search_index: str = "exact"

    def __post_init__(self) -> None:
        if self.max_audio_mb is None:
            self.max_audio_mb = default_audio_budget_mb()
        checks = {
            "max_requests": isinstance(self.max_requests, int) and self.max_requests >= 1,
            "max_connections": isinstance(self.max_connections, int) and self.max_connections >= 1,
            "header_timeout": self.header_timeout > 0,
            "body_timeout": self.body_timeout > 0,
            "max_audio_mb": self.max_audio_mb > 0,
            "audio_wait": self.audio_wait >= 0,
            "refusal_limit": isinstance(self.refusal_limit, int) and self.refusal_limit >= 1,
            "audit_retention_days": self.audit_retention_days > 0,
            "max_upload_mb": self.max_upload_mb > 0,
            "max_files": isinstance(self.max_files, int) and self.max_files >= 1,
            "max_duration": self.max_duration > 0,
            "min_duration": 0 <= self.min_duration < self.max_duration,
            "max_queue": self.max_queue >= 1,
            "max_batch": self.max_batch >= 1,
            "decode_threads": self.decode_threads >= 1,
            "threads": self.threads is None or self.threads >= 1,
            "search_index": self.search_index in SEARCH_INDEXES,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"service setting {name} has a bad value: {getattr(self, name)!r}")
        if self.threshold is not None and not math.isfinite(float(self.threshold)):
            raise ConfigError(f"threshold must be a finite number, got {self.threshold!r}")
        if self.max_audio_bytes < self.request_audio_bytes(self.max_files):
            raise ConfigError(
                f"service setting max_audio_mb ({self.max_audio_mb:g}) is below what one enrolment may need "
                f"({self.request_audio_bytes(self.max_files) / MB:.1f} MB for max_files, max_upload_mb and "
                "max_duration): raise it or lower those"
            )

    @property
    def max_upload_bytes(self) -> int:
        """The size limit of one upload, in bytes."""
        return int(self.max_upload_mb * MB)

    @property
    def max_audio_bytes(self) -> int:
        """The ceiling on audio held in memory across all requests, in bytes."""
        return int(float(self.max_audio_mb) * MB)

    def request_audio_bytes(self, files: int, sample_rate: int = 16000) -> int:
        """The most audio memory one request of ``files`` recordings may reserve (bodies twice: read and parsed;
        decoded mono float32 at ``sample_rate`` up to ``max_duration``, plus a 0.25 s block of 8 channels at 48 kHz).

        >>> ServiceConfig(max_upload_mb=1, max_duration=10).request_audio_bytes(1) // 1024
        3094
        """
        decoded = 4 * (int(self.max_duration * sample_rate) + 16 + 12000 * 9)
        return files * (2 * self.max_upload_bytes + decoded)
