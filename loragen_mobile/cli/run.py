"""loragen run: generate with an exported artifact on the host runtime (KV cache), streamed."""

from . import add_verb

EXAMPLES = """
  loragen run --artifact out/tl-et --prompt "Hello"                            # greedy, ends at EOS
  loragen run --artifact out/tl-et --prompt "cat" --system "Task: turn the word around."
  loragen run --artifact out/tg-onnx --prompt "Hello" --temperature 0.8 --top-p 0.9 --seed 7
  loragen run --artifact out/tg-onnx --prompt "Hello" --max-new-tokens 16 --json
  loragen run --artifact out/tl-et --prompt "<s>raw text" --raw               # no chat template
  loragen run --artifact out/tl-et --bundle task-a.bundle --pubkey keys/server.pub --prompt "cat"   # swap at load
"""


def register(sub):
    p = add_verb(sub, "run", "generate text with an exported artifact (ExecuTorch or onnxruntime): the "
                 "artifact's chat template, greedy or sampled, streamed, ending at EOS", EXAMPLES)
    p.add_argument("--artifact", required=True, help="artifact directory written by 'loragen export'")
    p.add_argument("--prompt", required=True, help="the user message (rendered with the artifact's chat template)")
    p.add_argument("--system", help="optional system message for the chat template")
    p.add_argument("--raw", action="store_true",
                   help="encode --prompt as it is (tokenizer adds BOS) instead of applying the chat template")
    p.add_argument("--max-new-tokens", type=int, default=32, help="at most this many new tokens (default 32)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature; 0 (default) decodes greedily")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep the smallest set of tokens "
                   "whose probability reaches P (needs --temperature > 0)")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampling draws (default 0; needs --temperature > 0)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (prompt ids, new token ids, text, stop reason) instead of streaming")
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


def sampling_from_args(args):
    """Sampling settings, or None for greedy decoding (``--temperature 0``)."""
    from ..errors import LoragenError
    from ..exporters import Sampling

    if args.temperature < 0:
        raise LoragenError("--temperature must not be negative", code="usage")
    if args.temperature == 0:
        if args.top_p is not None or args.seed is not None:
            raise LoragenError("--top-p and --seed apply to sampling: give --temperature > 0", code="usage")
        return None
    return Sampling(temperature=args.temperature, top_p=1.0 if args.top_p is None else args.top_p,
                    seed=0 if args.seed is None else args.seed)


def run(args):
    import json
    import sys

    from ..errors import LoragenError
    from ..exporters import generate_text

    if args.max_new_tokens < 1:
        raise LoragenError("--max-new-tokens must be at least 1", code="usage")
    sampling = sampling_from_args(args)
    streamer = None
    if not args.json:
        from transformers import TextStreamer

        from ..exporters import read_artifact
        from ..models import load_tokenizer

        streamer = TextStreamer(load_tokenizer(read_artifact(args.artifact).path), skip_special_tokens=True)
    out = generate_text(args.artifact, args.prompt, args.max_new_tokens, swap=swap_from_args(args),
                        system=args.system, raw=args.raw, sampling=sampling,
                        on_token=None if streamer is None else (lambda t: streamer.put(_tensor(t))))
    if args.json:
        print(json.dumps(out))
    else:
        streamer.end()
        print(f"[{len(out['tokens'])} tokens, stop: {out['stop']}]", file=sys.stderr)


def _tensor(t: int):
    import torch

    return torch.tensor([t])
