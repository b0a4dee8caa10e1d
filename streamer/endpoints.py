"""Broker, Redis and listen addresses parsed from their text once, for validation and clients.

``mqtt[s]://[user[:password]@]host[:port]`` and
``redis[s]://[user[:password]@]host[:port][/db][?db=N&username=U&password=P]`` become frozen
endpoints; config validation, the service and the tools all read URLs through this module so
they agree on what a URL means.  Error messages say what is wrong without quoting a password;
``redact_url`` masks passwords for logging, even in URLs these parsers refuse.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import SplitResult, parse_qsl, quote, unquote, unquote_plus, urlsplit

from streamer.errors import EndpointError

PASSWORD_MASK = "***"

MQTT_SCHEMES = {"mqtt": False, "mqtts": True}  # scheme -> TLS
REDIS_SCHEMES = {"redis": False, "rediss": True}
MQTT_DEFAULT_PORTS = {False: 1883, True: 8883}  # TLS -> port
REDIS_DEFAULT_PORT = 6379
# The query parameters a Redis URL may carry; redis-py would pass any other one on to its
# connection as a keyword, and a client built from a RedisEndpoint would silently drop it.
REDIS_QUERY_PARAMETERS = ("db", "username", "password")
# Query parameters whose value redact_url masks (compared case-insensitively).
SECRET_QUERY_PARAMETERS = frozenset(("password", "passwd", "pass", "pwd", "secret", "token"))

_LOWEST_PORT = 1
_HIGHEST_PORT = 65535


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    """An MQTT broker and the credentials to present; the password never appears in ``repr``."""

    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)
    tls: bool

    @property
    def display(self) -> str:
        """The URL with the password masked, for logs and messages."""
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{_display_userinfo(self.username, self.password)}" + _display_host(
            self.host, self.port
        )


@dataclass(frozen=True, slots=True)
class RedisEndpoint:
    """A Redis server, database and credentials; the password never appears in ``repr``."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None = field(repr=False)
    tls: bool

    @property
    def display(self) -> str:
        """The URL with the password masked, for logs and messages."""
        scheme = "rediss" if self.tls else "redis"
        userinfo = _display_userinfo(self.username, self.password)
        return f"{scheme}://{userinfo}{_display_host(self.host, self.port)}/{self.db}"


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where a server listens: an explicit host (IPv6 without brackets) and a port."""

    host: str
    port: int

    @property
    def display(self) -> str:
        return _display_host(self.host, self.port)


def parse_mqtt_url(url: str, password: str | None = None) -> MqttEndpoint:
    """The broker named by ``mqtt[s]://[user[:password]@]host[:port]``.

    ``password``, when not empty (from ``STREAMER_MQTT_PASSWORD`` or its file), replaces one in
    the URL.  Raises EndpointError for anything else: another scheme, no host, a port outside
    1..65535, a path, query or fragment.
    """
    parts = _split(url, MQTT_SCHEMES)
    if parts.result.path not in ("", "/") or parts.result.query or parts.result.fragment:
        raise EndpointError(
            "an MQTT URL has no path, query or fragment: mqtt[s]://[user[:password]@]host[:port]"
        )
    return MqttEndpoint(
        host=parts.host,
        port=parts.port if parts.port is not None else MQTT_DEFAULT_PORTS[parts.tls],
        username=parts.username,
        password=password or parts.password,
        tls=parts.tls,
    )


def parse_redis_url(url: str, password: str | None = None) -> RedisEndpoint:
    """The server named by ``redis[s]://[user[:password]@]host[:port][/db][?query]``.

    The database number comes from the path or ``?db=`` (default 0); the query may also carry
    ``username`` and ``password``, but none of them twice.  ``password``, when not empty (from
    ``STREAMER_REDIS_PASSWORD`` or its file), replaces one in the URL.
    """
    parts = _split(url, REDIS_SCHEMES)
    if parts.result.fragment:
        raise EndpointError("a Redis URL has no fragment (#...)")
    query = _redis_query(parts.result.query)
    path_db = parts.result.path.removeprefix("/")
    if path_db and "db" in query:
        raise EndpointError("give the database number in the path or as ?db=, not both")
    if parts.username is not None and "username" in query:
        raise EndpointError("give the user name before the host or as ?username=, not both")
    if parts.password is not None and "password" in query:
        raise EndpointError("give the password before the host or as ?password=, not both")
    url_password = parts.password if parts.password is not None else query.get("password")
    return RedisEndpoint(
        host=parts.host,
        port=parts.port if parts.port is not None else REDIS_DEFAULT_PORT,
        db=_database_number(path_db or query.get("db", "0")),
        username=parts.username or query.get("username") or None,
        password=password or url_password or None,
        tls=parts.tls,
    )


def parse_listen_address(text: str) -> ListenAddress:
    """``HOST:PORT`` or ``[IPv6]:PORT`` with the host always given.

    An empty host would bind every interface, which must be asked for explicitly as
    ``0.0.0.0`` (IPv4) or ``[::]`` (IPv6).
    """
    example = "127.0.0.1:9108 for this machine only, 0.0.0.0:9108 or [::]:9108 for every interface"
    if _has_space_or_control(text):
        raise EndpointError("contains whitespace or control characters")
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise EndpointError(f"must be [IPv6]:PORT or HOST:PORT, e.g. {example}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise EndpointError(f"{host!r} in brackets is not an IPv6 address") from None
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise EndpointError(f"must be HOST:PORT, e.g. {example}")
        if not host:
            raise EndpointError(f"names no host: give one explicitly, e.g. {example}")
        if ":" in host:
            raise EndpointError(f"an IPv6 address goes in brackets, e.g. [{host}]:{port_text}")
        _check_host_name(host)
    if not port_text:
        raise EndpointError(f"names no port, e.g. {example}")
    return ListenAddress(host=host, port=_port_number(port_text))


def redact_url(url: str) -> str:
    """``url`` with every password masked, safe to log; never raises.

    Masks the password of the user info (which may itself contain ``@`` and ``:``) and the
    value of a ``?password=`` query parameter.  A password holding an unencoded ``/``, ``?``
    or ``#`` ends the host part early and leaves an ``@`` further on: then everything from
    ``//`` to the last ``@`` is masked, since where the password ends cannot be told.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return _redact_query(_redact_through_last_at(url))
    if _at_sign_after_netloc(parts):
        return _redact_query(_redact_through_last_at(url))
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        username, colon, _ = userinfo.partition(":")
        if colon:
            netloc = f"{username}:{PASSWORD_MASK}@{hostport}"
    query = _redact_query_string(parts.query)
    return SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment).geturl()


# --------------------------------------------------------------------------- internals


class _SplitUrl(NamedTuple):
    result: SplitResult
    tls: bool
    host: str
    port: int | None  # None: the scheme's default
    username: str | None
    password: str | None


def _split(url: str, schemes: dict[str, bool]) -> _SplitUrl:
    expected = " or ".join(f"{scheme}://" for scheme in schemes)
    if _has_space_or_control(url):
        # urlsplit would silently drop tabs and newlines, so they never reach a client.
        raise EndpointError("contains whitespace or control characters")
    try:
        result = urlsplit(url)
    except ValueError as exc:
        raise EndpointError(f"not a valid URL ({exc})") from None
    if result.scheme not in schemes or not url[len(result.scheme) + 1 :].startswith("//"):
        raise EndpointError(f"must start with {expected}, got {redact_url(url)!r}")
    if _at_sign_after_netloc(result):
        raise EndpointError(
            "the user name or password contains '/', '?', '#' or '@': percent-encode it "
            "(e.g. %2F for '/', %40 for '@')"
        )
    _, _, hostport = result.netloc.rpartition("@")
    host, port_text = _host_and_port_text(hostport)
    if not host:
        raise EndpointError(f"names no host, e.g. {next(iter(schemes))}://host:port")
    username = unquote(result.username) if result.username else None
    password = unquote(result.password) if result.password else None
    return _SplitUrl(
        result=result,
        tls=schemes[result.scheme],
        host=host,
        port=_port_number(port_text) if port_text else None,
        username=username,
        password=password,
    )


def _host_and_port_text(hostport: str) -> tuple[str, str]:
    """Host (IPv6 without brackets) and port text ("" when absent) of ``host[:port]``."""
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise EndpointError("an IPv6 host in brackets may be followed only by :PORT")
        return host, rest[1:]
    host, _, port_text = hostport.partition(":")
    _check_host_name(host)
    return host, port_text


def _check_host_name(host: str) -> None:
    # Host names and IPv4 addresses; Unicode letters pass for internationalised names.
    if not all(ch.isalnum() or ch in ".-_" for ch in host):
        raise EndpointError(f"host {host!r} is not a host name or IP address")


def _port_number(text: str) -> int:
    # The text is quoted only when it is digits: anything else may be a stray piece of a
    # password (``user:secret`` with the ``@host`` forgotten reads as host ``user``).
    if not (text.isascii() and text.isdigit()):
        raise EndpointError(f"the port is not a number (expected {_LOWEST_PORT}..{_HIGHEST_PORT})")
    port = int(text)
    if not _LOWEST_PORT <= port <= _HIGHEST_PORT:
        raise EndpointError(f"port {port} is out of range {_LOWEST_PORT}..{_HIGHEST_PORT}")
    return port


def _database_number(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise EndpointError(f"the database number must be an integer >= 0, got {text!r}")
    return int(text)


def _redis_query(query: str) -> dict[str, str]:
    if not query:
        return {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise EndpointError("the query is not name=value pairs joined by '&'") from None
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in REDIS_QUERY_PARAMETERS:
            raise EndpointError(
                f"unsupported query parameter {name!r} (supported: "
                f"{', '.join(REDIS_QUERY_PARAMETERS)})"
            )
        if name in values:
            raise EndpointError(f"query parameter {name!r} is given twice")
        values[name] = value
    return values


def _at_sign_after_netloc(parts: SplitResult) -> bool:
    return "@" in parts.path or "@" in parts.query or "@" in parts.fragment


def _redact_through_last_at(url: str) -> str:
    at = url.rfind("@")
    if at < 0:
        return url
    slashes = url.find("//")
    start = slashes + 2 if 0 <= slashes < at else 0
    return url[:start] + PASSWORD_MASK + url[at:]


def _redact_query(url: str) -> str:
    head, question, query = url.partition("?")
    return head + question + _redact_query_string(query) if question else url


def _redact_query_string(query: str) -> str:
    items = []
    for item in query.split("&"):
        name, equals, _ = item.partition("=")
        if equals and unquote_plus(name).lower() in SECRET_QUERY_PARAMETERS:
            item = f"{name}={PASSWORD_MASK}"
        items.append(item)
    return "&".join(items)


def _display_userinfo(username: str | None, password: str | None) -> str:
    user = quote(username, safe="") if username else ""
    if password:
        return f"{user}:{PASSWORD_MASK}@"
    return f"{user}@" if user else ""


def _display_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _has_space_or_control(text: str) -> bool:
    return any(ch.isspace() or not ch.isprintable() for ch in text)
