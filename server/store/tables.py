"""The relational schema (SQLAlchemy Core). Alembic migrations in ``migrations/`` create it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    FetchedValue,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.sql.elements import TextClause

metadata = MetaData()

# Autoincrementing 64-bit keys on PostgreSQL, INTEGER PRIMARY KEY (rowid) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def partial_index(name: str, where: TextClause, *columns: Column[Any]) -> Index:
    """An index of the rows ``where`` holds, on both databases. ``where`` is literal SQL,
    not bound: PostgreSQL uses a partial index only for a query implying its condition
    with constants."""
    return Index(name, *columns, postgresql_where=where, sqlite_where=where)


sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("title", String(500), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False, default=0),
    Column("policy", String(16), nullable=False, server_default="queue"),
    Column("model", String(100)),
    Column("restricted_replies", String(16), nullable=False, server_default="private"),
    # The member who chose ``shared`` (judged whenever a reply would be shared); NULL: the
    # admin key chose it, or the policy is ``private``.
    Column("restricted_replies_by", String(200)),
    # The number of the session's newest semantic event (``session_events.seq``).
    Column("last_event_seq", BigInteger, nullable=False, server_default="0"),
)

members = Table(
    "members",
    metadata,
    Column(
        "session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("user_id", String(200), primary_key=True),
    Column("role", String(32), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # JSON lists of capability names on top of the role (a denial always wins).
    Column("grants", Text, nullable=False, server_default="[]"),
    Column("denials", Text, nullable=False, server_default="[]"),
    # New each time the user is added; client tokens carry it (authz.tokens).
    Column("token_epoch", String(32), nullable=False, server_default=""),
    # How people see the member ("" : by user id).
    Column("display_name", String(80), nullable=False, server_default=""),
    # ``session.names.name_key`` of the user id and of the display name: a name is compared
    # with the members found by them (``server.store.rows.members_named``). NULL: a row
    # stored without them, compared as every row once was.
    Column("user_id_key", String(32)),
    Column("name_key", String(32)),
)
Index("ix_members_user_id", members.c.user_id)
Index("ix_members_user_id_key", members.c.session_id, members.c.user_id_key)
Index("ix_members_name_key", members.c.session_id, members.c.name_key)

# Prompts and messages: everything a member authored, with its sequence number.
entries = Table(
    "entries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("author", String(200), nullable=False),
    Column("command_id", String(128), nullable=False),
    Column("text", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(500)),
    Column("reason_code", String(32)),
    Column("reply_id", String(64)),
    Column("created_at", BigInteger, nullable=False),
    Column("started_at", BigInteger),
    Column("finished_at", BigInteger),
    # A prompt sent with a token from another member's invite link: the token's claims
    # (JSON), judged again when its run starts; NULL otherwise.
    Column("token_claims", Text),
    UniqueConstraint("session_id", "seq", name="uq_entries_session_seq"),
    UniqueConstraint("session_id", "author", "command_id", name="uq_entries_command"),
)
Index("ix_entries_session_status", entries.c.session_id, entries.c.status)

# The acknowledgements of the commands that store no entry (a pin, a fact, a policy, a
# cancel, a side-thread's open, prompt or close: a deletion takes a thread's rows), kept
# with what they did: a command resent under its id after a restart is answered with its
# first ack, not carried out again (``server.runtime.commands``). Kept ``ACKS_KEPT_MS``,
# pruned as new ones are written.
command_acks = Table(
    "command_acks",
    metadata,
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("author", String(200), nullable=False),
    Column("command_id", String(128), nullable=False),
    Column("fingerprint", String(64), nullable=False),  # what the command asked, hashed
    Column("reply", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("session_id", "author", "command_id", name="uq_command_acks_command"),
)
Index("ix_command_acks_session_created", command_acks.c.session_id, command_acks.c.created_at)

# The awareness client ids whose sockets closed, each its member's for a day
# (``session.presence``): a room loaded after an unload, a restart or on another node keeps
# them for their members. One row per client id, its latest leaving; written in batches off
# the sockets' path (``server.runtime.left_clients``), the session's older ones pruned then.
left_clients = Table(
    "left_clients",
    metadata,
    Column(
        "session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("client_id", BigInteger, primary_key=True, autoincrement=False),
    Column("user_id", String(200), nullable=False),
    Column("left_at", BigInteger, nullable=False),  # ms
    Column("clock", BigInteger, nullable=False),  # the clock its leaving was told at
)
Index("ix_left_clients_session_left", left_clients.c.session_id, left_clients.c.left_at)

# The CRDT update log: appended before an update is broadcast, squashed into snapshots.
doc_updates = Table(
    "doc_updates",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("data", LargeBinary, nullable=False),
)
Index("ix_doc_updates_session_id", doc_updates.c.session_id, doc_updates.c.id)

doc_snapshots = Table(
    "doc_snapshots",
    metadata,
    Column(
        "session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("data", LargeBinary, nullable=False),
    Column("last_update_id", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

# Rolling summaries of older turns, made by the model from what every member may read.
# ``covers`` lists the entry ids a row added (JSON) to the row it ``extends`` (NULL: it
# starts a chain, as one does when membership changed); what a row covers is its chain's.
summaries = Table(
    "summaries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("ordinal", Integer, nullable=False),
    Column("from_seq", BigInteger, nullable=False),
    Column("to_seq", BigInteger, nullable=False),
    Column("covers", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("model", String(200), nullable=False),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("extends", String(64)),
    UniqueConstraint("session_id", "ordinal", name="uq_summaries_session_ordinal"),
)

# Tokens of each model call, one row per issuer (their share of the call).
model_usage = Table(
    "model_usage",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", String(200), nullable=False),
    Column("day", String(10), nullable=False),
    Column("model", String(100), nullable=False),
    Column("reply_id", String(64), nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)
Index("ix_model_usage_session_day", model_usage.c.session_id, model_usage.c.day)

quotas = Table(
    "quotas",
    metadata,
    Column(
        "session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("session_tokens_per_day", BigInteger),
    Column("user_tokens_per_day", BigInteger),
)

# Custom roles an integrator defined (the built-in ones live in ``authz.roles``).
roles = Table(
    "roles",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("capabilities", Text, nullable=False),  # JSON list
    Column("created_at", BigInteger, nullable=False),
)

# Documents attached to a session, each with its own readers (JSON {users, roles}).
documents = Table(
    "documents",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("title", String(500), nullable=False),
    Column("text", Text, nullable=False),
    Column("readers", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)
Index("ix_documents_session_id", documents.c.session_id)
# A session's documents in the order a list shows them, read without their texts. SQLite
# stores a row's columns in order, so reading those after a long text walks all of its
# pages (review: a list of 40 titles read 32 MB): there the index holds everything the
# list shows. PostgreSQL stores long values out of line, read only when selected, and
# holds at most 2,704 bytes in an index entry: a title and reader lists within their
# bounds (500 characters, 1,000 users of 200) are far more, and such a document could not
# be attached (FX77), so there the index holds the order alone.
DOCUMENT_HEAD_INDEXES = (
    Index(
        "ix_documents_heads",
        documents.c.session_id,
        documents.c.created_at,
        documents.c.id,
    ).ddl_if(dialect="postgresql"),
    Index(
        "ix_documents_heads",
        documents.c.session_id,
        documents.c.created_at,
        documents.c.id,
        documents.c.title,
        documents.c.readers,
    ).ddl_if(dialect="sqlite"),
)

# Integrator tools: HTTP webhooks Parley calls, signed with the per-tool secret.
tools = Table(
    "tools",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("description", Text, nullable=False),
    Column("parameters", Text, nullable=False),  # JSON Schema
    Column("url", String(2000), nullable=False),
    Column("capability", String(200), nullable=False),
    Column("secret", String(128), nullable=False),
    Column("timeout_ms", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

# What not every member may read: the full text behind a placeholder in the shared
# document (a tool result, a restricted reply), with the readers of its sources.
private_items = Table(
    "private_items",
    metadata,
    Column("entry_id", String(64), primary_key=True),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("text", Text, nullable=False),
    Column("restriction", Text, nullable=False),  # JSON list of readers
    Column("created_at", BigInteger, nullable=False),
)
Index("ix_private_items_session_id", private_items.c.session_id)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("data", Text, nullable=False),  # JSON object
    # PostgreSQL: the writing transaction's id, the database's default (``store.horizon``).
    Column("xid", BigInteger, nullable=False, server_default=FetchedValue()),
)


def audit_page_index(
    name: str, *columns: Column[Any], sqlite_name: str | None = None
) -> tuple[Index, Index]:
    """An index of a session's audit records (by ``columns``, a page's filter, if any) in
    the order a page is read (``store.horizon``): by xid and id on PostgreSQL; by id on
    SQLite (named ``sqlite_name``, if given), where every xid is 0 and, held before the
    id, would leave each match to be sorted (review FX21: a page walked and sorted its
    session's whole log, a filtered one 0.2 s a page at 1,000,000 records)."""
    c = audit_log.c
    on_postgresql = Index(name, c.session_id, *columns, c.xid, c.id)
    on_sqlite = Index(sqlite_name or name, c.session_id, *columns, c.id)
    return on_postgresql.ddl_if(dialect="postgresql"), on_sqlite.ddl_if(dialect="sqlite")


AUDIT_PAGE_INDEXES = (
    *audit_page_index("ix_audit_log_session_xid", sqlite_name="ix_audit_log_session_id"),
    *audit_page_index("ix_audit_log_kind", audit_log.c.kind),
    *audit_page_index("ix_audit_log_actor", audit_log.c.actor),
)

# Semantic events (``session.events``), numbered per session from 1 in commit order: each
# stored in the transaction of the change it describes.
session_events = Table(
    "session_events",
    metadata,
    Column(
        "session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("seq", BigInteger, primary_key=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("actor", String(200)),
    Column("data", Text, nullable=False),  # JSON object
)
# The events that start and end a reply: an event stream that opens finds the reply
# running by reading back through these alone (a partial index: a session of many
# messages and few runs is not read through).
REPLY_EVENT_KINDS = ("reply_completed", "run_failed", "run_started")
REPLY_EVENTS = text("kind IN (" + ", ".join(f"'{k}'" for k in REPLY_EVENT_KINDS) + ")")
partial_index(
    "ix_session_events_replies", REPLY_EVENTS, session_events.c.session_id, session_events.c.seq
)

# Client tokens issued, so one can be revoked by its id; rows past ``expires_at`` (seconds)
# are deleted as new tokens are issued.
client_tokens = Table(
    "client_tokens",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", String(200), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    # ms (seconds in rows revoked by earlier versions: read as ms, long past, they end no
    # waiting prompt; ``session.core.runs.start_refusal``).
    Column("revoked_at", BigInteger),
    # Whose invite link gave it, when another member's (NULL: none; review RM-1): revoked
    # once its member is known another way or may not be handed out by its maker any more.
    Column("made_by", String(200)),
)
Index("ix_client_tokens_session_id", client_tokens.c.session_id, client_tokens.c.revoked_at)
# A user added to a session: their tokens from links elsewhere are found by it (RM-1).
Index("ix_client_tokens_user_id", client_tokens.c.user_id)

# Invite links: a secret (kept only as its SHA-256) that a member's browser exchanges for a
# client token of that member, ``max_uses`` times at most, until ``expires_at`` (seconds)
# or until revoked; dead too once the member is removed (``token_epoch`` no longer theirs).
invites = Table(
    "invites",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", String(200), nullable=False),
    Column("secret_sha256", String(64), nullable=False, unique=True),
    Column("token_epoch", String(32), nullable=False),
    Column("max_uses", Integer, nullable=False),
    Column("uses", Integer, nullable=False, server_default="0"),
    Column("token_ttl_s", Integer, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
    # A member's link for themselves minted with a token from another member's link: that
    # maker and their membership's epoch, which the tokens it gives carry (NULL: none).
    Column("made_by", String(200)),
    Column("maker_epoch", String(32)),
)
Index("ix_invites_session_id", invites.c.session_id)
Index("ix_invites_user_id", invites.c.user_id)

# Event webhooks: an integrator's subscription to event types (``server.webhook_outbox``).
# ``status``: active, paused (by the admin) or disabled (after a run of failed deliveries,
# ``disabled_reason`` says why); deliveries wait while it is not active.
webhooks = Table(
    "webhooks",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("url", String(2000), nullable=False),
    Column("events", Text, nullable=False),  # JSON list of event types
    Column("sessions", Text),  # JSON list of session ids; NULL: every session
    Column("secret", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("disabled_reason", String(500)),
    Column("failures", Integer, nullable=False, server_default="0"),  # in a row
    Column("created_at", BigInteger, nullable=False),
    # ms: its outbox reached ``webhook_max_waiting``; no delivery is written for it since.
    Column("full_at", BigInteger),
    # ms: the events not delivered to it because its outbox was full, from the first such
    # event to when it took events again (None while it still skips); kept until acknowledged.
    Column("skipped_from", BigInteger),
    Column("skipped_to", BigInteger),
)

# The outbox: one row per event and subscription, written in the event's transaction. No
# foreign key to the session: a ``session.deleted`` delivery outlives its session. ``id``
# orders one session's deliveries (insertion follows the session's commit order).
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("webhook_id", String(64), ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    Column("session_id", String(64), nullable=False),
    Column("message_id", String(200), nullable=False),  # the ``webhook-id`` header
    Column("type", String(32), nullable=False),
    Column("payload", Text, nullable=False),  # the body sent, JSON
    Column("status", String(16), nullable=False),  # pending, sending, delivered, failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_at", BigInteger, nullable=False),  # ms: due (pending), lease end (sending)
    # ms: retries end a period after; NULL until its first attempt (``store.outbox``).
    Column("retry_from", BigInteger),
    Column("created_at", BigInteger, nullable=False),
    # The first unfinished delivery of its subscription and session: the only one of
    # them the sender may claim (``server.store.webhooks``).
    Column("head", Boolean, nullable=False, server_default=false()),
    # PostgreSQL: the writing transaction's id, the database's default (``store.horizon``).
    Column("xid", BigInteger, nullable=False, server_default=FetchedValue()),
)
# The claim: due heads, earliest first, an index range whatever the backlog.
Index("ix_webhook_deliveries_head", webhook_deliveries.c.head, webhook_deliveries.c.next_at)
# A session's deliveries in order: its head, and the one after it.
Index(
    "ix_webhook_deliveries_order",
    webhook_deliveries.c.webhook_id,
    webhook_deliveries.c.session_id,
    webhook_deliveries.c.head,
    webhook_deliveries.c.id,
)
# A subscription's deliveries as ``?after=`` reads them (``store.horizon``).
Index(
    "ix_webhook_deliveries_xid",
    webhook_deliveries.c.webhook_id,
    webhook_deliveries.c.xid,
    webhook_deliveries.c.id,
)
# A subscription's unfinished deliveries, counted against its cap (``outbox.enqueue``).
# Literal, not bound: PostgreSQL uses a partial index only for a query that implies its
# condition with constants.
WAITING = text("status IN ('pending', 'sending')")
partial_index(
    "ix_webhook_deliveries_waiting",
    WAITING,
    webhook_deliveries.c.webhook_id,
    webhook_deliveries.c.id,
)

# Each attempt of a delivery: when, how long, the answer's status code or the error.
webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column(
        "delivery_id",
        BigInteger,
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("at", BigInteger, nullable=False),
    Column("latency_ms", Integer, nullable=False),
    Column("response_code", Integer),
    Column("error", String(500)),
)
Index("ix_webhook_attempts_delivery", webhook_attempts.c.delivery_id, webhook_attempts.c.id)

# One row: counted up by every change of a subscription, so each node knows when to read
# them again (``server.webhook_store.Subscriptions``).
webhook_version = Table(
    "webhook_version",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", BigInteger, nullable=False, server_default="0"),
)

# Private side-threads (``session.core.threads``): a member's own conversation beside the
# session, never in its shared document; their turns with what each drew on.
side_threads = Table(
    "side_threads",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("owner", String(200), nullable=False),
    Column("anchor_seq", BigInteger, nullable=False),
    Column("title", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("command_id", String(128), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)
Index("ix_side_threads_session_id", side_threads.c.session_id)

side_thread_turns = Table(
    "side_thread_turns",
    metadata,
    Column("id", String(80), primary_key=True),
    Column(
        "thread_id", String(64), ForeignKey("side_threads.id", ondelete="CASCADE"), nullable=False
    ),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("ordinal", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("author", String(200), nullable=False),
    Column("text", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason_code", String(32), nullable=True),
    Column("restriction", Text, nullable=False),  # JSON list of readers
    Column("summarise", Boolean, nullable=False),
    Column("command_id", String(128), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # When a prompt a quota failed (and its reply) may be sent again, ms since the epoch;
    # NULL for any other turn (migration threads_0037).
    Column("retry_at", BigInteger, nullable=True),
)
Index("ix_side_thread_turns_thread_id", side_thread_turns.c.thread_id)

# Each side-thread's own CRDT document, stored as the session's is (``doc_updates``,
# ``doc_snapshots``): appended in the transaction of the rows it shows, before it is sent.
thread_doc_updates = Table(
    "thread_doc_updates",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column(
        "thread_id", String(64), ForeignKey("side_threads.id", ondelete="CASCADE"), nullable=False
    ),
    Column("data", LargeBinary, nullable=False),
)
Index("ix_thread_doc_updates_thread_id", thread_doc_updates.c.thread_id, thread_doc_updates.c.id)

thread_doc_snapshots = Table(
    "thread_doc_snapshots",
    metadata,
    Column(
        "thread_id", String(64), ForeignKey("side_threads.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("last_update_id", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)
