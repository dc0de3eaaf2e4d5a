"""`orchestrate dashboard`: optuna-dashboard's web app on a study's storage.

The app is served by the standard library's WSGI server, one thread per request, bound
to 127.0.0.1 unless asked otherwise: the dashboard has no login, and it can change a
study (notes, deleting studies), so it is not opened to the network by default.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socketserver
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from orchestrator.errors import DashboardError

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    # The page loads several API calls at once; one slow call must not hold the rest.
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """Request lines go to the debug log (-vv), not to stderr for every poll the page
    makes."""

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


@dataclass(frozen=True)
class Dashboard:
    server: WSGIServer
    url: str

    def serve(self) -> None:
        """Serves until Ctrl-C (which ends it normally) or SIGTERM."""
        try:
            self.server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.server.server_close()


def open_dashboard(
    storage: optuna.storages.BaseStorage, host: str, port: int, study_id: int | None
) -> Dashboard:
    """Binds the dashboard to host:port; a port in use is the user's to change (exit 2)."""
    import optuna_dashboard

    app: Any = optuna_dashboard.wsgi(storage)
    try:
        server = make_server(
            host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise DashboardError(
                f"--port {port} is already in use on {host}; choose a free one with "
                f"--port (e.g. --port {port + 1})"
            ) from error
        raise DashboardError(
            f"cannot listen on --host {host} --port {port}: {error.strerror or error}"
        ) from error

    if not _is_loopback(host):
        logger.warning(
            "the dashboard has no login and can change studies; --host %s lets anyone "
            "who can reach this machine use it",
            host,
        )
    shown_host = f"[{host}]" if ":" in host else host
    path = f"/dashboard/studies/{study_id}" if study_id is not None else "/dashboard/"
    return Dashboard(server=server, url=f"http://{shown_host}:{server.server_port}{path}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
