"""The CLI's shape and its failure contract: every verb listed with --help and examples; every
failure one line ``loragen: error: CODE: MESSAGE`` with a documented exit status; nothing partial
left behind; help without heavy imports; stderr free of third-party noise."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from loragen_mobile.cli import VERBS, build_parser, main

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "loragen_mobile" / "assets"
VERB_NAMES = [v.replace("_", "-") for v in VERBS]


def _err_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_help_lists_every_verb_and_the_exit_statuses(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for v in VERB_NAMES:
        assert v in out
    for status in ("0    success", "1    a check failed", "2    user error", "3    internal error", "130  interrupted"):
        assert status in out


@pytest.mark.parametrize("verb", VERB_NAMES)
def test_every_verb_has_help_with_examples(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"loragen {verb}" in out


def test_init_model_cli_creates_missing_parents_and_refuses_existing(tmp_path, capsys):
    out = tmp_path / "models" / "deep" / "g"  # parents do not exist (the README's first example)
    assert main(["init-model", "--preset", "tiny-gemma", "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["init-model", "--preset", "tiny-gemma", "--out", str(out)]) == 2
    assert _err_line(capsys) == (f"loragen: error: exists: output path {out} already exists; "
                                 "choose a new path (nothing was written)")
    assert build_parser().parse_args(["init-model", "--preset", "tiny-llama", "--out", "x"]).seed == 0


def test_init_model_preset_names_match_the_presets():
    from loragen_mobile.cli.init_model import PRESET_NAMES
    from loragen_mobile.models import PRESETS

    assert PRESET_NAMES == tuple(PRESETS)


# ------------------------------------------------------------------ the central error handling

def _patch_verb(monkeypatch, exc):
    import loragen_mobile.cli.init_model as verb

    def boom(args):
        raise exc

    monkeypatch.setattr(verb, "run", boom)


def test_oserror_is_one_io_line_with_path_and_exit_2(monkeypatch, capsys):
    _patch_verb(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/models/x"))
    assert main(["init-model", "--preset", "tiny-llama", "--out", "x"]) == 2
    assert _err_line(capsys) == "loragen: error: io: /data/models/x: No space left on device"


def test_unexpected_exception_is_one_internal_line_and_exit_3(monkeypatch, capsys):
    _patch_verb(monkeypatch, RuntimeError("size mismatch for\nweight: copying a param"))
    assert main(["init-model", "--preset", "tiny-llama", "--out", "x"]) == 3
    assert _err_line(capsys) == ("loragen: error: internal: RuntimeError: size mismatch for "
                                 "(run with --debug for the traceback)")


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_prints_the_traceback(monkeypatch, capsys, where):
    _patch_verb(monkeypatch, RuntimeError("boom"))
    argv = ["init-model", "--preset", "tiny-llama", "--out", "x"]
    argv = ["--debug"] + argv if where == "before" else argv + ["--debug"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.splitlines()[-1] == "loragen: error: internal: RuntimeError: boom (run with --debug for the traceback)"


def test_interrupt_exits_130(monkeypatch, capsys):
    _patch_verb(monkeypatch, KeyboardInterrupt())
    assert main(["init-model", "--preset", "tiny-llama", "--out", "x"]) == 130
    assert _err_line(capsys) == "loragen: interrupted"


def test_real_oserror_from_an_unwritable_parent(tmp_path, capsys):
    # /proc accepts no new directories, even for root: the write fails with a real OSError
    assert main(["init-model", "--preset", "tiny-llama", "--out", "/proc/loragen-test/m"]) == 2
    line = _err_line(capsys)
    assert line.startswith("loragen: error: io: /proc/loragen-test: "), line


def test_usage_errors_have_code_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "--model", "m", "--out", "o", "--bogus"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "loragen: error: usage: unrecognized arguments: --bogus"


def test_project_warnings_are_one_line(monkeypatch, capsys):
    from loragen_mobile.errors import LoragenWarning

    def warn(args):
        warnings.warn("third-party noise", DeprecationWarning)
        warnings.warn("something to know\nabout", LoragenWarning)

    import loragen_mobile.cli.init_model as verb

    monkeypatch.setattr(verb, "run", warn)
    assert main(["init-model", "--preset", "tiny-llama", "--out", "x"]) == 0
    assert _err_line(capsys) == "loragen: warning: something to know about"


# ------------------------------------------------------------------ refused options, nothing written

@pytest.mark.parametrize("argv,message", [
    (["--backend", "onnx", "--max-context", "0"], "--max-context must be at least 8 tokens, got 0"),
    (["--backend", "onnx", "--targets", ""], "--targets is empty;"),
    (["--backend", "onnx", "--targets", " , "], "--targets is empty;"),
    ([], "give --recipe FILE or --backend executorch|onnx|coreml"),
])
def test_export_refuses_bad_options(tmp_path, capsys, preset_dirs, argv, message):
    out = tmp_path / "art"
    assert main(["export", "--model", str(preset_dirs["tiny-llama"]), "--out", str(out)] + argv) == 2
    assert _err_line(capsys).startswith(f"loragen: error: usage: {message}")
    assert not out.exists()


def test_export_unmerged_adapter_that_does_not_fit_is_a_shape_error(tmp_path, capsys, preset_dirs):
    from loragen_mobile.lora import random_adapter, save_peft_adapter
    from loragen_mobile.models import build_model

    cloud = build_model("tiny-cloud", seed=0)  # llama, hidden 192: same module names, other shapes
    adapter = save_peft_adapter(random_adapter(cloud, ["model.layers.0.mlp.gate_proj"], r=4), tmp_path / "ad")
    out = tmp_path / "art"
    rc = main(["export", "--backend", "onnx", "--model", str(preset_dirs["tiny-llama"]), "--out", str(out),
               "--unmerged-adapter", str(adapter), "--no-progress"])
    assert rc == 2
    assert _err_line(capsys) == (
        f"loragen: error: shape: adapter {adapter} does not fit model {preset_dirs['tiny-llama']}: "
        "model.layers.0.mlp.gate_proj.weight is (256, 128), the adapter's B @ A is (512, 192)")
    assert not out.exists()


@pytest.mark.parametrize("backend", ["onnx", "coreml"])
def test_a_corrupt_weights_file_is_one_input_error_and_writes_nothing(tmp_path, capsys, preset_dirs, backend):
    """A model directory whose model.safetensors is not a safetensors file: `export`, and `validate`'s
    load (Core ML's reads the weights' dtype first), give one `input` line, not an internal error."""
    import shutil

    from loragen_mobile.errors import LoragenError
    from loragen_mobile.exporters import get_exporter
    from loragen_mobile.models import load_model

    bad = tmp_path / "model"
    shutil.copytree(preset_dirs["tiny-llama"], bad)
    (bad / "model.safetensors").write_bytes(b"\xff" * 100)
    before = sorted((f.name, f.read_bytes()) for f in bad.iterdir() if f.is_file())
    out = tmp_path / "art"
    assert main(["export", "--backend", backend, "--model", str(bad), "--out", str(out), "--no-progress"]) == 2
    assert _err_line(capsys).startswith(f"loragen: error: input: cannot load model from {bad}: ")
    assert not out.exists()
    with pytest.raises(LoragenError, match="cannot load model from") as e:
        get_exporter(backend).validate_dtype(bad) if backend == "coreml" else load_model(bad)  # validate's load
    assert e.value.code == "input"
    assert sorted((f.name, f.read_bytes()) for f in bad.iterdir() if f.is_file()) == before


def _record(i=0):
    return {"task_id": "t", "system": "Task: copy.", "input": f"w{i}", "target": f"w{i}"}


@pytest.fixture
def good_data(tmp_path):
    p = tmp_path / "good.jsonl"
    p.write_text("".join(json.dumps(_record(i)) + "\n" for i in range(4)))
    return p


@pytest.mark.parametrize("opt,value", [("--max-steps", "0"), ("--save-every", "0")])
def test_train_refuses_zero_steps_and_writes_nothing(tmp_path, capsys, good_data, preset_dirs, opt, value):
    out = tmp_path / "run"
    rc = main(["train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--edge", str(preset_dirs["tiny-llama"]),
               "--data", str(good_data), "--out", str(out), opt, value])
    assert rc == 2
    assert _err_line(capsys) == f"loragen: error: usage: {opt} must be at least 1, got 0"
    assert not out.exists()


def test_train_refuses_max_steps_zero_from_the_config(tmp_path, good_data, preset_dirs):
    from loragen_mobile.errors import LoragenError
    from loragen_mobile.generator import load_config, train

    cfg = load_config(ROOT / "configs" / "tiny.yaml", {"max_steps": 0})
    with pytest.raises(LoragenError) as e:
        train(cfg, preset_dirs["tiny-llama"], good_data, tmp_path / "run", progress=False)
    assert e.value.code == "usage"
    assert not (tmp_path / "run").exists()


def test_train_with_a_bad_edge_creates_no_run_directory(tmp_path, capsys, good_data):
    out = tmp_path / "run"
    rc = main(["train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--edge", str(tmp_path / "no-edge"),
               "--data", str(good_data), "--out", str(out), "--no-progress"])
    assert rc == 2
    assert _err_line(capsys).startswith("loragen: error: ")
    assert not out.exists()


# ------------------------------------------------------------------ JSONL inputs

BAD_JSONL = {
    "long-int": (b'{"n": ' + b"7" * 4301 + b"}\n", "not valid JSON: Exceeds the limit (4300 digits) for integer "
                                                    "string conversion: value has 4301 digits"),
    "utf8": (b'{"task_id": "t\xff"}\n', "not valid UTF-8 (byte 14: invalid start byte)"),
    "json": (b'{"task_id": }\n', "not valid JSON: Expecting value: line 1 column 13 (char 12)"),
}


@pytest.mark.parametrize("kind", list(BAD_JSONL))
@pytest.mark.parametrize("verb", ["generate", "train", "train-edge", "eval"])
def test_bad_jsonl_line_is_one_line_naming_file_and_line(tmp_path, capsys, verb, kind):
    bad = tmp_path / "in.jsonl"
    first = {"name": "a", "task": "Task: copy."} if verb == "generate" else _record()
    line2, reason = BAD_JSONL[kind]
    bad.write_bytes(json.dumps(first).encode() + b"\n" + line2)
    out = tmp_path / "out"
    argv = {
        "generate": ["generate", "--generator", str(tmp_path / "gen"), "--tasks", str(bad), "--out", str(out)],
        "train": ["train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--edge", str(tmp_path / "edge"),
                  "--data", str(bad), "--out", str(out)],
        "train-edge": ["train-edge", "--model", str(tmp_path / "edge"), "--data", str(bad), "--out", str(out)],
        "eval": ["eval", "--generator", str(tmp_path / "gen"), "--data", str(bad), "--out", str(out)],
    }[verb]
    assert main(argv) == 2
    assert _err_line(capsys) == f"loragen: error: jsonl: {bad}:2: {reason}"
    assert not out.exists()


# ------------------------------------------------------------------ generator bound to its edge weights

def test_generator_refuses_an_edge_model_with_other_weights(tmp_path, capsys, generator_run):
    from loragen_mobile.errors import LoragenError
    from loragen_mobile.generator import load_generator
    from loragen_mobile.models import init_model_dir

    other = init_model_dir("tiny-llama", tmp_path / "untrained", seed=1)  # same architecture, other weights
    with pytest.raises(LoragenError) as e:
        load_generator(generator_run, edge_dir=other)
    assert e.value.code == "edge-mismatch"
    assert "not the weights this generator was trained for" in str(e.value)
    # through the CLI: a run whose recorded edge path now holds other weights
    run = tmp_path / "run"
    shutil.copytree(generator_run, run)
    meta = json.loads((run / "generator.json").read_text())
    meta["edge"]["path"] = str(other)
    (run / "generator.json").write_text(json.dumps(meta))
    out = tmp_path / "adapter"
    capsys.readouterr()
    assert main(["generate", "--generator", str(run), "--task", "Task: copy.", "--out", str(out)]) == 2
    assert _err_line(capsys).startswith(f"loragen: error: edge-mismatch: edge model {other} has the right "
                                        "architecture but not the weights")
    assert not out.exists()


def test_generator_without_a_fingerprint_loads_with_a_warning(tmp_path, generator_run):
    from loragen_mobile.errors import LoragenWarning
    from loragen_mobile.generator import load_generator

    run = tmp_path / "run"
    shutil.copytree(generator_run, run)
    meta = json.loads((run / "generator.json").read_text())
    assert len(meta["edge"].pop("weights_sha256")) == 64
    (run / "generator.json").write_text(json.dumps(meta))
    with pytest.warns(LoragenWarning, match="records no edge weights fingerprint"):
        g = load_generator(run)
    assert g.generator_id == meta["generator_id"]


def test_shipped_generator_is_bound_to_the_shipped_edge_model(tmp_path):
    from loragen_mobile.generator import load_generator
    from loragen_mobile.generator.store import edge_weights_fingerprint

    meta = json.loads((ASSETS / "tiny-llama-generator" / "generator.json").read_text())
    assert meta["edge"]["weights_sha256"] == edge_weights_fingerprint(ASSETS / "tiny-llama-edge")
    from loragen_mobile.errors import LoragenWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", LoragenWarning)  # no "older run" warning: the fingerprint is checked
        g = load_generator(ASSETS / "tiny-llama-generator")
    assert g.edge_fingerprint == meta["edge"]["weights_sha256"]


def test_edge_fingerprint_ignores_sharding_but_not_values(tmp_path):
    import torch

    from loragen_mobile.generator.store import edge_weights_fingerprint
    from loragen_mobile.models import build_model

    m = build_model("tiny-llama", seed=0)
    m.save_pretrained(tmp_path / "one")
    m.save_pretrained(tmp_path / "sharded", max_shard_size="300KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    fp = edge_weights_fingerprint(tmp_path / "one")
    assert edge_weights_fingerprint(tmp_path / "sharded") == fp
    with torch.no_grad():
        m.model.norm.weight[0] += 1e-3
    m.save_pretrained(tmp_path / "changed")
    assert edge_weights_fingerprint(tmp_path / "changed") != fp


# ------------------------------------------------------------------ partial outputs

def test_generate_merge_into_on_a_full_disk_leaves_nothing(tmp_path, capsys, monkeypatch, generator_run):
    import contextlib

    import loragen_mobile.generator.store as store

    @contextlib.contextmanager
    def full_disk(out):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out))
        yield  # pragma: no cover

    monkeypatch.setattr(store, "atomic_dir", full_disk)
    adapter, merged = tmp_path / "adapters" / "a", tmp_path / "models" / "m"
    rc = main(["generate", "--generator", str(generator_run), "--task", "Task: copy.", "--out", str(adapter),
               "--merge-into", str(merged)])
    assert rc == 2
    assert _err_line(capsys) == f"loragen: error: io: {merged}: No space left on device"
    assert not adapter.exists() and not merged.exists()
    assert not (tmp_path / "adapters").exists()  # the parent it created is gone too


def test_atomic_dir_removes_stale_temporaries_of_dead_processes(tmp_path):
    from loragen_mobile.fsutil import atomic_dir

    # a process killed with SIGKILL inside atomic_dir leaves its temporary directory behind
    script = textwrap.dedent(f"""
        import sys, time
        from loragen_mobile.fsutil import atomic_dir
        with atomic_dir({str(tmp_path / "out")!r}) as tmp:
            (tmp / "part").write_bytes(b"x" * 1000)
            print("ready", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".out.tmp-{proc.pid}-")
    # a temporary of a live process (this one) is kept
    live = tmp_path / f".other.tmp-{os.getpid()}-abc123"
    live.mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "done").write_text("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out"]
    assert (tmp_path / "out" / "done").read_text() == "ok"


def test_atomic_outputs_get_the_modes_of_the_umask_not_of_tempfile(tmp_path):
    """A model directory or report written atomically is readable as a plain mkdir/open would make
    it (tempfile's 0700/0600 would hide it from another user or a web server)."""
    from loragen_mobile.fsutil import atomic_dir, atomic_file

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("1")
        with atomic_file(tmp_path / "f.json") as tmp:
            tmp.write_text("{}")
        os.umask(0o077)
        with atomic_file(tmp_path / "private.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert [oct((tmp_path / n).stat().st_mode & 0o777) for n in ("d", "f.json", "private.json")] == \
        ["0o755", "0o644", "0o600"]


def test_atomic_dir_failure_removes_the_parents_it_created(tmp_path):
    from loragen_mobile.fsutil import atomic_dir

    with pytest.raises(ValueError):
        with atomic_dir(tmp_path / "a" / "b" / "out") as tmp:
            (tmp / "x").write_text("partial")
            raise ValueError("fail")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ instant help, quiet stderr

HEAVY = ("torch", "transformers", "executorch", "coremltools", "onnx", "onnxruntime", "numpy", "peft")


def test_help_imports_nothing_heavy():
    helps = [[]] + [[v] for v in VERB_NAMES] + [["data", "make"], ["bundle", "build"], ["bench", "merge"]]
    script = textwrap.dedent(f"""
        import contextlib, io, sys
        from loragen_mobile.cli import main
        for argv in {helps!r}:
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(argv + ["--help"])
                except SystemExit as e:
                    assert e.code == 0, (argv, e.code)
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (0, "[]\n", "")


@pytest.mark.parametrize("argv", [[]] + [[v] for v in VERB_NAMES])
def test_help_prints_nothing_to_stderr(argv):
    r = subprocess.run([sys.executable, "-m", "loragen_mobile"] + argv + ["--help"], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert (r.returncode, r.stderr) == (0, "")
    assert "usage: loragen" in r.stdout


def test_real_verbs_print_nothing_to_stderr(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_LOGS", "TRANSFORMERS_VERBOSITY", "PYTHONWARNINGS")}
    cmds = [["init-model", "--preset", "tiny-gemma", "--out", "models/tg"],
            ["export", "--backend", "onnx", "--model", "models/tg", "--out", "art/tg-onnx", "--max-context", "16",
             "--no-progress"]]
    for argv in cmds:
        r = subprocess.run([sys.executable, "-m", "loragen_mobile"] + argv, capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=600)
        assert (r.returncode, r.stderr) == (0, ""), argv
    assert (tmp_path / "art" / "tg-onnx" / "artifact.json").is_file()


# ------------------------------------------------------------------------------------ loragen run
# The shipped edge model (exported once, conftest.edge_artifacts) against transformers reading the
# artifact's own tokenizer files: the chat template applied, greedy, ending at </s>.

def _hf(art, messages, max_new=40, **sample):
    import torch
    from transformers import AutoTokenizer

    from conftest import EDGE_ASSET
    from loragen_mobile.models import load_model

    tok = AutoTokenizer.from_pretrained(str(art))
    ids = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    out = load_model(EDGE_ASSET, dtype=torch.float32).generate(
        torch.tensor([ids]), max_new_tokens=max_new, **{"do_sample": False, **sample})[0, len(ids):].tolist()
    return ids, out, tok.decode(out, skip_special_tokens=True)


def _run_json(capsys, *args):
    import json

    capsys.readouterr()
    assert main(["run", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_run_applies_the_chat_template_and_stops_at_eos(edge_artifacts, capsys):
    art = edge_artifacts("onnx")
    for prompt, system in (("pmey", "Reverse each word."), ("phone dad now", None), ("bomm", "Reverse the word.")):
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids, want, text = _hf(art, msgs)
        extra = ["--system", system] if system else []
        res = _run_json(capsys, "--artifact", art, "--prompt", prompt, "--max-new-tokens", 40, *extra)
        assert res["prompt_ids"] == ids and ids[0] == 1 and ids[-1] == 202  # [BOS] ... "\n"
        assert res["tokens"] == want and want[-1] == 2 and len(want) < 40  # ended at </s>, like HF
        assert res["text"] == text and "</s>" not in text and res["stop"] == "eos"
        # streamed (default): the text on stdout, the count and stop reason on stderr
        assert main(["run", "--artifact", str(art), "--prompt", prompt, "--max-new-tokens", "40", *extra]) == 0
        out, err = capsys.readouterr()
        assert out == text + "\n"
        assert f"[{len(want)} tokens, stop: eos]" in err
    # --raw: the text as it is, BOS from the tokenizer, no template
    res = _run_json(capsys, "--artifact", art, "--prompt", "pmey", "--raw", "--max-new-tokens", 3)
    from loragen_mobile.models import build_tokenizer

    assert res["prompt_ids"] == build_tokenizer()("pmey")["input_ids"] and len(res["prompt_ids"]) == 5
    assert len(res["tokens"]) <= 3
    # the limit: stops after --max-new-tokens
    res = _run_json(capsys, "--artifact", art, "--prompt", "weather in Paris?", "--max-new-tokens", 2)
    assert len(res["tokens"]) == 2 and res["stop"] == "length"


def test_run_sampling_is_seeded_and_equals_hf(edge_artifacts, capsys):
    import torch

    art = edge_artifacts("onnx")
    base = ["--artifact", art, "--prompt", "weather in Paris?", "--max-new-tokens", 24]
    a = _run_json(capsys, *base, "--temperature", 3, "--seed", 1)
    assert _run_json(capsys, *base, "--temperature", 3, "--seed", 1)["tokens"] == a["tokens"]
    b = _run_json(capsys, *base, "--temperature", 3, "--seed", 2)
    assert b["tokens"] != a["tokens"]  # temperature 3 over 260 tokens: 24 equal draws cannot happen
    # the same draws as transformers' sampling with the same seed (top_k off)
    msgs = [{"role": "user", "content": "weather in Paris?"}]
    for seed, top_p in ((1, 1.0), (5, 0.8)):
        torch.manual_seed(seed)
        _, want, _ = _hf(art, msgs, 24, do_sample=True, temperature=3.0, top_p=top_p, top_k=0)
        got = _run_json(capsys, *base, "--temperature", 3, "--top-p", top_p, "--seed", seed)["tokens"]
        assert got == want
    # a vanishing nucleus keeps only the top token: greedy
    greedy = _run_json(capsys, *base)["tokens"]
    assert _run_json(capsys, *base, "--temperature", 1, "--top-p", 1e-9, "--seed", 3)["tokens"] == greedy


def test_run_usage_errors(edge_artifacts, capsys):
    art = str(edge_artifacts("onnx"))
    for args, what in ((["--seed", "3"], "--temperature"), (["--top-p", "0.5"], "--temperature"),
                       (["--temperature", "-1"], "negative"), (["--temperature", "1", "--top-p", "0"], "top-p"),
                       (["--raw", "--system", "s"], "raw"), (["--max-new-tokens", "0"], "at least 1"),
                       (["--max-new-tokens", "500"], "max context")):
        capsys.readouterr()
        assert main(["run", "--artifact", art, "--prompt", "x", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and what in err and "Traceback" not in err, (args, err)


NATIVE_SCRIPT = """
import os, sys
import loragen_mobile.cli.init_model as verb

def run(args):
    os.write(2, b"[cpuinfo_utils.cpp:71] Reading file /sys/devices/soc0/image_version\\n")
    os.write(2, b"progress 50%\\r")
    print("kept", file=sys.stderr)

verb.run = run
from loragen_mobile.cli import main
sys.exit(main(sys.argv[1:] + ["init-model", "--preset", "tiny-llama", "--out", "x"]))
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_native_library_stderr_lines_are_filtered_unless_verbose(verbose):
    r = subprocess.run([sys.executable, "-c", NATIVE_SCRIPT] + (["--verbose"] if verbose else []),
                       capture_output=True, cwd=ROOT, timeout=60)
    noise = b"[cpuinfo_utils.cpp:71] Reading file /sys/devices/soc0/image_version\n" if verbose else b""
    assert (r.returncode, r.stderr) == (0, noise + b"progress 50%\rkept\n")
