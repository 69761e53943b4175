"""kiln's test machinery, shared by the tests and the benchmarks: one home for each piece.

    tools     BIN (this interpreter's bin directory), uv() (the one uv locator outside kiln
              itself), free_port()
    index     SIMPLE_JSON, StaticIndex: a PEP 503/691 simple index of local files over HTTP
    deploy    Deployment and its kinds (Embedded, Replica, PostgreSQL): the mirror under test
    wheels    wheel makers: small pure wheels, stand-ins for torch and kiln's own wheels, and
              large stand-ins for CUDA builds
    fixtures  the fixture recipes and sdists under tests/fixtures, and recipe directories of them
    container a cibuildwheel container played on the host

How it is imported: tests/ is on ``sys.path``. Under pytest it is already (tests/ has no
``__init__.py``, so pytest puts the directory of conftest.py there, and conftest.py says so too).
A benchmark puts it there itself, in one explicit line before its imports::

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # kiln_testing

Benchmarks import from here, never from conftest.py (which holds only pytest fixtures). This
``__init__`` imports nothing, and ``tools`` only the standard library, so that a script run in
a foreign venv (benchmarks/gpu_check.py --here, with neither kiln nor pytest) can import it.
"""
