"""The home's writer lock, and state files that are empty, old or corrupt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kiln_testing.tools import BIN

from kiln.build import place
from kiln.home import CellResult, Home, read_json, write_atomic
from kiln.plan import intact_wheels

KILN = str(BIN / "kiln")
HOLD = """
import sys, time
from pathlib import Path
from kiln.home import Home
with Home(Path(sys.argv[1])).lock("kiln up"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A process holding the home's lock as `kiln up` would; killed at the end."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "home")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    yield proc
    proc.kill()
    proc.wait()


def kiln(*args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([KILN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)  # type: ignore[call-overload, no-any-return]


def test_a_second_writer_with_no_wait_fails_in_one_line_naming_the_holder(tmp_path: Path,
                                                                          holder: subprocess.Popen[str]) -> None:
    home = tmp_path / "home"
    for command in (["publish"], ["build", "--recipes", str(tmp_path)], ["up", "--recipes", str(tmp_path)],
                    ["serve", "--background"], ["import", str(tmp_path / "nothing")]):
        proc = kiln(*command, "--home", str(home), "--no-wait")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 7, (command, out, err)
        lines = err.splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith(f"kiln: {home} is in use by pid {holder.pid} (kiln up, since 20")
        assert lines[0].endswith("; try again when it is done (without --no-wait, kiln waits for it)")


def test_a_second_writer_waits_and_goes_on_when_the_holder_is_killed(tmp_path: Path,
                                                                     holder: subprocess.Popen[str]) -> None:
    home = tmp_path / "home"
    waiting = kiln("import", str(tmp_path / "nothing"), "--home", str(home))
    assert waiting.stderr is not None
    line = waiting.stderr.readline()
    assert line.startswith(f"kiln: waiting for {home}: in use by pid {holder.pid} (kiln up, since ")
    time.sleep(1)
    assert waiting.poll() is None, "went on while the lock was held"
    holder.send_signal(signal.SIGKILL)  # the kernel drops a dead holder's lock: nothing stale is left
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 5, err
    assert err.strip() == (f"kiln: {tmp_path / 'nothing'}: not a `kiln export` directory "
                           "(no devpi/dataindex.json)")


def test_readers_do_not_wait_for_the_lock(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    proc = kiln("plan", "--recipes", str(recipes), "--home", str(tmp_path / "home"), "--json")
    out, err = proc.communicate(timeout=60)
    assert "waiting" not in err and "in use" not in err


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    ('{"cell": "x", "status": "bu', "not valid JSON"),
    ("[1, 2]", "not a cell result (not an object)"),
    ('{"cell": "x"}', "not a cell result (CellResult.__init__() missing 3 required positional arguments: "
                      "'status', 'log', and 'seconds')"),
    ('{"cell": "x", "status": "maybe", "log": "l", "seconds": 1}', "not a cell result (status 'maybe')"),
])
def test_a_bad_cell_result_is_set_aside_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     text: str, why: str) -> None:
    home = Home(tmp_path)
    path = home.cells / "x.json"
    path.parent.mkdir()
    path.write_text(text)
    assert CellResult.load(home, "x") is None
    assert capsys.readouterr().err == f"kiln: {path}: {why}; moved to x.json.bad\n"
    assert not path.exists() and path.with_name("x.json.bad").read_text() == text
    assert CellResult.load(home, "x") is None  # and now simply absent


def test_a_cell_result_round_trips_and_ignores_keys_it_does_not_know(tmp_path: Path) -> None:
    home = Home(tmp_path)
    CellResult(cell="x", status="built", log="l", seconds=2.5, wheel="x.whl").save(home)
    data = json.loads((home.cells / "x.json").read_text())
    (home.cells / "x.json").write_text(json.dumps({**data, "from_a_newer_kiln": 1}))
    loaded = CellResult.load(home, "x")
    assert loaded is not None and (loaded.status, loaded.wheel, loaded.seconds) == ("built", "x.whl", 2.5)


def test_write_atomic_leaves_the_old_file_or_the_new_never_a_part(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, '{"a": 1}')
    write_atomic(path, '{"a": 2}', mode=0o600)
    assert read_json(path) == {"a": 2}
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_truncated_wheel_in_the_wheelhouse_is_set_aside(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kiln_testing.wheels import make_wheel

    good = make_wheel("kilnok", "1.0", {"kilnok/__init__.py": ""}, tmp_path / "made")
    house = tmp_path / "wheelhouse"
    placed = place(good, house)
    assert not good.exists() and placed.parent == house
    bad = house / "kilnbad-1.0-py3-none-any.whl"
    bad.write_bytes(placed.read_bytes()[:200])
    empty = house / "kilnempty-1.0-py3-none-any.whl"
    empty.write_bytes(b"")
    assert [p.name for p in intact_wheels(house)] == [placed.name]
    err = capsys.readouterr().err.splitlines()
    assert err == [f"kiln: {bad}: not a readable wheel (File is not a zip file); moved to {bad.name}.bad",
                   f"kiln: {empty}: not a readable wheel (File is not a zip file); moved to {empty.name}.bad"]
    assert sorted(p.name for p in house.iterdir()) == sorted([placed.name, f"{bad.name}.bad", f"{empty.name}.bad"])
