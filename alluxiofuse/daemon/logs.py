"""The daemon's log: one line per event, at the chosen level, with secrets never written.

Secrets are the values of under-storage options whose names say they are secret (keys,
passwords, tokens, at any depth: ``client_kwargs = {aws_secret_access_key = ...}``), the
etcd password, and passwords in URLs (``https://user:password@host``). They are redacted
from every formatted line, whichever logger or library wrote it: an exception message
that echoes a request can carry a credential as easily as our own lines can.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
from collections.abc import Mapping
from typing import Any

from alluxiofuse.config import MountConfig, default_log_file

REDACTED = "***"
# Option names whose values are secret. "key" alone is s3fs's access key id: redacted too;
# a connection string (Azure's) carries an account key.
_SECRET_NAME = re.compile(r"secret|passw|token|credential|key|session|sig|auth|sas|conn",
                          re.IGNORECASE)
# user:password@ in a URL; the password may hold '@' and '/': it runs to the last '@'
# before the end of the word.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)\S*@")
_SHORTEST_SECRET = 4  # shorter values would redact ordinary words and numbers


def secrets_of(config: MountConfig) -> list[str]:
    """The secret values of ``config``, longest first (so that none is left half-redacted)."""
    found: list[str] = []
    _mask(dict(config.ufs_options), False, found)
    if config.etcd_password:
        found.append(config.etcd_password)
    return sorted({s for s in found if len(s) >= _SHORTEST_SECRET}, key=len, reverse=True)


def mask_secrets(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with every secret value replaced by ``***``, at any depth."""
    masked: dict[str, Any] = _mask(dict(options), False, [])
    return masked


def _mask(value: Any, secret: bool, found: list[str]) -> Any:
    """``value`` with the values under secret-named keys masked; those values go to
    ``found``. A key's name makes everything below it secret."""
    if isinstance(value, Mapping):
        return {name: _mask(item, secret or bool(_SECRET_NAME.search(str(name))), found)
                for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(item, secret, found) for item in value]
    if secret and value is not None and not isinstance(value, bool):
        found.append(str(value))
        return REDACTED
    return value


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every secret, and every password in a URL, replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED + "@", text)


class OneLineFormatter(logging.Formatter):
    """Formats a record, traceback included, as one line, with the secrets redacted."""

    def __init__(self, fmt: str, secrets: list[str]) -> None:
        super().__init__(fmt)
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record), self._secrets)
        return text.replace("\r", "").replace("\n", " | ")


# The default log file (a background daemon without --log-file) is bounded: past this
# size it is renamed to NAME.log.1 (replacing the one before) and begun anew.
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024


def setup_logging(config: MountConfig, *, background: bool) -> None:
    """One line per event to ``--log-file``, else stderr (foreground) or, in the
    background, :func:`~alluxiofuse.config.default_log_file` (rotated at
    DEFAULT_LOG_MAX_BYTES): a daemon's log is always somewhere a user finds it."""
    handler: logging.Handler
    if config.log_file:
        handler = logging.FileHandler(config.log_file)
    elif not background:
        handler = logging.StreamHandler()
    else:
        path = default_log_file(config.mountpoint)
        os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=DEFAULT_LOG_MAX_BYTES, backupCount=1)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(OneLineFormatter(fmt, secrets_of(config)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.logging_level)
    # Per-request INFO lines from HTTP clients would drown ours.
    for noisy in ("httpx", "httpcore", "pyfuse3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, config.logging_level))
