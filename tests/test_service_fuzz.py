"""Schema-driven fuzzing of the specialization service: schemathesis generates requests from the
service's own OpenAPI document (valid ones and ones that break the schema) and sends them to a
real uvicorn on 127.0.0.1. No answer may be a 5xx; every error answer is the JSON error body with
a stable code and nothing of the server's insides.
"""

import collections
import json
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from loragen_mobile.bundle.keys import generate_keypair
from loragen_mobile.service import ServiceConfig, add_api_key, create_app, running

EXAMPLES = 300  # about 30 s on 2 CPU cores


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, artifacts, generator_run):
    d = tmp_path_factory.mktemp("service-fuzz")
    generate_keypair(d / "server.pem", d / "server.pub")
    key = add_api_key(str(d / "api.json"), "fuzz", ["*"], rate_per_minute=10 ** 6)
    cfg = ServiceConfig(generator_dir=str(generator_run), artifacts=[str(artifacts("onnx", "tiny-llama"))],
                        sign_key=str(d / "server.pem"), store=str(d / "store"), api_keys=str(d / "api.json"),
                        max_task_bytes=256, batch_window_s=0.0)
    with running(create_app(cfg)) as url:
        yield url, key


def _check_error(r, method: str) -> None:
    assert r.status_code < 500, f"{method} {r.request.url}: {r.status_code} {r.text[:300]}"
    if r.status_code < 400 or method == "HEAD":  # a HEAD answer has no body
        return
    assert r.headers.get("content-type") == ["application/json"], (r.status_code, r.text[:200])
    body = json.loads(r.text)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["code"], str) and re.fullmatch(r"[a-z][a-z0-9_]*", body["error"]["code"]), body
    assert "\n" not in body["error"]["message"]
    for leak in ("Traceback", 'File "', "site-packages", "loragen_mobile/"):
        assert leak not in r.text


def test_schema_driven_fuzz_gives_no_5xx_and_only_json_errors(fuzz_server):
    url, key = fuzz_server
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    operations = {f"{op.method.upper()} {op.path}" for op in (r.ok() for r in schema.get_all_operations())}
    assert {"POST /v1/specializations", "GET /v1/bundles/{bid}", "HEAD /v1/bundles/{bid}",
            "GET /v1/artifacts"} <= operations
    strategy = schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(GenerationMode.NEGATIVE)
    statuses: collections.Counter = collections.Counter()
    codes: collections.Counter = collections.Counter()

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def fuzz(case):
        r = case.call(base_url=url, headers={"X-API-Key": key}, timeout=60)
        statuses[(case.method.upper(), case.path, r.status_code)] += 1
        codes[json.loads(r.text)["error"]["code"] if r.status_code >= 400 and r.text else None] += 1
        _check_error(r, case.method.upper())

    fuzz()
    assert sum(statuses.values()) >= EXAMPLES // 2
    seen = {s for (_, _, s) in statuses}
    assert not any(s >= 500 for s in seen)
    # the fuzzer reached past the request parsing: invalid bodies and unknown artifacts or bundles
    assert {400, 404, 422} <= seen, statuses
    assert {"invalid_json", "invalid_request", "invalid_bundle_id", "unknown_artifact"} <= set(codes), codes
