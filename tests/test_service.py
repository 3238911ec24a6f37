"""The specialization service over real HTTP: uvicorn on 127.0.0.1 (a free port), httpx as the client.

One server per module with API keys on; the restart test starts and stops its own servers.
The artifact is an ONNX export of the generator's own edge model (the tiny-llama preset), so a
served bundle specializes exactly the model the generator was trained for.
"""

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loragen_mobile.bundle import build_bundle, open_runner_with_bundle, verify_bundle
from loragen_mobile.bundle.keys import generate_keypair, key_id, load_private_key, load_public_key
from loragen_mobile.cli import main
from loragen_mobile.exporters import get_exporter
from loragen_mobile.generator import generate_adapter, load_generator, task_sha256
from loragen_mobile.service import BundleStore, ServiceConfig, add_api_key, bundle_id, create_app, running

PROMPT = [1] + list(range(50, 70))
ART_NAME = "tl-onnx"
MAX_TASK = 512
HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def env(tmp_path_factory, preset_dirs, generator_run):
    d = tmp_path_factory.mktemp("service")
    art = d / ART_NAME
    get_exporter("onnx").export(preset_dirs["tiny-llama"], art, max_context=64, progress=False)
    generate_keypair(d / "server.pem", d / "server.pub")
    api = str(d / "api.json")
    keys = {"full": add_api_key(api, "full", ["*"], rate_per_minute=100000),
            "other": add_api_key(api, "other", ["some-other-artifact"], rate_per_minute=100000),
            "slow": add_api_key(api, "slow", [ART_NAME], rate_per_minute=3)}
    return {"dir": d, "art": art, "api": api, "keys": keys, "pub": load_public_key(d / "server.pub"),
            "key": load_private_key(d / "server.pem"), "gen": load_generator(generator_run), "run": generator_run}


def _config(env, store, **kw) -> ServiceConfig:
    return ServiceConfig(generator_dir=str(env["run"]), artifacts=[str(env["art"])], sign_key=str(env["dir"] / "server.pem"),
                         store=str(store), api_keys=env["api"], max_task_bytes=MAX_TASK, **kw)


@pytest.fixture(scope="module")
def server(env):
    # a wide batching window: requests sent together reliably share one generator forward
    app = create_app(_config(env, env["dir"] / "store", batch_window_s=0.3, header_timeout_s=HEADER_TIMEOUT,
                             body_timeout_s=BODY_TIMEOUT))
    with running(app) as url:
        with httpx.Client(base_url=url, headers={"X-API-Key": env["keys"]["full"]}, timeout=120) as client:
            yield {"url": url, "client": client, "spec": app.state.specializer}


def _metric(client, name: str, **labels) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
    text = client.get("/metrics").text
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _post(client, task, kind="merged", artifact=ART_NAME, **kw):
    return client.post("/v1/specializations", json={"task": task, "artifact": artifact, "kind": kind}, **kw)


def _error(r, status: int, code: str) -> dict:
    """An error answer: the status, a JSON body {"error": {"code", "message"}} and nothing of the server's insides."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    for leak in ("Traceback", 'File "', "site-packages", "loragen_mobile/"):
        assert leak not in r.text
    return body["error"]


def _outputs(raw: bytes, art, pub):
    runner = open_runner_with_bundle(raw, art, pub)
    logits = runner.prefill(PROMPT)
    return logits, runner.generate(PROMPT, 8)


def _local_bundle(env, task, kind):
    return build_bundle(env["art"], generate_adapter(env["gen"], task), kind, private_key=env["key"],
                        generator_id=env["gen"].generator_id, task=task)


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("kind", ["merged", "lora"])
def test_round_trip_equals_a_locally_built_bundle(env, server, kind):
    c = server["client"]
    task = f"Reverse the order of the words in the sentence ({kind})."
    r = _post(c, task, kind)
    assert r.status_code == 201, r.text
    info = r.json()
    bid = bundle_id(env["gen"].generator_id, info["manifest"]["base"]["fingerprint"], kind, task,
                    key_id(env["pub"]), "1")
    assert info["id"] == bid and info["url"] == f"/v1/bundles/{bid}"
    assert set(info) == {"id", "size", "sha256", "url", "manifest"}
    raw = c.get(info["url"]).content
    assert len(raw) == info["size"] and hashlib.sha256(raw).hexdigest() == info["sha256"]
    vb = verify_bundle(raw, env["art"], env["pub"])
    assert vb.kind == kind and vb.manifest == info["manifest"]
    assert vb.manifest["generator_id"] == env["gen"].generator_id
    assert vb.manifest["task_sha256"] == task_sha256(task)
    assert "task" not in vb.manifest  # the task text itself never travels in the bundle
    assert raw == _local_bundle(env, task, kind)  # byte for byte what `loragen bundle build` makes
    got_logits, got_tokens = _outputs(raw, env["art"], env["pub"])
    want_logits, want_tokens = _outputs(_local_bundle(env, task, kind), env["art"], env["pub"])
    assert (got_logits - want_logits).abs().max().item() <= 1e-4
    assert got_tokens == want_tokens
    # the bundle really specializes: the artifact's own outputs differ
    base = get_exporter("onnx").open_runner(env["art"]).prefill(PROMPT)
    assert (got_logits - base).abs().max().item() > 1e-3
    # asked again: 200 with the same answer, from the store
    hits = _metric(c, "loragen_cache_hits_total")
    again = _post(c, task, kind)
    assert again.status_code == 200 and again.json() == info
    assert _metric(c, "loragen_cache_hits_total") == hits + 1
    # by fingerprint instead of name: the same bundle
    assert _post(c, task, kind, artifact=info["manifest"]["base"]["fingerprint"]).json()["id"] == bid


def test_artifacts_health_openapi_and_metrics(env, server):
    c = server["client"]
    arts = c.get("/v1/artifacts").json()
    fingerprint = json.loads((env["art"] / "artifact.json").read_text())["fingerprint"]
    assert arts["generator_id"] == env["gen"].generator_id and arts["kinds"] == ["merged", "lora"]
    assert [(a["name"], a["fingerprint"], a["backend"]) for a in arts["artifacts"]] == [(ART_NAME, fingerprint, "onnx")]
    assert httpx.get(server["url"] + "/healthz").json() == {"status": "ok", "generator_id": env["gen"].generator_id,
                                                            "artifacts": 1}
    spec = httpx.get(server["url"] + "/openapi.json").json()
    assert {"/v1/specializations", "/v1/bundles/{bid}", "/v1/artifacts", "/healthz", "/metrics"} <= set(spec["paths"])
    body = spec["paths"]["/v1/specializations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["task", "artifact"] and body["properties"]["kind"]["enum"] == ["merged", "lora"]
    assert {"201", "200", "401", "404", "408", "413", "429", "507"} <= set(spec["paths"]["/v1/specializations"]["post"]["responses"])
    assert "403" not in spec["paths"]["/v1/specializations"]["post"]["responses"]
    assert set(spec["paths"]["/v1/bundles/{bid}"]) == {"get", "head"}
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    names = {s.name for fam in text_string_to_metric_families(r.text) for s in fam.samples}
    assert {"loragen_requests_total", "loragen_request_seconds_bucket", "loragen_cache_hits_total",
            "loragen_generation_seconds_sum", "loragen_generations_total", "loragen_batch_size_bucket"} <= names
    # requests are counted per route template (never per raw path), method and status
    before = _metric(c, "loragen_requests_total", route="/v1/artifacts", method="GET", status="200")
    c.get("/v1/artifacts")
    assert _metric(c, "loragen_requests_total", route="/v1/artifacts", method="GET", status="200") == before + 1
    c.get("/v1/bundles/" + "0" * 32)
    assert _metric(c, "loragen_requests_total", route="/v1/bundles/{bid}", method="GET", status="404") >= 1
    c.get("/no/such/path")
    assert _metric(c, "loragen_requests_total", route="unmatched", method="GET", status="404") >= 1
    assert _metric(c, "loragen_request_seconds_count", route="/v1/artifacts") >= 2


# --------------------------------------------------------------------------- concurrency


def _together(n: int, fn) -> list:
    """Run fn(i) for i in range(n) on n threads released at the same moment; results in order."""
    barrier, out = threading.Barrier(n), [None] * n

    def work(i):
        barrier.wait()
        out[i] = fn(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _post_from_own_client(server, key, task):
    with httpx.Client(base_url=server["url"], headers={"X-API-Key": key}, timeout=120) as c:
        return _post(c, task)


def test_identical_concurrent_requests_generate_once(env, server):
    c = server["client"]
    gens, built = _metric(c, "loragen_generations_total"), _metric(c, "loragen_bundles_built_total")
    waited = _metric(c, "loragen_coalesced_total") + _metric(c, "loragen_cache_hits_total")
    task = "Answer with the chemical symbol of the element named in the question."
    rs = _together(8, lambda i: _post_from_own_client(server, env["keys"]["full"], task))
    assert sorted(r.status_code for r in rs) == [200] * 7 + [201]
    assert len({json.dumps(r.json(), sort_keys=True) for r in rs}) == 1
    assert _metric(c, "loragen_generations_total") == gens + 1
    assert _metric(c, "loragen_bundles_built_total") == built + 1
    assert _metric(c, "loragen_coalesced_total") + _metric(c, "loragen_cache_hits_total") == waited + 7


def test_different_concurrent_requests_share_a_generator_forward(env, server):
    c = server["client"]
    gens, built = _metric(c, "loragen_generations_total"), _metric(c, "loragen_bundles_built_total")
    singles = _metric(c, "loragen_batch_size_bucket", le="1.0")
    batches = _metric(c, "loragen_batch_size_count")
    tasks = [f"Translate the number {i} into French words." for i in range(6)]
    rs = _together(6, lambda i: _post_from_own_client(server, env["keys"]["full"], tasks[i]))
    assert [r.status_code for r in rs] == [201] * 6
    assert len({r.json()["id"] for r in rs}) == 6
    assert _metric(c, "loragen_bundles_built_total") == built + 6
    # one forward per distinct task, in fewer generation rounds than requests
    assert _metric(c, "loragen_generations_total") - gens == 6
    rounds = _metric(c, "loragen_batch_size_count") - batches
    assert 1 <= rounds < 6
    assert rounds > _metric(c, "loragen_batch_size_bucket", le="1.0") - singles  # a round served several tasks
    # a bundle generated together with others is byte for byte the one generated alone
    for i in (0, 3):
        assert c.get(rs[i].json()["url"]).content == _local_bundle(env, tasks[i], "merged")


def test_a_failed_generation_is_a_500_without_details_and_is_not_remembered(env, server):
    spec, c = server["spec"], server["client"]
    real = spec._generate_batch

    def broken(items):
        raise RuntimeError(f"secret detail in {env['dir']}")

    spec._generate_batch = broken
    try:
        err = _error(_post(c, "Count the vowels in the word."), 500, "internal_error")
        assert err["message"] == "internal server error"
    finally:
        spec._generate_batch = real
    assert _post(c, "Count the vowels in the word.").status_code == 201


# --------------------------------------------------------------------------- restart


def test_restart_serves_from_the_store_without_generating(env, tmp_path):
    task = "Sort the list of numbers in increasing order."
    with running(create_app(_config(env, tmp_path / "store"))) as url:
        with httpx.Client(base_url=url, headers={"X-API-Key": env["keys"]["full"]}) as c:
            first = _post(c, task)
            assert first.status_code == 201
            raw = c.get(first.json()["url"]).content
    files = sorted(p.name for p in (tmp_path / "store").iterdir())
    assert files == [f"{first.json()['id']}.bundle", f"{first.json()['id']}.json"]  # no temporary leftovers
    with running(create_app(_config(env, tmp_path / "store"))) as url:
        with httpx.Client(base_url=url, headers={"X-API-Key": env["keys"]["full"]}) as c:
            again = _post(c, task)
            assert again.status_code == 200 and again.json() == first.json()
            assert c.get(again.json()["url"]).content == raw
            assert _metric(c, "loragen_generations_total") == 0
            assert _metric(c, "loragen_bundles_built_total") == 0
            assert _metric(c, "loragen_cache_hits_total") == 1


# --------------------------------------------------------------------------- security


def test_api_keys_401_403_429(env, server):
    url = server["url"]
    _error(httpx.post(url + "/v1/specializations", json={"task": "x", "artifact": ART_NAME}), 401, "missing_api_key")
    _error(httpx.get(url + "/v1/artifacts"), 401, "missing_api_key")
    _error(httpx.get(url + "/v1/artifacts", headers={"X-API-Key": "lgk_not-a-key"}), 401, "invalid_api_key")
    # a key limited to other artifacts cannot tell a forbidden artifact or bundle from a missing one
    other = {"X-API-Key": env["keys"]["other"]}

    def post_other(artifact):
        return httpx.post(url + "/v1/specializations", json={"task": "Spell the word backwards.", "artifact": artifact},
                          headers=other)

    forbidden = _error(post_other(ART_NAME), 404, "unknown_artifact")
    missing = _error(post_other("tl-onnz"), 404, "unknown_artifact")
    assert forbidden["message"].replace(ART_NAME, "?") == missing["message"].replace("tl-onnz", "?")
    assert httpx.get(url + "/v1/artifacts", headers=other).json()["artifacts"] == []
    made = _post(server["client"], "Spell the word backwards.").json()
    for bundle_url in (made["url"], "/v1/bundles/" + "e" * 32):
        r = httpx.get(url + bundle_url, headers=other)
        assert _error(r, 404, "unknown_bundle") == {"code": "unknown_bundle", "message": "no such bundle"}
        assert httpx.head(url + bundle_url, headers=other).status_code == 404
    # 3 requests per minute: three pass, the fourth is refused with a Retry-After
    slow = {"X-API-Key": env["keys"]["slow"]}
    assert [httpx.get(url + "/v1/artifacts", headers=slow).status_code for _ in range(3)] == [200] * 3
    r = httpx.get(url + "/v1/artifacts", headers=slow)
    _error(r, 429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= 20
    with httpx.Client(base_url=url, headers=slow) as c:
        _error(_post(c, "Spell the word backwards."), 429, "rate_limited")
    # keys are stored hashed: the file never holds a key
    text = (env["dir"] / "api.json").read_text()
    assert all(k not in text for k in env["keys"].values())
    assert hashlib.sha256(env["keys"]["full"].encode()).hexdigest() in text


def test_bad_task_text_and_bodies_are_4xx_json(server):
    c = server["client"]
    _error(_post(c, "x" * (MAX_TASK + 1)), 413, "task_too_large")
    _error(_post(c, "é" * (MAX_TASK // 2 + 1)), 413, "task_too_large")  # bytes, not characters
    assert _post(c, "y" * MAX_TASK).status_code == 201
    _error(c.post("/v1/specializations", content=b"{" + b" " * (MAX_TASK * 6 + 5000) + b"}"), 413, "request_too_large")
    _error(_post(c, "ring the bell \x07 twice"), 422, "control_characters")
    _error(_post(c, "nul\x00byte"), 422, "control_characters")
    _error(_post(c, "escape \x1b[31m red"), 422, "control_characters")
    _error(_post(c, "delete \x7f"), 422, "control_characters")
    assert _post(c, "line one\nline two\twith a tab").status_code == 201
    raw = b'{"task": "caf\xe9 \xff\xfe", "artifact": "' + ART_NAME.encode() + b'"}'
    _error(c.post("/v1/specializations", content=raw, headers={"content-type": "application/json"}), 400, "invalid_utf8")
    lone = b'{"task": "half a pair \\ud800 here", "artifact": "' + ART_NAME.encode() + b'"}'
    _error(c.post("/v1/specializations", content=lone), 400, "invalid_utf8")
    _error(c.post("/v1/specializations", content=b'{"task": '), 400, "invalid_json")
    # integers longer than Python's 4300-digit limit: a 400, not a ValueError
    for body in (b'{"task": ' + b"7" * 5000 + b', "artifact": "tl-onnx"}', b"9" * 4301, b"[-" + b"1" * 4400 + b"]"):
        _error(c.post("/v1/specializations", content=body), 400, "invalid_json")
    _error(c.post("/v1/specializations", content=b'["task"]'), 422, "invalid_request")
    _error(c.post("/v1/specializations", json={"artifact": ART_NAME}), 422, "invalid_task")
    _error(c.post("/v1/specializations", json={"task": "   ", "artifact": ART_NAME}), 422, "invalid_task")
    _error(c.post("/v1/specializations", json={"task": 5, "artifact": ART_NAME}), 422, "invalid_task")
    _error(c.post("/v1/specializations", json={"task": "t", "artifact": ART_NAME, "x": 1}), 422, "invalid_request")
    _error(_post(c, "t", kind="full"), 422, "invalid_kind")
    _error(c.post("/v1/specializations", json={"task": "t"}), 422, "invalid_artifact")
    _error(_post(c, "t", artifact="no-such-artifact"), 404, "unknown_artifact")
    _error(c.get("/v1/specializations"), 405, "http_error")


def test_bundle_ids_are_validated(server):
    c = server["client"]
    _error(c.get("/v1/bundles/" + "0" * 32), 404, "unknown_bundle")
    for bad in ("%2e%2e", "ABCDEF0123456789ABCDEF0123456789", "0" * 31, "0" * 33, "0" * 32 + "%0a",
                "..%5C..%5Cetc", "api.json"):
        _error(c.get("/v1/bundles/" + bad), 400, "invalid_bundle_id")
    for bad in ("..%2Fetc", "..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e%2fapi.json", "%2e%2e/%2e%2e/etc/passwd"):
        _error(c.get("/v1/bundles/" + bad), 404, "not_found")  # the path has a '/': no route matches
    # httpx removes literal dot segments itself; http.client sends the path as written
    host, port = server["url"].removeprefix("http://").split(":")
    for path, status, code in (("/v1/bundles/..", 400, "invalid_bundle_id"),
                               ("/v1/bundles/../../etc/passwd", 404, "not_found")):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", path, headers={"X-API-Key": c.headers["X-API-Key"]})
        r = conn.getresponse()
        assert (r.status, r.getheader("content-type")) == (status, "application/json")
        assert json.loads(r.read())["error"]["code"] == code
        conn.close()


# --------------------------------------------------------------------------- downloads


def test_download_etag_range_and_304(server):
    c = server["client"]
    info = _post(c, "Give the opposite of the adjective.").json()
    url, size = info["url"], info["size"]
    full = c.get(url)
    raw = full.content
    etag = f'"{info["sha256"]}"'
    assert full.status_code == 200 and len(raw) == size
    assert full.headers["etag"] == etag and full.headers["accept-ranges"] == "bytes"
    assert full.headers["content-type"] == "application/octet-stream"
    assert int(full.headers["content-length"]) == size
    for header, want in (("bytes=10-99", (10, 99)), ("bytes=-16", (size - 16, size - 1)),
                         ("bytes=1000-", (1000, size - 1)), (f"bytes=0-{size + 50}", (0, size - 1)),
                         (f"bytes={size - 1}-{size - 1}", (size - 1, size - 1))):
        r = c.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.content == raw[want[0]:want[1] + 1]
        assert r.headers["content-range"] == f"bytes {want[0]}-{want[1]}/{size}"
        assert r.headers["etag"] == etag
    # a resumed download: the pieces put together are the bundle
    pieces = [c.get(url, headers={"Range": f"bytes={i}-{i + 99999}", "If-Range": etag}).content
              for i in range(0, size, 100000)]
    assert b"".join(pieces) == raw
    # the unit is case-insensitive; several ranges or another unit: the whole bundle (Range ignored)
    r = c.get(url, headers={"Range": "BYTES=10-99"})
    assert r.status_code == 206 and r.content == raw[10:100] and r.headers["content-range"] == f"bytes 10-99/{size}"
    for header in ("bytes=0-1,5-9", "bytes=0-1, 5-9", "Bytes=-5,0-0", "items=0-10"):
        r = c.get(url, headers={"Range": header})
        assert (r.status_code, r.content) == (200, raw) and "content-range" not in r.headers, header
    # HEAD: the headers of the same GET, no body
    for extra in ({}, {"Range": "bytes=10-99"}, {"If-None-Match": etag}):
        g, h = c.get(url, headers=extra), c.head(url, headers=extra)
        assert h.status_code == g.status_code and h.content == b""
        for name in ("etag", "accept-ranges", "cache-control", "content-length", "content-range", "content-type"):
            assert h.headers.get(name) == g.headers.get(name), (extra, name)
    assert c.head("/v1/bundles/" + "e" * 32).status_code == 404
    for header, code in ((f"bytes={size}-", "range_not_satisfiable"), ("bytes=-0", "range_not_satisfiable"),
                         ("bytes=50-10", "bad_range"), ("bytes=abc", "bad_range"), ("bytes=-", "bad_range")):
        r = c.get(url, headers={"Range": header})
        _error(r, 416, code)
        assert r.headers["content-range"] == f"bytes */{size}"
    # If-Range with another validator: the whole bundle
    r = c.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert r.status_code == 200 and r.content == raw
    for inm in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        r = c.get(url, headers={"If-None-Match": inm})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
    r = c.get(url, headers={"If-None-Match": '"other"'})
    assert r.status_code == 200 and r.content == raw


# --------------------------------------------------------------------------- store and CLI (no server)


def test_store_is_atomic_content_addressed_and_lru_capped(tmp_path):
    ids = [bundle_id("g", "fp", "merged", f"task {i}", "k", "1") for i in range(4)]
    assert len(set(ids)) == 4 and all(len(i) == 32 for i in ids)
    assert bundle_id("g", "fp", "merged", "t", "k", "1") == bundle_id("g", "fp", "merged", "t", "k", "1")
    assert len({bundle_id("g", "fp", "merged", "t", "k", "1"), bundle_id("g2", "fp", "merged", "t", "k", "1"),
                bundle_id("g", "fp2", "merged", "t", "k", "1"), bundle_id("g", "fp", "lora", "t", "k", "1"),
                bundle_id("g", "fpm", "erged", "t", "k", "1"), bundle_id("g", "fp", "merged", "t", "k2", "1"),
                bundle_id("g", "fp", "merged", "t", "k", "2")}) == 7  # parts are length-prefixed
    root = tmp_path / "store"
    s = BundleStore(root, max_bytes=2500)

    def age(bid, seconds):  # file times are coarse: set the access order explicitly
        os.utime(root / f"{bid}.json", (time.time() - seconds, time.time() - seconds))

    for i, bid in enumerate(ids[:3]):
        info = s.put(bid, bytes([i]) * 1000, {"manifest": {"n": i}})
        assert info["size"] == 1000 and info["sha256"] == hashlib.sha256(bytes([i]) * 1000).hexdigest()
        age(bid, 300 - 100 * i)
    # 3000 bytes > 2500: the least recently used (ids[0]) went
    assert s.get(ids[0]) is None and s.get(ids[2])["manifest"] == {"n": 2}
    age(ids[1], 100)
    age(ids[2], 50)
    s.get(ids[1])  # a read makes it the most recent again
    s.put(ids[3], b"z" * 1000, {"manifest": {}})
    assert s.ids() == sorted([ids[1], ids[3]])
    # a bundle streamed by a writer is stored as the bytes would be; a writer that fails leaves nothing
    streamed = BundleStore(tmp_path / "streamed")
    info = streamed.put(ids[0], lambda f: [f.write(bytes([7]) * 500) for _ in range(2)],
                        lambda path: {"manifest": {"read_back": path.read_bytes()[:1].hex()}})
    assert info["size"] == 1000 and info["sha256"] == hashlib.sha256(bytes([7]) * 1000).hexdigest()
    assert info["manifest"] == {"read_back": "07"} and streamed.get(ids[0])["sha256"] == info["sha256"]

    def broken(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        streamed.put(ids[1], broken, {"manifest": {}})
    assert sorted(p.name for p in (tmp_path / "streamed").iterdir()) == [f"{ids[0]}.bundle", f"{ids[0]}.json"]
    # leftovers of an interrupted write are removed when the store opens; half entries read as absent
    (root / f".{ids[0]}.bundle.tmp-999999999-abc").write_bytes(b"partial")  # of a process that no longer runs
    (root / f"{ids[0]}.bundle").write_bytes(b"orphan")
    (root / f"{ids[3]}.bundle").write_bytes(b"short")  # wrong size for its record
    s2 = BundleStore(root)
    assert sorted(p.name for p in root.iterdir()) == sorted([f"{ids[1]}.bundle", f"{ids[1]}.json",
                                                             f"{ids[3]}.bundle", f"{ids[3]}.json"])
    assert s2.get(ids[3]) is None and s2.get(ids[1])["size"] == 1000
    with pytest.raises(ValueError):
        s2.get("../../etc/passwd")


def test_loragen_serve_command_serves_until_stopped(env, tmp_path):
    """`loragen serve` as its own process, on a port found free just before."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "loragen_mobile", "serve", "--generator", str(env["run"]), "--artifact",
           str(env["art"]), "--sign-key", str(env["dir"] / "server.pem"), "--store", str(tmp_path / "store"),
           "--api-keys", env["api"], "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, health = f"http://127.0.0.1:{port}", None
        for _ in range(1200):
            if proc.poll() is not None:
                break
            try:
                health = httpx.get(url + "/healthz", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health is not None and health.json()["generator_id"] == env["gen"].generator_id, proc.poll()
        r = httpx.post(url + "/v1/specializations", json={"task": "Name the colour of the sky.", "artifact": ART_NAME},
                       headers={"X-API-Key": env["keys"]["full"]}, timeout=120)
        assert r.status_code == 201 and (tmp_path / "store" / f"{r.json()['id']}.bundle").is_file()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
    # stopped by the signal (uvicorn re-raises the one it caught once it has shut down) after it began
    # its graceful shutdown, with no traceback and no half-written entry left in the store
    assert proc.returncode in (0, -signal.SIGTERM) and "Shutting down" in out, out
    assert "Traceback" not in out and "error" not in out.lower(), out
    assert not [p.name for p in (tmp_path / "store").iterdir() if ".tmp-" in p.name]


def test_serve_cli_errors_and_key_creation(tmp_path, capsys):
    assert main(["serve"]) == 2
    assert "missing --generator, --artifact, --sign-key, --store" in capsys.readouterr().err
    keys = tmp_path / "api.json"
    assert main(["serve", "--api-keys", str(keys), "--add-api-key", "phone", "--key-artifacts", "a,b",
                 "--key-rate", "30"]) == 0
    key = capsys.readouterr().out.strip()
    doc = json.loads(keys.read_text())
    assert doc == {"keys": [{"name": "phone", "sha256": hashlib.sha256(key.encode()).hexdigest(),
                             "artifacts": ["a", "b"], "rate_per_minute": 30.0}]}
    assert main(["serve", "--api-keys", str(keys), "--add-api-key", "phone"]) == 2
    assert "already has a key named 'phone'" in capsys.readouterr().err
    assert main(["serve", "--add-api-key", "x"]) == 2
    assert "--add-api-key needs --api-keys" in capsys.readouterr().err
    assert main(["serve", "--generator", "g", "--artifact", "a", "--sign-key", "k", "--store", str(tmp_path / "s"),
                 "--header-timeout-s", "0"]) == 2
    assert "--header-timeout-s, --body-timeout-s and --auth-failures-per-minute must be positive" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    (tmp_path / "bad.json").write_text('{"keys": [{"name": "k", "sha256": "nope"}]}')
    assert main(["serve", "--generator", "g", "--artifact", "a", "--sign-key", "k", "--store", str(tmp_path / "s"),
                 "--api-keys", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loragen: error: ") and len(err.strip().splitlines()) == 1
    assert "bad.json is not a valid API keys file: key 'k': sha256 must be 64 lowercase hex characters" in err


# --------------------------------------------------------------------------- hardening


def _client(url, env, key="full"):
    return httpx.Client(base_url=url, headers={"X-API-Key": env["keys"][key]}, timeout=120)


def test_a_new_signing_key_gives_new_bundle_ids(env, tmp_path):
    generate_keypair(tmp_path / "new.pem", tmp_path / "new.pub")
    task = "Name the capital of the country."
    with running(create_app(_config(env, tmp_path / "store"))) as url, _client(url, env) as c:
        old = _post(c, task).json()
    cfg = _config(env, tmp_path / "store")
    cfg.sign_key = str(tmp_path / "new.pem")
    with running(create_app(cfg)) as url, _client(url, env) as c:
        r = _post(c, task)
        assert r.status_code == 201, r.text  # generated again, never the old key's bundle
        new = r.json()
        assert new["id"] != old["id"] and new["sha256"] != old["sha256"]
        raw = c.get(new["url"]).content
        new_pub = load_public_key(tmp_path / "new.pub")
        assert verify_bundle(raw, env["art"], new_pub).manifest["key_id"] == key_id(new_pub)
        assert new["id"] == bundle_id(env["gen"].generator_id, new["manifest"]["base"]["fingerprint"], "merged", task,
                                      key_id(new_pub), "1")


def test_same_inputs_give_the_same_bytes_after_eviction_and_across_servers(env, tmp_path):
    store = tmp_path / "store"
    tasks = ["Add the two numbers.", "Multiply the two numbers.", "Subtract the second number from the first."]
    with running(create_app(_config(env, store))) as url, _client(url, env) as c:
        size = _post(c, tasks[0]).json()["size"]
    # a store capped at one bundle: each new bundle evicts the previous one
    cap = _config(env, store, store_max_bytes=size + size // 2)
    with running(create_app(cap)) as url_a, running(create_app(_config(env, store))) as url_b:
        with _client(url_a, env) as a, _client(url_b, env) as b:
            first = a.get(f"/v1/bundles/{_post(a, tasks[0]).json()['id']}")
            assert _post(a, tasks[1]).status_code == 201
            bid = first.url.path.rsplit("/", 1)[1]
            assert not (store / f"{bid}.bundle").exists()  # evicted
            again = _post(a, tasks[0])
            assert again.status_code == 201 and again.json()["id"] == bid
            second = a.get(again.json()["url"])
            assert second.content == first.content and second.headers["etag"] == first.headers["etag"]
            # two servers on one store: whichever generates, the bytes are the same
            for p in store.glob("*"):
                p.unlink()
            from_b = _post(b, tasks[2])
            assert from_b.status_code == 201
            raw_b = b.get(from_b.json()["url"]).content
            for p in store.glob("*"):
                p.unlink()
            from_a = _post(a, tasks[2])
            assert from_a.status_code == 201 and from_a.json() == from_b.json()
            assert a.get(from_a.json()["url"]).content == raw_b
            # both at once: one id, one content
            rs = _together(2, lambda i: _post((a, b)[i], tasks[1]))
            assert rs[0].json() == rs[1].json()
            assert a.get(rs[0].json()["url"]).content == b.get(rs[1].json()["url"]).content


def test_a_corrupted_bundle_is_quarantined_and_regenerated(env, server, tmp_path):
    c, spec = server["client"], server["spec"]
    info = _post(c, "Return the last letter of the word.").json()
    raw = c.get(info["url"]).content
    path = spec.store.root / f"{info['id']}.bundle"
    before = _metric(c, "loragen_store_quarantined_total")
    with open(path, "r+b") as f:  # same size, one byte changed
        f.seek(len(raw) // 2)
        f.write(bytes([raw[len(raw) // 2] ^ 0xFF]))
    for method in ("HEAD", "GET"):
        assert c.request(method, info["url"]).status_code == 404
    assert _metric(c, "loragen_store_quarantined_total") == before + 1
    assert len(list((spec.store.root / "quarantine").glob(f"{info['id']}-*.bundle"))) == 1
    again = _post(c, "Return the last letter of the word.")
    assert again.status_code == 201 and again.json() == info
    r = c.get(info["url"])
    assert r.content == raw and r.headers["etag"] == f'"{info["sha256"]}"'
    # a store opened anew checks each bundle before it first serves it
    copy = BundleStore(tmp_path / "copy")
    copy.put(info["id"], raw, {"manifest": info["manifest"]})
    data = tmp_path / "copy" / f"{info['id']}.bundle"
    stat = data.stat()
    data.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert BundleStore(tmp_path / "copy").get(info["id"]) is None
    assert list((tmp_path / "copy" / "quarantine").iterdir())
    # a change the stat check cannot see: the full download's running hash stops the body short
    path = spec.store.root / f"{info['id']}.bundle"
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(bytes([raw[100] ^ 0xFF]))
    st = path.stat()
    spec.store._verified[info["id"]] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with pytest.raises(httpx.TransportError):
        c.get(info["url"])
    assert not path.exists() and c.get(info["url"]).status_code == 404
    assert _post(c, "Return the last letter of the word.").status_code == 201


def _wait_closed(sock, limit: float, drip: bytes = b"") -> tuple[float, bytes]:
    """Send ``drip`` one byte every 0.25 s until the server closes; (seconds until closed, bytes received)."""
    t0, got = time.monotonic(), b""
    sock.settimeout(0.25)
    i = 0
    while time.monotonic() - t0 < limit + 5:
        try:
            data = sock.recv(65536)
            if not data:
                return time.monotonic() - t0, got
            got += data
        except socket.timeout:
            pass
        except ConnectionError:
            return time.monotonic() - t0, got
        if drip:
            try:
                sock.sendall(drip[i % len(drip):i % len(drip) + 1])
            except OSError:
                return time.monotonic() - t0, got
            i += 1
    raise AssertionError(f"the server kept the connection open over {limit + 5} s")


def test_slow_headers_and_bodies_are_cut_off(env, server):
    host, port = server["url"].removeprefix("http://").split(":")
    # a connection that never sends, and one that sends its headers a byte at a time
    for first, drip in ((b"", b""), (b"GET /healthz HTTP/1.1\r\n", b"X-Slow: aaaaaaaaaaaaaaaaaaaaaa\r\n")):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(first)
            took, got = _wait_closed(sock, HEADER_TIMEOUT, drip)
            assert HEADER_TIMEOUT - 0.5 <= took <= HEADER_TIMEOUT + 1.5 and got == b""
    # a body a byte at a time: 408 with a JSON error, then the connection is closed
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST /v1/specializations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"X-API-Key: {env['keys']['full']}\r\nContent-Length: 400\r\n\r\n".encode())
        took, got = _wait_closed(sock, BODY_TIMEOUT, b'{"task": "' + b"a" * 380)
        assert BODY_TIMEOUT - 0.5 <= took <= BODY_TIMEOUT + 1.5
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower()
        assert json.loads(body)["error"]["code"] == "request_timeout"
    # a normal request on a kept-alive connection is unaffected
    assert server["client"].get("/healthz").status_code == 200


def test_the_api_keys_file_is_reloaded_when_it_changes(env, server):
    url, api = server["url"], env["dir"] / "api.json"
    saved = api.read_text()
    try:
        new = add_api_key(str(api), "added-later", ["*"], rate_per_minute=1000)
        assert httpx.get(url + "/v1/artifacts", headers={"X-API-Key": new}).status_code == 200
        doc = json.loads(api.read_text())
        doc["keys"] = [k for k in doc["keys"] if k["name"] != "added-later"]
        api.write_text(json.dumps(doc))  # edited in place: removed at once
        _error(httpx.get(url + "/v1/artifacts", headers={"X-API-Key": new}), 401, "invalid_api_key")
        assert server["client"].get("/v1/artifacts").status_code == 200
        api.write_text('{"keys": [')  # broken: every request is refused until it is fixed
        r = server["client"].get("/v1/artifacts")
        _error(r, 503, "api_keys_unavailable")
        assert r.headers["retry-after"] == "10"
    finally:
        api.write_text(saved)
    assert server["client"].get("/v1/artifacts").status_code == 200


def test_invalid_keys_are_throttled_per_address(env, server):
    url = server["url"]
    spoofed = {"X-Forwarded-For": "198.51.100.7"}  # a trusted proxy (127.0.0.1) names the client
    for _ in range(10):
        _error(httpx.get(url + "/v1/artifacts", headers={**spoofed, "X-API-Key": "lgk_guess"}), 401, "invalid_api_key")
    for key in ("lgk_guess", env["keys"]["full"]):  # throttled whatever the key
        r = httpx.get(url + "/v1/artifacts", headers={**spoofed, "X-API-Key": key})
        _error(r, 429, "auth_throttled")
        assert 1 <= int(r.headers["retry-after"]) <= 6
    assert _metric(server["client"], "loragen_auth_throttled_total") >= 2
    # other addresses are not affected
    other = {"X-Forwarded-For": "198.51.100.8", "X-API-Key": env["keys"]["full"]}
    assert httpx.get(url + "/v1/artifacts", headers=other).status_code == 200
    assert server["client"].get("/v1/artifacts").status_code == 200


def test_a_full_disk_is_a_507_and_leaves_no_partial_file(env, server):
    import errno

    c, store = server["client"], server["spec"].store
    task = "Write the number in Roman numerals."

    def full_disk(path, raw):
        with open(path, "wb") as f:
            f.write(raw[: len(raw) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    files = sorted(p.name for p in store.root.iterdir())
    store._write = full_disk
    try:
        r = _post(c, task)
    finally:
        del store._write
    _error(r, 507, "insufficient_storage")
    assert r.headers["retry-after"] == "60"
    assert sorted(p.name for p in store.root.iterdir()) == files  # nothing half-written, no temporaries
    r = _post(c, task)
    assert r.status_code == 201 and len(c.get(r.json()["url"]).content) == r.json()["size"]
