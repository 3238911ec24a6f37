"""The task format and the built-in suites: deterministic, seen and unseen disjoint, tool
definitions dominating the prompt, clean errors on bad records."""

import json
import subprocess
import sys

import pytest

from conftest import prompt_text

from loragen_mobile.data import group_by_task, make_suite, read_jsonl, write_jsonl
from loragen_mobile.data.suites import RULES
from loragen_mobile.errors import LoragenError


@pytest.mark.parametrize("suite", ["reasoning", "tools"])
def test_suites_are_deterministic_and_seed_dependent(suite):
    a, b, c = make_suite(suite, "train", seed=0), make_suite(suite, "train", seed=0), make_suite(suite, "train", seed=1)
    assert a == b and a != c
    assert len(group_by_task(a)) == len(group_by_task(make_suite(suite, "seen", seed=0)))


@pytest.mark.parametrize("suite", ["reasoning", "tools"])
def test_unseen_descriptions_are_never_trained_on(suite):
    seen = {r["system"] for r in make_suite(suite, "train")}
    unseen = group_by_task(make_suite(suite, "unseen"))
    assert len(unseen) >= 32
    assert not seen & {rs[0]["system"] for rs in unseen.values()}
    assert set(group_by_task(make_suite(suite, "seen"))) == set(group_by_task(make_suite(suite, "train")))


def test_reasoning_targets_follow_the_rule_in_the_description():
    for r in make_suite("reasoning", "unseen"):
        rule = r["task_id"].split("-")[2]
        assert r["target"] == RULES[rule][0](r["input"])


def test_tool_targets_call_a_tool_defined_in_the_prompt_and_definitions_dominate():
    recs = make_suite("tools", "unseen")
    with_prompt = sum(len(prompt_text(r["system"], r["input"])) for r in recs)
    without = sum(len(prompt_text(None, r["input"])) for r in recs)
    assert with_prompt / without > 10
    for r in recs:
        name = r["target"].split("(")[0]
        assert f"- {name}:" in r["system"] and f'Call: {r["target"].split("=")[0]}="' in r["system"]
        value = r["target"].split('"')[1]
        assert value in r["input"]


def test_data_cli_writes_jsonl_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "t.jsonl"
    cmd = [sys.executable, "-m", "loragen_mobile", "data", "make", "--suite", "all", "--split", "unseen", "--out", str(out)]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    recs = read_jsonl(out)
    assert recs == make_suite("reasoning", "unseen") + make_suite("tools", "unseen")
    before = out.read_bytes()
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "already exists" in r.stderr and out.read_bytes() == before


@pytest.mark.parametrize("line, msg", [
    ("[1, 2]", "expected a JSON object"),
    ('{"task_id": "a", "system": "s", "input": "i"}', "missing field(s) target"),
    ('{"task_id": "a", "system": "s", "input": "i", "target": 3}', "must be a string"),
    ('{"task_id": "a", "system": "s", "input": "i", "target": "x", "extra": 1}', "unknown field"),
    ('{"task_id": "a", "system": "s", "input": "i", "target": "x", "choices": ["x", "y"]}', "go together"),
    ('{"task_id": "a", "system": "s", "input": "i", "target": "y", "choices": ["x", "y"], "answer": 0}', "choices[answer]"),
    ("{not json", "not valid JSON"),
])
def test_bad_records_get_one_line_errors(tmp_path, line, msg):
    p = tmp_path / "bad.jsonl"
    p.write_text(line + "\n")
    with pytest.raises(LoragenError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        read_jsonl(p)


def test_tasks_must_share_one_system_prompt(tmp_path):
    recs = [{"task_id": "a", "system": "s1", "input": "i", "target": "t"},
            {"task_id": "a", "system": "s2", "input": "i", "target": "t"}]
    p = write_jsonl(recs, tmp_path / "x.jsonl")
    with pytest.raises(LoragenError, match="different 'system'"):
        group_by_task(read_jsonl(p))
    assert json.loads(p.read_text().splitlines()[0])["system"] == "s1"
