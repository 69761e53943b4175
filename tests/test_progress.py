"""What `kiln build` says as it goes when stderr is not a terminal (a CI log, `> up.log 2>&1`):
a flushed line when a cell starts and one when it ends, and heartbeats with the log's last line."""

from __future__ import annotations

import io
import os
import re
import subprocess
import threading
from pathlib import Path

import pytest
from kiln_testing.fixtures import MORE_RECIPES, kilnfix_recipe, recipes_dir
from kiln_testing.index import StaticIndex
from kiln_testing.tools import BIN
from rich.console import Console

from kiln.cli import main
from kiln.home import CellResult
from kiln.logs import LineProgress, RichProgress, duration, last_line, progress_for

Lines = list[tuple[str, frozenset[str]]]


@pytest.fixture(scope="module")
def piped_build(tmp_path_factory: pytest.TempPathFactory, upstream: StaticIndex) -> tuple[Path, Lines]:
    """`kiln build` of kilnapp (whose runtime requirement kilnlib is built as a closure cell)
    and of a kilnfix that cannot build, stderr a pipe, heartbeats every second: each stderr
    line as it arrived, with the cells whose result kiln had saved by then (a cell's result is
    saved when it ends, so a line read before it was not held back)."""
    tmp = tmp_path_factory.mktemp("progress")
    recipes = recipes_dir(tmp / "recipes", ("kilnapp.yaml", (MORE_RECIPES / "kilnapp.yaml").read_text()),
                          ("kilnfix.yaml", kilnfix_recipe(**{"kilnfix-helper==1.4.0": "kilnfix-helper==9.9.9",
                                                             '["3.11", "3.12"]': '["3.11"]'})))
    home = tmp / "home"
    env = {**os.environ, "KILN_HEARTBEAT_S": "1"}
    env.pop("FORCE_COLOR", None)
    with (tmp / "stdout").open("w") as stdout:
        proc = subprocess.Popen([str(BIN / "kiln"), "build", "--recipes", str(recipes), "--home", str(home),
                                 "--index-url", upstream.simple], stdout=stdout, stderr=subprocess.PIPE,
                                text=True, env=env)
        assert proc.stderr is not None
        lines = [(line.rstrip("\n"), ended(home)) for line in proc.stderr]
        assert proc.wait(timeout=600) == 4, "\n".join(ln for ln, _ in lines)
    return home, lines


def ended(home: Path) -> frozenset[str]:
    """The cells whose result is saved in ``home``: those that have ended."""
    return frozenset(p.stem for p in (home / "cells").glob("*.json"))


def _index(lines: Lines, prefix: str) -> int:
    found = [i for i, (ln, _) in enumerate(lines) if ln.startswith(prefix)]
    assert len(found) == 1, (prefix, [ln for ln, _ in lines])
    return found[0]


def test_each_cell_says_when_it_starts_and_ends_while_kiln_runs(
        piped_build: tuple[Path, Lines]) -> None:
    home, lines = piped_build
    app_log = home / "logs" / "kilnapp-1.0.0-cp311-main.log"
    fix_log = home / "logs" / "kilnfix-1.0.0-cp311-main.log"
    app_start = _index(lines, "kiln: [1/2] kilnapp-1.0.0-cp311-main: started")
    app_end = _index(lines, "kiln: [1/2] kilnapp-1.0.0-cp311-main: built in ")
    fix_start = _index(lines, "kiln: [2/2] kilnfix-1.0.0-cp311-main: started")
    fix_end = _index(lines, "kiln: [2/2] kilnfix-1.0.0-cp311-main: failed in ")
    assert app_start < app_end < fix_start < fix_end
    assert lines[app_start][0] == f"kiln: [1/2] kilnapp-1.0.0-cp311-main: started; log: {app_log}"
    assert lines[app_end][0].endswith(f"; log: {app_log}") and " (kilnapp-1.0.0" in lines[app_end][0]
    fix_end_line = lines[fix_end][0]
    assert ": Because there is no version of kilnfix-helper==9.9.9" in fix_end_line
    assert fix_end_line.endswith(f"; log: {fix_log}")
    # Each start line reached the reader while its cell was building, not at the end.
    assert "kilnapp-1.0.0-cp311-main" not in lines[app_start][1]
    assert "kilnfix-1.0.0-cp311-main" not in lines[fix_start][1]
    assert "kilnapp-1.0.0-cp311-main" in lines[fix_start][1]


def test_a_closure_cell_built_inside_its_parent_says_so_too(piped_build: tuple[Path, Lines]) -> None:
    home, lines = piped_build
    lib_log = home / "logs" / "kilnlib-1.0.0-cp311-main.log"
    label = "kiln: kilnlib-1.0.0-cp311-main (closure of kilnapp-1.0.0-cp311-main)"
    start = _index(lines, f"{label}: started")
    end = _index(lines, f"{label}: built in ")
    assert lines[start][0] == f"{label}: started; log: {lib_log}"
    assert lines[end][0].endswith(f"; log: {lib_log}") and "(kilnlib-1.0.0" in lines[end][0]
    app_start = _index(lines, "kiln: [1/2] kilnapp-1.0.0-cp311-main: started")
    app_end = _index(lines, "kiln: [1/2] kilnapp-1.0.0-cp311-main: built in ")
    assert app_start < start < end < app_end


def test_a_long_build_has_heartbeats_with_its_log_s_last_line(
        piped_build: tuple[Path, Lines]) -> None:
    home, lines = piped_build
    beats = [(ln, done) for ln, done in lines if " building for " in ln]
    assert beats, [ln for ln, _ in lines]
    cells: set[str] = set()
    for ln, done in beats:
        cell, _, rest = ln.removeprefix("kiln: ").partition(": building for ")
        assert re.fullmatch(rf"\d+s; log: {re.escape(str(home / 'logs' / (cell + '.log')))}: \S.*", rest), ln
        if cell not in done:
            cells.add(cell)
    # Heartbeats came while their cells built (not all at the end).
    assert cells <= {"kilnapp-1.0.0-cp311-main", "kilnlib-1.0.0-cp311-main", "kilnfix-1.0.0-cp311-main"}
    assert cells, beats


# ----------------------------------------------------------------------------- the pieces


def test_last_line_skips_blank_lines_and_ends_at_a_carriage_return(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("first\n[1/3] nvcc a.cu\r[2/3] nvcc b.cu\n\n   \n")
    assert last_line(log) == "[2/3] nvcc b.cu"
    log.write_text("")
    assert last_line(log) is None
    assert last_line(tmp_path / "missing.log") is None


def test_durations_read_as_a_clock() -> None:
    assert [duration(s) for s in (0, 59.9, 60, 180, 3599, 3723)] == ["0s", "59s", "1m00s", "3m00s", "59m59s",
                                                                      "1h02m03s"]


def test_a_heartbeat_quotes_the_innermost_running_cell_s_log(tmp_path: Path) -> None:
    parent, child = tmp_path / "app.log", tmp_path / "lib.log"
    parent.write_text("kiln: closure: building lib\n")
    child.write_text("running build_ext\ngcc -c lib.c\n")
    out = io.StringIO()
    progress = LineProgress(out, heartbeat_s=3600)
    with progress:
        progress.start("app", parent, "[1/1] app")
        progress.start("lib", child, "lib (closure of app)")
        progress.beat()
        progress.end(CellResult(cell="lib", status="built", log=str(child), seconds=75, wheel="lib.whl"))
        progress.beat()
        progress.end(CellResult(cell="app", status="failed", log=str(parent), seconds=3, error="boom"))
        progress.beat()  # nothing runs: says nothing
    said = [re.sub(r"building for \d+s", "building for Ns", ln) for ln in out.getvalue().splitlines()]
    assert said == [
        f"kiln: [1/1] app: started; log: {parent}",
        f"kiln: lib (closure of app): started; log: {child}",
        f"kiln: lib: building for Ns; log: {child}: gcc -c lib.c",
        f"kiln: lib (closure of app): built in 1m15s (lib.whl); log: {child}",
        f"kiln: app: building for Ns; log: {parent}: kiln: closure: building lib",
        f"kiln: [1/1] app: failed in 3s: boom; log: {parent}",
    ]


def test_the_heartbeat_thread_writes_while_a_cell_runs(tmp_path: Path) -> None:
    """The thread beats on its own: a line arrives without the builder doing anything."""
    log = tmp_path / "a.log"
    log.write_text("compiling\n")
    written = threading.Event()

    class Out(io.StringIO):
        def flush(self) -> None:
            if " building for " in self.getvalue():
                written.set()

    out = Out()
    with LineProgress(out, heartbeat_s=0.05) as progress:
        progress.start("a", log, "[1/1] a")
        assert written.wait(60), out.getvalue()
    beat = next(ln for ln in out.getvalue().splitlines() if " building for " in ln)
    assert re.fullmatch(rf"kiln: a: building for \d+s; log: {re.escape(str(log))}: compiling", beat)


def test_lines_unless_the_console_is_a_real_terminal() -> None:
    """A forced terminal (FORCE_COLOR in CI) writing to a pipe or file gets lines, not redraws."""
    assert isinstance(progress_for(Console(file=io.StringIO(), force_terminal=True)), LineProgress)
    assert isinstance(progress_for(Console(file=io.StringIO())), LineProgress)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(progress_for(Console(file=Tty(), force_terminal=True)), RichProgress)


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "inf"])
def test_a_bad_heartbeat_interval_is_one_line(value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KILN_HEARTBEAT_S", value)
    recipes = recipes_dir(tmp_path / "recipes", ("kilnfix.yaml", kilnfix_recipe()))
    assert main(["build", "--recipes", str(recipes), "--home", str(tmp_path / "home")]) == 2
    assert capsys.readouterr().err == f"kiln: KILN_HEARTBEAT_S={value}: not a number of seconds above 0\n"

