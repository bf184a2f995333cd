"""``cpn node run`` start-up: check what can be checked before the daemon
starts, and turn whatever still stops it into one line that names the key or
file and the fix.

The daemon runs under trio, whose nurseries wrap a failure in an
``ExceptionGroup`` (one level per nursery): the real error is a leaf several
levels down.  :func:`explain` unwraps the group and maps the errors a person
can fix (a second daemon on the data dir, the identity key's mode, a listen
address in use or not on this host, the data dir not writable) to a
:class:`~node.errors.UserError` with its exit status; anything else is a bug,
reported in one line with the hint to rerun with ``--log-level debug``, which
prints the traceback.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from node.errors import ExitCode, UserError

__all__ = ["check_addresses", "check_not_running", "explain", "leaves"]


def _bind_problem(host: str, port: int) -> OSError | None:
    """Bind a throw-away TCP socket to ``(host, port)`` the way a listener
    would, without SO_REUSEPORT (so a socket another process holds with it
    still counts as taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as listeners do: TIME_WAIT is fine
        sock.bind((host, port))
    except OSError as exc:
        return exc
    finally:
        sock.close()
    return None


def _split_listen(addr: str) -> tuple[str, int]:
    parts = addr.split("/")
    if len(parts) < 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
        raise UserError(f"node.listen: {addr!r} is not a multiaddr like /ip4/0.0.0.0/tcp/4001",
                        ExitCode.BAD_INPUT)
    try:
        host = str(ipaddress.ip_address(parts[2]))
        port = int(parts[4])
    except ValueError:
        raise UserError(f"node.listen: {addr!r} needs an IP address and a TCP port, "
                        "like /ip4/0.0.0.0/tcp/4001", ExitCode.BAD_INPUT) from None
    if not 0 <= port <= 65535:
        raise UserError(f"node.listen: {addr!r}: port must be 0..65535", ExitCode.BAD_INPUT)
    return host, port


def _address_error(key: str, shown: str, host: str, port: int, exc: OSError) -> UserError:
    if exc.errno == errno.EADDRINUSE:
        return UserError(f"{key}: {shown} is already in use (another cpn node or program listens on port "
                         f"{port}); stop it or choose another port", ExitCode.START_FAILED)
    if exc.errno == errno.EADDRNOTAVAIL:
        return UserError(f"{key}: {shown}: {host} is not an address of this host; use one of its "
                         "addresses (ip -brief addr) or 0.0.0.0", ExitCode.START_FAILED)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return UserError(f"{key}: {shown}: port {port} needs privileges here; choose a port from 1024 up",
                         ExitCode.START_FAILED)
    return UserError(f"{key}: cannot listen on {shown}: {exc.strerror or exc}", ExitCode.START_FAILED)


def check_addresses(listen: list[str], data_host: str) -> None:
    """Every libp2p listen address and the data plane's host can be bound now.

    py-libp2p logs a failed bind and carries on without the address, so a
    node would start deaf; this check fails first, naming the config key."""
    for addr in listen:
        host, port = _split_listen(addr)
        problem = _bind_problem(host, port)
        if problem is not None:
            raise _address_error("node.listen", addr, host, port, problem)
    if data_host:
        problem = _bind_problem(data_host, 0)
        if problem is not None:
            raise _address_error("transfer.data_host", data_host, data_host, 0, problem)


def check_not_running(api_socket: Path, data_dir: Path) -> None:
    """No daemon answers on this data dir's API socket (checked again, race-free,
    when the API starts: this check only makes the common case fail first)."""
    if not api_socket.exists():
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(api_socket))
    except OSError:
        return  # a stale socket of a crashed daemon: the API removes it
    finally:
        sock.close()
    raise UserError(f"a daemon is already running on {api_socket}: another daemon uses the data dir {data_dir}; "
                    "stop it (cpn status shows it) or start this one with another --data-dir",
                    ExitCode.START_FAILED)


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, or ``exc`` itself."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def _known(exc: BaseException, config: Any) -> UserError | None:
    """One line for an error a person can fix, or None."""
    from node.api.server import DaemonAlreadyRunning
    from node.config import ConfigError
    from node.keys import KeyFileError

    data_dir = config.data_dir
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, ConfigError):
        return UserError(f"config: {exc}", ExitCode.BAD_INPUT)
    if isinstance(exc, DaemonAlreadyRunning):
        return UserError(f"{exc}: another daemon uses the data dir {data_dir}; stop it (cpn status shows it) "
                         "or start this one with another --data-dir", ExitCode.START_FAILED)
    if isinstance(exc, KeyFileError):
        text = str(exc)
        fix = "" if "chmod" in text else "; restore it from your backup, or move it away to make a new identity"
        return UserError(f"identity key: {text}{fix}", ExitCode.START_FAILED)
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return UserError(f"cannot write{where}: {exc.strerror}; the data dir {data_dir} must be writable "
                             "by this user (or pass another --data-dir)", ExitCode.START_FAILED)
        if exc.errno == errno.ENOSPC:
            return UserError(f"no space left on the device of{where or ' the data dir'}; free some space",
                             ExitCode.START_FAILED)
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            return UserError(f"node.listen or transfer.data_host: {exc.strerror}; check both addresses",
                             ExitCode.START_FAILED)
        if "AF_UNIX path too long" in str(exc):
            return UserError(f"api.socket: the socket path under {data_dir} is too long for a Unix socket "
                             "(at most 107 bytes); use a shorter --data-dir or set api.socket",
                             ExitCode.START_FAILED)
        return UserError(f"cannot start the node: {exc}", ExitCode.START_FAILED)
    return None


def explain(exc: BaseException, config: Any) -> UserError | None:
    """The one-line error for a failed start (None: an unexpected error, a bug).

    A group of several errors is explained by its first fixable one: the
    others are usually consequences (services cancelled as the first failed)."""
    for leaf in leaves(exc):
        known = _known(leaf, config)
        if known is not None:
            return known
    return None
