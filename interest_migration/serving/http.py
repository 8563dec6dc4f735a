"""``serve``: online recommendations over HTTP, from the standard library's threaded server.

Routes (JSON in, JSON out):

* ``POST /events``: one event ``{"user", "item", "behavior"?, "ts"?}``, a list of them, or
  ``{"events": [...]}``; all or none are accepted. The reply comes after the events are in the
  event log (see :mod:`interest_migration.serving.event_log` for the fsync policy).
* ``GET /recommendations/{user}?k=10&exclude_seen=true``
* ``GET /healthz``, ``GET /metrics`` (request counts by route and status, latency percentiles).

Bad requests get a 4xx reply whose JSON ``error`` says what was wrong; the server keeps serving.
It binds 127.0.0.1 unless ``--host`` says otherwise: there is no authentication.
"""
from __future__ import annotations

import argparse
import collections
import gc
import json
import logging
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from interest_migration.utils.cli import add_trust_checkpoint_argument

logger = logging.getLogger(__name__)

EVENT_KEYS = frozenset({"user", "item", "behavior", "ts"})
_TRUE, _FALSE = {"1", "true", "yes"}, {"0", "false", "no"}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; anything larger is refused with a 4xx, never half-served."""

    max_body_bytes: int = 1 << 20
    max_events: int = 1000
    max_k: int = 1000
    idle_timeout_s: float = 30.0  # a connection that sends nothing for this long is closed


class RequestError(Exception):
    """A client mistake: becomes a 4xx reply with ``message`` as its JSON ``error``."""

    def __init__(self, status: HTTPStatus, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


class Metrics:
    """Request counts per route and status, and latency percentiles over a sliding window."""

    def __init__(self, window: int = 10000):
        self._lock = threading.Lock()
        self._counts = collections.Counter()
        self._latencies = collections.defaultdict(lambda: collections.deque(maxlen=window))
        self.started = time.time()

    def record(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._counts[(route, int(status))] += 1
            self._latencies[route].append(seconds)

    def snapshot(self) -> dict:
        with self._lock:
            counts = dict(self._counts)
            latencies = {route: np.array(values) for route, values in self._latencies.items()}
        routes = {}
        for (route, status), n in sorted(counts.items()):
            routes.setdefault(route, {"count": 0, "by_status": {}})
            routes[route]["count"] += n
            routes[route]["by_status"][str(status)] = n
        for route, values in latencies.items():
            p50, p90, p99 = np.percentile(values, [50, 90, 99]) * 1000 if len(values) else (0.0, 0.0, 0.0)
            routes[route]["latency_ms"] = {
                "p50": round(float(p50), 3),
                "p90": round(float(p90), 3),
                "p99": round(float(p99), 3),
                "window": int(len(values)),
            }
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "requests": sum(counts.values()),
            "routes": routes,
        }


def parse_events(body: bytes, limits: Limits) -> list[dict]:
    """The events of a ``POST /events`` body, shape-checked; the recommender checks the values."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, 4300-digit ints, deep nesting
        raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {exc}") from None
    if isinstance(data, dict) and "events" in data:
        if set(data) != {"events"} or not isinstance(data["events"], list):
            raise RequestError(
                HTTPStatus.BAD_REQUEST, 'a batch must be {"events": [event, ...]} with no other keys'
            )
        events = data["events"]
    elif isinstance(data, list):
        events = data
    elif isinstance(data, dict):
        events = [data]
    else:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f'expected an event object, a list of events or {{"events": [...]}}, got a JSON {type(data).__name__}',
        )
    if not events:
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, "no events in the request")
    if len(events) > limits.max_events:
        raise RequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"too many events in one request: {len(events)} > {limits.max_events}; split the batch",
        )
    for index, event in enumerate(events):
        where = f"event {index}" if len(events) > 1 else "event"
        if not isinstance(event, dict):
            raise RequestError(
                HTTPStatus.BAD_REQUEST, f"{where}: expected a JSON object, got a JSON {type(event).__name__}"
            )
        unknown = sorted(set(event) - EVENT_KEYS)
        if unknown:
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"{where}: unknown field(s) {unknown}; an event has {sorted(EVENT_KEYS)}",
            )
    return events


class Handler(BaseHTTPRequestHandler):
    """One connection; keep-alive, JSON replies, a 4xx for every client mistake."""

    protocol_version = "HTTP/1.1"
    server_version = "interest-migration"
    # buffer each reply so that headers and body leave in one send(); the stdlib's
    # handle_one_request flushes after every request
    wbufsize = 1 << 16
    sys_version = ""

    # set by make_server on a subclass
    recommender = None
    limits = Limits()
    metrics = Metrics()

    def setup(self):
        self.timeout = self.limits.idle_timeout_s
        super().setup()
        # headers and body go out as separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK hold every reply back by ~40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def finish(self):
        super().finish()
        if self.close_connection and getattr(self, "_unread_input", False):
            _drain(self.connection)

    # -------------------------------------------------------------- plumbing
    def log_message(self, format, *args):  # noqa: A002  (stdlib signature)
        if logger.isEnabledFor(logging.DEBUG):  # called for every request: format only when shown
            logger.debug("%s %s", self.address_string(), format % args)

    def log_request(self, code="-", size="-"):
        if logger.isEnabledFor(logging.DEBUG):  # the stdlib formats its arguments before log_message
            super().log_request(code, size)

    _date = (0, "")  # (second, Date header of that second), shared by every connection

    def date_time_string(self, timestamp=None):
        """The Date header, formatted once per second instead of once per reply."""
        if timestamp is not None:
            return super().date_time_string(timestamp)
        now = int(time.time())
        second, text = Handler._date
        if second != now:
            text = super().date_time_string(now)
            Handler._date = (now, text)
        return text

    def _reply(self, status: int, payload: dict, close: bool = False) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self._unread_input = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._status = status

    def send_error(self, code, message=None, explain=None):
        """The stdlib's parser errors (bad request line, headers, method) as JSON, connection closed."""
        status = HTTPStatus(code)
        if self.request_version == "HTTP/0.9":  # unparsable request line: still answer with a status line
            self.request_version = "HTTP/1.1"
        self.metrics.record("invalid", status, 0.0)
        try:
            self._reply(status, {"error": message or status.phrase, "status": int(status)}, close=True)
        except OSError:  # the client is gone already
            self.close_connection = True

    def _dispatch(self, route: str, action) -> None:
        start = time.perf_counter()
        self._status = 500
        try:
            try:
                action()
            except RequestError as exc:
                self._reply(exc.status, {"error": exc.message, "status": int(exc.status)}, close=exc.close)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
            self._status = 499  # the client went away (nginx's convention)
        except Exception as exc:  # a bug, not the client's fault: say so, keep serving
            logger.exception("error serving %s %s", self.command, self.path)
            try:
                self._reply(500, {"error": f"internal error: {type(exc).__name__}", "status": 500}, close=True)
            except OSError:
                self.close_connection = True
        finally:
            self.metrics.record(route, self._status, time.perf_counter() - start)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(
                HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not supported; send Content-Length", True
            )
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required", True)
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            raise RequestError(
                HTTPStatus.BAD_REQUEST, f"Content-Length must be a non-negative integer, got {length!r}", True
            ) from None
        if n > self.limits.max_body_bytes:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {n} bytes exceeds the limit of {self.limits.max_body_bytes} bytes",
                True,
            )
        body = self.rfile.read(n)
        if len(body) != n:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body ended after {len(body)} of {n} bytes", True)
        return body

    def _route(self):
        try:
            parts = urlsplit(self.path)
            return parts.path, parse_qs(parts.query, keep_blank_values=True)
        except ValueError:
            return None, {}

    # -------------------------------------------------------------- methods
    def do_GET(self):
        path, query = self._route()
        if path is None:
            self._dispatch("other", self._bad_target)
        elif path == "/healthz":
            self._dispatch("GET /healthz", lambda: self._healthz(query))
        elif path == "/metrics":
            self._dispatch("GET /metrics", self._metrics)
        elif path.startswith("/recommendations/"):
            self._dispatch("GET /recommendations", lambda: self._recommendations(path, query))
        else:
            self._dispatch("other", lambda: self._not_found(path))

    def do_POST(self):
        path, _ = self._route()
        if path is None:
            self._dispatch("other", self._bad_target)
        elif path == "/events":
            self._dispatch("POST /events", self._events)
        else:
            self._dispatch("other", lambda: self._not_found(path, body=True))

    def _method_not_allowed(self):
        def refuse():
            # the body (if any) is not read, so the connection cannot be reused
            raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"method {self.command} is not allowed here", True)

        self._dispatch("other", refuse)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _method_not_allowed

    # -------------------------------------------------------------- routes
    def _bad_target(self):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"cannot parse the request target {self.path[:200]!r}", True)

    def _not_found(self, path: str, body: bool = False):
        raise RequestError(
            HTTPStatus.NOT_FOUND,
            f"no route {self.command} {path!r}; routes: POST /events, GET /recommendations/{{user}}, "
            "GET /healthz, GET /metrics",
            body,
        )

    def _healthz(self, query):
        rec = self.recommender
        self._reply(
            200,
            {
                "status": "ok",
                "model": rec.config["model"],
                "dataset": str(rec.config["dataset"]),
                "users": rec.n_users,
                "events_logged": rec.event_log.n_events if rec.event_log is not None else None,
            },
        )

    def _metrics(self):
        sizes = dict(self.recommender.batch_sizes)
        batches = sum(sizes.values())
        scoring = {
            "batches": batches,
            "mean_batch_size": round(sum(k * n for k, n in sizes.items()) / batches, 3) if batches else None,
            "max_batch_size": max(sizes, default=None),
        }
        self._reply(200, {**self.metrics.snapshot(), "recommend_micro_batches": scoring})

    def _events(self):
        body = self._read_body()
        events = parse_events(body, self.limits)
        try:
            seq = self.recommender.observe_many(events)
        except ValueError as exc:
            raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None
        self._reply(200, {"accepted": len(events), "seq": seq})

    def _recommendations(self, path: str, query: dict):
        raw = path[len("/recommendations/"):]
        try:
            user = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"user id {raw!r} is not percent-encoded UTF-8") from None
        if not user or "/" in raw:
            raise RequestError(
                HTTPStatus.BAD_REQUEST, "expected /recommendations/{user} with one non-empty, percent-encoded user id"
            )
        unknown = sorted(set(query) - {"k", "exclude_seen"})
        if unknown:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"unknown query parameter(s) {unknown}; known: k, exclude_seen")
        k = _single(query, "k", "10")
        try:
            k = int(k)
        except ValueError:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"k must be an integer, got {k!r}") from None
        if not 1 <= k <= self.limits.max_k:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"k must be between 1 and {self.limits.max_k}, got {k}")
        exclude_seen = _single(query, "exclude_seen", "true").lower()
        if exclude_seen not in _TRUE | _FALSE:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"exclude_seen must be true or false, got {exclude_seen!r}")
        try:
            result = self.recommender.recommend(user, k, exclude_seen=exclude_seen in _TRUE)
        except ValueError as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        self._reply(200, result)


def _drain(sock, max_bytes: int = 1 << 20, seconds: float = 1.0) -> None:
    """Half-close, then read what the client is still sending, before the socket is closed.

    Closing a socket with unread input makes the kernel answer with a reset, which can destroy
    the error reply still on its way (e.g. a 413 for a body we refused to read). Bounded in
    bytes and time, so a client that keeps sending cannot hold the thread.
    """
    deadline = time.monotonic() + seconds
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.2)
        while max_bytes > 0 and time.monotonic() < deadline:
            chunk = sock.recv(min(max_bytes, 65536))
            if not chunk:
                break
            max_bytes -= len(chunk)
    except OSError:
        pass


def _single(query: dict, name: str, default: str) -> str:
    values = query.get(name, [default])
    if len(values) != 1:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"query parameter {name!r} given {len(values)} times")
    return values[0]


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never blocks shutdown
    request_queue_size = 128

    def handle_error(self, request, client_address):
        """A client that hangs up mid-reply is routine; anything else is logged with its traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            logger.debug("connection from %s ended: %r", client_address, exc)
        else:
            logger.exception("error on a connection from %s", client_address)


def make_server(recommender, host: str = "127.0.0.1", port: int = 0, limits: Limits | None = None) -> Server:
    """An HTTP server for ``recommender``, bound but not yet serving (``port=0``: any free port)."""
    handler = type(
        "BoundHandler",
        (Handler,),
        {"recommender": recommender, "limits": limits or Limits(), "metrics": Metrics()},
    )
    return Server((host, port), handler)


# --------------------------------------------------------------------------- command line


def configure_parser(parser):
    parser.add_argument("--checkpoint", required=True, help="model checkpoint (a safe one, see convert-checkpoint)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind; 0 picks a free one (default: 8080)")
    parser.add_argument(
        "--event-log",
        default=None,
        help="append-only log of accepted events, replayed on start (default: <checkpoint>.events.jsonl)",
    )
    parser.add_argument(
        "--fsync",
        choices=["group", "none"],
        default="group",
        help="group: fsync (shared by concurrent requests) before acknowledging; none: flush to the OS only",
    )
    parser.add_argument("--data-path", default=None, help="folder holding the dataset, if it moved")
    add_trust_checkpoint_argument(parser)
    parser.add_argument("--threads", type=_positive_int, default=1, help="torch threads for scoring (default: 1)")
    parser.add_argument("--max-batch", type=_positive_int, default=64, help="largest micro-batch of recommendations")
    parser.add_argument(
        "--eager", action="store_true", help="score with the eager model, not its traced graph (see serving/traced.py)"
    )
    parser.add_argument(
        "--max-body-bytes", type=_positive_int, default=Limits.max_body_bytes, help="largest body (default: 1 MiB)"
    )
    parser.add_argument(
        "--max-events", type=_positive_int, default=Limits.max_events, help="events per POST (default: 1000)"
    )
    parser.add_argument("--max-k", type=_positive_int, default=Limits.max_k, help="largest k a client may ask for")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def run(args) -> int:
    import torch

    from interest_migration.serving.event_log import EventLog
    from interest_migration.serving.online import OnlineRecommender

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    saved_argv, sys.argv = sys.argv, sys.argv[:1]  # RecBole's Config would read our flags as overrides
    try:
        recommender = OnlineRecommender.load(
            args.checkpoint, trust_pickle=args.trust_checkpoint, data_path=args.data_path, max_batch=args.max_batch,
            trace=not args.eager,
        )
    except ValueError as exc:  # CheckpointError, or a model that cannot serve online
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved_argv
    logger.info("scoring with the %s", "traced graph" if recommender.traced else "eager model")
    # the dataset, model and histories live as long as the server: spare the collector from
    # walking them on every full collection (a pause every request in flight would wait out)
    gc.collect()
    gc.freeze()
    log_path = args.event_log or f"{args.checkpoint}.events.jsonl"
    try:
        recommender.attach_log(EventLog(log_path, recommender.log_header(), fsync=args.fsync == "group"))
    except ValueError as exc:  # EventLogError, or an event the model cannot take
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot open the event log {log_path}: {exc}", file=sys.stderr)
        return 2
    limits = Limits(max_body_bytes=args.max_body_bytes, max_events=args.max_events, max_k=args.max_k)
    try:
        server = make_server(recommender, args.host, args.port, limits)
    except OSError as exc:
        print(f"error: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    host, port = server.server_address[:2]
    print(
        f"serving {recommender.config['model']} on http://{host}:{port} "
        f"(event log {log_path}, fsync={args.fsync}, {recommender.n_replayed} events replayed)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        recommender.close()
    return 0
