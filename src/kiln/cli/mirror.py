"""The commands over the mirror, its users and its clients: status, serve, stop, publish, token,
config, doctor, mirror, export, import."""

from __future__ import annotations

import argparse
from pathlib import Path

from kiln.cli.build import on_mirror
from kiln.cli.common import console, err_console, load, refresh_status, upstream_of
from kiln.errors import ConfigError, KilnError
from kiln.home import Home
from kiln.matrix import Variant, expand
from kiln.recipe import load_recipes
from kiln.toolchains import Toolchains, load_toolchains


def cmd_status(args: argparse.Namespace) -> int:
    from kiln import status
    from kiln.mirror import running
    from kiln.plan import cell_status

    toolchains, cells = load(args)
    home = Home(Path(args.home))
    published = on_mirror(home, args.mirror, cells)
    current = None if args.mirror else running(home)
    url = args.mirror.rstrip("/") if args.mirror else (current.url if current else None)
    out = Path(args.out) if args.out else home.wheelhouse
    rows = cell_status(status.unique(cells), toolchains, home, out, published)
    page = status.with_upstream(status.collect(rows, cells, home, url, out), rows,
                                upstream_of(args, [r.project for r in rows]))
    if args.json:
        print(status.render_json(page), end="")
    if args.html:
        out = Path(args.html)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(status.render_html(page), encoding="utf-8")
        err_console.print(f"wrote {out}", markup=False, highlight=False)
    if not args.json and not args.html:
        counts = ", ".join(f"{n} {s}" for s, n in page.counts.items() if n)
        console.print(f"{sum(page.counts.values())} cells: {counts or 'none'}; --html FILE writes the page, "
                      "--json prints its data" + (f"; the mirror serves it at {url}{status.PATH}" if current else ""),
                      markup=False, highlight=False)
    return 0


def variants_of(args: argparse.Namespace) -> tuple[Toolchains | None, list[Variant]]:
    """The toolchain table and every variant the recipes declare (none without recipes)."""
    recipes_dir = Path(args.recipes)
    if not (recipes_dir / "toolchains.yaml").is_file():
        return None, []
    toolchains = load_toolchains(recipes_dir)
    cells = expand(load_recipes(recipes_dir, None), toolchains)
    return toolchains, sorted({c.variant for c in cells}, key=str)


def cmd_serve(args: argparse.Namespace) -> int:
    from kiln import mirror

    home = Home(Path(args.home))
    toolchains, variants = variants_of(args)
    with home.lock("kiln serve", wait=not args.no_wait):
        served, procs = mirror.serve(home, variants, toolchains, mirror.ServeOptions(
            host=args.host, port=args.port, upstream=args.upstream, background=args.background,
            storage=args.storage, replica_of=args.replica_of))
    for note in served.notes:
        err_console.print(f"[yellow]note:[/] {note}")
    state = "started" if served.started else "already running"
    console.print(f"mirror {state} at {served.url} (nginx in front of devpi-server pid {served.pid}, "
                  f"home {home.root})")
    if args.replica_of:
        console.print(f"a replica of {args.replica_of}: its indexes follow the primary's")
    else:
        console.print(f"indexes: {', '.join(served.indexes)}"
                      + (f" (created or updated: {', '.join(served.changed)})" if served.changed else ""))
    if not procs or args.background:
        if args.background and served.started:
            console.print(f"stop it with: kiln stop --home {home.root}")
        return 0
    console.print("serving in the foreground; Ctrl-C stops it")
    return mirror.wait(home, procs)


def cmd_stop(args: argparse.Namespace) -> int:
    from kiln import mirror

    home = Home(Path(args.home))
    stopped = mirror.stop(home)
    console.print(f"stopped the mirror at {stopped.url} (pid {stopped.pid})" if stopped
                  else f"no mirror running for {home.root}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from kiln.mirror.publish import mirror_url, publish, wheels_at

    home = Home(Path(args.home))
    path = Path(args.wheelhouse) if args.wheelhouse else home.wheelhouse
    wheels = wheels_at(path)
    if not wheels:
        console.print(f"no wheels in {path}")
        return 0
    url = mirror_url(home, args.mirror)
    toolchains, cells = load(args)
    for res in publish(wheels, url, home, cells):
        console.print(f"{'uploaded' if res.uploaded else 'already there'}: {res.index} {res.wheel}")
    refresh_status(home, cells, toolchains)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from kiln.mirror import tokens
    from kiln.mirror.publish import mirror_url
    from kiln.mirror.server import root_credentials

    home = Home(Path(args.home))
    url = mirror_url(home, args.mirror)
    root = root_credentials(home)
    if args.token_command == "list":
        console.print(tokens.table(tokens.tokens(url, root)))
        return 0
    if args.token_command == "revoke":
        if not args.id:
            raise KilnError("kiln token revoke ID: name the token (`kiln token list` shows them)")
        tokens.revoke(url, root, args.id)
        console.print(f"revoked token {args.id}: {url} refuses it from now on")
        return 0
    issued = tokens.create(url, root, args.days, args.variant)
    print(issued.token)  # the only place it is ever shown: stdout alone, for `> file` or a CI secret
    err_console.print(f"token {issued.id} of user {issued.user}: may upload to "
                      f"{', '.join(issued.indexes) or 'every kiln index'} on {url} until "
                      f"{issued.expires:%Y-%m-%d %H:%M} UTC, nothing else; give it to CI as the secret "
                      f"KILN_MIRROR_TOKEN (or `uv publish --token`); `kiln token revoke {issued.id}` ends it",
                      markup=False, highlight=False)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from kiln import clientconfig

    if args.variant == "auto":
        found = clientconfig.detect(args.python_exe, args.mirror)
        err_console.print(f"found {found.describe()}", markup=False, highlight=False)
        variant = found.variant
    else:
        variant = Variant.parse(args.variant)
    formats = [args.format] if args.format else list(clientconfig.FORMATS)
    blocks = [clientconfig.render(variant, args.mirror or clientconfig.default_mirror(), f) for f in formats]
    print("\n\n".join(blocks))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from kiln.clientconfig import current_python
    from kiln.doctor import doctor
    from kiln.errors import DoctorProblems

    report = doctor(args.python_exe or current_python(), args.mirror)
    for line in report.render():
        print(line)
    if report.problems:
        n = len(report.problems)
        raise DoctorProblems(f"{n} problem{'s' if n > 1 else ''} with the kiln wheels in {report.python}")
    return 0


def cmd_mirror(args: argparse.Namespace) -> int:
    from kiln.mirror import deploy

    dest = Path(args.dir)
    if args.mirror_command == "render":
        for path in deploy.render(dest):
            console.print(f"wrote {path}")
        return 0
    stale = deploy.stale(dest)
    if stale:
        raise ConfigError(f"{dest}: {', '.join(stale)} differ from what kiln renders; run `kiln mirror render`")
    console.print(f"ok: {dest} matches what kiln renders")
    console.print(f"ok: nginx -t: {deploy.nginx_test(dest / 'nginx' / 'nginx.conf')}")
    checked = deploy.compose_config(dest / "compose.yaml")
    console.print(f"ok: {dest / 'compose.yaml'}: {checked}" if checked
                  else f"skipped: {dest / 'compose.yaml'}: neither docker compose nor check-jsonschema is here")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from kiln import mirror

    count = mirror.export(Home(Path(args.home)), Path(args.dir))
    console.print(f"exported the mirror of {args.home} to {args.dir}: {count} release files, every user and index; "
                  "it holds the mirror's passwords: keep it private")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from kiln import mirror

    home = Home(Path(args.home))
    mirror.import_(home, Path(args.dir), args.storage)
    console.print(f"imported {args.dir} into {home.root}; start it with `kiln serve --home {home.root}`")
    return 0
