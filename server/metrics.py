"""Prometheus metrics, one registry per app (tests run many apps in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LENGTH_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "parley_open_connections", "Open WebSocket connections", registry=r
        )
        self.streams = Gauge(
            "parley_open_event_streams", "Open Server-Sent Events streams", registry=r
        )
        self.streams_cut = Counter(
            "parley_event_streams_cut_total",
            "Event streams cut because their reader took nothing for the stall timeout",
            registry=r,
        )
        self.answers_cut = Counter(
            "parley_http_answers_cut_total",
            "REST answers dropped because their client took nothing for the stall timeout",
            registry=r,
        )
        self.sessions = Gauge(
            "parley_active_sessions", "Sessions loaded in this process", registry=r
        )
        self.queue_depth = Gauge("parley_queue_depth", "Prompts waiting, all sessions", registry=r)
        self.queue_wait = Histogram(
            "parley_queue_wait_seconds",
            "From a prompt's ack to its run starting",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_call = Histogram(
            "parley_model_call_seconds", "Whole model calls", buckets=LATENCY_BUCKETS, registry=r
        )
        self.first_token = Histogram(
            "parley_time_to_first_token_seconds",
            "From a run starting to its first token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("parley_model_tokens", "Model tokens", ["direction"], registry=r)
        self.errors = Counter(
            "parley_errors", "Errors sent to clients, by code", ["code"], registry=r
        )
        self.slow_consumers = Counter(
            "parley_slow_consumers",
            "Sockets dropped because their client did not take what was sent",
            registry=r,
        )
        self.inbound_pauses = Counter(
            "parley_inbound_pauses_total",
            "Times a member's sockets to a session went past their budget of bytes read "
            "(PARLEY_INBOUND_BYTES_PER_S) and were not read until it refilled",
            registry=r,
        )
        self.send_drops = Counter(
            "parley_send_drops",
            "Sockets dropped, by reason (socket_limit, total_limit, stalled, closing)",
            ["reason"],
            registry=r,
        )
        self.send_unsent = Gauge(
            "parley_send_unsent_bytes",
            "Bytes sent to sockets and not yet taken by their clients, all sockets",
            registry=r,
        )
        self.client_writes = Counter(
            "parley_client_writes_refused",
            "Sockets whose client sent a document write, dropped (the server is the only "
            "writer), counted at the first; by client: json (told forbidden) or stock (a "
            "socket that sent no command, which cannot be told)",
            ["client"],
            registry=r,
        )
        self.storage_refusals = Counter(
            "parley_storage_refusals",
            "Writes the database refused, by kind of fault (locked, readonly, unreachable, ...)",
            ["kind"],
            registry=r,
        )
        self.summaries = Counter(
            "parley_summaries", "Summary calls, by outcome", ["status"], registry=r
        )
        self.context_build = Histogram(
            "parley_context_build_seconds",
            "Building one model input",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.runs = Counter("parley_runs", "Finished runs, by outcome", ["status"], registry=r)
        self.reply_chars = Histogram(
            "parley_reply_chars", "Length of finished replies", buckets=LENGTH_BUCKETS, registry=r
        )

    def watch(
        self,
        sessions: Callable[[], int],
        queue_depth: Callable[[], int],
        unsent: Callable[[], int],
    ) -> None:
        self.sessions.set_function(sessions)
        self.queue_depth.set_function(queue_depth)
        self.send_unsent.set_function(unsent)

    def send_dropped(self, reason: str) -> None:
        self.slow_consumers.inc()
        self.send_drops.labels(reason=reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
