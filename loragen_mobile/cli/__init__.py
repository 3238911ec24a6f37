"""The ``loragen`` command: one thin module per verb (argument parsing, then one library call).

Each verb module defines ``register(subparsers)``, which adds its parser and sets ``func``.
Registering a verb imports nothing heavy (no torch, transformers, executorch): those are imported
inside the verb's ``run``, so ``loragen --help`` is instant.

Failures are one line on stderr and a documented exit status (see ``EXIT_STATUS``): a
LoragenError prints ``loragen: error: <code>: <message>``; an OSError (disk full, read-only,
permissions) prints code ``io`` with the path; anything else is a bug and prints code
``internal`` with the exception type. ``--debug`` adds the traceback. Third-party warnings and log
lines are hidden unless ``--verbose`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import sys
import threading
import traceback
import warnings

from ..errors import LoragenError, LoragenWarning

# Verb modules, in the order `loragen --help` lists them.
VERBS = [
    "init_model",
    "data", "train_edge", "train", "generate", "eval",
    "merge",
    "bench",
    "quickstart",
    "export", "run", "validate",
    "bundle",
    "serve",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EXIT_STATUS = """\
exit status:
  0    success
  1    a check failed (loragen validate: logits beyond the thresholds)
  2    user error (arguments, input files, paths, disk): one line
       'loragen: error: CODE: MESSAGE' on stderr; CODE is stable (e.g. usage, not-found,
       exists, jsonl, io, edge-mismatch, shape)
  3    internal error (a bug): one line 'loragen: error: internal: ...'; --debug shows the traceback
  130  interrupted (Ctrl-C)
"""

# Loggers of libraries that print warnings or notices while loading (shared-object probes,
# version checks, deprecations); quiet unless --verbose.
THIRD_PARTY_LOGGERS = ("torch", "torchao", "torchvision", "transformers", "peft", "coremltools", "executorch",
                       "onnxscript", "onnx", "onnxruntime", "accelerate", "huggingface_hub", "safetensors",
                       "matplotlib", "PIL", "urllib3", "httpx", "numexpr")

# Environment read by libraries at import time (only set when the user has not set them).
QUIET_ENV = {
    "TORCH_LOGS": "-all",                 # torch._logging: ERROR level for every torch logger
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" / "Writing model shards" bars
    "TOKENIZERS_PARALLELISM": "false",    # the fork warning of tokenizers
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "ORT_LOGGING_LEVEL": "3",
}


# Lines that native libraries print straight to file descriptor 2 (no Python logger to quiet):
# ExecuTorch's bundled cpuinfo probing /sys when its runtime loads.
NATIVE_NOISE = re.compile(rb"\[cpuinfo_utils\.cpp:\d+\] ")
_NOISE_PREFIX = b"[cpuinfo_utils.cpp:"


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _forward(r: int, out: int) -> None:
    """Copy the pipe ``r`` to ``out`` as it comes, minus NATIVE_NOISE lines (progress bars pass
    through at once: a chunk is held back only while it may still become a noise line)."""
    buf = b""
    while True:
        data = os.read(r, 65536)
        if not data:
            break
        buf += data
        while (m := re.search(rb"[\r\n]", buf)) is not None:
            piece, buf = buf[:m.end()], buf[m.end():]
            if not NATIVE_NOISE.match(piece):
                _write_all(out, piece)
        if buf and not _NOISE_PREFIX.startswith(buf[:len(_NOISE_PREFIX)]):
            _write_all(out, buf)
            buf = b""
    if buf and not NATIVE_NOISE.match(buf):
        _write_all(out, buf)
    os.close(r)


@contextlib.contextmanager
def native_stderr_filter():
    """Route file descriptor 2 through a filter that drops NATIVE_NOISE lines. Only when
    ``sys.stderr`` is the process's real stderr (not when a caller captures it in Python)."""
    try:
        real = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real = False
    if not real:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)
    t = threading.Thread(target=_forward, args=(r, saved), name="loragen-stderr", daemon=True)
    t.start()
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        finally:
            os.dup2(saved, 2)  # closes the pipe's last write end: the thread drains and ends
            t.join(timeout=5)
            os.close(saved)


class Parser(argparse.ArgumentParser):
    """argparse with the global flags on every (sub)parser and usage errors in the CLI's format."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        flags = self.add_argument_group("global options")
        # SUPPRESS: a flag given before the verb is not reset by the verb's parser
        flags.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                           help="show third-party warnings and log lines (hidden by default)")
        flags.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                           help="print the traceback of a failure")

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"loragen: error: usage: {' '.join(message.split())}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="loragen",
        description="Specialize small on-device language models from a task description (LoRA-Gen) "
        "and ship them to phones.",
        epilog="Run 'loragen VERB --help' for a verb's options and examples.\n\n" + EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"loragen-mobile {__version__}")
    parser.set_defaults(verbose=False, debug=False)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", title="verbs")
    for name in VERBS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def add_verb(sub, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    """Create a verb's parser with its one-line help and an examples epilog."""
    return sub.add_parser(
        name, help=help, description=help, epilog="examples:\n" + examples.strip("\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def usage_error(message: str) -> LoragenError:
    """A bad option value (exit 2, code ``usage``)."""
    return LoragenError(message, code="usage")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"loragen: warning: {_one_line(message)}", file=sys.stderr)


@contextlib.contextmanager
def output_policy(verbose: bool):
    """Third-party warnings and log lines hidden (unless ``verbose``); the project's own warnings
    (LoragenWarning) as one ``loragen: warning:`` line. Restores everything on exit."""
    saved_env = {k: os.environ.get(k) for k in QUIET_ENV}
    saved_levels = {n: logging.getLogger(n).level for n in THIRD_PARTY_LOGGERS}
    # transformers reads its environment once, at import: when it is already imported (main()
    # called from Python), switch its progress bars off through its API instead
    tf_logging = None if verbose else sys.modules.get("transformers.utils.logging")
    tf_bars = tf_logging.is_progress_bar_enabled() if tf_logging else False
    if tf_logging:
        tf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        stack = contextlib.ExitStack()
        if not verbose:
            stack.enter_context(native_stderr_filter())
            for k, v in QUIET_ENV.items():
                os.environ.setdefault(k, v)
            for n in THIRD_PARTY_LOGGERS:
                logging.getLogger(n).setLevel(logging.ERROR)
            warnings.simplefilter("ignore")  # every library's warnings ...
        warnings.filterwarnings("always", category=LoragenWarning)  # ... but the project's own
        try:
            with stack:
                yield
        finally:
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            for n, lvl in saved_levels.items():
                logging.getLogger(n).setLevel(lvl)
            if tf_bars:
                tf_logging.enable_progress_bar()


def _io_message(e: OSError) -> str:
    what = e.strerror or _one_line(e) or type(e).__name__
    if e.filename is None:
        return what
    if e.filename2 is not None:
        return f"{e.filename} -> {e.filename2}: {what}"
    return f"{e.filename}: {what}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        with output_policy(args.verbose):
            rc = args.func(args)
    except LoragenError as e:
        if args.debug:
            traceback.print_exc()
        print(f"loragen: error: {e.code}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("loragen: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:
        if args.debug:
            traceback.print_exc()
        print(f"loragen: error: io: {_io_message(e)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        if args.debug:
            traceback.print_exc()
        first = next((ln for ln in str(e).splitlines() if ln.strip()), "")
        print(f"loragen: error: internal: {type(e).__name__}: {_one_line(first)[:300]} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
