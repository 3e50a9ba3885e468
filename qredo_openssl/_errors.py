"""One exception base; each subclass carries the exit code that docs/contract.md gives it."""

from __future__ import annotations

from collections.abc import Sequence

EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, as a shell reports SIGINT


class QredoOpenSSLError(Exception):
    """Base of every error this package raises on purpose; ``exit_code`` is the CLI's.

    ``fix``, when set, is a command (argv) that fixes it; the CLI shows it shell-quoted.
    """

    exit_code = 1
    fix: tuple[str, ...] | None = None


class BadInputError(QredoOpenSSLError):
    """A key file, API key or request the user gave us is not usable (exit 1)."""

    exit_code = 1


class UsageError(QredoOpenSSLError):
    """The command line itself is wrong (exit 2)."""

    exit_code = 2


class ToolError(QredoOpenSSLError):
    """A system tool (OpenSSL, curl, pkcs11-tool) is missing, unusable, timed out or failed.

    Exit 3. ``stderr`` is the tool's own full stderr, decoded; ``argv`` never holds a secret,
    because nothing secret is ever put into argv.
    """

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] = (),
        returncode: int | None = None,
        stderr: str = "",
        timed_out: bool = False,
    ) -> None:
        super().__init__(message)
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.timed_out = timed_out


class OpenSSLError(ToolError):
    """OpenSSL is missing, unusable, timed out or failed (exit 3)."""


class CurlError(ToolError):
    """curl is missing, too old, or failed in a way that is not "no answer" (exit 3)."""


class AnswerError(QredoOpenSSLError):
    """The API answered, but not with what was required (a 2xx for a probe) (exit 5)."""

    exit_code = 5


class NoAnswerError(QredoOpenSSLError):
    """The request got no HTTP answer: DNS, connection, TLS or a timeout (exit 6).

    The message is curl's own; ``curl_exit`` is curl's exit code (28: timed out).
    """

    exit_code = 6

    def __init__(self, message: str, *, curl_exit: int | None = None) -> None:
        super().__init__(message)
        self.curl_exit = curl_exit


class RefusedOverwriteError(QredoOpenSSLError):
    """A target file already exists and ``force`` was not given (exit 4)."""

    exit_code = 4


class WriteError(QredoOpenSSLError):
    """A file could not be written where it belongs (a full disk, an I/O error): exit 1.

    The message names the final path, never a temporary one, and says "disk full" when it is.
    """

    exit_code = 1


class Interrupted(BaseException):
    """SIGTERM turned into an exception so that ``finally`` blocks clean up (exit 130).

    Raised again with a message (what the interrupted step left behind) and a ``fix``, the
    CLI says both after "interrupted".
    """

    fix: tuple[str, ...] | None = None
