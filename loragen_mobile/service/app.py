"""`loragen serve`: task description in, signed bundle out (the paper's online LoRA generation).

One :class:`Specializer` per server owns the generator, the base artifacts, the signing key, the
store and the metrics; :func:`create_app` wraps it in a FastAPI application. No module-level state.

Requests for the same bundle id that arrive while it is being generated wait for that one
generation; requests for different bundles that arrive together (within ``batch_window_s``, or
while the previous batch runs) are handled in one round of the generation worker. Each distinct
task description gets its own generator forward (a batch of one): a batched forward's floats
depend on the other rows of the batch, and a bundle id must always name the same bytes.
"""

import asyncio
import contextlib
import errno
import functools
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..bundle import full_precision_weights, read_base_tensors
from ..bundle.core import build_into
from ..bundle.format import FORMAT_VERSION, parse_file
from ..bundle.keys import key_id, load_private_key
from ..config import from_mapping, load_section
from ..errors import LoragenError
from ..exporters import read_artifact
from ..fsutil import atomic_file
from ..generator import generate_adapters, load_generator
from ..models import config_hash
from .store import BundleStore, bundle_id, valid_id

log = logging.getLogger("loragen.serve")

KINDS = ("merged", "lora")
API_KEY_HEADER = "X-API-Key"
CHUNK = 1 << 20


@dataclass
class ServiceConfig:
    """Service settings: the ``service:`` section of a YAML file and/or ``loragen serve`` options
    (:func:`load_service_config`)."""

    generator_dir: str
    artifacts: list[str]
    sign_key: str
    store: str
    api_keys: str | None = None
    max_task_bytes: int = 32 * 1024
    store_max_bytes: int | None = None
    batch_window_s: float = 0.01
    max_batch: int = 16
    header_timeout_s: float = 10.0  # from a request's first byte to the end of its headers
    body_timeout_s: float = 30.0  # from the end of the headers to the end of the body
    auth_failures_per_minute: float = 10.0  # invalid API keys accepted per client address
    host: str = "127.0.0.1"
    port: int = 8080
    # artifact directory name -> the full-precision model it was exported from (HF directory or cached
    # Hub id): merged bundles for a quantized artifact are quantized from it (docs/quantization.md)
    base_models: dict[str, str] = field(default_factory=dict)

    def check(self) -> "ServiceConfig":
        if self.max_task_bytes < 1 or self.max_batch < 1 or self.batch_window_s < 0:
            raise LoragenError("--max-task-bytes and --max-batch must be positive, --batch-window-ms not negative",
                               code="usage")
        if not (self.header_timeout_s > 0 and self.body_timeout_s > 0 and self.auth_failures_per_minute > 0):
            raise LoragenError("--header-timeout-s, --body-timeout-s and --auth-failures-per-minute must be positive",
                               code="usage")
        if not self.artifacts:
            raise LoragenError("the service needs at least one artifact (--artifact)", code="usage")
        return self


# setting -> the loragen serve option that gives it
SERVICE_OPTIONS = {"generator_dir": "--generator", "artifacts": "--artifact", "sign_key": "--sign-key",
                   "store": "--store"}


def load_service_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> ServiceConfig:
    """The ``service:`` section of a YAML file (keys: the :class:`ServiceConfig` fields), with
    ``overrides`` (``loragen serve`` options; ``None`` = not given) on top."""
    d = {**load_section(path, "service"), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    missing = [flag for key, flag in SERVICE_OPTIONS.items() if not d.get(key)]
    if missing:
        raise LoragenError(f"missing {', '.join(missing)}" + (f" (or their keys in {path}'s service section)"
                                                              if path else ""), code="usage")
    return from_mapping(ServiceConfig, d, f"{path}: service" if path else "service settings").check()


class HTTPProblem(Exception):
    """An error answer: status, a stable machine-readable code and a one-line message."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


# ------------------------------------------------------------------------------------ API keys

@dataclass
class ApiKey:
    name: str
    sha256: str
    artifacts: list[str]
    rate_per_minute: float
    tokens: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    @property
    def burst(self) -> float:
        return max(1.0, self.rate_per_minute)

    def allows(self, artifact_name: str, fingerprint: str) -> bool:
        return "*" in self.artifacts or artifact_name in self.artifacts or fingerprint in self.artifacts

    def take(self) -> float:
        """Token bucket (one minute's worth of burst): 0 when allowed, else seconds until the next token."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate_per_minute / 60.0)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) * 60.0 / self.rate_per_minute


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def load_api_keys(path: str | None) -> dict[str, ApiKey] | None:
    """File: {"keys": [{"name", "sha256" (of the key), "artifacts": ["*" | name | fingerprint], "rate_per_minute"}]}."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise LoragenError(f"API keys file {p} does not exist")
    try:
        doc = json.loads(p.read_text())
        keys = {}
        for k in doc["keys"]:
            if not isinstance(k["sha256"], str) or not re.fullmatch(r"[0-9a-f]{64}", k["sha256"]):
                raise ValueError(f"key {k.get('name')!r}: sha256 must be 64 lowercase hex characters")
            arts = k.get("artifacts", ["*"])
            if not isinstance(arts, list) or not all(isinstance(a, str) for a in arts):
                raise ValueError(f"key {k.get('name')!r}: artifacts must be a list of names or fingerprints")
            rate = float(k.get("rate_per_minute", 60))
            if not rate > 0:
                raise ValueError(f"key {k.get('name')!r}: rate_per_minute must be positive")
            key = ApiKey(str(k["name"]), k["sha256"], arts, rate)
            key.tokens = key.burst
            keys[k["sha256"]] = key
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise LoragenError(f"{p} is not a valid API keys file: {e}") from None
    return keys


def add_api_key(path: str, name: str, artifacts: list[str] | None = None, rate_per_minute: float = 60) -> str:
    """Create a random API key, store only its sha256 in ``path`` (created if missing); return the key."""
    import secrets

    p = Path(path)
    doc = {"keys": []}
    if p.exists():
        load_api_keys(str(p))  # refuses a malformed file
        doc = json.loads(p.read_text())
    if any(k.get("name") == name for k in doc["keys"]):
        raise LoragenError(f"{p} already has a key named {name!r}")
    if not rate_per_minute > 0:
        raise LoragenError("the rate limit must be positive")
    key = "lgk_" + secrets.token_urlsafe(24)
    doc["keys"].append({"name": name, "sha256": hash_api_key(key), "artifacts": artifacts or ["*"],
                        "rate_per_minute": rate_per_minute})
    with atomic_file(p, overwrite=True) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    return key


class KeyRing:
    """The API keys file, read again whenever it changes (inode, size, mtime or ctime; one stat per request).

    Token buckets of keys that stay in the file carry over. A file that becomes missing or invalid
    refuses every request (503 ``api_keys_unavailable``) until it is fixed: a key removed by an edit
    that went wrong is never accepted again.
    """

    def __init__(self, path: str):
        self.path = Path(path)
        self.keys: dict[str, ApiKey] | None = load_api_keys(path)
        self.stamp = self._stamp()
        self._lock = threading.Lock()

    def _stamp(self):
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def current(self) -> dict[str, ApiKey]:
        stamp = self._stamp()
        if stamp != self.stamp:
            with self._lock:
                try:
                    fresh = load_api_keys(str(self.path))
                except LoragenError as e:
                    if self.keys is not None:
                        log.error("API keys file unusable, refusing every request until fixed: %s", e)
                    self.keys = None
                else:
                    for sha, k in fresh.items():
                        old = (self.keys or {}).get(sha)
                        if old is not None and old.rate_per_minute == k.rate_per_minute:
                            k.tokens, k.stamp = old.tokens, old.stamp
                    self.keys = fresh
                    log.info("API keys file reloaded: %d keys", len(fresh))
                self.stamp = stamp
        if self.keys is None:
            raise HTTPProblem(503, "api_keys_unavailable", "the server's API keys file is missing or invalid",
                              {"Retry-After": "10"})
        return self.keys


class FailureThrottle:
    """Token bucket of failed authentications per client address (a burst of one minute's worth)."""

    MAX_ADDRESSES = 10000

    def __init__(self, per_minute: float):
        self.rate = per_minute
        self.burst = max(1.0, per_minute)
        self.buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, monotonic stamp)

    def _level(self, addr: str, now: float) -> float:
        tokens, stamp = self.buckets.get(addr, (self.burst, now))
        return min(self.burst, tokens + (now - stamp) * self.rate / 60.0)

    def wait(self, addr: str) -> float:
        """0 when this address may try a key, else seconds until it may."""
        level = self._level(addr, time.monotonic())
        return 0.0 if level >= 1.0 else (1.0 - level) * 60.0 / self.rate

    def failed(self, addr: str) -> None:
        now = time.monotonic()
        self.buckets[addr] = (max(0.0, self._level(addr, now) - 1.0), now)
        if len(self.buckets) > self.MAX_ADDRESSES:  # forget the addresses whose bucket has refilled
            self.buckets = {a: v for a, v in self.buckets.items() if self._level(a, now) < self.burst}


# ------------------------------------------------------------------------------------ requests

def check_task(task, max_bytes: int) -> str:
    """The task text, or an HTTPProblem: empty, too large, not UTF-8 (lone surrogates), control characters."""
    if not isinstance(task, str) or not task.strip():
        raise HTTPProblem(422, "invalid_task", "'task' must be a non-empty string")
    size = len(task.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise HTTPProblem(413, "task_too_large", f"'task' is {size} bytes; the limit is {max_bytes}")
    try:
        task.encode("utf-8")
    except UnicodeEncodeError:
        raise HTTPProblem(400, "invalid_utf8", "'task' is not valid UTF-8") from None
    bad = next((c for c in task if unicodedata.category(c) == "Cc" and c not in "\n\t\r"), None)
    if bad is not None:
        raise HTTPProblem(422, "control_characters", f"'task' contains control character U+{ord(bad):04X}")
    return task


def parse_request(body: bytes, max_task_bytes: int) -> tuple[str, str, str]:
    """(task, artifact, kind) from a POST /v1/specializations body."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPProblem(400, "invalid_utf8", "request body is not valid UTF-8") from None
    try:
        req = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError, integers over Python's digit limit, nesting
        raise HTTPProblem(400, "invalid_json", "request body is not valid JSON") from None
    if not isinstance(req, dict):
        raise HTTPProblem(422, "invalid_request", "request body must be a JSON object")
    unknown = sorted(set(req) - {"task", "artifact", "kind"})
    if unknown:
        raise HTTPProblem(422, "invalid_request", f"unknown field {unknown[0][:64]!r}")
    kind = req.get("kind", "merged")
    if kind not in KINDS:
        raise HTTPProblem(422, "invalid_kind", "'kind' must be 'merged' or 'lora'")
    if not isinstance(req.get("artifact"), str) or not req["artifact"]:
        raise HTTPProblem(422, "invalid_artifact", "'artifact' must be an artifact name or fingerprint")
    return check_task(req.get("task"), max_task_bytes), req["artifact"], kind


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Inclusive (start, end) of a single byte range, or None when the Range header is to be ignored.

    The unit is matched case-insensitively (RFC 9110 14.1); another unit, or more than one range,
    is ignored: the whole bundle is sent (RFC 9110 14.2 lets a server ignore Range). HTTPProblem
    416 when a single byte range is malformed or unsatisfiable.
    """
    unsatisfiable = {"Content-Range": f"bytes */{size}"}
    unit, eq, spec = header.strip().partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    if "," in spec:
        return None
    m = re.fullmatch(r"(\d{0,18})-(\d{0,18})", spec.strip())
    if not m or not (m.group(1) or m.group(2)):
        raise HTTPProblem(416, "bad_range", "Range must be one 'bytes=START-[END]' or 'bytes=-SUFFIX'", unsatisfiable)
    if m.group(1):
        start = int(m.group(1))
        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        if m.group(2) and int(m.group(2)) < start:
            raise HTTPProblem(416, "bad_range", "Range end lies before its start", unsatisfiable)
    else:
        start, end = max(0, size - int(m.group(2))), size - 1
    if start >= size or start > end:
        raise HTTPProblem(416, "range_not_satisfiable", f"the range lies outside the {size}-byte bundle", unsatisfiable)
    return start, end


def etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in [t[2:] if t.startswith("W/") else t for t in tags]


# ------------------------------------------------------------------------------------ metrics

class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("loragen_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram("loragen_request_seconds", "HTTP request latency", ["route"], registry=r,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.cache_hits = Counter("loragen_cache_hits", "specializations answered from the store", registry=r)
        self.coalesced = Counter("loragen_coalesced", "requests that waited for an identical generation in flight",
                                 registry=r)
        self.generations = Counter("loragen_generations", "generator forward passes (one per distinct task)",
                                   registry=r)
        self.bundles_built = Counter("loragen_bundles_built", "bundles generated and stored", registry=r)
        self.quarantined = Counter("loragen_store_quarantined", "stored bundles that failed their content check",
                                   registry=r)
        self.auth_throttled = Counter("loragen_auth_throttled", "requests refused after repeated invalid API keys",
                                      registry=r)
        self.batch_size = Histogram("loragen_batch_size", "distinct task descriptions per generation round",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.generation_seconds = Histogram("loragen_generation_seconds", "generator forward + bundle builds per batch",
                                            registry=r, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


# ------------------------------------------------------------------------------------ core

@dataclass
class ServedArtifact:
    name: str
    path: Path
    meta: dict
    base: Mapping  # the artifact's own values of its swappable tensors, read on access (merged bundles start from these)
    full_precision: Mapping | None = None  # a quantized artifact's weights in full precision (base_models), read on access

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]


def _check_servable(g, art: ServedArtifact) -> None:
    if art.meta.get("config_hash") != config_hash(g.edge.config):
        raise LoragenError(f"artifact {art.path} was exported from a model with another architecture than "
                           f"the generator's edge model")
    slots = {s["name"] for s in art.meta["swap_slots"]}
    for short in g.layout.names:
        for i in range(g.layout.num_layers):
            if f"{g.layout.module_name(short, i)}.weight" not in slots:
                raise LoragenError(f"artifact {art.path} has no swap slot for {g.layout.module_name(short, i)}; "
                                   f"re-export it with target modules {', '.join(g.layout.names)}")


class Specializer:
    """Owns generator, artifacts, key, store and metrics; coalesces identical and batches different requests."""

    def __init__(self, cfg: ServiceConfig):
        self.cfg = cfg
        self.metrics = Metrics()
        self.key = load_private_key(cfg.sign_key)
        self.key_id = key_id(self.key.public_key())
        self.format_version = str(FORMAT_VERSION)
        self.generator = load_generator(cfg.generator_dir)
        self.generator_id = self.generator.generator_id
        if not self.generator_id:
            raise LoragenError(f"generator in {cfg.generator_dir} has no id")
        if not cfg.artifacts:
            raise LoragenError("serve at least one artifact")
        self.artifacts: list[ServedArtifact] = []
        for a in cfg.artifacts:
            art = read_artifact(a)
            name = Path(a).resolve().name
            base = read_base_tensors(art)
            for param in base:  # every stored slot checked once now; builds read them again, one at a time
                base[param]
            served = ServedArtifact(name, art.path, art.meta, base, full_precision_weights(art, cfg.base_models.get(name)))
            _check_servable(self.generator, served)
            for other in self.artifacts:
                if served.name == other.name or served.fingerprint == other.fingerprint:
                    raise LoragenError(f"artifacts {other.path} and {served.path} share a name or fingerprint")
            self.artifacts.append(served)
        self.store = BundleStore(cfg.store, cfg.store_max_bytes, on_quarantine=self.metrics.quarantined.inc)
        self._inflight: dict[str, asyncio.Future] = {}
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    # -- lifecycle (called from the app's lifespan, inside the server's event loop)

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._batch_loop())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._worker = self._queue = None

    # -- requests

    def find_artifact(self, ref: str) -> ServedArtifact:
        for a in self.artifacts:
            if ref in (a.name, a.fingerprint):
                return a
        raise self.unknown_artifact(ref)

    @staticmethod
    def unknown_artifact(ref: str) -> HTTPProblem:
        return HTTPProblem(404, "unknown_artifact", f"no artifact named or fingerprinted {ref[:80]!r} is served here")

    @staticmethod
    def public(info: dict) -> dict:
        return {"id": info["id"], "size": info["size"], "sha256": info["sha256"],
                "url": f"/v1/bundles/{info['id']}", "manifest": info["manifest"]}

    async def specialize(self, task: str, art: ServedArtifact, kind: str) -> tuple[dict, bool]:
        """(public bundle info, True when this request generated it)."""
        from starlette.concurrency import run_in_threadpool

        bid = self.bundle_id(art, kind, task)
        info = await run_in_threadpool(self.store.get, bid)  # may hash the bundle file
        if info is not None:
            self.metrics.cache_hits.inc()
            return self.public(info), False
        fut = self._inflight.get(bid)
        if fut is not None:  # an identical request is being generated: wait for that one
            self.metrics.coalesced.inc()
            return self.public(await _result(fut)), False
        if self._queue is None:
            raise RuntimeError("the specializer is not started")
        fut = asyncio.get_running_loop().create_future()
        self._inflight[bid] = fut
        self._queue.put_nowait((bid, task, art, kind, fut))
        return self.public(await _result(fut)), True

    def bundle_id(self, art: ServedArtifact, kind: str, task: str) -> str:
        return bundle_id(self.generator_id, art.fingerprint, kind, task, self.key_id, self.format_version)

    async def _next_batch(self) -> list:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.cfg.batch_window_s
        while len(batch) < self.cfg.max_batch:
            if not self._queue.empty():  # queued while the previous batch ran
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            try:
                results = await loop.run_in_executor(None, self._generate_batch, [b[:4] for b in batch])
            except Exception as e:  # noqa: BLE001 - handed to every waiter (a 500 without details), logged once
                log.exception("generation failed")
                results = [e] * len(batch)
            for (bid, *_, fut), res in zip(batch, results):
                self._inflight.pop(bid, None)
                if fut.done():
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(res)
                    fut.exception()  # retrieved: waiters that went away leave no warning behind
                else:
                    fut.set_result(res)

    def _generate_batch(self, items) -> list:
        """One generator forward per distinct task (a batch of one: the bytes never depend on what else
        was asked at the same time), then one bundle (or exception) per item."""
        t0 = time.perf_counter()
        tasks = sorted({it[1] for it in items})
        adapters = {}
        for task in tasks:
            adapters[task] = generate_adapters(self.generator, [task])[0]
            self.metrics.generations.inc()
        self.metrics.batch_size.observe(len(tasks))
        out = []
        for bid, task, art, kind in items:
            try:
                def write(f, art=art, task=task, kind=kind):  # streamed to the store, one tensor at a time
                    build_into(f, art.meta, adapters[task], kind, base=art.base if kind == "merged" else None,
                               private_key=self.key, generator_id=self.generator_id, task=task,
                               full_precision=art.full_precision)

                out.append(self.store.put(bid, write, lambda path, art=art: {
                    "manifest": parse_file(path).manifest, "artifact": art.name, "fingerprint": art.fingerprint}))
                self.metrics.bundles_built.inc()
            except Exception as e:  # noqa: BLE001 - this item's waiters get a 500, the others their bundles
                log.exception("building bundle %s failed", bid)
                out.append(e)
        self.metrics.generation_seconds.observe(time.perf_counter() - t0)
        return out


async def _result(fut: asyncio.Future) -> dict:
    """A generation's result; a full or failing store becomes a 507/503 answer with a code."""
    try:
        return await asyncio.shield(fut)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise HTTPProblem(507, "insufficient_storage", "the bundle store is full; try again later",
                              {"Retry-After": "60"}) from None
        raise HTTPProblem(503, "store_unavailable", "the bundle store cannot be written; try again later",
                          {"Retry-After": "60"}) from None


# ------------------------------------------------------------------------------------ HTTP

ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "code": {"type": "string"}, "message": {"type": "string"}}}}}
REQUEST_SCHEMA = {"type": "object", "required": ["task", "artifact"], "additionalProperties": False, "properties": {
    "task": {"type": "string", "description": "task description (UTF-8, no control characters except tab/newline)"},
    "artifact": {"type": "string", "description": "artifact name or fingerprint (GET /v1/artifacts)"},
    "kind": {"type": "string", "enum": list(KINDS), "default": "merged"}}}
INFO_SCHEMA = {"type": "object", "properties": {
    "id": {"type": "string"}, "size": {"type": "integer"}, "sha256": {"type": "string"},
    "url": {"type": "string"}, "manifest": {"type": "object"}}}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict:
    return {s: _json(ERROR_SCHEMA, "error") for s in statuses}


class BodyTimeout:
    """ASGI middleware: a request body must arrive within ``timeout_s`` of the end of its headers
    (408 ``request_timeout`` and the connection is closed otherwise)."""

    def __init__(self, app, timeout_s: float):
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        done = started = False

        async def timed_receive():
            nonlocal done
            if done:
                return await receive()
            try:
                msg = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                done = True
                if started:  # an answer is under way (a download that never read the body): end it
                    return {"type": "http.disconnect"}
                raise HTTPProblem(408, "request_timeout", f"the request body did not arrive within {self.timeout_s:g} s",
                                  {"Connection": "close"}) from None
            if msg["type"] != "http.request" or not msg.get("more_body", False):
                done = True
            return msg

        async def tracked_send(msg):
            nonlocal started
            started = True
            await send(msg)

        return await self.app(scope, timed_receive, tracked_send)


def create_app(cfg: ServiceConfig, specializer: Specializer | None = None):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    keyring = KeyRing(cfg.api_keys) if cfg.api_keys is not None else None  # checked before the (slow) generator load
    throttle = FailureThrottle(cfg.auth_failures_per_minute)
    spec = specializer or Specializer(cfg)
    metrics = spec.metrics
    body_limit = cfg.max_task_bytes * 6 + 4096  # a task of max_task_bytes, every byte JSON-escaped

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        spec.start()
        try:
            yield
        finally:
            await spec.stop()

    app = FastAPI(title="loragen-mobile specialization service", version="1", lifespan=lifespan)
    app.state.specializer = spec
    app.state.config = cfg
    app.add_middleware(BodyTimeout, timeout_s=cfg.body_timeout_s)

    def problem(status, code, message, headers=None):
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)

    @app.exception_handler(HTTPProblem)
    async def _problem(_, e: HTTPProblem):
        return problem(e.status, e.code, e.message, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_, e):
        return problem(e.status_code, "not_found" if e.status_code == 404 else "http_error",
                       str(e.detail)[:200], getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(_, e):
        return problem(422, "invalid_request", "the request does not match the API")

    @app.middleware("http")
    async def _measure(request: Request, call_next):
        t0 = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - logged here, never echoed
            log.exception("internal error")
            response = problem(500, "internal_error", "internal server error")
        route = getattr(request.scope.get("route"), "path", None) or "unmatched"
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - t0)
        return response

    def authenticate(request: Request) -> ApiKey | None:
        """401 without a valid key, 429 over its rate or after too many invalid keys from this address;
        None when the server runs without keys."""
        if keyring is None:
            return None
        keys = keyring.current()
        presented = request.headers.get(API_KEY_HEADER)
        if not presented:
            raise HTTPProblem(401, "missing_api_key", f"send your API key in the {API_KEY_HEADER} header",
                              {"WWW-Authenticate": API_KEY_HEADER})
        addr = request.client.host if request.client else ""
        wait = throttle.wait(addr)
        if wait:  # refused whatever the key: guessing gains nothing while throttled
            metrics.auth_throttled.inc()
            raise HTTPProblem(429, "auth_throttled", "too many invalid API keys from this address",
                              {"Retry-After": str(max(1, math.ceil(wait)))})
        k = keys.get(hash_api_key(presented))
        if k is None:
            throttle.failed(addr)
            raise HTTPProblem(401, "invalid_api_key", "unknown API key", {"WWW-Authenticate": API_KEY_HEADER})
        wait = k.take()
        if wait:
            raise HTTPProblem(429, "rate_limited", f"rate limit of {k.rate_per_minute:g} requests per minute exceeded",
                              {"Retry-After": str(max(1, math.ceil(wait)))})
        return k

    def allowed(k: ApiKey | None, name: str, fingerprint: str) -> bool:
        return k is None or k.allows(name, fingerprint)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "generator_id": spec.generator_id, "artifacts": len(spec.artifacts)}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prom():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/artifacts", responses=_errors(401, 429, 503))
    async def artifacts(request: Request):
        """The base artifacts this server specializes (only those the API key may use)."""
        k = authenticate(request)
        return {"artifacts": [{"name": a.name, "fingerprint": a.fingerprint, "backend": a.meta["backend"],
                               "model_id": a.meta.get("model_id"), "model_type": a.meta.get("model_type"),
                               "precision": a.meta.get("precision"), "max_context": a.meta.get("max_context")}
                              for a in spec.artifacts if allowed(k, a.name, a.fingerprint)],
                "generator_id": spec.generator_id, "kinds": list(KINDS)}

    @app.post("/v1/specializations", status_code=201, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": REQUEST_SCHEMA}}}},
        responses={201: _json(INFO_SCHEMA, "generated now"), 200: _json(INFO_SCHEMA, "already in the store"),
                   **_errors(400, 401, 404, 408, 413, 422, 429, 503, 507)})
    async def specializations(request: Request):
        """Generate (or find) the signed bundle that specializes an artifact for a task description."""
        k = authenticate(request)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > body_limit:
            raise HTTPProblem(413, "request_too_large", f"request body over {body_limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > body_limit:
                raise HTTPProblem(413, "request_too_large", f"request body over {body_limit} bytes")
        task, ref, kind = parse_request(bytes(body), cfg.max_task_bytes)
        art = spec.find_artifact(ref)
        if not allowed(k, art.name, art.fingerprint):  # the same answer as an artifact that does not exist
            raise spec.unknown_artifact(ref)
        info, created = await spec.specialize(task, art, kind)
        return JSONResponse(info, status_code=201 if created else 200)

    async def _bundle(bid: str, request: Request, head: bool):
        k = authenticate(request)
        if not valid_id(bid):
            raise HTTPProblem(400, "invalid_bundle_id", "a bundle id is 32 lowercase hex characters")
        info = await run_in_threadpool(spec.store.get, bid)  # hashes the file on its first read or after a change
        fingerprint = info.get("fingerprint", "") if info else ""
        served = next((a for a in spec.artifacts if a.fingerprint == fingerprint), None)  # its name may have changed
        if info is None or not allowed(k, served.name if served else info.get("artifact", ""), fingerprint):
            raise HTTPProblem(404, "unknown_bundle", "no such bundle")  # forbidden reads as missing
        etag = f'"{info["sha256"]}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=31536000, immutable"}
        if etag_matches(request.headers.get("If-None-Match"), etag):
            return Response(status_code=304, headers=headers)
        size, status, start, end = info["size"], 200, 0, info["size"] - 1
        rng = request.headers.get("Range")
        if rng and request.headers.get("If-Range", etag) == etag:
            span = parse_range(rng, size)
            if span is not None:
                start, end = span
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(end - start + 1)
        if head:
            return Response(status_code=status, headers=headers, media_type="application/octet-stream")
        f = spec.store.open(bid)
        if f is None:
            raise HTTPProblem(404, "unknown_bundle", "no such bundle")
        whole = start == 0 and end == size - 1

        def chunks():
            digest = hashlib.sha256()
            with f:
                f.seek(start)
                left = end - start + 1
                while left > 0:
                    data = f.read(min(CHUNK, left))
                    if not data:
                        break
                    left -= len(data)
                    if whole:
                        digest.update(data)
                        if left == 0 and digest.hexdigest() != info["sha256"]:
                            # changed after its check: never finish the body under this ETag
                            spec.store.quarantine(bid, "its content changed while it was served")
                            raise OSError(f"bundle {bid} failed its content check while it was served")
                    yield data

        return StreamingResponse(chunks(), status_code=status, headers=headers, media_type="application/octet-stream")

    download_responses = {
        200: {"description": "the bundle", "content": {"application/octet-stream": {}}},
        206: {"description": "the requested byte range", "content": {"application/octet-stream": {}}},
        304: {"description": "not modified (If-None-Match)"}, **_errors(400, 401, 404, 416, 429, 503)}

    @app.get("/v1/bundles/{bid}", response_class=Response, responses=download_responses)
    async def bundle(bid: str, request: Request):
        """The bundle bytes; ETag (the sha256), If-None-Match, and single byte ranges (Range, If-Range)."""
        return await _bundle(bid, request, head=False)

    @app.head("/v1/bundles/{bid}", response_class=Response, responses=download_responses)
    async def bundle_head(bid: str, request: Request):
        """The headers a GET of the same request would answer with, without the body."""
        return await _bundle(bid, request, head=True)

    return app


def uvicorn_config(app, host: str = "127.0.0.1", port: int = 8080, **kw):
    """uvicorn's Config for ``app`` with the service's header read timeout (its h11 protocol, extended)."""
    import uvicorn

    cfg = getattr(app.state, "config", None)
    header_timeout = cfg.header_timeout_s if cfg is not None else ServiceConfig.header_timeout_s
    protocol = type("H11Protocol", (_header_timeout_protocol(),), {"header_timeout_s": header_timeout})
    return uvicorn.Config(app, host=host, port=port, http=protocol, **kw)


@functools.cache
def _header_timeout_protocol():
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class _HeaderTimeout(H11Protocol):
        """uvicorn's h11 protocol plus a header read timeout: a connection that opens, or starts a
        request, and does not finish the request's headers within ``header_timeout_s`` is closed
        (uvicorn cancels its keep-alive timer on the first byte and has no header timeout of its own)."""

        header_timeout_s = 10.0
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._track_headers()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._track_headers()

        def connection_lost(self, exc):
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _track_headers(self) -> None:
            waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
            if waiting and self.conn.our_state is h11.IDLE and self._header_timer is None:
                self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)
            elif not waiting:
                self._cancel_header_timer()

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return _HeaderTimeout


@contextlib.contextmanager
def running(app, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 120.0):
    """Run ``app`` on a real uvicorn in a background thread; yields its base URL (port 0: a free port)."""
    import uvicorn

    server = uvicorn.Server(uvicorn_config(app, host, port, log_config=None, access_log=False, log_level="warning"))
    thread = threading.Thread(target=server.run, name="loragen-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise LoragenError(f"the server did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)


def serve(cfg: ServiceConfig, host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    host = cfg.host if host is None else host
    port = cfg.port if port is None else port
    if cfg.api_keys is None:
        log.warning("no --api-keys given: the service accepts every request (development mode)")
    uvicorn.Server(uvicorn_config(create_app(cfg), host, port, log_level="info")).run()
