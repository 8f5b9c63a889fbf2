"""Configuration from the environment (prefix ``PARLEY_``) and the command line."""

from __future__ import annotations

import difflib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from parley.authz.origins import check_allowed_origins
from parley.server.store.database_url import check_database_url
from parley.session.context import ContextSettings
from parley.session.documents import SEARCH_DOCUMENTS
from parley.session.errors import ConfigurationError
from parley.session.tokens import tools_tokens

OFFLINE_MODEL = "offline"


class ModelSpec(BaseModel):
    """One model a session may use (an item of ``PARLEY_MODELS``). The API key is read from
    the environment variable ``api_key_env`` names, so it never sits in the configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:/-]+$")
    kind: Literal["openai", "anthropic", "offline"]
    base_url: str = Field(default="", max_length=2000)
    api_key_env: str | None = Field(default=None, min_length=1, max_length=200)
    model: str = Field(default="", max_length=200, description="The upstream model id")
    context_window_tokens: int = Field(default=16_384, gt=0)
    reserved_output_tokens: int = Field(default=1024, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> ModelSpec:
        if self.kind != "offline" and not (self.base_url and self.model):
            raise ValueError(f"model {self.name!r}: base_url and model are required")
        if self.reserved_output_tokens >= self.context_window_tokens:
            raise ValueError(
                f"model {self.name!r}: reserved_output_tokens must be below context_window_tokens"
            )
        return self


PREFIX = "PARLEY_"
# ``PARLEY_`` names read outside the settings, by the project's own tests, benchmarks and
# examples (docs/sdks.md's client reads PARLEY_URL): not refused as unknown settings.
NOT_SETTINGS_PREFIXES = (
    "PARLEY_TEST_",
    "PARLEY_BENCH_",
    "PARLEY_LIVE_",
    # A Kubernetes Service named ``parley`` adds these to every pod of its namespace.
    "PARLEY_SERVICE_",
    "PARLEY_PORT_",
)
NOT_SETTINGS = frozenset(
    {
        "PARLEY_CONTRACT_EXAMPLES",
        "PARLEY_CONTRACT_NEGATIVE_EXAMPLES",
        "PARLEY_CONTRACT_SEED",
        "PARLEY_FUZZ_SEED",
        "PARLEY_URL",
    }
)
# Fields kept only to refuse them by a message of their own: never suggested.
RETIRED = frozenset({"max_search_index_chars"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", env_file_encoding="utf-8")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(dotenv_settings, DotEnvSettingsSource)
        return (
            UnknownNames(settings_cls, dotenv_settings),
            init_settings,
            env_settings,
            dotenv_settings,
            file_secret_settings,
        )

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
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
    models: list[ModelSpec] = Field(
        default_factory=list,
        description="JSON list of models; empty: the built-in offline model alone",
    )
    default_model: str | None = None
    provider_connect_timeout_s: float = Field(default=10.0, gt=0)
    provider_read_timeout_s: float = Field(default=120.0, gt=0)
    provider_max_attempts: int = Field(default=3, ge=1, le=10)
    provider_retry_base_s: float = Field(default=0.5, ge=0)
    provider_retry_max_s: float = Field(default=8.0, ge=0)
    provider_retry_after_max_s: float = Field(default=30.0, ge=0)

    # Tools and documents
    max_tool_steps: int = Field(default=8, ge=1, le=50)
    max_tool_calls_per_turn: int = Field(default=8, ge=1, le=50)
    max_tool_result_bytes: int = 65_536
    max_documents_per_session: int = 100
    max_members_per_session: int = Field(default=1000, ge=1)
    max_document_chars: int = 200_000
    max_search_index_bytes: int = Field(
        default=256 * 2**20,
        ge=0,
        description="Bytes of memory the documents' search indexes a node keeps may take; "
        "past it the least recently searched sessions' are dropped, indexed again when "
        "searched. The session searched last is always kept whole (at most 12 bytes a "
        "character of its documents)",
    )
    max_search_index_chars: int | None = Field(
        default=None, description="Replaced by max_search_index_bytes: setting it is refused"
    )

    # Context building
    context_window_tokens: int = Field(
        default=16_384,
        ge=2,
        description="The offline model's window (PARLEY_MODELS: each model's own); one "
        "too small for the instructions, the largest summary and a prompt is refused",
    )
    min_block_lines: int = 4
    max_pins: int = 50
    max_facts: int = 100
    pins_facts_max_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="The most of a model input (the session model's window less its output "
        "reserve) the system text with the session's facts and pins may take, so that prompts "
        "still fit: a pin or fact past it is refused 'too_large'; a build gives the pins "
        "within it (the window shrank since) and lists the others as left out",
    )
    max_session_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=4096,
        description="The shared document's encoded size (what a new client's first sync is "
        "sent) that members' messages, prompts, shares, pins, facts and policy changes keep "
        "it under; past it they are refused 'session_full'. At most half of "
        "PARLEY_SEND_BUFFER_TOTAL_MAX_BYTES",
    )
    sync_chunk_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        description="A sync answer larger than this is sent as several frames of about this "
        "size each (updates, then the sync step 2 last): a stock y-websocket client gives "
        "up on a socket that brings no whole message in 30 s, so a client then needs about "
        "this much per 30 s (256 KiB: 70 kbit/s), not the whole document (16 MiB: 4.5 Mbit/s)",
    )
    summaries: bool = Field(
        default=True, description="Summarise turns that no longer fit, with the model"
    )
    summary_min_tokens: int = Field(
        default=1024, ge=1, description="Turns out of the budget worth a summary call"
    )
    summary_max_output_tokens: int = Field(
        default=768, ge=16, description="At most; a summary call fits the window with it"
    )
    summary_calls_per_run: int = Field(default=4, ge=1, description="At most, after one run")

    # Queue
    max_pending_per_user: int = 5
    max_pending_per_session: int = 100
    max_prompts_per_run: int = Field(default=20, ge=1, description="coalesce: prompts per call")
    # Private side-threads
    max_threads_per_member: int = Field(
        default=20, ge=1, le=1000, description="Side-threads a member may keep in one session"
    )
    max_thread_turns: int = Field(
        default=200,
        ge=2,
        le=10_000,
        description="Turns (prompts, replies, tool steps) per side-thread",
    )
    max_thread_runs_per_session: int = Field(
        default=4,
        ge=1,
        le=100,
        description="Side-thread replies written at once in one session before a member "
        "with one of their own is refused another (a member's first is never refused for "
        "the others': at most this plus one per other member)",
    )
    max_thread_runs_per_member: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Side-thread replies of one member written at once in one session (at "
        "most PARLEY_MAX_THREAD_RUNS_PER_SESSION): the other members keep the rest",
    )
    stream_interval_ms: float = Field(
        default=15.0,
        ge=0,
        le=1000,
        description="Reply text goes out as soon as the batch before it is stored and sent; "
        "a model that keeps the writer busy batch after batch is sent at most once per this "
        "many ms (0: every batch as soon as the one before is stored)",
    )

    # Wire limits
    max_prompt_chars: int = 32_000
    max_ws_message_bytes: int = 4 * 1024 * 1024
    max_awareness_state_bytes: int = 16 * 1024
    send_queue_max_messages: int = Field(
        default=4096, ge=1, description="Frames queued for one socket (other ASGI servers)"
    )
    send_buffer_max_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Bytes unsent to one socket, at most"
    )
    send_buffer_total_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Bytes unsent to all sockets, at most"
    )
    send_stall_timeout_s: float = Field(
        default=20.0, gt=0, description="A socket whose client takes nothing this long is dropped"
    )
    max_request_bytes: int = 1024 * 1024
    ws_ping_interval_s: float = 20.0
    ws_ping_timeout_s: float = 20.0

    # Abuse and keep-alive
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins (scheme://host[:port]) allowed to open sockets; empty: "
        "the server's own address and port only; '*': any",
    )
    max_connections_per_user: int = Field(
        default=16, ge=1, description="Sockets of one user to one session (on one node)"
    )
    max_connections_per_session: int = Field(
        default=1000, ge=1, description="Sockets to one session (on one node)"
    )
    # Server-Sent Events (``GET …/events`` with ``Accept: text/event-stream``)
    sse_heartbeat_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="An idle event stream gets a comment line this often (proxies keep it "
        "open); it also looks at the stored events again then",
    )
    max_streams_per_user: int = Field(
        default=16, ge=1, description="Event streams of one user to one session (on one node)"
    )
    max_streams_per_session: int = Field(
        default=1000, ge=1, description="Event streams to one session (on one node)"
    )
    cors_origins: list[str] = Field(default_factory=list)
    # Not open by default: the counters tell anyone who can reach the port other sessions'
    # reply sizes and token counts, which the audit withholds (reviews RI-1, RL-7).
    metrics_access: Literal["open", "admin", "off"] = Field(
        default="admin",
        description="Who may read /metrics on the API's port: anyone, the admin key, nobody",
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Also serve /metrics, without a key, here (0: no)"
    )
    metrics_host: str = Field(default="127.0.0.1", description="The address of metrics_port")
    commands_per_second: float = 10.0
    commands_burst: int = 30
    user_commands_per_second: float = 20.0
    updates_per_second: float = 50.0
    updates_burst: int = 200
    abuse_refusals: int = 50
    abuse_window_s: float = 10.0
    # What a member's binary frames may cost (per member, across their sockets; a frame
    # over a burst is always refused): client document writes, refused or no-op, and
    # presence. Full resyncs (sync step 1, query awareness) are counted per socket.
    document_write_bytes_per_s: float = Field(default=64 * 1024, ge=0)
    document_write_burst_bytes: int = Field(default=1024 * 1024, ge=0)
    max_delete_ranges_per_update: int = Field(default=10_000, ge=0)
    # The JSON of a member's commands (per member, across their sockets), charged before it
    # is parsed: parsing 4 MiB of ``[{}, …]`` takes 0.1 s of the event loop. A frame over
    # the burst is refused unread (the longest prompt, escaped at worst, is 192 kB).
    command_bytes_per_s: float = Field(default=256 * 1024, ge=0)
    command_burst_bytes: int = Field(default=1024 * 1024, ge=0)
    # A member's REST reads of large answers (the transcript), by their bytes: what the
    # server spends encoding and holding them. An answer larger than the burst takes it all.
    read_bytes_per_s: float = Field(default=4 * 1024 * 1024, ge=0)
    read_burst_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    # An audit page is built anew for each read, a record at a time on the event loop
    # (about 0.3 s for 4 MB): it ends early at this many bytes (review FX21).
    audit_page_max_bytes: int = Field(
        default=256 * 1024,
        ge=4096,
        description="Bytes of one page of the audit log, at most; a page holds at least one "
        "record, so a record larger than this comes alone on its page",
    )
    # What the context previews of one session (all its members together, on each node)
    # may make: the bytes of the answers encoded and 1 KiB per history entry of each build.
    # About 30 ms of CPU per 320 KB encoded, so 1 MiB/s is about a tenth of a core. Each
    # member pays from a share of it (``server.runtime.membership.PREVIEW_SHARES``).
    preview_work_bytes_per_s: float = Field(default=1024 * 1024, gt=0)
    preview_work_burst_bytes: int = Field(default=2 * 1024 * 1024, ge=1)
    # What the event streams of one session (all readers together, on each node) may read
    # and encode: the bytes of the frames and ``STREAM_EVENT_WORK_BYTES`` per event. About
    # 0.3 ms of CPU per stored event of 2 KB sent, so 1 MiB/s is about a tenth of a core.
    stream_work_bytes_per_s: float = Field(default=1024 * 1024, gt=0)
    stream_work_burst_bytes: int = Field(default=2 * 1024 * 1024, ge=1)
    awareness_bytes_per_s: float = Field(default=32 * 1024, ge=0)
    awareness_burst_bytes: int = Field(default=256 * 1024, ge=0)
    awareness_flush_ms: float = Field(
        default=100.0, ge=0, le=10_000, description="Presence goes out at most this often"
    )
    # The awareness client ids whose sockets closed, kept for their members a day
    # (``session.presence``), go to the store in rounds at most this often, off the
    # sockets' path; at most so many wait, the oldest dropped past it.
    presence_write_ms: float = Field(default=250.0, ge=0, le=60_000)
    presence_write_max_waiting: int = Field(default=10_000, ge=1)
    sync_requests_per_minute: float = Field(default=6.0, ge=0)
    sync_requests_burst: int = Field(default=3, ge=1)
    # A member's syncs across their sockets, by the bytes of the document sent back: a
    # socket past it is refused (429) until it refills, its sync requests refused.
    sync_bytes_per_s: float = Field(default=1024 * 1024, ge=0)
    sync_burst_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    # The bytes a member's sockets to a session (its own and its side-threads', on each
    # node) make the server read: past it their sockets are not read until it refills
    # (TCP holds the client back; nothing is refused). The burst lets the largest message
    # (PARLEY_MAX_WS_MESSAGE_BYTES) through at once.
    inbound_bytes_per_s: float = Field(default=1024 * 1024, gt=0)
    inbound_burst_bytes: int = Field(default=8 * 1024 * 1024, ge=1)
    # Sockets one member opens to a session, its own and its side-threads' together (on
    # each node): past it the upgrade is refused 429 with ``Retry-After``, and every stock
    # client backs off (review: 2,200 opens in 12 s, each reading a side-thread's document).
    socket_opens_per_minute: float = Field(default=60.0, gt=0)
    socket_opens_burst: int = Field(default=32, ge=1)
    # The same upgrade (address, path, query, origin) accepted only to be closed for good (44xx),
    # on each node: past it the upgrade is refused with the same refusal's HTTP status, so
    # y-websocket before 3.x backs off (it came back every 100 ms; ``server.ws.final_closes``).
    final_closes_per_minute: float = Field(default=4.0, gt=0)
    final_closes_burst: int = Field(default=2, ge=1)
    # And every such upgrade from one client address, whatever its token (one address
    # cycling through bad tokens got a fresh budget with each).
    final_closes_per_address_per_minute: float = Field(default=30.0, gt=0)
    final_closes_per_address_burst: int = Field(default=20, ge=1)
    # Invite exchanges, which need no key: per client address, and per invite, each.
    invite_exchanges_per_minute: float = Field(default=30.0, gt=0)
    invite_exchanges_burst: int = Field(default=10, ge=1)
    ws_idle_timeout_s: float = 120.0
    shutdown_grace_s: float = 5.0
    log_format: str = "json"

    # The browser demo (client-demo/, built with npm) served at /demo
    demo_dir: Path = Path(__file__).resolve().parent / "http" / "demo_files"

    # Storage
    snapshot_every_updates: int = 500
    db_lock_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="A write waits this long for the database's lock another process holds "
        "(SQLite: the write lock; PostgreSQL: each statement's lock_timeout) and, on SQLite, for "
        "its session's writes before it while none of them is done; then it is refused with "
        "'unavailable'",
    )
    db_connect_timeout_s: float = Field(
        default=60.0,
        ge=0,
        description="'parley serve' retries an unreachable database this long at start",
    )
    db_retry_after_s: float = Field(
        default=2.0,
        gt=0,
        le=300,
        description="While the database is unavailable, clients are told to retry after this",
    )
    storage_log_every_s: float = Field(
        default=10.0, ge=0, description="At most one log line per kind of refused write per"
    )
    client_write_log_every_s: float = Field(
        default=10.0,
        ge=0,
        description="At most one log line per this interval for the document writes clients "
        "sent and the server dropped, with the number left out",
    )
    room_idle_unload_s: float = 60.0
    log_level: str = "info"

    # Event webhooks (server/outbound/webhook_sender.py)
    webhook_allow_private: bool = Field(
        default=False,
        description="Let event webhooks reach private, loopback and link-local addresses",
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="One delivery attempt")
    webhook_retry_period_s: float = Field(
        default=24 * 3600.0, gt=0, description="A delivery is retried this long, then failed"
    )
    webhook_retry_base_s: float = Field(
        default=5.0, gt=0, description="The first retry's back-off; each next one doubles"
    )
    webhook_retry_max_s: float = Field(default=3600.0, gt=0, description="Back-off, at most")
    webhook_failure_limit: int = Field(
        default=100, ge=1, description="Failed attempts in a row that disable a subscription"
    )
    webhook_concurrency: int = Field(default=16, ge=1, le=256, description="Attempts at once")
    webhook_poll_s: float = Field(
        default=1.0, gt=0, description="How often the sender looks for deliveries due"
    )
    webhook_keep_s: float = Field(
        default=7 * 24 * 3600.0, gt=0, description="Finished deliveries are listed this long"
    )
    # 'process' where another process reaches the database (a SQLite file, PostgreSQL);
    # an in-memory SQLite database keeps the sender on the loop whatever this says.
    webhook_sender: Literal["process", "loop"] = Field(
        default="process",
        description="Where the webhook sender runs: a process of its own, or the sessions' "
        "event loop",
    )
    max_webhooks: int = Field(default=100, ge=1)
    webhook_max_waiting: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Unfinished deliveries one subscription may hold (paused, disabled or "
        "behind); past it it takes no new delivery, and a paused one is disabled",
    )

    # Cluster mode (several nodes on one PostgreSQL; see server/cluster/)
    cluster: bool = Field(default=False, description="Run as one of several nodes")
    node_id: str = Field(default="", max_length=200, description="Empty: host:pid:random")
    lease_ttl_s: float = Field(default=3.0, gt=0, description="A dead node's sessions move after")
    cluster_poll_s: float = Field(default=2.0, gt=0, description="Catch-up safety net period")
    forward_timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        return check_allowed_origins(value)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return check_database_url(value)

    @model_validator(mode="after")
    def _models_consistent(self) -> Settings:
        names = [spec.name for spec in self.models]
        if len(set(names)) != len(names):
            raise ValueError("PARLEY_MODELS: model names must be unique")
        if self.default_model is not None and self.default_model not in self.catalog():
            raise ValueError(f"PARLEY_DEFAULT_MODEL {self.default_model!r} is not configured")
        return self

    @model_validator(mode="after")
    def _full_session_joinable(self) -> Settings:
        # A full session's first sync is one frame of about its size, plus the replies to
        # prompts accepted before it filled: past the process's send cap nobody could join
        # it (review: 1013 on every try). Twice the limit leaves room for those and for
        # the other sockets' backlogs.
        if 2 * self.max_session_bytes > self.send_buffer_total_max_bytes:
            raise ValueError(
                "PARLEY_SEND_BUFFER_TOTAL_MAX_BYTES must be at least twice "
                "PARLEY_MAX_SESSION_BYTES: a full session's first sync must fit"
            )
        return self

    @model_validator(mode="after")
    def _no_search_bound_in_chars(self) -> Settings:
        # Review B2-1: ignored, an operator's bound would silently become the default;
        # converted, it would mean another amount than the one they chose.
        if self.max_search_index_chars is not None:
            raise ValueError(
                "PARLEY_MAX_SEARCH_INDEX_CHARS was replaced by PARLEY_MAX_SEARCH_INDEX_BYTES "
                "(bytes of index in memory, not characters of documents; default 268435456): "
                "set that instead"
            )
        return self

    @model_validator(mode="after")
    def _windows_fit_a_prompt(self) -> Settings:
        # Review RV39-F1b: in a window too small for the instructions, the largest summary
        # and a prompt, every prompt failed too_large, whatever members did. Every window a
        # session may use is one of the catalog's, so the rule holds for every session.
        problems = [
            f"{where}: {problem}"
            for where, spec in self._windows()
            if (problem := self.context_settings(spec).window_problem()) is not None
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _windows(self) -> list[tuple[str, ModelSpec]]:
        """Each model's spec, named by the setting that gives it its window."""
        if not self.models:
            return [(f"{PREFIX}CONTEXT_WINDOW_TOKENS", self.catalog()[OFFLINE_MODEL])]
        return [(f"{PREFIX}MODELS: model {spec.name!r}", spec) for spec in self.models]

    def context_settings(self, spec: ModelSpec, tools_room: int | None = None) -> ContextSettings:
        """How a session using the model ``spec`` builds its model inputs; ``tools_room``:
        what the definitions of every tool a run may be offered take (None: the built-in
        one's alone, as before any tool is registered)."""
        return ContextSettings(
            window_tokens=spec.context_window_tokens,
            reserve_output_tokens=spec.reserved_output_tokens,
            min_block_lines=self.min_block_lines,
            fixed_share=self.pins_facts_max_share,
            # its API refuses an input opening with the model's turn (review RZ-4)
            user_turn_first=spec.kind == "anthropic",
            summary_max_output_tokens=self.summary_max_output_tokens,
            tools_room=builtin_tools_room() if tools_room is None else tools_room,
        )

    def catalog(self) -> dict[str, ModelSpec]:
        """The models sessions may choose, by name (the offline model when none is set)."""
        if not self.models:
            return {OFFLINE_MODEL: offline_spec(self.context_window_tokens, self.max_output_tokens)}
        return {spec.name: spec for spec in self.models}

    def model_spec(self, name: str | None) -> ModelSpec:
        """The spec of ``name``; the default model's for None or a name no longer set."""
        catalog = self.catalog()
        chosen = catalog.get(name) if name is not None else None
        return chosen or catalog[self.default_model or next(iter(catalog))]


@lru_cache(maxsize=1)
def builtin_tools_room() -> int:
    """What the built-in tool's definition adds to a call (``search_documents``, offered
    to every member who may search the session's documents)."""
    return tools_tokens([SEARCH_DOCUMENTS])


class UnknownNames(PydanticBaseSettingsSource):
    """Refuses every ``PARLEY_`` name of the environment or the env file that is no
    setting (``ConfigurationError``, one part per name, with the setting nearest it).

    Review RY-9: pydantic-settings ignores them (``extra="forbid"`` would refuse only the
    env file's, and every other name there too), so ``PARLEY_MAX_PROMT_CHARS=10`` left the
    limit its operator meant unset, without a word. A source, not a check beside it: it
    sees the env file the settings are read from, wherever they are read (``create_app()``
    under another ASGI server too). Its values are none."""

    def __init__(self, settings_cls: type[BaseSettings], dotenv: DotEnvSettingsSource) -> None:
        super().__init__(settings_cls)
        self.dotenv = dotenv

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        fields = set(self.settings_cls.model_fields)
        found = [(name, "") for name in os.environ]
        where = f" (in {self.dotenv.env_file})"  # one file: the CLI names one
        found += [(name.upper(), where) for name in self.dotenv.env_vars]
        keys = self._model_keys()
        problems = [
            f"{name}{where}: not a setting{nearest_setting(name, fields)}"
            for name, where in found
            if is_unknown(name, fields) and name.upper() not in keys
        ]
        if problems:
            raise ConfigurationError("; ".join(problems))
        return {}

    def _model_keys(self) -> set[str]:
        """The variables the configured models' keys are in (``api_key_env``): an
        operator may name them ``PARLEY_…``. Read from ``PARLEY_MODELS`` as given; a value
        that is not a list of models names none here (the setting's own check says why)."""
        given = os.environ.get(f"{PREFIX}MODELS")
        if given is None:
            given = next(
                (v for k, v in self.dotenv.env_vars.items() if k.upper() == f"{PREFIX}MODELS"),
                None,
            )
        try:
            specs = json.loads(given) if given else []
        except ValueError:
            return set()
        if not isinstance(specs, list):
            return set()
        return {
            str(spec["api_key_env"]).upper()
            for spec in specs
            if isinstance(spec, dict) and spec.get("api_key_env")
        }


def is_unknown(name: str, fields: set[str]) -> bool:
    """Whether ``name`` looks like a setting (pydantic-settings reads them whatever their
    case) and is none, nor a name the project reads elsewhere."""
    upper = name.upper()
    if not upper.startswith(PREFIX) or upper in NOT_SETTINGS:
        return False
    if upper.startswith(NOT_SETTINGS_PREFIXES):
        return False
    return upper[len(PREFIX) :].lower() not in fields


def nearest_setting(name: str, fields: set[str]) -> str:
    """`` (did you mean PARLEY_X?)`` for the setting ``name`` is likely a misspelling of."""
    known = sorted(field.upper() for field in fields - RETIRED)
    close = difflib.get_close_matches(name.upper()[len(PREFIX) :], known, n=1)
    return f" (did you mean {PREFIX}{close[0]}?)" if close else ""


@lru_cache(maxsize=8)
def offline_spec(window_tokens: int, max_output_tokens: int) -> ModelSpec:
    """The offline model's spec: one (frozen) object per window, not a validation each
    time a run reads its model's settings (several times a run)."""
    return ModelSpec(
        name=OFFLINE_MODEL,
        kind="offline",
        context_window_tokens=window_tokens,
        reserved_output_tokens=min(max_output_tokens, window_tokens - 1),
    )


def missing_api_keys(settings: Settings) -> list[str]:
    """One line for each configured model whose ``api_key_env`` is not set (checked before
    the server touches anything, and again when the providers are built)."""
    return [
        missing_key_message(spec)
        for spec in settings.models
        if spec.api_key_env is not None and not os.environ.get(spec.api_key_env)
    ]


def missing_key_message(spec: ModelSpec) -> str:
    return f"model {spec.name!r}: the environment variable {spec.api_key_env} is not set"
