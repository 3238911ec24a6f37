"""The README's shell blocks are its documentation of a tiny run: every block after the first two
(install, full test run) runs as written, in order, in a fresh copy of the repository, with the
virtual environment's bin directory on PATH. A block preceded by the line
``<!-- readme-test: skip (REASON) -->`` is shown but not run (a server that runs until stopped).
Every command must succeed; every ``loragen`` command with a stderr free of warnings and log lines
(progress bars aside)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(bash|sh|shell|console)\s*$")
SKIP = re.compile(r"^<!-- readme-test: skip \((.+)\) -->$")
# tqdm progress bars: "desc:  40%|####      | 2/5 [00:01<00:02, 1.5it/s]"
PROGRESS = re.compile(r"\d+%\|.*\|\s*\d+/\d+|^\s*\S.*:\s*\d+it \[|^\s*$")
# the project's own status lines on stderr (loragen run's generation summary)
OWN = re.compile(r"^\[\d+ tokens, stop: [\w-]+\]$")


def shell_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line number, code, skip reason or None) of every shell code block, in order."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            fence, body = i, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            m = SKIP.match(lines[fence - 1].strip()) if fence else None
            blocks.append((fence + 2, "\n".join(body) + "\n", m.group(1) if m else None))
        i += 1
    return blocks


def test_shell_block_parser():
    text = "x\n```bash\na \\\n  b\n```\n<!-- readme-test: skip (server) -->\n```sh\nc\n```\n```python\nd\n```\n"
    assert shell_blocks(text) == [(3, "a \\\n  b\n", None), (8, "c\n", "server")]
    assert commands("a \\\n  b\n# note\n\nc d\n") == ["a    b", "c d"]
    assert _noise("x:  50%|#    | 1/2 [00:01<00:01]\r\n[32 tokens, stop: length]\n") == []
    assert _noise("W1129 torch/utils/_pytree.py:630] deprecated\n") == ["W1129 torch/utils/_pytree.py:630] deprecated"]


def commands(code: str) -> list[str]:
    """The block's logical command lines (backslash continuations joined)."""
    out, cur = [], ""
    for ln in code.splitlines():
        cur += ln
        if ln.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        if cur.strip() and not cur.lstrip().startswith("#"):
            out.append(cur.strip())
        cur = ""
    return out


def _noise(stderr: str) -> list[str]:
    return [p for p in re.split(r"[\r\n]", stderr) if not PROGRESS.search(p) and not OWN.match(p)]


def _fresh_copy(dest: Path) -> Path:
    """The files of a fresh checkout (tracked, plus new files not ignored) copied to ``dest``."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def test_readme_shell_blocks_run_as_written(tmp_path):
    blocks = shell_blocks((ROOT / "README.md").read_text())[2:]
    assert len(blocks) >= 4
    repo = _fresh_copy(tmp_path / "repo")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TORCH_LOGS", "TRANSFORMERS_VERBOSITY", "PYTHONWARNINGS", "HF_HUB_DISABLE_PROGRESS_BARS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    ran = 0
    for line, code, skip in blocks:
        if skip:
            continue
        for cmd in commands(code):
            r = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=repo, env=env, capture_output=True,
                               text=True, timeout=900)
            assert r.returncode == 0, f"README.md:{line}: {cmd} failed ({r.returncode}):\n{r.stderr[-3000:]}"
            if cmd.startswith("loragen "):  # the project's own commands: nothing but progress bars
                assert _noise(r.stderr) == [], f"README.md:{line}: {cmd} printed to stderr:\n{r.stderr[-3000:]}"
        ran += 1
    assert ran == len([b for b in blocks if not b[2]])
