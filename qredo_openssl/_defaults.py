"""Defaults shared by the library and the CLI, in a module of their own: ``--help`` shows
them without loading anything heavy."""

QREDO_BITS = 2048  # what Qredo's "Generate keys" page documents
ALLOWED_BITS = (2048, 3072, 4096)
DEFAULT_TIMEOUT = 120.0  # seconds for one OpenSSL command
