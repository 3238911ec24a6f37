"""loragen bundle: keygen, build, verify and apply signed runtime-swappable weight bundles."""

import argparse

from . import add_verb

EXAMPLES = """
  loragen bundle keygen --out keys/server            # writes keys/server.pem and keys/server.pub
  loragen bundle build --artifact art/tl-et --adapter adapters/task-a --kind merged \\
      --sign-key keys/server.pem --out task-a.bundle
  loragen bundle build --artifact art/tl-onnx --generator runs/gen --task "Reverse the word." \\
      --kind lora --sign-key keys/server.pem --out reverse.bundle
  loragen bundle verify task-a.bundle --artifact art/tl-et --pubkey keys/server.pub
  loragen bundle apply task-a.bundle --artifact art/tl-et --pubkey keys/server.pub --out art/tl-et-task-a
"""


def register(sub):
    p = add_verb(sub, "bundle", "build, sign, verify and apply runtime-swappable weight bundles", EXAMPLES)
    bs = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    k = bs.add_parser("keygen", help="write a new Ed25519 key pair (OUT.pem private, OUT.pub public)")
    k.add_argument("--out", required=True, help="path prefix for the key files (must not exist)")
    k.set_defaults(func=run_keygen)

    b = bs.add_parser("build", help="build a signed bundle for an exported artifact",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--artifact", required=True, help="exported artifact directory (loragen export)")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--adapter", help="PEFT adapter directory")
    src.add_argument("--generator", help="trained generator run directory (with --task)")
    b.add_argument("--task", help="task description (with --generator)")
    b.add_argument("--kind", choices=["merged", "lora"], default="merged")
    b.add_argument("--sign-key", help="Ed25519 private key (PEM); omit only for an unsigned bundle with --unsigned")
    b.add_argument("--unsigned", action="store_true", help="write an unsigned bundle (development only)")
    b.add_argument("--include-task", action="store_true", help="store the task text in the manifest (default: its sha256 only)")
    b.add_argument("--base-model", help="full-precision model the artifact was exported from (HF directory or cached "
                   "Hub id): a merged bundle for a quantized artifact is quantized from it (default: from the "
                   "artifact's dequantized weights)")
    b.add_argument("--out", required=True, help="bundle file to write (must not exist)")
    b.set_defaults(func=run_build)

    v = bs.add_parser("verify", help="verify a bundle against an artifact (exit 0, or a one-line reason)")
    v.add_argument("bundle")
    v.add_argument("--artifact", required=True)
    v.add_argument("--pubkey", help="Ed25519 public key (PEM)")
    v.add_argument("--allow-unsigned", action="store_true", help="also accept a bundle that carries the all-zero 'unsigned' signature "
                   "(a signed bundle is always verified and needs --pubkey)")
    v.set_defaults(func=run_verify)

    a = bs.add_parser("apply", help="write a new artifact directory with the bundle swapped in (no re-export)")
    a.add_argument("bundle")
    a.add_argument("--artifact", required=True)
    a.add_argument("--pubkey", help="Ed25519 public key (PEM)")
    a.add_argument("--allow-unsigned", action="store_true",
                   help="also accept an unsigned bundle (a signed bundle is always verified and needs --pubkey)")
    a.add_argument("--out", required=True, help="new specialized artifact directory (must not exist)")
    a.set_defaults(func=run_apply)

    o = bs.add_parser("onnx-adapter", help="write a verified bundle as an .onnx_adapter file, which onnxruntime-genai "
                      "swaps into a loaded model (og.Adapters)")
    o.add_argument("bundle")
    o.add_argument("--artifact", required=True, help="an unquantized ONNX artifact (its swap slots are graph inputs)")
    o.add_argument("--pubkey", help="Ed25519 public key (PEM)")
    o.add_argument("--allow-unsigned", action="store_true",
                   help="also accept an unsigned bundle (a signed bundle is always verified and needs --pubkey)")
    o.add_argument("--out", required=True, help="adapter file to write (must not exist)")
    o.set_defaults(func=run_onnx_adapter)


def run_keygen(args):
    from ..bundle.keys import generate_keypair

    kid = generate_keypair(f"{args.out}.pem", f"{args.out}.pub")
    print(f"wrote {args.out}.pem (private, keep secret) and {args.out}.pub (public); key id {kid}")


def run_build(args):
    from ..bundle import build_bundle_file
    from ..errors import LoragenError

    if args.sign_key is None and not args.unsigned:
        raise LoragenError("--sign-key is required (or --unsigned for a development bundle)", code="usage")
    out, size = build_bundle_file(args.artifact, args.out, args.kind, adapter_dir=args.adapter,
                                  generator_dir=args.generator, task=args.task, sign_key=args.sign_key,
                                  include_task=args.include_task, base_model=args.base_model)
    print(f"wrote {out} ({size} bytes, kind {args.kind})")


def _pub(args):
    from ..bundle.keys import load_public_key

    return load_public_key(args.pubkey) if args.pubkey else None


def run_verify(args):
    from ..bundle import verify_bundle

    vb = verify_bundle(args.bundle, args.artifact, _pub(args), require_signature=not args.allow_unsigned)
    # "signed" only after an Ed25519 verification that passed (verify refuses any other signed bundle)
    state = "signed, signature verified" if vb.signature_verified else "UNSIGNED"
    print(f"OK: {vb.kind} bundle, {len(vb.parsed.tensors)} tensors, {state}, bound to {args.artifact}")


def run_apply(args):
    from ..bundle import apply_bundle

    apply_bundle(args.bundle, args.artifact, args.out, _pub(args), require_signature=not args.allow_unsigned)
    print(f"wrote specialized artifact {args.out}")


def run_onnx_adapter(args):
    from ..bundle import write_onnx_adapter

    out = write_onnx_adapter(args.bundle, args.artifact, args.out, _pub(args), require_signature=not args.allow_unsigned)
    print(f"wrote {out} ({out.stat().st_size} bytes): og.Adapters.load(path, name), then Generator.set_active_adapter")
