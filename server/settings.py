"""Configuration from the environment (prefix ``PARLEY_``) and the command line."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8765
    database_url: str = "sqlite+aiosqlite:///./parley.db"
    data_dir: Path = Path(".parley")
    migrate_on_start: bool = True

    admin_key: str | None = Field(default=None, repr=False)
    secret_key: str | None = Field(default=None, repr=False)
    token_ttl_default_s: int = 3600
    token_ttl_max_s: int = 7 * 24 * 3600

    # Model
    offline_token_delay_ms: float = 15.0
    run_timeout_s: float = 300.0
    max_output_tokens: int = 1024

    # Context building
    context_window_tokens: int = 16_384
    near_duplicate_threshold: float = Field(default=0.8, ge=0.0, le=1.0)
    min_block_lines: int = 4
    max_pins: int = 50
    max_facts: int = 100
    summaries: bool = Field(
        default=True, description="Summarise turns that no longer fit, with the model"
    )
    summary_min_tokens: int = Field(
        default=1024, ge=1, description="Turns out of the budget worth a summary call"
    )
    summary_max_output_tokens: int = Field(default=768, ge=16)
    summary_calls_per_run: int = Field(default=4, ge=1, description="At most, after one run")

    # Queue
    max_pending_per_user: int = 5
    max_pending_per_session: int = 100

    # Wire limits
    max_prompt_chars: int = 32_000
    max_ws_message_bytes: int = 4 * 1024 * 1024
    max_awareness_state_bytes: int = 16 * 1024
    send_queue_max_messages: int = 4096
    max_request_bytes: int = 1024 * 1024
    ws_ping_interval_s: float = 20.0
    ws_ping_timeout_s: float = 20.0

    # Abuse and keep-alive
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to open sockets; empty: same host only; '*': any",
    )
    cors_origins: list[str] = Field(default_factory=list)
    commands_per_second: float = 10.0
    commands_burst: int = 30
    user_commands_per_second: float = 20.0
    updates_per_second: float = 50.0
    updates_burst: int = 200
    abuse_refusals: int = 50
    abuse_window_s: float = 10.0
    ws_idle_timeout_s: float = 120.0
    shutdown_grace_s: float = 5.0
    log_format: str = "json"

    # The browser demo (client-demo/, built with npm) served at /demo
    demo_dir: Path = Path(__file__).resolve().parent.parent / "client-demo" / "dist"

    # Storage
    snapshot_every_updates: int = 500
    room_idle_unload_s: float = 60.0
    log_level: str = "info"

    # Cluster mode (several nodes on one PostgreSQL; see server/cluster/)
    cluster: bool = Field(default=False, description="Run as one of several nodes")
    node_id: str = Field(default="", max_length=200, description="Empty: host:pid:random")
    lease_ttl_s: float = Field(default=3.0, gt=0, description="A dead node's sessions move after")
    cluster_poll_s: float = Field(default=2.0, gt=0, description="Catch-up safety net period")
    forward_timeout_s: float = Field(default=30.0, gt=0)
