"""Run state on any pyarrow filesystem: a local path, ``s3://``, ``gs://``, ``abfs://``...

One place turns a location into ``(pyarrow filesystem, path)``, so prepared data, Ray Train
checkpoints, quarantine tables, eval scores and reports go wherever ``storage.uri`` points,
and input shards (``--train``, ``--eval``, ``score --input``) are read the same way.

Endpoint and credentials come from the standard environment. pyarrow's S3 filesystem reads
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_REGION`` itself but not
``AWS_ENDPOINT_URL`` (MinIO, Ceph, R2, moto): for ``s3://`` URIs it is applied here. A local
path is made absolute; ``file://`` is a local path too. Credentials written into a URI
(``s3://KEY:SECRET@bucket``) are refused before a run starts (``credential_problems``): a
URI is printed, logged and recorded in MLflow, a credential must never be.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from typing import Any

import pyarrow.fs as pafs

LOCAL_SCHEMES = ("", "file")
OBJECT_STORE_SCHEMES = ("s3", "s3a", "s3n", "gs", "gcs", "abfs", "abfss", "az", "adl", "wasb",
                        "wasbs", "oss", "hdfs", "viewfs")
# Query parameters that carry a credential (pyarrow's s3:// options, presigned URLs, SAS).
_SECRET_QUERY = re.compile(r"[?&](?:access_key|secret_key|session_token|token|sig|"
                           r"x-amz-[a-z-]+)=", re.IGNORECASE)


def scheme_of(location: str) -> str:
    return location.split("://", 1)[0].lower() if "://" in location else ""


def is_local(location: str) -> bool:
    """A path on this node's own filesystem (not shared by other nodes unless declared)."""
    return scheme_of(location) in LOCAL_SCHEMES


def credential_problem(key: str, location: str) -> str | None:
    """One sentence when ``location`` (the value of setting or option ``key``) is an
    object-store URI with credentials in it (``s3://KEY:SECRET@bucket/x``, ``s3://KEY@...``,
    ``?secret_key=``); None otherwise. ``abfs://container@account...`` holds no credential;
    tracking URIs (``https://user:pass@mlflow``) are not object stores and stay allowed."""
    scheme = scheme_of(location)
    if scheme not in OBJECT_STORE_SCHEMES:
        return None
    rest = location.split("://", 1)[1]
    user, at, after = rest.partition("@")
    # A secret key may hold '/': what stands before the '@' is user info when no '/' comes
    # before its ':' (a bucket name has neither ':' nor '@'; an object key may have both).
    in_userinfo = at and "/" not in user.split(":", 1)[0]
    has_password = in_userinfo and ":" in user
    bare_user = in_userinfo and "/" not in user and scheme in ("s3", "s3a", "s3n", "gs", "gcs")
    if not (has_password or bare_user or _SECRET_QUERY.search(rest)):
        return None
    container = user.split(":", 1)[0] + "@" if has_password and scheme not in (
        "s3", "s3a", "s3n", "gs", "gcs") else ""  # abfs://container@account keeps its container
    plain = f"{scheme}://{container}{(after if in_userinfo else rest).split('?', 1)[0]}"
    # Said in words: any KEY:SECRET@ written here would be masked on its way out.
    return (f"{key}: credentials written into an object-store URI are refused (they would be "
            "printed, logged and recorded); the key and secret before the bucket, as older "
            "versions documented, are no longer accepted. Give them to the process instead "
            "(AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY or AWS_PROFILE, an instance role or IRSA on Kubernetes; "
            f"GOOGLE_APPLICATION_CREDENTIALS for gs://) and pass {plain}")


def credential_problems(cfg: Any) -> list[str]:
    """``credential_problem`` for every string setting of a config (a dataclass tree, e.g.
    ``RunConfig``), named by its dotted key; a ``load_config`` check."""
    problems: list[str] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and (problem := credential_problem(key, value)):
            problems.append(problem)

    walk(dataclasses.asdict(cfg), "")
    return problems


def normalize(location: str) -> str:
    """Absolute local path, or the URI as given (without a trailing slash)."""
    if is_local(location):
        return os.path.abspath(location.removeprefix("file://"))
    return location.rstrip("/")


def s3_endpoint_url() -> str | None:
    """The S3-compatible endpoint from the environment (MinIO, Ceph, R2, moto), or None for
    AWS: the one place both pyarrow's filesystem and the lease's boto3 client take it from."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem with ``AWS_ENDPOINT_URL`` (and region) from the environment."""
    kwargs: dict[str, Any] = {}
    endpoint = s3_endpoint_url()
    if endpoint:
        if endpoint.startswith(("http://", "https://")):
            kwargs["scheme"], endpoint = endpoint.split("://", 1)
        kwargs["endpoint_override"] = endpoint.rstrip("/")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for a local path or a URI."""
    scheme = scheme_of(location)
    if scheme in LOCAL_SCHEMES:
        return pafs.LocalFileSystem(), normalize(location)
    if scheme in ("s3", "s3a"):
        return s3_filesystem(), location.split("://", 1)[1].rstrip("/")
    fs, path = pafs.FileSystem.from_uri(location)
    return fs, path.rstrip("/")


def join(base: str, *parts: str) -> str:
    """``join("s3://b/runs", "x", "y") == "s3://b/runs/x/y"``; local paths use os.path."""
    if is_local(base):
        return os.path.join(normalize(base), *parts)
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def uri_of(fs: pafs.FileSystem, path: str, like: str) -> str:
    """The location of ``path`` (a path inside ``fs``) written the way ``like`` is."""
    if is_local(like):
        return path
    return f"{scheme_of(like)}://{path.lstrip('/')}"


def remove(location: str) -> None:
    """Delete a directory tree (or a file) if it exists."""
    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def make_dirs(location: str) -> None:
    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_bytes(location: str, data: bytes) -> None:
    fs, path = filesystem(location)
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def read_bytes(location: str) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_json(location: str, value: Any) -> None:
    write_bytes(location, json.dumps(value, indent=2, sort_keys=True, default=str).encode())


def read_json(location: str) -> Any:
    return json.loads(read_bytes(location))


def walk_local(root: str) -> tuple[list[str], list[str]]:
    """Every file below the local directory ``root`` (sorted, hidden names skipped, as glob's
    ``**`` does), following symbolic links but entering each real directory once:
    ``(paths, repeats)``. A link to a directory already entered (a cycle such as
    ``loop -> .``, or a second way into the same directory) is not entered again and is
    named in ``repeats`` ("LINK repeats DIR"); pyarrow's and glob's own walks would go round a
    cycle until the path is too long, and two such links take exponential time."""
    entered: dict[tuple[int, int], str] = {}
    st = os.stat(root)
    entered[(st.st_dev, st.st_ino)] = root
    paths: list[str] = []
    repeats: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        keep = []
        for name in dirnames:
            if name.startswith("."):
                continue
            sub = os.path.join(dirpath, name)
            try:
                st = os.stat(sub)
            except OSError:  # vanished, or a loop the kernel refuses (ELOOP): nothing to read
                repeats.append(f"{sub} cannot be entered")
                continue
            key = (st.st_dev, st.st_ino)
            if key in entered:
                repeats.append(f"{sub} repeats {entered[key]}")
                continue
            entered[key] = sub
            keep.append(name)
        dirnames[:] = keep
        paths.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                     if not f.startswith("."))
    return sorted(paths), repeats


def glob_matches(pattern: str, path: str) -> bool:
    """Whether ``path`` matches the glob ``pattern`` as ``glob.glob(recursive=True)`` would
    (``*``, ``?`` and ``[...]`` within one path component, ``**`` any number of them, hidden
    names only by a pattern component that starts with '.')."""
    import fnmatch

    def match(parts: list[str], pats: list[str]) -> bool:
        if not pats:
            return not parts
        if pats[0] == "**":
            return any(match(parts[i:], pats[1:]) for i in range(len(parts) + 1)
                       if not any(p.startswith(".") for p in parts[:i]))
        return (bool(parts) and fnmatch.fnmatchcase(parts[0], pats[0])
                and (pats[0].startswith(".") or not parts[0].startswith("."))
                and match(parts[1:], pats[1:]))

    return match(path.split(os.sep), pattern.split(os.sep))


def list_files(location: str) -> list[str]:
    """Every file below ``location`` (recursively), as locations like ``location``."""
    fs, path = filesystem(location)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        return []
    if kind == pafs.FileType.File:
        return [location]
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(uri_of(fs, i.path, location) for i in infos if i.type == pafs.FileType.File)


def dataset(location: str):
    """``pyarrow.dataset`` of the Parquet files below ``location``."""
    import pyarrow.dataset as pads

    fs, path = filesystem(location)
    return pads.dataset(path, filesystem=fs, format="parquet")


def write_table(table, location: str) -> None:
    import pyarrow.parquet as pq

    fs, path = filesystem(location)
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        fs.create_dir(parent, recursive=True)
    pq.write_table(table, path, filesystem=fs)


def read_table(location: str):
    import pyarrow.parquet as pq

    fs, path = filesystem(location)
    return pq.read_table(path, filesystem=fs)


def torch_load(location: str):
    """``torch.load`` (tensors only) of a file at any location."""
    import torch

    if is_local(location):
        return torch.load(normalize(location), map_location="cpu", weights_only=True)
    return torch.load(io.BytesIO(read_bytes(location)), map_location="cpu", weights_only=True)


def check_writable(location: str) -> None:
    """Write and delete a small marker under ``location``: a wrong bucket, endpoint or
    credentials fail here, before any work, naming the location."""
    if is_local(location):  # create nothing yet: the nearest existing directory is writable
        path = normalize(location)
        while not os.path.exists(path) and os.path.dirname(path) != path:
            path = os.path.dirname(path)
        if not (os.path.isdir(path) and os.access(path, os.W_OK)):
            raise StorageError(f"cannot write run state to {normalize(location)}: {path} is "
                               "not a writable directory; pass another --output-dir or --storage")
        return
    marker = join(location, ".visual-dpo-write-check")
    try:
        write_bytes(marker, b"ok")
        remove(marker)
    except Exception as e:  # noqa: BLE001 - pyarrow raises OSError subclasses and more
        raise StorageError(
            f"cannot write run state to {location}: {type(e).__name__}: {e}. Check the "
            "bucket/path, AWS_ENDPOINT_URL (for S3-compatible stores) and the credentials "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), or pass another --storage.") from e


def download(location: str, local_dir: str) -> str:
    """Copy a file or directory tree at ``location`` into ``local_dir``; returns the local
    path of the copy (the same path when ``location`` is already local)."""
    if is_local(location):
        return normalize(location)
    fs, path = filesystem(location)
    if fs.get_file_info(path).type == pafs.FileType.File:
        target = os.path.join(local_dir, location.rstrip("/").rsplit("/", 1)[-1])
        with open(target, "wb") as f:
            f.write(read_bytes(location))
        return target
    root = os.path.join(local_dir, location.rstrip("/").rsplit("/", 1)[-1])
    for f in list_files(location):
        target = os.path.join(root, f[len(location.rstrip("/")) + 1:])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as out:
            out.write(read_bytes(f))
    return root


class StorageError(ValueError):
    """Run state cannot be written where the config says."""


def total_size(location: str) -> int:
    """Bytes of all files below ``location``."""
    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return int(info.size or 0)
    if info.type == pafs.FileType.NotFound:
        return 0
    return sum(int(i.size or 0) for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
               if i.type == pafs.FileType.File)
