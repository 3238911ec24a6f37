"""loragen serve: the HTTP service that turns a task description into a signed bundle."""

from . import add_verb

EXAMPLES = """
  loragen serve --generator runs/gen --artifact art/tl-et --artifact art/tl-onnx \\
      --sign-key keys/server.pem --store bundles/ --port 8080 --api-keys keys/api.json
  loragen serve --config service.yaml --port 9000        # settings from the YAML service section
  loragen serve --api-keys keys/api.json --add-api-key phone-app --key-artifacts tl-et   # prints the key once
"""


def register(sub):
    p = add_verb(sub, "serve", "serve specializations over HTTP (FastAPI; OpenAPI at /openapi.json)", EXAMPLES)
    p.add_argument("--config", help="YAML file whose 'service' section holds these settings (options override it)")
    p.add_argument("--generator", help="trained generator run directory")
    p.add_argument("--artifact", action="append", help="base artifact directory (repeatable)")
    p.add_argument("--sign-key", help="Ed25519 private key (PEM) that signs every bundle")
    p.add_argument("--store", help="bundle store directory (created if missing; survives restarts)")
    p.add_argument("--store-max-mb", type=float, help="evict least recently used bundles above this size")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="default 8080")
    p.add_argument("--api-keys", help="API keys file (hashed keys); without it every request is accepted")
    p.add_argument("--max-task-bytes", type=int, help="largest task description accepted (default 32768)")
    p.add_argument("--batch-window-ms", type=float,
                   help="how long the first new request waits for others to share its generator forward (default 10)")
    p.add_argument("--max-batch", type=int, help="most task descriptions per generator forward (default 16)")
    p.add_argument("--header-timeout-s", type=float,
                   help="close a connection whose request headers are not complete within this many seconds (default 10)")
    p.add_argument("--body-timeout-s", type=float,
                   help="answer 408 when a request body is not complete this many seconds after its headers (default 30)")
    p.add_argument("--auth-failures-per-minute", type=float,
                   help="invalid API keys accepted per client address before 429 (burst: one minute's worth; default 10)")
    p.add_argument("--add-api-key", metavar="NAME", help="create a key in --api-keys, print it once, and exit")
    p.add_argument("--key-artifacts", default="*", help="with --add-api-key: comma-separated artifact names or fingerprints")
    p.add_argument("--key-rate", type=float, default=60, help="with --add-api-key: requests per minute")
    p.set_defaults(func=run)


def run(args):
    from ..errors import LoragenError
    from ..service import add_api_key, load_service_config, serve

    if args.add_api_key:
        if not args.api_keys:
            raise LoragenError("--add-api-key needs --api-keys FILE")
        print(add_api_key(args.api_keys, args.add_api_key, args.key_artifacts.split(","), args.key_rate))
        return
    cfg = load_service_config(args.config, {
        "generator_dir": args.generator, "artifacts": args.artifact, "sign_key": args.sign_key, "store": args.store,
        "api_keys": args.api_keys, "max_task_bytes": args.max_task_bytes,
        "store_max_bytes": int(args.store_max_mb * 2 ** 20) if args.store_max_mb else None,
        "batch_window_s": None if args.batch_window_ms is None else args.batch_window_ms / 1000,
        "max_batch": args.max_batch, "header_timeout_s": args.header_timeout_s, "body_timeout_s": args.body_timeout_s,
        "auth_failures_per_minute": args.auth_failures_per_minute, "host": args.host, "port": args.port})
    serve(cfg)
