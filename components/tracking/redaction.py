"""Credentials never recorded: passwords in URIs (``s3://KEY:SECRET@bucket``,
``https://user:pass@host``), secret-looking query parameters, bearer tokens and the values of
the usual secret environment variables are replaced by ``***`` in everything this package
writes: MLflow params, tags and artifacts, dataset sources, the summary and log lines."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

MASK = "***"
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN",
              "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "GOOGLE_API_KEY",
              "AZURE_STORAGE_KEY", "HF_TOKEN")
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/:@\s\"']*):[^/@\s\"']*@")
_QUERY = re.compile(
    r"(?P<head>[?&][^=&\s\"']*(?:token|secret|password|passwd|signature|credential|key)"
    r"[^=&\s\"']*=)[^&\s\"']+", re.IGNORECASE)
_BEARER = re.compile(r"(?P<head>Bearer\s+)[A-Za-z0-9._~+/=-]+")


def redact(text: str) -> str:
    """``text`` with every credential this module knows of masked."""
    if not isinstance(text, str) or not text:
        return text
    text = _USERINFO.sub(rf"\g<head>:{MASK}@", text)
    text = _QUERY.sub(rf"\g<head>{MASK}", text)
    text = _BEARER.sub(rf"\g<head>{MASK}", text)
    for name in SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= 6 and value in text:  # short values would mask innocent text
            text = text.replace(value, MASK)
    return text


def redact_tree(obj: Any) -> Any:
    """Every string in a JSON-like tree, redacted."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_tree(v) for v in obj]
    return obj


class RedactingFilter(logging.Filter):
    """A logging filter for the CLI's handlers: formatted messages are redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
