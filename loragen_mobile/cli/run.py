"""loragen run: greedy decoding of an exported artifact on the host runtime (KV cache)."""

from . import add_verb

EXAMPLES = """
  loragen run --artifact out/tl-et --prompt "Hello" --max-new-tokens 16
  loragen run --artifact out/tg-onnx --prompt "Hello" --json
  loragen run --artifact out/tl-et --bundle task-a.bundle --pubkey keys/server.pub --prompt "cat"   # swap at load
"""


def register(sub):
    p = add_verb(sub, "run", "generate text greedily with an exported artifact (ExecuTorch or onnxruntime)",
                 EXAMPLES)
    p.add_argument("--artifact", required=True, help="artifact directory written by 'loragen export'")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print token ids and text as JSON")
    p.add_argument("--bundle", help="weight bundle to swap in at load (nothing is written)")
    p.add_argument("--pubkey", help="Ed25519 public key (PEM) that must have signed --bundle")
    p.add_argument("--allow-unsigned", action="store_true", help="accept an unsigned --bundle (development only)")
    p.set_defaults(func=run)


def swap_from_args(args):
    """Replacement weights for the artifact's swap slots (None: run the artifact as exported).

    With ``--bundle``: the bundle is verified against the artifact (signature, base fingerprint,
    backend, every tensor) and its tensors are swapped in at load.
    """
    if not args.bundle:
        return None
    from ..bundle import bundle_swap, verify_bundle
    from ..bundle.keys import load_public_key

    pub = load_public_key(args.pubkey) if args.pubkey else None
    vb = verify_bundle(args.bundle, args.artifact, pub, require_signature=not args.allow_unsigned)
    return bundle_swap(vb, args.artifact)


def run(args):
    import json

    from ..errors import LoragenError
    from ..exporters import generate_text

    if args.max_new_tokens < 1:
        raise LoragenError("--max-new-tokens must be at least 1")
    out = generate_text(args.artifact, args.prompt, args.max_new_tokens, swap=swap_from_args(args))
    if args.json:
        print(json.dumps(out))
    else:
        print(out["text"])
        print(f"[tokens] {' '.join(map(str, out['tokens']))}")
