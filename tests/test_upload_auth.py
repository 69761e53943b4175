"""Who may upload, and what: end-to-end against every deployment of the mirror.

The mirror (devpi's ACLs, through nginx): anonymous users read only; only root creates users,
indexes and tokens or changes an index; only user kiln uploads to kiln's indexes, with its
password or a token from `kiln token`; nobody deletes a published file. `kiln publish` refuses,
before anything is sent, a wheel without kiln's provenance, of a project no recipe names (nor a
closure of one), or whose label puts it on another variant's index than it was built for.
Every refused path states its HTTP status or exit code and its one line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from kiln_testing.deploy import Deployment
from kiln_testing.fixtures import MORE_RECIPES, kilnfix_recipe, recipes_dir
from kiln_testing.tools import BIN
from kiln_testing.wheels import make_wheel

import kiln
from kiln import closure
from kiln.home import Home
from kiln.matrix import Variant, expand
from kiln.mirror import configure, mirror_url, published, root_credentials
from kiln.mirror.api import Credentials, Devpi
from kiln.mirror.server import ServerFiles
from kiln.mirror.tokens import parse
from kiln.provenance import PROVENANCE, Provenance
from kiln.recipe import load_recipes
from kiln.toolchains import load_toolchains

pytestmark = pytest.mark.e2e
KILN = str(BIN / "kiln")
UV = str(BIN / "uv")
VARIANTS = ["main", "cpu-torch2.14"]


def run(cmd: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=timeout)


def kiln_wheel(dest: Path, project: str, version: str, *, variant: str = "main", cell: str | None = None,
               built_for: str | None = None, closure_of: str | None = None, provenance: bool = True,
               label: str | None = None) -> Path:
    """A wheel of ``project`` ``version`` as `kiln build` finishes one: the variant's label in
    its version and its provenance in ``<dist-info>/kiln.json`` (unless ``provenance`` is
    False). ``built_for``/``cell``/``label`` make the provenance or the label lie."""
    label = label if label is not None else Variant.parse(variant).label
    full = f"{version}+{label}" if label else version
    prov = Provenance(kiln_version=kiln.__version__, cell=cell or f"{project}-{version}-cp311-{variant}",
                      variant=built_for or variant, recipe=f"{project}.yaml", recipe_sha256="0" * 64,
                      source_url=f"file:///sources/{project}-{version}.tar.gz", source_sha256="1" * 64,
                      python="3.11.9", torch="2.14.1" if variant != "main" else None, cuda_archs=None,
                      nvcc=None, compiler="gcc 13", closure_of=closure_of)
    module = project.replace("-", "_")
    files = {f"{module}/__init__.py": f"VERSION = {version!r}\n"}
    if provenance:
        files[f"{module}-{full}.dist-info/{PROVENANCE}"] = json.dumps(asdict(prov), indent=2) + "\n"
    out = dest / uuid.uuid4().hex[:8]
    out.mkdir(parents=True)
    return make_wheel(project, full, files, out)


@dataclass
class Site:
    """The deployment, the recipes kiln publishes for, and who is who on the mirror."""

    dep: Deployment
    recipes: Path
    env: dict[str, str]

    @property
    def url(self) -> str:
        """Where kiln publishes: the home's own mirror (a replica's primary)."""
        return mirror_url(Home(self.dep.home), None)

    @property
    def root(self) -> Credentials:
        return root_credentials(Home(self.dep.home))

    @property
    def kiln(self) -> Credentials:
        return Credentials("kiln", ServerFiles(Home(self.dep.home)).kiln_password.read_text().strip())

    def published(self) -> dict[str, list[str]]:
        return published(self.url, VARIANTS)

    def publish(self, path: Path, *extra: str, env: dict[str, str] | None = None,
                home: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run([KILN, "publish", str(path), "--home", str(home or self.dep.home), "--recipes",
                    str(self.recipes), *extra], env or self.env)

    def token(self, *extra: str) -> str:
        res = run([KILN, "token", "--home", str(self.dep.home), *extra], self.env)
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        assert len(lines) == 1 and lines[0].startswith("devpi-"), res.stdout
        assert lines[0] not in res.stderr
        return lines[0]


@pytest.fixture(scope="module")
def site(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Site:
    recipes = recipes_dir(tmp_path_factory.mktemp("auth") / "recipes", ("kilnfix.yaml", kilnfix_recipe()),
                          ("kilnapp.yaml", (MORE_RECIPES / "kilnapp.yaml").read_text()),
                          ("kilncuda.yaml", (MORE_RECIPES / "kilncuda.yaml").read_text()))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("UV_", "PIP_", "KILN_MIRROR_")) and k not in ("VIRTUAL_ENV", "KILN_HOME")}
    env["UV_CACHE_DIR"] = str(tmp_path_factory.mktemp("uv-cache"))
    site = Site(deployment, recipes, env)
    configure(Home(deployment.home), site.url, [Variant.parse(v) for v in VARIANTS], None)  # as `kiln serve` does
    return site


@pytest.fixture(scope="module")
def released(site: Site, tmp_path_factory: pytest.TempPathFactory) -> str:
    """kilnfix 1.0.0 published by `kiln publish` with the home's credentials: its file URL."""
    wheel = kiln_wheel(tmp_path_factory.mktemp("released"), "kilnfix", "1.0.0")
    res = site.publish(wheel)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"uploaded: kiln/main {wheel.name}"
    files = Devpi(site.url).files("kiln/main")
    return files[wheel.name].url


# ----------------------------------------------------------------------------- the mirror's ACLs


def _http(method: str, url: str, creds: Credentials | None, body: bytes | None = None,
          content_type: str = "application/json") -> tuple[int, str]:
    """(status, devpi's reason on one line) of one request through nginx."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    if creds:
        headers["Authorization"] = creds.header()
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, ""
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        data = json.loads(raw)
        lines = [ln.strip() for ln in str(data.get("message", "")).splitlines() if ln.strip()]
        return status, lines[-1] if lines else str(data.get("title", ""))
    except ValueError:
        return status, raw.decode(errors="replace").strip().splitlines()[0]


def _upload_form(filename: str, content: bytes, action: str = "file_upload") -> tuple[bytes, str]:
    """A distutils upload (what `uv publish` sends), as multipart/form-data: ``filename`` with
    ``content``, its project and version read from the filename."""
    name, _, rest = filename.partition("-")
    version = rest.split("-")[0]
    boundary = uuid.uuid4().hex
    parts = [(":action", action), ("protocol_version", "1"), ("name", name), ("version", version)]
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                    for k, v in parts)
    body += (f'--{boundary}\r\nContent-Disposition: form-data; name="content"; filename="{filename}"\r\n'
             "Content-Type: application/octet-stream\r\n\r\n").encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


DENIED = "Unauthorized: PyPIView failed permission check"
NOT_VOLATILE = "cannot delete version on non-volatile index"
NO_TOXRESULT = "No permission to upload tox results. You can use the devpi test --no-upload option to skip the upload."
NO_TOKENS = "Unauthorized: user_token_create failed permission check"
UNAUTHORIZED = ("This server could not verify that you are authorized to access the document you requested.  "
                "Either you supplied the wrong credentials (e.g., bad password), or your browser does not "
                "understand how to supply the credentials required.")

# (who, action) -> (status, devpi's one line; a trailing "*" matches a prefix)
EXPECTED = {
    ("anonymous", "upload"): (401, UNAUTHORIZED),
    ("kiln", "upload"): (200, ""),
    ("token", "upload"): (200, ""),
    ("root", "upload"): (403, "no permission to submit"),
    ("anonymous", "create user"): (403, DENIED),
    ("kiln", "create user"): (403, DENIED),
    ("token", "create user"): (403, DENIED),
    ("root", "create user"): (201, ""),
    ("anonymous", "create index"): (403, "no permission to create index kiln/{who}"),
    ("kiln", "create index"): (403, "no permission to create index kiln/{who}"),
    ("token", "create index"): (403, "no permission to create index kiln/{who}"),
    ("root", "create index"): (200, ""),
    ("anonymous", "modify index"): (403, DENIED),
    ("kiln", "modify index"): (403, DENIED),
    ("token", "modify index"): (403, DENIED),
    ("root", "modify index"): (200, ""),
    ("anonymous", "modify user"): (403, "no permission to modify user*"),
    ("kiln", "modify user"): (403, "no permission to modify user*"),
    ("token", "modify user"): (403, "no permission to modify user*"),
    ("root", "modify user"): (200, ""),
    ("anonymous", "delete release"): (403, DENIED),
    ("kiln", "delete release"): (403, NOT_VOLATILE),
    ("token", "delete release"): (403, DENIED),
    ("root", "delete release"): (403, NOT_VOLATILE),
    ("anonymous", "delete file"): (403, DENIED),
    ("kiln", "delete file"): (403, NOT_VOLATILE),
    ("token", "delete file"): (403, DENIED),
    ("root", "delete file"): (403, NOT_VOLATILE),
    ("anonymous", "upload toxresult"): (403, NO_TOXRESULT),
    ("kiln", "upload toxresult"): (403, NO_TOXRESULT),
    ("token", "upload toxresult"): (403, NO_TOXRESULT),
    ("root", "upload toxresult"): (403, NO_TOXRESULT),
    ("anonymous", "create token"): (403, NO_TOKENS),
    ("kiln", "create token"): (403, NO_TOKENS),
    ("token", "create token"): (403, NO_TOKENS),
    ("root", "create token"): (200, ""),
}


@pytest.fixture(scope="module")
def token(site: Site) -> str:
    return site.token()


@pytest.mark.parametrize(("who", "action"), sorted(EXPECTED))
def test_who_may_do_what(site: Site, released: str, token: str, who: str, action: str,
                         tmp_path: Path) -> None:
    creds = {"anonymous": None, "kiln": site.kiln, "root": site.root,
             "token": Credentials("__token__", token)}[who]
    url = site.url
    status, line = EXPECTED[(who, action)]
    if action == "upload":
        version = {"anonymous": "3.0.0", "kiln": "3.0.1", "token": "3.0.2", "root": "3.0.3"}[who]
        wheel = kiln_wheel(tmp_path, "kilnfix", version)
        body, ctype = _upload_form(wheel.name, wheel.read_bytes())
        got = _http("POST", f"{url}/kiln/main/", creds, body, ctype)
    elif action == "create user":
        got = _http("PUT", f"{url}/made-by-{who}", creds, json.dumps({"password": "x"}).encode())
    elif action == "create index":
        got = _http("PUT", f"{url}/kiln/{who}", creds, json.dumps({"bases": []}).encode())
    elif action == "modify index":
        got = _http("PATCH", f"{url}/kiln/main", creds, json.dumps([f"description=changed by {who}"]).encode())
    elif action == "modify user":
        got = _http("PATCH", f"{url}/kiln", creds, json.dumps({"email": f"{who}@example.invalid"}).encode())
    elif action == "delete release":
        got = _http("DELETE", f"{url}/kiln/main/kilnfix/1.0.0", creds)
    elif action == "delete file":
        got = _http("DELETE", released, creds)
    elif action == "upload toxresult":
        got = _http("POST", released, creds, json.dumps({"testenvs": {}}).encode())
    else:
        got = _http("POST", f"{url}/kiln/+token-create", creds, json.dumps({}).encode())
    line = line.format(who=who)
    assert got[0] == status, (who, action, got)
    if line.endswith("*"):
        assert got[1].startswith(line[:-1]), got
    else:
        assert got[1] == line, got
    if action.startswith("delete"):
        assert released.rsplit("/", 1)[1] in site.published()["main"]


# ----------------------------------------------------------------------------- the mirror: what
# The mirror itself asks of every upload to a kiln index what `kiln publish` asks, so that the
# kiln password or a token used with another client cannot put a foreign file there.


def _refusals(tmp_path: Path) -> dict[str, tuple[str, Path | None, str, str]]:
    """case -> (index, file, :action, the mirror's one line)."""
    plain = kiln_wheel(tmp_path, "kilnfix", "4.0.0", provenance=False)
    cpu = kiln_wheel(tmp_path, "kilncuda", "4.0.0", variant="cpu-torch2.14")
    lying = kiln_wheel(tmp_path, "kilncuda", "4.0.1", variant="cpu-torch2.14", built_for="main",
                       cell="kilncuda-4.0.1-cp311-main")
    other = kiln_wheel(tmp_path, "kilnfix", "4.0.2", cell="kilnapp-4.0.2-cp311-main")
    sdist = tmp_path / "kilnfix-4.0.0.tar.gz"
    sdist.write_bytes(b"\x1f\x8b not really")
    return {
        "no provenance": ("kiln/main", plain, "file_upload",
                          f"{plain.name}: no kiln provenance (<name>.dist-info/kiln.json): kiln publishes only "
                          "wheels it built"),
        "another variant's index": ("kiln/main", cpu, "file_upload",
                                    f"{cpu.name} belongs on kiln/cpu-torch2.14, not on kiln/main"),
        "a label that lies": ("kiln/cpu-torch2.14", lying, "file_upload",
                              f"{lying.name}: its label +cpu.torch2.14 puts it on kiln/cpu-torch2.14, but its "
                              "kiln.json says kiln built it for variant main (kiln/main)"),
        "another wheel's provenance": ("kiln/main", other, "file_upload",
                                       f"{other.name}: its kiln.json is of cell kilnapp-4.0.2-cp311-main, not of "
                                       "this wheel"),
        "an sdist": ("kiln/main", sdist, "file_upload",
                     "kiln/main takes only wheels kiln built: kilnfix-4.0.0.tar.gz is not a wheel"),
        "a register": ("kiln/main", None, "submit",
                       "kiln/main takes only file uploads of wheels kiln built, not :action 'submit'"),
        "docs": ("kiln/main", plain, "doc_upload",
                 "kiln/main takes only file uploads of wheels kiln built, not :action 'doc_upload'"),
    }


@pytest.mark.parametrize("case", ["no provenance", "another variant's index", "a label that lies",
                                  "another wheel's provenance", "an sdist", "a register", "docs"])
@pytest.mark.parametrize("who", ["kiln", "token"])
def test_the_mirror_refuses_what_kiln_did_not_build_for_the_index(site: Site, token: str, tmp_path: Path,
                                                                  case: str, who: str) -> None:
    index, path, action, line = _refusals(tmp_path)[case]
    creds = site.kiln if who == "kiln" else Credentials("__token__", token)
    before = site.published()
    body, ctype = _upload_form(path.name if path else "", path.read_bytes() if path else b"", action)
    assert _http("POST", f"{site.url}/{index}/", creds, body, ctype) == (403, line)
    assert site.published() == before


def test_uv_publish_of_a_foreign_wheel_is_refused_in_one_line(site: Site, token: str, tmp_path: Path) -> None:
    plain = kiln_wheel(tmp_path, "kilnfix", "4.1.0", provenance=False)
    res = run([UV, "publish", "--no-progress", "--publish-url", f"{site.url}/kiln/main/", str(plain)],
              {**site.env, "UV_PUBLISH_TOKEN": token})
    assert res.returncode == 2
    assert "Server returned status code 403" in res.stderr, res.stderr
    assert f"{plain.name}: no kiln provenance" in res.stderr, res.stderr
    assert plain.name not in site.published()["main"]
    # anonymous: devpi's own answer comes first, whatever the file
    anonymous = _upload_form(plain.name, plain.read_bytes())
    assert _http("POST", f"{site.url}/kiln/main/", None, *anonymous) == (401, UNAUTHORIZED)


# ----------------------------------------------------------------------------- kiln publish: what


def test_publish_of_a_missing_path_fails(site: Site, tmp_path: Path) -> None:
    res = site.publish(tmp_path / "nowhere")
    assert res.returncode == 5
    assert res.stderr == f"kiln: {tmp_path / 'nowhere'}: no such file or directory\n"


def _refused(site: Site, path: Path, line: str) -> None:
    before = site.published()
    res = site.publish(path)
    assert res.returncode == 5, res.stdout + res.stderr
    assert res.stderr == f"kiln: {line}; nothing was uploaded\n"
    assert res.stdout == ""
    assert site.published() == before


def test_a_wheel_without_provenance_is_refused(site: Site, tmp_path: Path) -> None:
    wheel = kiln_wheel(tmp_path, "kilnfix", "1.0.1", provenance=False)
    _refused(site, wheel, f"{wheel.name}: no kiln provenance (<name>.dist-info/{PROVENANCE}): kiln publishes "
             "only wheels it built")


def test_a_project_no_recipe_names_is_refused(site: Site, tmp_path: Path) -> None:
    """The issue's case: one stray wheel of a project kiln has no recipe for would hide every
    upstream release of that project on every kiln index."""
    wheel = kiln_wheel(tmp_path, "requests", "2.32.3")
    _refused(site, wheel, f"{wheel.name}: no recipe names project requests, nor is it the recorded closure of a "
             "recipe's cell: publishing it would hide every upstream release of requests on kiln's indexes")


def test_a_closure_of_no_recipes_cell_is_refused(site: Site, tmp_path: Path) -> None:
    wheel = kiln_wheel(tmp_path, "kilnorphan", "1.0.0", closure_of="kilnother-1.0.0-cp311-main")
    _refused(site, wheel, f"{wheel.name}: no recipe names project kilnorphan, nor is it the recorded closure of a "
             "recipe's cell: publishing it would hide every upstream release of kilnorphan on kiln's indexes")


def test_a_label_that_is_not_the_variant_it_was_built_for_is_refused(site: Site, tmp_path: Path) -> None:
    wheel = kiln_wheel(tmp_path, "kilncuda", "1.0.1", variant="cpu-torch2.14", built_for="main",
                       cell="kilncuda-1.0.1-cp311-main")
    _refused(site, wheel, f"{wheel.name}: its label +cpu.torch2.14 puts it on kiln/cpu-torch2.14, but its "
             f"{PROVENANCE} says kiln built it for variant main (kiln/main)")
    unlabelled = kiln_wheel(tmp_path, "kilncuda", "1.0.2", variant="cpu-torch2.14", label="")
    _refused(site, unlabelled, f"{unlabelled.name}: its no label puts it on kiln/main, but its {PROVENANCE} says "
             "kiln built it for variant cpu-torch2.14 (kiln/cpu-torch2.14)")


def test_a_label_that_is_no_variant_is_refused(site: Site, tmp_path: Path) -> None:
    wheel = kiln_wheel(tmp_path, "kilnfix", "1.0.3", label="foo")
    res = site.publish(wheel)
    assert res.returncode == 5
    assert re.fullmatch(rf"kiln: {re.escape(wheel.name)}: local label \+foo is no kiln variant: [^\n]+; "
                        r"nothing was uploaded\n", res.stderr), res.stderr


def test_provenance_of_another_wheel_is_refused(site: Site, tmp_path: Path) -> None:
    wheel = kiln_wheel(tmp_path, "requests", "2.32.3", cell="kilnfix-1.0.0-cp311-main")
    _refused(site, wheel, f"{wheel.name}: its {PROVENANCE} is of cell kilnfix-1.0.0-cp311-main, not of this wheel")


def test_one_refused_wheel_stops_the_whole_batch(site: Site, tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    batch.mkdir()
    good = kiln_wheel(tmp_path, "kilnfix", "1.0.4")
    stray = kiln_wheel(tmp_path, "requests", "2.32.4")
    bare = kiln_wheel(tmp_path, "kilnapp", "1.0.4", provenance=False)
    for w in (good, stray, bare):
        (batch / w.name).write_bytes(w.read_bytes())
    _refused(site, batch, f"{bare.name}: no kiln provenance (<name>.dist-info/{PROVENANCE}): kiln publishes only "
             f"wheels it built; {stray.name}: no recipe names project requests, nor is it the recorded closure of "
             "a recipe's cell: publishing it would hide every upstream release of requests on kiln's indexes")
    assert good.name not in site.published()["main"]


def test_recipes_projects_and_their_closures_are_published(site: Site, tmp_path: Path) -> None:
    """A variant wheel goes to its index; a closure goes with the cell that needed it (as CI
    publishes: the batch's provenance is the only record) or alone when the home recorded it."""
    batch = tmp_path / "batch"
    batch.mkdir()
    wheels = [kiln_wheel(tmp_path, "kilncuda", "1.0.0", variant="cpu-torch2.14"),
              kiln_wheel(tmp_path, "kilnapp", "1.0.0"),
              kiln_wheel(tmp_path, "kilnlib", "1.0.0", closure_of="kilnapp-1.0.0-cp311-main"),
              kiln_wheel(tmp_path, "kilnlibdep", "1.0.0", closure_of="kilnlib-1.0.0-cp311-main")]
    for w in wheels:
        (batch / w.name).write_bytes(w.read_bytes())
    res = site.publish(batch)
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == sorted(
        f"uploaded: kiln/{'cpu-torch2.14' if 'torch' in w.name else 'main'} {w.name}" for w in wheels)
    # the home recorded kilnapp's closure (kiln build does): kilnlib's own closure alone is publishable
    app = next(c for c in expand(load_recipes(site.recipes, None), load_toolchains(site.recipes))
               if c.project == "kilnapp")
    closure.save(Home(site.dep.home), app, [closure.Need("kilnlib", "1.0.0")])
    deep = kiln_wheel(tmp_path, "kilnlibdep", "1.1.0", closure_of="kilnlib-1.0.0-cp311-main")
    res = site.publish(deep)
    assert res.returncode == 0 and res.stdout.strip() == f"uploaded: kiln/main {deep.name}", res.stderr


# ----------------------------------------------------------------------------- tokens


def test_kiln_publish_with_a_token_from_ci(site: Site, token: str, tmp_path: Path) -> None:
    """CI has the mirror's URL and a token, nothing of the mirror's home."""
    wheel = kiln_wheel(tmp_path, "kilnfix", "1.1.0")
    env = {**site.env, "KILN_MIRROR_TOKEN": token}
    res = site.publish(wheel, "--mirror", site.url, env=env, home=tmp_path / "ci-home")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"uploaded: kiln/main {wheel.name}"
    assert token not in res.stdout + res.stderr


@pytest.mark.parametrize("how", ["--token", "--username"])
def test_uv_publish_with_a_token(site: Site, token: str, tmp_path: Path, how: str) -> None:
    wheel = kiln_wheel(tmp_path, "kilnfix", f"1.2.{len(how)}")
    cred = {"UV_PUBLISH_TOKEN": token} if how == "--token" else {"UV_PUBLISH_USERNAME": "kiln",
                                                                  "UV_PUBLISH_PASSWORD": token}
    res = run([UV, "publish", "--no-progress", "--publish-url", f"{site.url}/kiln/main/", str(wheel)],
              {**site.env, **cred})
    assert res.returncode == 0, res.stderr
    assert wheel.name in site.published()["main"]


def test_token_list_and_revoke(site: Site, tmp_path: Path) -> None:
    token = site.token("--days", "7")
    token_id = token_id_of(token)
    res = run([KILN, "token", "list", "--home", str(site.dep.home)], site.env)
    assert res.returncode == 0 and token_id in res.stdout and token not in res.stdout, res.stdout
    res = run([KILN, "token", "revoke", token_id, "--home", str(site.dep.home)], site.env)
    assert res.returncode == 0 and res.stdout.strip() == f"revoked token {token_id}: {site.url} refuses it from now on"
    res = run([KILN, "token", "revoke", token_id, "--home", str(site.dep.home)], site.env)
    assert res.returncode == 5
    assert res.stderr == f"kiln: {site.url}: user kiln has no token {token_id} (`kiln token list` shows them)\n"
    wheel = kiln_wheel(tmp_path, "kilnfix", "1.3.0")
    uv = run([UV, "publish", "--no-progress", "--publish-url", f"{site.url}/kiln/main/", str(wheel)],
             {**site.env, "UV_PUBLISH_TOKEN": token})
    assert uv.returncode == 2 and "Server returned status code 403 Forbidden" in uv.stderr, uv.stderr
    res = site.publish(wheel, "--mirror", site.url, env={**site.env, "KILN_MIRROR_TOKEN": token},
                       home=tmp_path / "ci-home")
    assert res.returncode == 5
    assert res.stderr == (f"kiln: {site.url} refused token {token_id} of user kiln ($KILN_MIRROR_TOKEN): HTTP 403 "
                          f"The token id {token_id} doesn't exist; issue a new one with `kiln token`\n")
    assert wheel.name not in site.published()["main"]


def token_id_of(token: str) -> str:
    return parse(token).id


def forge(token: str) -> str:
    """The token with the same id and caveats, signed with a key that is not the server's: what someone
    without the server's secret can make. (Flipping a character of the text is no forgery: the last base64
    character carries padding bits a decoder ignores, so it can give the same token back.)"""
    from pymacaroons import Macaroon  # type: ignore[import-untyped]

    real = Macaroon.deserialize(token.removeprefix("devpi-"))
    fake = Macaroon(location=real.location, identifier=real.identifier, key="not the server's secret",
                    version=real.version)
    for caveat in real.first_party_caveats():
        fake.add_first_party_caveat(caveat.caveat_id)
    forged = "devpi-" + fake.serialize()
    assert forged != token and parse(forged).id == parse(token).id
    return forged


def test_expired_forged_and_bogus_tokens_are_refused(site: Site, tmp_path: Path) -> None:
    expires = int(time.time()) + 2
    res = Devpi(site.url, site.root).request("POST", "kiln/+token-create",
                                             {"allowed": ["pkg_read", "upload"], "expires": expires})
    expired = str(res["result"]["token"])  # type: ignore[index]
    good = site.token()
    forged = forge(good)
    wheel = kiln_wheel(tmp_path, "kilnfix", "1.4.0")
    time.sleep(max(0.0, expires - time.time()) + 0.5)

    def publish_with(token: str) -> subprocess.CompletedProcess[str]:
        return site.publish(wheel, "--mirror", site.url, env={**site.env, "KILN_MIRROR_TOKEN": token},
                            home=tmp_path / "ci-home")

    res = publish_with(expired)
    assert res.returncode == 5
    assert re.fullmatch(rf"kiln: {re.escape(site.url)} refused token {token_id_of(expired)} of user kiln "
                        rf"\(\$KILN_MIRROR_TOKEN\): HTTP 403 Token expired at {expires} \([^)]+\); issue a new one "
                        r"with `kiln token`\n", res.stderr), res.stderr
    res = publish_with(forged)
    assert res.returncode == 5
    assert res.stderr == (f"kiln: {site.url} refused token {token_id_of(good)} of user kiln ($KILN_MIRROR_TOKEN): "
                          "HTTP 403 Signatures do not match; issue a new one with `kiln token`\n")
    res = publish_with("not-a-token")
    assert res.returncode == 5
    assert res.stderr == "kiln: KILN_MIRROR_TOKEN is not a token `kiln token` issued\n"
    for token in (expired, forged):
        uv = run([UV, "publish", "--no-progress", "--publish-url", f"{site.url}/kiln/main/", str(wheel)],
                 {**site.env, "UV_PUBLISH_TOKEN": token})
        assert uv.returncode == 2 and "Server returned status code 403 Forbidden" in uv.stderr, uv.stderr
    assert wheel.name not in site.published()["main"]


def test_a_wrong_password_is_refused(site: Site, tmp_path: Path) -> None:
    wheel = kiln_wheel(tmp_path, "kilnfix", "1.5.0")
    env = {**site.env, "KILN_MIRROR_USER": "kiln", "KILN_MIRROR_PASSWORD": "wrong"}
    res = site.publish(wheel, "--mirror", site.url, env=env, home=tmp_path / "ci-home")
    assert res.returncode == 5
    assert res.stderr == f"kiln: {site.url} refused user kiln: wrong password (an upload would get HTTP 401)\n"
    uv = run([UV, "publish", "--no-progress", "--publish-url", f"{site.url}/kiln/main/", str(wheel)],
             {**site.env, "UV_PUBLISH_USERNAME": "kiln", "UV_PUBLISH_PASSWORD": "wrong"})
    assert uv.returncode == 2 and "Server returned status code 401 Unauthorized" in uv.stderr, uv.stderr
    assert wheel.name not in site.published()["main"]


def test_a_token_for_one_variant_uploads_nowhere_else(site: Site, tmp_path: Path) -> None:
    token = site.token("--variant", "cpu-torch2.14")
    env = {**site.env, "KILN_MIRROR_TOKEN": token}
    ok = kiln_wheel(tmp_path, "kilncuda", "1.6.0", variant="cpu-torch2.14")
    res = site.publish(ok, "--mirror", site.url, env=env, home=tmp_path / "ci-home")
    assert res.returncode == 0 and res.stdout.strip() == f"uploaded: kiln/cpu-torch2.14 {ok.name}", res.stderr
    elsewhere = kiln_wheel(tmp_path, "kilnfix", "1.6.0")
    res = site.publish(elsewhere, "--mirror", site.url, env=env, home=tmp_path / "ci-home")
    assert res.returncode == 5
    assert res.stderr == (f"kiln: token {token_id_of(token)} of user kiln ($KILN_MIRROR_TOKEN) may upload only to "
                          "kiln/cpu-torch2.14, not to kiln/main\n")
    uv = run([UV, "publish", "--no-progress", "--publish-url", f"{site.url}/kiln/main/", str(elsewhere)],
             {**site.env, "UV_PUBLISH_TOKEN": token})
    assert uv.returncode == 2 and "Server returned status code 403 Forbidden" in uv.stderr, uv.stderr
    assert elsewhere.name not in site.published()["main"]


def test_token_needs_the_mirrors_root(site: Site, tmp_path: Path) -> None:
    res = run([KILN, "token", "--home", str(tmp_path / "elsewhere"), "--mirror", site.url], site.env)
    assert res.returncode == 5 and res.stdout == ""
    assert res.stderr == (f"kiln: {ServerFiles(Home(tmp_path / 'elsewhere')).root_password}: missing; run "
                          "`kiln serve` on this home first\n")
    res = run([KILN, "token", "--days", "400", "--home", str(site.dep.home)], site.env)
    assert res.returncode == 1 and res.stderr == "kiln: --days 400: a token lives 1 to 366 days\n"
