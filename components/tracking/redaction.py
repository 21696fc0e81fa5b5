"""Credentials never recorded: anything that looks like one is replaced by ``***`` in
everything this package writes (MLflow params, tags and artifacts, dataset sources, the
summary, log lines and error messages, pyarrow's and boto's included).

Masked: passwords in URIs (``https://user:pass@host``) and the same form without a scheme, as
pyarrow prints a path (``'KEY:SECRET@bucket/x'``); AWS access key ids (``AKIA...``,
``ASIA...``); secret-looking query parameters (``X-Amz-Signature=``, ``X-Amz-Credential=``,
``?sig=``, ``?token=``); ``name=value`` and ``"name": "value"`` pairs of the usual secret
names (``aws_secret_access_key``, ``password``, ``SessionToken``...); ``Authorization:``
headers and bearer tokens; the values of the usual secret environment variables. Object-store
URIs with credentials in them are refused before a run starts (``storage.credential_problem``);
this module is the second line, for whatever a library puts in a message.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

MASK = "***"
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN",
              "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "GOOGLE_API_KEY",
              "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_SECRET", "HF_TOKEN")
# A secret key may hold '/' and '+': the password runs to the '@' (a path with an '@' after a
# port loses that stretch too, which costs nothing).
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/:@\s\"']*):[^@\s\"']*@")
# ... and without a scheme, as pyarrow quotes the path it was given. The password is 6+
# characters and the '@' is not a container digest's (``ray:2.60.0@sha256:...``).
# MLflow's own URIs (``models:/name@alias``, ``runs:/...``) have that shape and are kept.
_BARE_USERINFO = re.compile(
    r"(?<![\w:.@-])(?!(?:models|runs|file|mlflow-artifacts|dbfs):/)"
    r"(?P<head>[A-Za-z0-9_.+~-]{3,}):(?!\*\*\*@)[^\s@\"':]{6,}@(?!sha256:)")
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|AIPA|ANPA|ANVA|ABIA|ACCA|APKA)"
                         r"[A-Z0-9]{16}\b")
_QUERY = re.compile(
    r"(?P<head>[?&][^=&\s\"']*(?:token|secret|password|passwd|signature|credential|key|sig)"
    r"[^=&\s\"']*=)[^&\s\"'\\]+", re.IGNORECASE)
# name=value anywhere (an AWS config file, a boto or pyarrow option dump) ...
_NAMED = re.compile(
    r"(?P<head>(?<![\w-])(?:aws_secret_access_key|aws_session_token|aws_security_token|"
    r"secret_access_key|secret_key|access_key|session_token|security_token|client_secret|"
    r"password|passwd|token|api_key|apikey|x-amz-signature|x-amz-credential|"
    r"x-amz-security-token|signature|credential|sig)\s*=\s*[\"']?)(?!\*\*\*)[^\s&\"',;)}\]\\]+",
    re.IGNORECASE)
# ... and "name": "value" (JSON, YAML, a repr of boto's credentials) for the unambiguous names.
_NAMED_COLON = re.compile(
    r"(?P<head>(?<![\w-])[\"']?(?:aws_secret_access_key|aws_session_token|secret_access_key|"
    r"secretaccesskey|sessiontoken|client_secret|password|passwd|x-amz-security-token)[\"']?"
    r"\s*:\s*[\"']?)(?!\*\*\*)[^\s\"',;)}\]\\]+", re.IGNORECASE)
_AUTHORIZATION = re.compile(
    r"(?P<head>\bAuthorization[\"']?\s*[:=]\s*[\"']?(?:(?:Bearer|Basic|Token|Digest)\s+)?)"
    r"(?!\*\*\*)[^\r\n\"'\\]+", re.IGNORECASE)
_BEARER = re.compile(r"(?P<head>Bearer\s+)[A-Za-z0-9._~+/=-]+")


def redact(text: str) -> str:
    """``text`` with every credential this module knows of masked."""
    if not isinstance(text, str) or not text:
        return text
    text = _USERINFO.sub(rf"\g<head>:{MASK}@", text)
    text = _BARE_USERINFO.sub(rf"\g<head>:{MASK}@", text)
    text = _AWS_KEY_ID.sub(MASK, text)
    text = _QUERY.sub(rf"\g<head>{MASK}", text)
    text = _NAMED.sub(rf"\g<head>{MASK}", text)
    text = _NAMED_COLON.sub(rf"\g<head>{MASK}", text)
    text = _AUTHORIZATION.sub(rf"\g<head>{MASK}", text)
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
