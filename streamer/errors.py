"""The project's small exception tree; third-party errors are translated into these at the edges."""


class StreamerError(Exception):
    """Base of every error streamer raises on purpose."""


class ConfigError(StreamerError):
    """Invalid service config or index definition; the message names the file, field and problem."""


class EndpointError(StreamerError):
    """A broker, Redis or listen address that cannot be used; says what is wrong, not where."""


class StateError(StreamerError):
    """A stored state that cannot be used with this config; the message says why and how to
    start afresh."""


class InputError(StreamerError):
    """A message that cannot be used (malformed, wrong type); carries a reason code for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
