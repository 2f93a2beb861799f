"""The one settings class: every knob is an environment variable with prefix LETHE_."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Keys anyone could guess; refusing them keeps a copied example config from reaching production.
_WEAK_SECRETS = {"changeme", "change-me", "secret", "password", "minioadmin", "lethe", "test"}


class Settings(BaseSettings):
    """Lethe's configuration. Empty URLs mean the embedded default under `data_dir`."""

    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")

    data_dir: Path = Path(".lethe")
    # SQLite file under data_dir by default; `postgresql+psycopg://...` for the stack.
    database_url: str = ""
    # Empty: the embedded broker (kombu's filesystem transport under data_dir, no server). Redis for the stack.
    broker_url: str = ""
    # `file:///abs/dir` (default: data_dir/objects) or `s3://bucket` with the S3 settings below.
    storage_url: str = ""
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: SecretStr = SecretStr("")
    s3_secure: bool = True
    s3_region: str = "us-east-1"
    bootstrap_api_key: SecretStr | None = None
    # The key of the operations that change the installation, not a tenant (`POST /v1/base-models`): requests send
    # it as X-API-Key. Unset: those operations are refused (403) and base models are registered with the CLI.
    admin_api_key: SecretStr | None = None
    # Signs audit reports (HMAC-SHA256). Empty: a random key kept in data_dir (the embedded default); a stack
    # with several containers must set one key for the API, workers and `lethe verify-report`.
    report_signing_key: SecretStr | None = None

    # Request bodies: a dataset upload (the file; the multipart envelope may add 64 KiB) and any JSON body. Larger
    # ones get 413 before they are read (by Content-Length) or as soon as they pass the limit (chunked).
    max_upload_bytes: int = 20 * 1024 * 1024
    max_json_bytes: int = 1024 * 1024
    # Failed API-key checks from one client address: after auth_failure_limit of them within auth_failure_window_s,
    # that address gets 429 (with Retry-After) until the oldest failure leaves the window.
    auth_failure_limit: int = 20
    auth_failure_window_s: float = 60.0
    # Per-tenant limits (README "Quotas"); each default is high enough for a demo and the test suite.
    # Queued + running jobs of a tenant, forget and audit jobs counted together (they share the workers).
    max_active_jobs_per_tenant: int = Field(default=20, ge=1)
    # Bytes a tenant stores: datasets + adapters + evidence (per-example values, pre-forgetting state, reports).
    max_stored_bytes_per_tenant: int = Field(default=10 * 1024**3, ge=1)
    # Token bucket on the routes that write (POST, DELETE): refilled at this rate, holding up to burst tokens.
    rate_limit_per_minute: float = Field(default=60.0, gt=0)
    rate_limit_burst: int = Field(default=20, ge=1)
    # The costliest job accepted, in training example-passes (lethe/costs.py::forget_request_cost).
    max_job_cost: float = Field(default=2_000_000.0, gt=0)
    # Retry-After of a 429 for too many active jobs: no one knows when a job ends; this is a polite poll interval.
    active_jobs_retry_after_s: int = Field(default=30, ge=1)
    # A running job whose heartbeat is older than heartbeat_timeout_s lost its worker: it is queued again, up to
    # max_attempts claims in all, then failed (worker_lost).
    heartbeat_interval_s: float = 10.0
    heartbeat_timeout_s: float = 120.0
    max_attempts: int = Field(default=3, ge=1)
    # A running job whose progress has not advanced for stall_timeout_s is failed (stalled) though it beats. Longer
    # than any one step of the engine that reports nothing (loading a large base model, one training step of it).
    stall_timeout_s: float = 1800.0
    # One attempt of a job may run this long (then it fails with time_limit); forget jobs on large models run hours.
    job_time_limit_s: float = 12 * 3600.0
    # A queued job not claimed this long after its message was sent gets another (lost message, flushed broker).
    redeliver_after_s: float = 300.0
    # How often the API's loop re-queues lost jobs, fails stalled ones and re-sends unclaimed ones.
    reaper_interval_s: float = 30.0
    # GET /v1/jobs/{id}/events as a stream: how often it reads the catalogue for new events (a short session each
    # time, none held between), and how long it may be silent before it sends a keep-alive comment (proxies and
    # load balancers close idle connections, commonly after 30 to 60 s).
    events_poll_interval_s: float = Field(default=0.5, gt=0)
    events_keepalive_s: float = Field(default=15.0, gt=0)
    # A forget job stores a checkpoint at the start of each training stage and every this many optimiser steps, so
    # that a job redelivered after its worker died resumes there; 0 = no checkpoints.
    checkpoint_every_steps: int = Field(default=25, ge=0)
    # A creating POST's Idempotency-Key and its first response are kept this long; after that the key is new again.
    idempotency_ttl_s: float = 24 * 3600.0
    # A worker without CUDA refuses to start (exit status 78, the reason on stderr) instead of training on the CPU:
    # for GPU hosts, where a missing driver or device would otherwise make every job silently 50× slower.
    require_gpu: bool = False

    # Hub base models (`hf:org/name@revision`, lethe/hub.py). The hub's URL: empty means huggingface_hub's (HF_ENDPOINT,
    # or https://huggingface.co); a mirror's URL otherwise.
    hf_endpoint: str = ""
    # The hub cache workers load snapshots from (and download into): unset means huggingface_hub's own (HF_HUB_CACHE,
    # HF_HOME/hub, ~/.cache/huggingface/hub). A pre-populated cache may be mounted read-only.
    hf_cache: Path | None = None
    # Read the hub cache only, never the network; HF_HUB_OFFLINE=1 does the same.
    hf_offline: bool = False
    # Seconds one metadata request to the hub may take (registration resolves a revision synchronously).
    hf_timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("bootstrap_api_key")
    @classmethod
    def _strong_bootstrap_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        key = value.get_secret_value()
        if len(key) < 16 or key.lower() in _WEAK_SECRETS:
            raise ValueError("LETHE_BOOTSTRAP_API_KEY must be at least 16 characters and not a well-known value")
        return value

    @field_validator("admin_api_key")
    @classmethod
    def _strong_admin_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        key = value.get_secret_value()
        if len(key) < 16 or key.lower() in _WEAK_SECRETS:
            raise ValueError("LETHE_ADMIN_API_KEY must be at least 16 characters and not a well-known value")
        return value

    @field_validator("hf_cache")
    @classmethod
    def _absolute_hf_cache(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @field_validator("report_signing_key")
    @classmethod
    def _strong_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        key = value.get_secret_value()
        if len(key) < 32 or key.lower() in _WEAK_SECRETS:
            raise ValueError("LETHE_REPORT_SIGNING_KEY must be at least 32 characters and not a well-known value")
        return value

    @model_validator(mode="after")
    def _fill_defaults_and_check_s3(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'lethe.db'}"
        if not self.storage_url:
            self.storage_url = (self.data_dir / "objects").as_uri()
        if self.storage_url.startswith("s3://"):
            missing = [
                name
                for name, value in [
                    ("LETHE_S3_ENDPOINT", self.s3_endpoint),
                    ("LETHE_S3_ACCESS_KEY", self.s3_access_key),
                    ("LETHE_S3_SECRET_KEY", self.s3_secret_key.get_secret_value()),
                ]
                if not value
            ]
            if missing:
                raise ValueError(f"LETHE_STORAGE_URL is s3:// but {', '.join(missing)} is not set")
        elif not self.storage_url.startswith("file://"):
            raise ValueError(f"LETHE_STORAGE_URL must start with file:// or s3://, got {self.storage_url!r}")
        return self

    @property
    def embedded_broker(self) -> bool:
        return not self.broker_url

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def base_model_cache_dir(self) -> Path:
        return self.data_dir / "base_models"


@lru_cache
def get_settings() -> Settings:
    return Settings()
