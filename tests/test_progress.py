"""Progress off a terminal: one plain line per 10%, nothing when quiet, no lines from loops that log themselves."""
import re

from ldae.utils.progress import LineProgress, progress


def test_lines_every_ten_percent_off_a_terminal(capsys, monkeypatch):
    monkeypatch.delenv("LDAE_QUIET", raising=False)
    assert list(progress(range(20), desc="features", unit="batch")) == list(range(20))  # items pass through unchanged
    lines = capsys.readouterr().err.strip().splitlines()
    assert [re.match(r"features: (\d+)% \((\d+)/20 batch, \S+, eta \S+\)$", l).group(1, 2) for l in lines] == \
        [(str(p), str(p // 5)) for p in range(10, 101, 10)]


def test_manual_updates_and_uneven_totals(capsys, monkeypatch):
    monkeypatch.delenv("LDAE_QUIET", raising=False)
    bar = progress(total=3, desc="fit")
    assert isinstance(bar, LineProgress)
    for _ in range(3):
        bar.update(1)  # 33%, 66%, 100%: one line each, never two for the same step
    bar.set_postfix(loss=1.0)
    bar.close()
    assert [l.split(" (")[0] for l in capsys.readouterr().err.strip().splitlines()] == ["fit: 33%", "fit: 66%", "fit: 100%"]


def test_quiet_and_no_lines(capsys, monkeypatch):
    list(progress(range(5), desc="a", quiet=True))
    list(progress(range(5), desc="b", lines=False))
    monkeypatch.setenv("LDAE_QUIET", "1")
    list(progress(range(5), desc="c"))
    assert capsys.readouterr().err == ""
