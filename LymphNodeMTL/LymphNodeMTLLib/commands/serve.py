"""`lymphnode-mtl serve`: the engine resident in its own process behind the HTTP API (docs/server-api.md).

Local by default (127.0.0.1, no token needed); a shared GPU server binds another address and then
must have a token. Once the socket is bound, one line `listening on http://HOST:PORT` goes to
stdout so a parent process (the Slicer module) learns the port it asked the system to pick.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path

from ..core.errors import InputError
from .parent_watch import process_alive, stop_with_parent

TOKEN_ENV = "LYMPHNODE_MTL_TOKEN"
DEFAULT_MAX_UPLOAD_MB = 2048.0  # a 512x512x1000 float32 CT fits
DEFAULT_VOLUME_CACHE_MB = 8192.0


EPILOG = """\
Serves the engine over HTTP (API: docs/server-api.md). Binds 127.0.0.1 unless told otherwise; off
loopback a token is required.
"""


def add_arguments(s) -> None:
    """The `serve` subcommand's options."""
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this computer only)")
    s.add_argument("--port", type=int, default=0,
                   help="TCP port; 0 picks a free one (default), printed as 'listening on URL'")
    s.add_argument("--token", help="require 'Authorization: Bearer TOKEN' (visible to other users in "
                                   f"the process list: prefer --token-file or ${TOKEN_ENV})")
    s.add_argument("--token-file", metavar="FILE", help="read the token from FILE")
    s.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (with --tls-key)")
    s.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    s.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                   help=f"largest CT upload accepted (default {DEFAULT_MAX_UPLOAD_MB:.0f})")
    s.add_argument("--volume-cache-mb", type=float, default=DEFAULT_VOLUME_CACHE_MB, metavar="MB",
                   help="memory for CTs held between jobs; least recently used go first "
                        f"(default {DEFAULT_VOLUME_CACHE_MB:.0f})")
    s.add_argument("--model", action="append", metavar="DIR",
                   help="an allowed model folder (repeat for several; the first is the default; "
                        "default: the bundled demo model)")
    s.add_argument("--device", default="auto", metavar="auto|cpu|cuda",
                   help="where the engines run (default auto: a GPU when there is one)")
    s.add_argument("--no-warm-up", action="store_true",
                   help="skip the small prediction each engine makes at start (the first job then pays for it)")
    s.add_argument("--parent-pid", type=int, metavar="PID",
                   help="stop when process PID ends (a parent that starts the server and may crash)")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(args) -> str | None:
    """--token, else --token-file, else $LYMPHNODE_MTL_TOKEN; None when none is given."""
    token = args.token
    if token is None and args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as e:
            raise InputError(f"cannot read the token file ({e.strerror}); check --token-file") from None
        if not token:
            raise InputError("the token file is empty; write the token into it")
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    if token is not None and (not token.strip() or any(c.isspace() for c in token.strip())):
        raise InputError("the token must be non-empty and hold no spaces")
    return token.strip() if token else None


def _check_tls(args) -> None:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise InputError("give both --tls-cert and --tls-key, or neither")
    for option, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not Path(path).is_file():
            raise InputError(f"{option} file not found; check the path")


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        if os.name != "nt":  # on Windows this would let a second server take the same port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        raise InputError(f"cannot listen on {host} port {port} ({e.strerror or e}); "
                         "choose another --host/--port (0 picks a free port)") from None
    return sock


def run(args) -> None:
    token = resolve_token(args)
    loopback = is_loopback(args.host)
    if not loopback and token is None:
        raise InputError(f"refusing to listen on {args.host} without a token; give --token-file FILE "
                         f"or ${TOKEN_ENV} (or keep the default --host 127.0.0.1)")
    _check_tls(args)
    if args.max_upload_mb <= 0 or args.volume_cache_mb <= 0:
        raise InputError("--max-upload-mb and --volume-cache-mb must be positive")
    if args.parent_pid is not None and not process_alive(args.parent_pid):
        raise InputError(f"--parent-pid {args.parent_pid} is not a running process")

    import uvicorn

    from ..server.app import create_app
    from ..server.inference_service import InferenceService

    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = InferenceService(args.model or [None], device=args.device,
                               max_volume_bytes=int(args.volume_cache_mb * 2**20))
    app = create_app(service, token=token, max_upload_bytes=int(args.max_upload_mb * 2**20),
                     allow_from_file=loopback)
    sock = _bind(args.host, args.port)
    port = sock.getsockname()[1]
    shown = f"[{args.host.strip('[]')}]" if ":" in args.host else args.host
    scheme = "https" if args.tls_cert else "http"
    print(f"listening on {scheme}://{shown}:{port}", flush=True)
    config = uvicorn.Config(app, log_config=None, access_log=False, server_header=False,
                            ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key, timeout_keep_alive=60,
                            timeout_graceful_shutdown=5)  # long polls must not hold up a stop
    if not args.no_warm_up:
        service.warm_up()  # behind the URL line: a client may send its CT meanwhile
    if args.parent_pid is not None:
        stop_with_parent(args.parent_pid)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        service.close()
        sock.close()

