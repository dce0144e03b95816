"""Where data lives: a local folder or an `s3://bucket/prefix`, behind one small interface.

S3 settings come only from the standard AWS environment: the endpoint from AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL (an S3-compatible server such as MinIO, or moto in the tests), the region from
AWS_REGION / AWS_DEFAULT_REGION, and the credentials from the AWS SDK's default chain (variables,
config files, or the node's role). Nothing here takes them from a config, so they never reach a
config file, a log or MLflow. pyarrow alone reads the endpoint variable only for `s3://` URIs, not
for a bare `S3FileSystem()`; this module passes it explicitly.

Ray tasks do not inherit variables set in the driver after `ray.init`: code that sends storage work
to Ray passes `aws_env()` through `runtime_env={"env_vars": ...}`. Those are the plain settings only
(endpoint, region, profile, the paths of the config and credentials files), never the credentials:
Ray writes a runtime_env to its logs (`runtime_env_agent.log`) and shows it on its dashboard. A
worker finds its credentials where the AWS SDK looks on its node: the node's environment (a local
instance that `tipslab` starts inherits the shell's), the credentials file, or the node's role
(an EC2 instance profile, an EKS service account).
"""

from __future__ import annotations

import os
import posixpath

import pyarrow.fs as pafs

from tipslab.models.errors import DataError

# The settings a Ray task may be handed (runtime_env): none of them a credential.
AWS_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


# What S3 (and pyarrow's and boto's wording of it) says when it refuses the credentials.
REFUSED = ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "403")


def refused_hint(err: BaseException | str, uri: str | os.PathLike) -> str:
    """For an error reading or writing an s3:// `uri` whose text says the credentials were refused:
    where they come from and what to check (appended to the error's line); else ""."""
    if not is_s3(uri) or not any(word in str(err) for word in REFUSED):
        return ""
    bucket = str(uri)[len("s3://") :].split("/", 1)[0]
    return (
        f"; S3 refused the credentials: check the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY variables, the "
        f"credentials file or the node's role, and that they may read bucket {bucket!r}"
    )


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def aws_env() -> dict[str, str]:
    """The AWS settings of this process to hand to Ray tasks' runtime_env: no credentials (module
    docstring), and no endpoint that carries a password in its URL."""
    return {k: os.environ[k] for k in AWS_VARIABLES if os.environ.get(k) and "@" not in os.environ[k]}


def s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    kw: dict = {}
    if endpoint:
        scheme, _, host = endpoint.rpartition("://")
        kw.update(endpoint_override=host.rstrip("/"), scheme=scheme or "https")
    if region:
        kw["region"] = region
    return pafs.S3FileSystem(**kw)


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it: `bucket/key` for S3, an absolute path locally."""
    uri = str(uri)
    if is_s3(uri):
        path = uri[len("s3://") :].strip("/")
        if not path:
            raise DataError(f"{uri!r} names no bucket")
        return s3_filesystem(), path
    if "://" in uri:
        raise DataError(f"{uri!r}: only local paths and s3:// URIs are supported")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def to_uri(filesystem: pafs.FileSystem | None, path: str) -> str:
    """The URI of `path` on `filesystem` (a Ray Train checkpoint's pair): `s3://bucket/key` on S3,
    else the path itself; what `resolve` takes back."""
    if isinstance(filesystem, pafs.S3FileSystem) and not is_s3(path):
        return "s3://" + path.lstrip("/")
    return path


def join(uri: str | os.PathLike, *names: str) -> str:
    uri = str(uri)
    if is_s3(uri):
        return posixpath.join(uri.rstrip("/"), *names)
    return os.path.join(uri, *names)


def absolute(uri: str | os.PathLike) -> str:
    """`s3://bucket/key` as given (Ray Data and pyarrow read it), or an absolute local path."""
    return str(uri).rstrip("/") if is_s3(uri) else os.path.abspath(uri)


def exists(uri: str | os.PathLike) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(uri: str | os.PathLike) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def is_dir(uri: str | os.PathLike) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def read_bytes(uri: str | os.PathLike) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write a whole file so that readers see the old file or the new one, never a part.

    Locally: a temporary name in the same folder, then `os.replace`. On S3 an object appears only
    when its upload completes, so it is written in place.
    """
    if is_s3(uri):
        fs, path = resolve(uri)
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    path = os.path.abspath(uri)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def make_dirs(uri: str | os.PathLike) -> None:
    if not is_s3(uri):  # S3 has no folders: a prefix exists once an object is under it
        os.makedirs(os.path.abspath(uri), exist_ok=True)


def list_names(uri: str | os.PathLike) -> list[str]:
    """Names of the files directly in a folder (empty if it does not exist)."""
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File)


def list_dirs(uri: str | os.PathLike) -> list[str]:
    """Names of the folders directly in a folder (empty if it does not exist)."""
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory)


def delete(uri: str | os.PathLike) -> None:
    fs, path = resolve(uri)
    fs.delete_file(path)
