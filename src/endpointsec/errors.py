"""The whole exception tree of endpointsec.

::

    EndpointSecError
    ├── ConfigurationError (also ValueError)      raised at start-up, names the key
    ├── RequestError                              the request itself is malformed -> 400
    │   └── PathError                             bad percent-escape, NUL, bad method ...
    ├── AuthenticationError                       who is calling is not established -> 401
    │   ├── CertificateError                      missing, unparsable or unverifiable certificate
    │   │   └── ForwardedCertificateError         a proxy header that cannot be trusted or parsed
    │   └── TokenError                            missing, malformed or invalid bearer token
    ├── AuthorizationError                        the caller is known but not allowed -> 403
    └── UpstreamError                             something we depend on failed -> 503
        ├── KeySetUnavailable                     no usable signing key could be obtained
        └── PolicyStoreUnavailable                the policy database could not be reached

Messages are specific (they go to logs and exceptions: "token is missing the 'exp'
claim"); responses on the wire are generic and never carry the message of an
exception, a token, a header or a key.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "CertificateError",
    "ConfigurationError",
    "EndpointSecError",
    "ForwardedCertificateError",
    "KeySetUnavailable",
    "PathError",
    "PolicyStoreUnavailable",
    "RequestError",
    "TokenError",
    "UpstreamError",
]


class EndpointSecError(Exception):
    """Root of every exception endpointsec raises on purpose."""

    #: HTTP status a failure of this kind maps to (500 only for the root).
    status_code: int = 500


class ConfigurationError(EndpointSecError, ValueError):
    """The configuration is invalid. Raised at start-up; the message names the key.

    A file read by :func:`endpointsec.load_config` reports every invalid key at once:
    :attr:`errors` lists one error per key (``.key`` is its dotted name, ``.message``
    the problem), and the message lists them all, one per line.
    """

    def __init__(self, message: str, *, key: str | None = None,
                 errors: list[ConfigurationError] | None = None) -> None:
        self.key = key
        self.message = message
        #: Every error found (this one alone when it is a single error).
        self.errors: list[ConfigurationError] = list(errors) if errors else [self]
        super().__init__(f"{key}: {message}" if key else message)

    @classmethod
    def collect(cls, errors: list[ConfigurationError]) -> ConfigurationError:
        """One error for several: the first one's key, a message listing them all."""
        if len(errors) == 1:
            return errors[0]
        lines = "\n".join(f"  {e}" for e in errors)
        return cls(f"{len(errors)} configuration errors:\n{lines}", key=errors[0].key,
                   errors=errors)

    def __str__(self) -> str:
        if len(self.errors) > 1:
            return self.message
        return super().__str__()


class RequestError(EndpointSecError):
    """The request is malformed (400)."""

    status_code = 400


class PathError(RequestError):
    """The request path or method cannot be normalized safely (400)."""


class AuthenticationError(EndpointSecError):
    """The caller's identity could not be established (401)."""

    status_code = 401
    #: RFC 6750 ``error`` code for ``WWW-Authenticate`` (``invalid_token`` ...), if any.
    oauth_error: str | None = None


class CertificateError(AuthenticationError):
    """The client certificate is missing, malformed, or fails verification."""


class ForwardedCertificateError(CertificateError):
    """A certificate forwarded by a proxy cannot be trusted or parsed."""


class TokenError(AuthenticationError):
    """The bearer token is malformed or invalid."""

    def __init__(self, message: str, *, oauth_error: str | None = "invalid_token") -> None:
        self.oauth_error = oauth_error
        super().__init__(message)


class AuthorizationError(EndpointSecError):
    """The caller is known but the policy does not allow the request (403)."""

    status_code = 403


class UpstreamError(EndpointSecError):
    """A dependency (a key set endpoint, a policy store) failed (503)."""

    status_code = 503


class KeySetUnavailable(UpstreamError):
    """No usable signing key could be obtained for the token's issuer."""


class PolicyStoreUnavailable(UpstreamError):
    """The policy database could not be read or written (the last good policy stays)."""
