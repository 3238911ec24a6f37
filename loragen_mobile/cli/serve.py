"""loragen serve: the HTTP service that turns a task description into a signed bundle."""

from . import add_verb

EXAMPLES = """
  loragen serve --generator runs/gen --artifact art/tl-et --artifact art/tl-onnx \\
      --sign-key keys/server.pem --store bundles/ --port 8080 --api-keys keys/api.json
  loragen serve --api-keys keys/api.json --add-api-key phone-app --key-artifacts tl-et   # prints the key once
"""


def register(sub):
    p = add_verb(sub, "serve", "serve specializations over HTTP (FastAPI; OpenAPI at /openapi.json)", EXAMPLES)
    p.add_argument("--generator", help="trained generator run directory")
    p.add_argument("--artifact", action="append", default=[], help="base artifact directory (repeatable)")
    p.add_argument("--sign-key", help="Ed25519 private key (PEM) that signs every bundle")
    p.add_argument("--store", help="bundle store directory (created if missing; survives restarts)")
    p.add_argument("--store-max-mb", type=float, help="evict least recently used bundles above this size")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-keys", help="API keys file (hashed keys); without it every request is accepted")
    p.add_argument("--max-task-bytes", type=int, default=32 * 1024, help="largest task description accepted")
    p.add_argument("--batch-window-ms", type=float, default=10,
                   help="how long the first new request waits for others to share its generator forward")
    p.add_argument("--max-batch", type=int, default=16, help="most task descriptions per generator forward")
    p.add_argument("--header-timeout-s", type=float, default=10,
                   help="close a connection whose request headers are not complete within this many seconds")
    p.add_argument("--body-timeout-s", type=float, default=30,
                   help="answer 408 when a request body is not complete this many seconds after its headers")
    p.add_argument("--auth-failures-per-minute", type=float, default=10,
                   help="invalid API keys accepted per client address before 429 (burst: one minute's worth)")
    p.add_argument("--add-api-key", metavar="NAME", help="create a key in --api-keys, print it once, and exit")
    p.add_argument("--key-artifacts", default="*", help="with --add-api-key: comma-separated artifact names or fingerprints")
    p.add_argument("--key-rate", type=float, default=60, help="with --add-api-key: requests per minute")
    p.set_defaults(func=run)


def run(args):
    from ..errors import LoragenError
    from ..service import ServiceConfig, add_api_key, serve

    if args.add_api_key:
        if not args.api_keys:
            raise LoragenError("--add-api-key needs --api-keys FILE")
        print(add_api_key(args.api_keys, args.add_api_key, args.key_artifacts.split(","), args.key_rate))
        return
    missing = [f"--{n.replace('_', '-')}" for n in ("generator", "artifact", "sign_key", "store") if not getattr(args, n)]
    if missing:
        raise LoragenError(f"missing {', '.join(missing)}")
    if args.max_task_bytes < 1 or args.max_batch < 1 or args.batch_window_ms < 0:
        raise LoragenError("--max-task-bytes and --max-batch must be positive, --batch-window-ms not negative")
    if not (args.header_timeout_s > 0 and args.body_timeout_s > 0 and args.auth_failures_per_minute > 0):
        raise LoragenError("--header-timeout-s, --body-timeout-s and --auth-failures-per-minute must be positive",
                           code="usage")
    cfg = ServiceConfig(generator_dir=args.generator, artifacts=args.artifact, sign_key=args.sign_key, store=args.store,
                        api_keys=args.api_keys, max_task_bytes=args.max_task_bytes,
                        store_max_bytes=int(args.store_max_mb * 2 ** 20) if args.store_max_mb else None,
                        batch_window_s=args.batch_window_ms / 1000, max_batch=args.max_batch,
                        header_timeout_s=args.header_timeout_s, body_timeout_s=args.body_timeout_s,
                        auth_failures_per_minute=args.auth_failures_per_minute)
    serve(cfg, args.host, args.port)
