"""The CLI's shape: every verb listed, every verb with --help and examples."""

import pytest

from loragen_mobile.cli import VERBS, build_parser, main


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for v in VERBS:
        assert v.replace("_", "-") in out


@pytest.mark.parametrize("verb", [v.replace("_", "-") for v in VERBS])
def test_every_verb_has_help_with_examples(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"loragen {verb}" in out


def test_init_model_cli(tmp_path, capsys):
    assert main(["init-model", "--preset", "tiny-gemma", "--out", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "model.safetensors").is_file()
    assert main(["init-model", "--preset", "tiny-gemma", "--out", str(tmp_path / "g")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert build_parser().parse_args(["init-model", "--preset", "tiny-llama", "--out", "x"]).seed == 0
