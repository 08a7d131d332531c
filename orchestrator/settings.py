"""Configuration from the environment (variables prefixed FACESWAP_), with sane defaults.

The command line overrides the few settings it has flags for; the README's configuration table
lists them all.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.errors import InputError
from orchestrator.images import DEFAULT_MAX_PIXELS
from orchestrator.media import DEFAULT_PROBES, VideoLimits

PREFIX = "FACESWAP_"
_VIDEO = VideoLimits()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True)

    triton_url: str = Field(
        "localhost:8001",
        description="Triton gRPC address: HOST:PORT, a comma-separated list of them, or a gRPC target "
        "such as dns:///NAME:PORT; requests are balanced over every address",
    )
    triton_timeout: float = Field(120.0, gt=0, description="seconds one Triton call may take")
    triton_retries: int = Field(5, ge=0, description="retries of a Triton call that failed transiently")
    triton_wait_seconds: float = Field(
        300.0,
        ge=0,
        description="a running job whose Triton is unreachable or not ready waits this long for it, then "
        "fails; queued jobs wait as long as it takes",
    )
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="larger images are refused unread")

    host: str = Field("127.0.0.1", description="address the HTTP service listens on")
    port: int = Field(8080, ge=0, lt=65536, description="port the HTTP service listens on (0: any free one)")
    data_dir: Path = Field(Path("data"), description="job database and media")
    workers: int = Field(2, ge=1, description="jobs processed at the same time")
    max_upload_mb: int = Field(200, gt=0, description="largest request body, enforced while it streams in")
    api_key: SecretStr | None = Field(None, description="when set, /v1 requests need it in X-API-Key")
    cors_origins: str = Field("", description="comma-separated origins allowed by CORS; empty: CORS off")
    allowed_hosts: str = Field(
        "localhost,127.0.0.1,::1",
        max_length=4096,
        description="comma-separated host names requests may name in Host (any port), * for any; "
        "the health routes and /metrics answer any",
    )
    result_retention_hours: float = Field(24.0, gt=0, description="finished jobs' media kept this long")
    shutdown_grace_seconds: float = Field(30.0, ge=0, description="running jobs' time to finish at shutdown")
    sync_concurrency: int = Field(4, ge=1, description="POST /v1/swap requests processed at the same time")
    database_url: SecretStr | None = Field(
        None, description="postgresql://USER@HOST:PORT/DB: jobs in PostgreSQL; unset: SQLite in data_dir"
    )
    database_timeout: float = Field(
        30.0, gt=0, description="seconds a job-store call waits for a lock or a connection"
    )
    job_lease_seconds: float = Field(
        60.0, gt=0, description="a running job not renewed by its worker for this long runs again elsewhere"
    )
    worker_stuck_seconds: float = Field(
        600.0, gt=0, description="a worker whose job shows no progress for this long is replaced"
    )

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and not url.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (unset: SQLite in the data directory)")
        return url

    live_max_sessions: int = Field(8, ge=1, description="live WebSocket sessions open at once in one process")
    live_max_fps: float = Field(30.0, gt=0, description="frames per second a live session may send")
    live_max_message_mb: float = Field(8.0, gt=0, description="largest live message (a frame, the opening)")
    live_max_frame_pixels: int = Field(3840 * 2160, gt=0, description="larger live frames are refused unread")
    live_idle_seconds: float = Field(30.0, gt=0, description="a live session idle this long closes")
    live_opening_seconds: float = Field(
        5.0, gt=0, description="time a live connection has to send its opening (and key)"
    )
    live_max_openings: int = Field(
        16, ge=1, description="live connections waiting for their opening at once; more are closed"
    )
    live_detect_every: int = Field(3, ge=1, description="live: detect faces every N frames")

    # What one request may hold, checked as its files are stored.
    max_sources: int = Field(10, ge=1, description="source images in one request")
    max_request_pixels: int = Field(
        200_000_000, gt=0, description="pixels of all the images of one request together"
    )
    max_video_seconds: float = Field(_VIDEO.seconds, gt=0, description="longest video")
    max_video_frames: int = Field(
        _VIDEO.frames, gt=0, description="most frames of a video, at its frame rate"
    )
    max_video_pixels: int = Field(_VIDEO.pixels, gt=0, description="largest video frame, in pixels")
    max_frame_gap_seconds: float = Field(
        _VIDEO.frame_gap, gt=0, description="longest jump between a video's timestamps"
    )
    # Connections and child processes.
    header_timeout_seconds: float = Field(10.0, gt=0, description="time to send a request's headers")
    body_timeout_seconds: float = Field(600.0, gt=0, description="time to send a request's body")
    max_connections: int = Field(200, ge=1, description="open connections; more requests get 503")
    probe_processes: int = Field(
        DEFAULT_PROBES, ge=1, description="ffprobe children checking uploads at once"
    )

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and not key.get_secret_value().strip():
            raise ValueError("is set but empty: set a key, or unset it to run without one")
        return key

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def live_max_message_bytes(self) -> int:
        return int(self.live_max_message_mb * 1024 * 1024)

    @property
    def allowed_origins(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def host_names(self) -> frozenset[str] | None:
        """The allowed Host names, None for any."""
        names = {name.strip().lower().strip("[]") for name in self.allowed_hosts.split(",")} - {""}
        return None if "*" in names else frozenset(names)

    @property
    def video_limits(self) -> VideoLimits:
        return VideoLimits(
            self.max_video_seconds, self.max_video_frames, self.max_video_pixels, self.max_frame_gap_seconds
        )


def load_settings(**given: object) -> Settings:
    """The settings from the environment, and `given` values that are not None (the command line's);
    InputError naming each variable that is wrong, never echoing its value (it may be a key)."""
    try:
        return Settings(**{name: value for name, value in given.items() if value is not None})
    except ValidationError as error:
        problems = [
            f"{PREFIX}{'_'.join(map(str, item['loc'])).upper()}: {item['msg'].removeprefix('Value error, ')}"
            for item in error.errors()
        ]
        raise InputError("; ".join(problems)) from None
