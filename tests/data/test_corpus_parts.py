"""The embedded corpus's named parts: prose (the old corpus, first) and code (the standard
library's .py sources), and which windows a run reads from them (`data/split.py`)."""

from __future__ import annotations

import pytest

from sae_fast.data.corpus import embedded_texts, load_texts, stdlib_sources
from sae_fast.data.split import split_windows
from sae_fast.errors import ConfigError


def test_embedded_is_prose_then_code_and_each_part_has_a_name():
    prose, code = load_texts("embedded:prose"), load_texts("embedded:code")
    assert load_texts("embedded") == prose + code
    files = stdlib_sources()
    texts = [p.read_text(errors="replace") for p in files]
    assert len(files) > 1000 and len(code) == len([t for t in texts if t.strip()])
    assert sum(len(t) for t in code) > 20_000_000  # tens of MB: millions of tokens
    python = sum(("import " in t or "def " in t) for t in code) / len(code)
    assert python > 0.9 and code[0] == files[0].read_text(errors="replace")
    assert prose[0] == embedded_texts("prose")[0]  # the language reference comes first
    with pytest.raises(ConfigError, match="unknown embedded corpus part 'poetry'.*embedded:code"):
        load_texts("embedded:poetry")


def test_training_windows_come_first_and_the_held_out_ones_follow(capsys):
    lengths = [10] * 20  # 200 tokens
    s = split_windows(lengths, 100, 30, "corpus c")
    assert (s.train, s.end, s.train_tokens, s.heldout_tokens) == (10, 13, 100, 30)
    assert capsys.readouterr().err == ""
    # too short for both: the held-out slice is the end, the training tokens what precede
    s = split_windows(lengths, 190, 30, "corpus c")
    assert (s.train, s.end, s.train_tokens, s.heldout_tokens) == (17, 20, 170, 30)
    err = capsys.readouterr().err
    assert "warning: corpus c holds 200 tokens, fewer than the 220 asked for" in err
    assert "trains on 170 (not 190)" in err
    # too short to hold out at all
    s = split_windows(lengths, 100, 150, "corpus c")
    assert (s.train, s.end, s.heldout_tokens) == (20, 20, 0)
    assert "no held-out" in capsys.readouterr().err
    # a cache (not the whole corpus) short of training tokens is refused; short of
    # held-out tokens, it holds out what follows the training windows
    with pytest.raises(ConfigError, match="holds 200 tokens, fewer than the 300 training"):
        split_windows(lengths, 300, 10, "cache x", complete=False)
    s = split_windows(lengths, 180, 50, "cache x", complete=False)
    assert (s.train, s.end, s.heldout_tokens) == (18, 20, 20)
    assert "the held-out slice is those 20, not 50" in capsys.readouterr().err
