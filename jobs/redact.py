"""Credentials never leave a tipslab process: the one masking step for everything it prints, logs
to MLflow or writes beside a run (configs, results, checkpoints).

Masked, as `***`:
- the password of any URI (`scheme://user:password@host`: tracking URIs, S3 endpoints, Ray addresses);
- by value, wherever it appears: every value of this process's credential-bearing environment
  variables (a name with KEY, SECRET, TOKEN, PASSWORD, CREDENTIAL, AUTH, ... and every AWS_*
  variable but the plain settings: region, profile, endpoint, file paths), and the password of any
  URI held in an environment variable (MLFLOW_TRACKING_URI, RAY_ADDRESS, ...);
- every value `remember`ed: the strings a spec or config took from `${oc.env:...}`
  (orchestrator/config.py hooks the resolver), whatever the variable's name. A process that gets a
  config but not the driver's memory (a trial, a worker, an evaluation task) gets the config keys
  that hold such values (`secret_keys`; names, never values) and remembers their values itself.

Values too plain to be a credential (shorter than 4 characters, numbers, true/false/none) are never
masked: masking them would garble every string that happens to contain them.
"""

from __future__ import annotations

import os
import re

MASK = "***"
_URI_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s/]+)@")
_SECRET_ENV = re.compile(r"key|secret|token|passw|pwd|credential|auth|private|cookie|signature", re.I)
# Plain settings whose names look like credentials' (AWS_REGION, RAY_AUTH_MODE, AWS_CONFIG_FILE, ...).
_PLAIN_ENV = re.compile(
    r"(_MODE|_TYPE|_FILE|_PATH|_DIR|_SOCK|_ENABLED|_REGION|_PROFILE|_URL|_URI|_HOST|_PORT|_OUTPUT|_PAGER|_BUNDLE)$"
    r"|ENDPOINT|^(OLD)?PWD$"  # the shell's working folders, not a password
)
_PLAIN_VALUE = re.compile(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?|true|false|none|null|yes|no|on|off", re.I)
_remembered: set[str] = set()


def mask_uri(text: str) -> str:
    """`scheme://user:password@host` -> `scheme://user:***@host`, for every URI in `text`."""
    return _URI_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)


def is_credential_variable(name: str) -> bool:
    return (bool(_SECRET_ENV.search(name)) or name.startswith("AWS_")) and not _PLAIN_ENV.search(name)


def _secret_worthy(value: str) -> bool:
    return len(value) >= 4 and not _PLAIN_VALUE.fullmatch(value.strip())


def remember(*values) -> None:
    """Mask these values from now on in this process (strings taken from `${oc.env:...}`)."""
    _remembered.update(str(v) for v in values if v is not None and _secret_worthy(str(v)))


def secret_values() -> list[str]:
    """What this process masks by value, longest first (so that a value inside another goes too)."""
    found = set(_remembered)
    for name, value in os.environ.items():
        if is_credential_variable(name) and _secret_worthy(value):
            found.add(value)
        found.update(m["password"] for m in _URI_PASSWORD.finditer(value) if len(m["password"]) >= 4)
    return sorted(found, key=len, reverse=True)


def redact(value) -> str:
    """`value` as a string, with URI passwords and every secret value masked."""
    text = mask_uri(str(value))
    for secret in secret_values():
        text = text.replace(secret, MASK)
    return text


def redact_name(value) -> str:
    """A name redacted for a store that allows letters, digits and `_-. :/` only (MLflow's metric
    and param names): `eval/***/i2t_r1` -> `eval/masked/i2t_r1`."""
    return redact(value).replace(MASK, "masked")


# Keys of settings that hold credentials: dropped from what is logged. Narrower than the
# variables' rule: a config's `key` or `tokenizer` is no credential.
SECRET_KEY = re.compile(r"secret|password|passwd|access_key|key_id|credential|api_?key|token(?!izer)", re.I)
# Config keys whose name says "token" but which choose a CLS token (jobs/config.py EvalConfig).
CLS_TOKEN_KEYS = {"retrieval_token", "zero_shot_token", "knn_token"}


def secret_key(name) -> bool:
    """Whether a setting's name says it holds a credential."""
    name = str(name)
    return name.rsplit(".", 1)[-1] not in CLS_TOKEN_KEYS and bool(SECRET_KEY.search(name))


def scrub(obj):
    """A JSON-able copy: credential-named keys dropped, every other key and string redacted."""
    if isinstance(obj, dict):
        return {redact(k): scrub(v) for k, v in obj.items() if not secret_key(k) and "env_vars" not in str(k)}
    if isinstance(obj, (list, tuple)):
        return [scrub(v) for v in obj]
    return redact(obj) if isinstance(obj, str) else obj


def _leaves(obj, prefix: str = ""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1], obj


def secret_keys(config: dict) -> list[str]:
    """The dotted keys of `config` whose string values hold a secret (names only: they may travel)."""
    secrets = secret_values()
    return sorted(k for k, v in _leaves(config) if isinstance(v, str) and any(s in v for s in secrets))


def remember_keys(config: dict, keys) -> None:
    """Remember the values of `config` at `keys` (what `secret_keys` found in the driver)."""
    wanted = set(keys)
    remember(*(v for k, v in _leaves(config) if k in wanted and isinstance(v, str)))
