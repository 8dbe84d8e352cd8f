"""``tl-universality remove-ln`` on the tiny family: saved LN-free results, clear errors."""

from __future__ import annotations

from tl_universality.cli import main
from tl_universality.ln_removal import LNRemovalResult


def test_remove_ln_saves_one_result_per_seed(tmp_path, capsys, tiny_family):
    code = main(
        ["remove-ln", "--family", "tiny", "--steps", "60", "--out", str(tmp_path), "--quiet"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("held-out loss") == len(tiny_family.models)
    result = LNRemovalResult.load(tmp_path / "ln_removal" / "model0")
    assert result.model.cfg.normalization_type is None and result.summary()["steps"] == 60
    assert result.model.tokenizer is not None


def test_remove_ln_without_tokens_names_the_fix(tmp_path, capsys):
    assert main(["remove-ln", "--out", str(tmp_path), "--quiet"]) == 2
    assert "no model given" in capsys.readouterr().err.lower()
