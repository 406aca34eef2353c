"""``tools/mutate.py --again`` keeps every verdict of a run stopped part-way.

A real mutmut run over a toy project (one module, one test file, laid out like this one):
the first run leaves survivors, an ``--again`` run over them is interrupted (SIGINT to its
process group, as Ctrl-C would) once mutmut has recorded its first verdict, and the table
must still hold every verdict of the first run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tools import mutate

REPO = Path(__file__).resolve().parents[2]

CALC = textwrap.dedent("""\
    def price(n):
        if n > 10:
            return n * 3 - 5
        return n * 3 + 1
    """)
# checks only the small-order branch: the mutants of the other one survive; each test run
# takes a while, so that the --again run can be stopped after its first verdict
TEST = textwrap.dedent("""\
    import time

    from toy.calc import price


    def test_small_order():
        time.sleep(0.5)
        assert price(1) == 4
    """)
DRIVER = textwrap.dedent("""\
    import sys
    from pathlib import Path

    sys.path.insert(0, {repo!r})
    from tools import mutate

    mutate.ROOT = Path({toy!r})
    mutate.STAGE = mutate.ROOT / ".mutate"
    mutate.GROUPS = {{"toy": mutate.Group({{"src/toy/calc.py": mutate.ALL}},
                                          ("tests/test_calc.py",))}}
    sys.exit(mutate.run("toy", 1, again=sys.argv[1] == "again"))
    """)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    root = tmp_path / "toy"
    (root / "src" / "toy").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "toy"\nversion = "0"\n')
    (root / ".gitignore").write_text(".mutate/\nmutants/\n__pycache__/\n")  # as ours
    (root / "src" / "toy" / "__init__.py").write_text("")
    (root / "src" / "toy" / "calc.py").write_text(CALC)
    (root / "tests" / "test_calc.py").write_text(TEST)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (tmp_path / "driver.py").write_text(DRIVER.format(repo=str(REPO), toy=str(root)))
    monkeypatch.setattr(mutate, "ROOT", root)
    monkeypatch.setattr(mutate, "STAGE", root / ".mutate")
    monkeypatch.setattr(mutate, "GROUPS", {"toy": mutate.Group(
        {"src/toy/calc.py": mutate.ALL}, ("tests/test_calc.py",))})
    return root


def _driver(toy: Path, mode: str, **kw):
    cmd = [sys.executable, str(toy.parent / "driver.py"), mode]
    return subprocess.Popen(cmd, cwd=toy, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, **kw)


def _recorded(toy: Path, since: int = 0) -> dict[str, int | None]:
    """mutmut's result file of the toy group ({} when not written since ``since`` ns)."""
    meta = toy / ".mutate" / "toy" / "mutants" / "src" / "toy" / "calc.py.meta"
    try:
        if meta.stat().st_mtime_ns <= since:
            return {}
        return json.loads(meta.read_text())["exit_code_by_key"]
    except (OSError, ValueError):  # not written yet, or being written
        return {}


def _stop_after_first_verdict(toy: Path, targets: set[str]) -> int:
    """Start an ``--again`` run and Ctrl-C it once mutmut recorded a verdict of one of
    ``targets`` in this run (not the last run's file); the run's exit code."""
    time.sleep(0.01)  # mtimes of files written from now on are later than `since`
    since = time.time_ns()
    proc = _driver(toy, "again")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if any(v is not None for k, v in _recorded(toy, since).items() if k in targets):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the --again run ended before it could be stopped"
    os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(900)  # two mutmut runs, on a loaded machine
def test_again_stopped_part_way_keeps_every_verdict(toy):
    assert _driver(toy, "full").wait(300) == 0
    first = mutate._verdicts("toy")["src/toy/calc.py"]
    killed = {k for k, v in first.items() if v == "killed"}
    alive = {k for k, v in first.items() if v == "survived"}
    assert len(killed) >= 2 and len(alive) >= 3, first  # the toy does what it is for

    assert _stop_after_first_verdict(toy, alive) != 0
    assert mutate._verdicts("toy")["src/toy/calc.py"] == first
    # mutmut's own result file holds them too (mutmut results / show inside .mutate/toy)
    assert {k: mutate._verdict(v) for k, v in _recorded(toy).items()} == first

    # the kept verdicts name mutants by number: once the module changes they are refused
    (toy / "src" / "toy" / "calc.py").write_text(CALC.replace("n * 3 + 1", "3 * n + 1"))
    with pytest.raises(SystemExit, match=r"src/toy/calc.py changed since the last run of "
                       "group 'toy'"):
        mutate.run("toy", 1, again=True)
