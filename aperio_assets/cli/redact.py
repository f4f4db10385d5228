"""A logging filter that removes credentials from every record, for ``--debug`` output: botocore's
debug logs print the access key id (``Credential=AKIA…/…`` in the Authorization header), and other
libraries may print keys, secrets or session tokens."""

from __future__ import annotations

import logging
import os
import re

REDACTED = "<redacted>"
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
# A header's value: quoted (as in a headers dict's repr) or up to a quote, a backslash (an escaped
# \r\n in a bytes repr), an '&' (the next query parameter) or the end of the line.
_VALUE = r"""(?:'[^']*'|"[^"]*"|[^'"\\&\r\n]+)"""
_PATTERNS = (
    # Authorization and X-Amz-Security-Token headers (SigV4, SigV2 "AWS key:signature", bearer
    # tokens; ``x-amz-security-token:…`` in a canonical request), X-Amz-Credential in presigned URLs.
    re.compile(r"((?:Authorization|X-Amz-Security-Token|X-Amz-Credential)['\"]?\s*[:=]\s*b?)" + _VALUE, re.IGNORECASE),
    re.compile(r"(Credential=)[^/,\s'\"&]+"),  # SigV4 Authorization header (and presigned URLs)
    re.compile(r"(Signature=)[0-9a-fA-F]+"),
    re.compile(
        r"((?:aws_)?(?:access_key(?:_id)?|secret(?:_access)?_key|secret|session_token|token)['\"]?\s*[:=]\s*"
        r"b?['\"]?)[^'\"\s,}&]+",
        re.IGNORECASE,
    ),
    re.compile(r"()\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|APKA)[A-Z0-9]{16}\b"),  # AWS key id shapes
)


def redact(text: str) -> str:
    """``text`` with every credential in it replaced by ``<redacted>``."""
    for name in CREDENTIAL_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


class RedactCredentials(logging.Filter):
    """Rewrites each record's message (arguments merged in) and exception text without credentials."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the formatter's own error handling
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_redaction() -> None:
    """Put a :class:`RedactCredentials` filter on every handler there is: the root logger's and
    those of any logger that has its own (each once)."""
    loggers = [
        logging.getLogger(),
        *(logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)),
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactCredentials) for f in handler.filters):
                handler.addFilter(RedactCredentials())
