"""`loragen serve`: task description in, signed bundle out (the paper's online LoRA generation).

One :class:`Specializer` per process owns the generator, the base artifacts, the signing key and
the store; :func:`create_app` wraps it in a FastAPI application. No module-level state.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LoragenError
from .store import ID_RE, BundleStore, bundle_id

log = logging.getLogger("loragen.serve")

KINDS = ("merged", "lora")
API_KEY_HEADER = "X-API-Key"


@dataclass
class ServiceConfig:
    generator_dir: str
    artifacts: list[str]
    sign_key: str
    store: str
    api_keys: str | None = None
    max_task_bytes: int = 32 * 1024
    store_max_bytes: int | None = None
    batch_window_s: float = 0.01
    max_batch: int = 16


class HTTPProblem(Exception):
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

    def allows(self, artifact_name: str, fingerprint: str) -> bool:
        return "*" in self.artifacts or artifact_name in self.artifacts or fingerprint in self.artifacts

    def take(self) -> bool:
        """Token bucket: rate_per_minute tokens per minute, bursts up to one minute's worth."""
        now = time.monotonic()
        self.tokens = min(self.rate_per_minute, self.tokens + (now - self.stamp) * self.rate_per_minute / 60.0)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def load_api_keys(path: str | None) -> dict[str, ApiKey] | None:
    """File format: {"keys": [{"name", "sha256" (of the key), "artifacts": ["*" | name | fingerprint], "rate_per_minute"}]}."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise LoragenError(f"API keys file {p} does not exist")
    try:
        doc = json.loads(p.read_text())
        keys = {}
        for k in doc["keys"]:
            if not re.fullmatch(r"[0-9a-f]{64}", k["sha256"]):
                raise ValueError(f"key {k.get('name')!r}: sha256 must be 64 hex characters")
            rate = float(k.get("rate_per_minute", 60))
            keys[k["sha256"]] = ApiKey(str(k["name"]), k["sha256"], list(k.get("artifacts", ["*"])), rate, tokens=rate)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise LoragenError(f"{p} is not a valid API keys file: {e}") from None
    return keys


# ------------------------------------------------------------------------------------ core

@dataclass
class _Artifact:
    name: str
    path: Path
    meta: dict
    base: dict


def check_task(task, max_bytes: int) -> str:
    if not isinstance(task, str) or not task.strip():
        raise HTTPProblem(422, "invalid_task", "'task' must be a non-empty string")
    size = len(task.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise HTTPProblem(413, "task_too_large", f"'task' is {size} bytes; the limit is {max_bytes}")
    try:
        task.encode("utf-8")
    except UnicodeEncodeError:
        raise HTTPProblem(400, "invalid_utf8", "'task' is not valid UTF-8") from None
    bad = [c for c in task if unicodedata.category(c) == "Cc" and c not in "\n\t\r"]
    if bad:
        raise HTTPProblem(422, "control_characters", f"'task' contains control character U+{ord(bad[0]):04X}")
    return task


class Specializer:
    """Owns generator, artifacts, key and store; coalesces identical and batches different requests."""

    def __init__(self, cfg: ServiceConfig, metrics=None):
        from ..bundle import read_base_tensors
        from ..bundle.keys import load_private_key
        from ..exporters import read_artifact
        from ..generator import load_generator

        self.cfg = cfg
        self.metrics = metrics
        self.key = load_private_key(cfg.sign_key)
        self.generator = load_generator(cfg.generator_dir)
        self.generator_id = self._generator_id()
        self.artifacts: list[_Artifact] = []
        for a in cfg.artifacts:
            art = read_artifact(a)
            self.artifacts.append(_Artifact(Path(a).resolve().name, art.path, art.meta, read_base_tensors(a)))
        self.store = BundleStore(cfg.store, cfg.store_max_bytes)
        self.generations = 0  # generator forward passes (a batch counts once)
        self.generated_tasks = 0
        self._inflight: dict[str, asyncio.Future] = {}
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    def _generator_id(self) -> str:
        gid = getattr(self.generator, "generator_id", None) or getattr(self.generator, "id", None)
        if not gid:
            raise LoragenError(f"generator in {self.cfg.generator_dir} has no id")
        return str(gid)

    def find_artifact(self, ref: str) -> _Artifact:
        for a in self.artifacts:
            if ref in (a.name, a.meta["fingerprint"]):
                return a
        raise HTTPProblem(404, "unknown_artifact", f"no artifact named or fingerprinted {ref[:80]!r} is served here")

    def _public(self, info: dict) -> dict:
        return {"id": info["id"], "size": info["size"], "sha256": info["sha256"],
                "url": f"/v1/bundles/{info['id']}", "manifest": info["manifest"]}

    async def specialize(self, task: str, art: _Artifact, kind: str) -> tuple[dict, bool]:
        bid = bundle_id(self.generator_id, art.meta["fingerprint"], kind, task)
        info = self.store.get(bid)
        if info is not None:
            if self.metrics:
                self.metrics.cache_hits.inc()
            return self._public(info), False
        fut = self._inflight.get(bid)
        if fut is not None:  # an identical request is being generated: wait for it
            if self.metrics:
                self.metrics.coalesced.inc()
            return self._public(await asyncio.shield(fut)), False
        fut = asyncio.get_running_loop().create_future()
        self._inflight[bid] = fut
        try:
            info = await self._enqueue(bid, task, art, kind)
            fut.set_result(info)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved
            raise
        finally:
            self._inflight.pop(bid, None)
        return self._public(info), True

    async def _enqueue(self, bid, task, art, kind) -> dict:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._batch_loop())
        done = asyncio.get_running_loop().create_future()
        await self._queue.put((bid, task, art, kind, done))
        return await done

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.cfg.batch_window_s
            while len(batch) < self.cfg.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            try:
                results = await loop.run_in_executor(None, self._generate_batch, [b[:4] for b in batch])
                for b, r in zip(batch, results):
                    b[4].set_result(r)
            except Exception as e:  # noqa: BLE001 - handed to every waiter, logged once
                log.exception("generation failed")
                for b in batch:
                    if not b[4].done():
                        b[4].set_exception(e)

    def _generate_batch(self, items) -> list[dict]:
        """One generator forward for all distinct tasks of the batch, then one bundle per item."""
        from .. import generator as gen_mod
        from ..bundle.core import build

        t0 = time.perf_counter()
        tasks = sorted({it[1] for it in items})
        if hasattr(gen_mod, "generate_adapters"):
            adapters = dict(zip(tasks, gen_mod.generate_adapters(self.generator, tasks)))
        else:
            adapters = {t: gen_mod.generate_adapter(self.generator, t) for t in tasks}
        self.generations += 1
        self.generated_tasks += len(tasks)
        if self.metrics:
            self.metrics.generation_seconds.observe(time.perf_counter() - t0)
            self.metrics.generations.inc()
        out = []
        for bid, task, art, kind in items:
            raw = build(art.meta, adapters[task], kind, base=art.base, private_key=self.key,
                        generator_id=self.generator_id, task=task)
            from ..bundle.format import parse

            manifest = parse(raw).manifest
            out.append(self.store.put(bid, raw, {"manifest": manifest, "artifact": art.name}))
        return out


# ------------------------------------------------------------------------------------ metrics

class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("loragen_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram("loragen_request_seconds", "HTTP request latency", ["route"], registry=self.registry,
                                 buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.cache_hits = Counter("loragen_cache_hits", "bundles served from the store", registry=self.registry)
        self.coalesced = Counter("loragen_coalesced", "requests that waited for an identical generation",
                                 registry=self.registry)
        self.generations = Counter("loragen_generations", "generator forward passes", registry=self.registry)
        self.generation_seconds = Histogram("loragen_generation_seconds", "generation + bundle build time",
                                            registry=self.registry)


# ------------------------------------------------------------------------------------ HTTP

def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        raise HTTPProblem(416, "bad_range", "Range must be 'bytes=START-[END]' or 'bytes=-SUFFIX'",
                          {"Content-Range": f"bytes */{size}"})
    if m.group(1):
        start = int(m.group(1))
        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    else:
        n = int(m.group(2))
        start, end = max(0, size - n), size - 1
    if start >= size or start > end:
        raise HTTPProblem(416, "range_not_satisfiable", f"range starts past the {size}-byte bundle",
                          {"Content-Range": f"bytes */{size}"})
    return start, end


def create_app(cfg: ServiceConfig, specializer: Specializer | None = None):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    metrics = Metrics()
    spec = specializer or Specializer(cfg, metrics)
    spec.metrics = metrics
    keys = load_api_keys(cfg.api_keys)
    app = FastAPI(title="loragen-mobile specialization service", version="1")
    app.state.specializer = spec

    def problem(status, code, message, headers=None):
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)

    @app.exception_handler(HTTPProblem)
    async def _problem(_, e: HTTPProblem):
        return problem(e.status, e.code, e.message, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_, e):
        return problem(e.status_code, "http_error", str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(_, e):
        return problem(422, "invalid_request", "the request does not match the API")

    @app.exception_handler(Exception)
    async def _internal(_, e):
        log.exception("internal error")
        return problem(500, "internal_error", "internal server error")

    @app.middleware("http")
    async def _measure(request: Request, call_next):
        t0 = time.perf_counter()
        route = request.url.path
        route = "/v1/bundles/{id}" if route.startswith("/v1/bundles/") else route
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - never echo a stack trace
            log.exception("internal error")
            response = problem(500, "internal_error", "internal server error")
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - t0)
        return response

    def authorize(request: Request, art: _Artifact | None = None) -> None:
        if keys is None:
            return
        presented = request.headers.get(API_KEY_HEADER)
        if not presented:
            raise HTTPProblem(401, "missing_api_key", f"send your API key in the {API_KEY_HEADER} header")
        k = keys.get(hash_api_key(presented))
        if k is None:
            raise HTTPProblem(401, "invalid_api_key", "unknown API key")
        if art is not None and not k.allows(art.name, art.meta["fingerprint"]):
            raise HTTPProblem(403, "forbidden_artifact", f"this API key may not use artifact {art.name}")
        if not k.take():
            raise HTTPProblem(429, "rate_limited", f"rate limit of {k.rate_per_minute:g} requests per minute exceeded",
                              {"Retry-After": "60"})

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "generator_id": spec.generator_id, "artifacts": len(spec.artifacts)}

    @app.get("/metrics")
    async def prom():
        from prometheus_client import generate_latest

        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/artifacts")
    async def artifacts(request: Request):
        authorize(request)
        return {"artifacts": [{"name": a.name, "fingerprint": a.meta["fingerprint"], "backend": a.meta["backend"],
                               "model_id": a.meta.get("model_id"), "precision": a.meta.get("precision")}
                              for a in spec.artifacts]}

    @app.post("/v1/specializations", status_code=201)
    async def specializations(request: Request):
        body = await request.body()
        if len(body) > cfg.max_task_bytes * 6 + 4096:
            raise HTTPProblem(413, "request_too_large", "request body too large")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPProblem(400, "invalid_utf8", "request body is not valid UTF-8") from None
        try:
            req = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise HTTPProblem(400, "invalid_json", "request body is not valid JSON") from None
        if not isinstance(req, dict):
            raise HTTPProblem(422, "invalid_request", "request body must be a JSON object")
        unknown = set(req) - {"task", "artifact", "kind"}
        if unknown:
            raise HTTPProblem(422, "invalid_request", f"unknown field {sorted(unknown)[0]!r}")
        kind = req.get("kind", "merged")
        if kind not in KINDS:
            raise HTTPProblem(422, "invalid_kind", "'kind' must be 'merged' or 'lora'")
        if not isinstance(req.get("artifact"), str):
            raise HTTPProblem(422, "invalid_artifact", "'artifact' must be an artifact name or fingerprint")
        task = check_task(req.get("task"), cfg.max_task_bytes)
        art = spec.find_artifact(req["artifact"])
        authorize(request, art)
        info, created = await spec.specialize(task, art, kind)
        return JSONResponse(info, status_code=201 if created else 200)

    @app.get("/v1/bundles/{bid}")
    async def bundle(bid: str, request: Request):
        authorize(request)
        if not ID_RE.match(bid):
            raise HTTPProblem(400, "invalid_bundle_id", "bundle ids are 32 lowercase hex characters")
        info = spec.store.get(bid)
        if info is None:
            raise HTTPProblem(404, "unknown_bundle", "no such bundle")
        etag = f'"{info["sha256"]}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=31536000, immutable"}
        if request.headers.get("If-None-Match") == etag:
            return Response(status_code=304, headers=headers)
        data = spec.store.path(bid).read_bytes()
        rng = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if rng and (if_range is None or if_range == etag):
            start, end = _parse_range(rng, len(data))
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return Response(data[start:end + 1], status_code=206, headers=headers,
                            media_type="application/octet-stream")
        return Response(data, headers=headers, media_type="application/octet-stream")

    return app


def serve(cfg: ServiceConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    import uvicorn

    if cfg.api_keys is None:
        log.warning("no --api-keys given: the service accepts every request (development mode)")
    app = create_app(cfg)
    uvicorn.run(app, host=host, port=port, log_level="info")


def add_api_key(path: str, name: str, artifacts: list[str] | None = None, rate_per_minute: float = 60) -> str:
    """Create a random API key, store only its sha256 in ``path`` (created if missing); return the key."""
    import secrets

    from ..fsutil import atomic_file

    p = Path(path)
    doc = {"keys": []}
    if p.exists():
        try:
            doc = json.loads(p.read_text())
            assert isinstance(doc.get("keys"), list)
        except (json.JSONDecodeError, AssertionError, AttributeError):
            raise LoragenError(f"{p} is not a valid API keys file") from None
    if any(k.get("name") == name for k in doc["keys"]):
        raise LoragenError(f"{p} already has a key named {name!r}")
    key = "lgk_" + secrets.token_urlsafe(24)
    doc["keys"].append({"name": name, "sha256": hash_api_key(key), "artifacts": artifacts or ["*"],
                        "rate_per_minute": rate_per_minute})
    with atomic_file(p, overwrite=True) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    return key
