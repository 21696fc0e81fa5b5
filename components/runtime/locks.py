"""Mutual exclusion between runs, across Ray clusters and machines: leases held in the run
storage itself (``storage.uri``, or ``output_dir`` when that is empty).

Why there: two runs that must not overlap (two ticks of a schedule, a cron line whose previous
run is still going) share the run storage and the MLflow store, but not a Ray cluster: each
``visual-dpo run`` without ``RAY_ADDRESS`` starts its own, and KubeRay's RayCronJob starts a
new one per tick. A Ray named actor only excludes within one cluster.

A lease ``NAME`` is a folder ``<root>/.visual-dpo/leases/NAME/`` of records ``<TOKEN>.json``;
the record with the highest token is the lease, and its token is the **fencing token**.

* **Acquire** reads the current record. If it is live (not released, ``expires`` in the future)
  the caller gets ``LeaseHeld``. Otherwise (no record, released, or expired) it creates the
  record ``TOKEN+1`` with an atomic create-if-absent. Of any number of runs that try at the
  same moment exactly one creates that name; the others get ``LeaseHeld``. Taking over an
  expired lease is the same single atomic step: two runs that both find it expired race for
  the same name ``TOKEN+1``. Tokens only grow, and no name is ever written by two holders.
* **Renewal**: a daemon thread rewrites the holder's own record every ``ttl_s / 6`` seconds
  with ``expires = now + ttl_s`` (a live run never expires; a crashed, killed or paused one
  stops renewing and its lease may be taken over ``ttl_s`` after its last renewal). A renewal
  that finds a higher token stops and marks the lease lost; rewriting a superseded record is
  harmless, because only the highest token counts.
* **Fencing**: ``Lease.check()`` re-reads the lease and raises ``LeaseLost`` unless this
  holder's token is still the highest, the record is still its own and it has not expired.
  The register step calls it before it registers a version and again before the aliases move
  (``pipelines/stages.py``), so a run that lost its lease (paused past ``ttl_s``, storage
  unreachable for that long) registers nothing. MLflow cannot check the token itself: the
  window left is the few seconds between a check and the registry call, against a ``ttl_s``
  of minutes.
* **Release** marks the record released (the next acquire takes token + 1 at once); records
  below the current token are deleted by the next holder.

The atomic create, per storage:

* a local or shared filesystem path: write the record to a unique temporary file, then
  ``os.link`` it to ``<TOKEN>.json``; ``link(2)`` fails with ``EEXIST`` when the name exists.
  This is the ``O_EXCL`` test-and-set, with the content complete the moment the name appears,
  and the form open(2) recommends for NFS. Renewals use ``os.replace`` (atomic rename).
* ``s3://``: ``PutObject`` with ``If-None-Match: *`` through boto3, with the endpoint
  (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``) and credentials the run storage uses. The
  store must honour it (AWS S3 does since 2024-08; so do MinIO, Ceph RGW and R2 in current
  releases): each acquisition probes that a second conditional put of its record is refused,
  and fails with ``LeaseUnsupported`` if it is not.
* ``gs://``, ``abfs://``, ``hdfs://``...: not implemented (GCS would need an
  ``ifGenerationMatch=0`` create); nor ``s3://`` without boto3 installed. ``--incremental``
  refuses these at start with ``LeaseUnsupported`` (``check_supported``);
  a run without ``--incremental`` registers without the cross-cluster promotion lock, with a
  warning.

Clocks: ``expires`` is wall-clock time written by the holder and read by others, so the
machines' clocks must agree to well within ``ttl_s`` (NTP gives milliseconds).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import storage

log = logging.getLogger(__name__)

LEASE_TTL_S = 120.0
"""A lease not renewed for this long may be taken over (a crashed holder blocks the next run
for at most this long). Renewed every ``ttl_s / 6``: five renewals may fail in a row."""

LEASES_DIR = (".visual-dpo", "leases")


class LeaseHeld(RuntimeError):
    """Another run holds the lease (a scheduled run then exits with status "skipped")."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over or expired: it must not register."""


class LeaseUnsupported(storage.StorageError):
    """The run storage offers no atomic create-if-absent this module implements."""


def schedule_lease_name(workflow: str, model_name: str) -> str:
    return f"lease:{workflow}:{model_name}"


def promotion_lock_name(model_name: str) -> str:
    return f"promotion:{model_name}"


def check_supported(root: str) -> None:
    """Raise ``LeaseUnsupported`` (before any work) when ``root`` cannot hold a lease."""
    scheme = storage.scheme_of(root)
    if not (storage.is_local(root) or scheme in ("s3", "s3a")):
        raise LeaseUnsupported(
            f"a lease in the run storage needs an atomic create-if-absent, implemented here "
            f"for s3:// and filesystem paths but not for {scheme}:// (GCS generation-match "
            "is not implemented). Scheduled (--incremental) runs need one: pass --storage "
            "s3://... or a path on a shared filesystem.")
    if scheme in ("s3", "s3a") and importlib.util.find_spec("boto3") is None:
        raise LeaseUnsupported(
            "a lease in s3:// run storage needs boto3 (for PutObject with If-None-Match, "
            "which pyarrow's S3 filesystem cannot send): pip install boto3")


def supported(root: str) -> bool:
    """Whether leases can be held under ``root``."""
    try:
        check_supported(root)
        return True
    except LeaseUnsupported:
        return False


# --- the atomic operations, per storage -------------------------------------------------


class _Store(Protocol):
    """The records of one lease: ``create`` is the only operation that must be atomic."""

    def tokens(self) -> list[int]: ...
    def create(self, token: int, data: bytes) -> bool: ...  # False: the name exists
    def read(self, token: int) -> bytes | None: ...  # None: no such record
    def write(self, token: int, data: bytes) -> None: ...  # overwrite (renew, release)
    def delete(self, token: int) -> None: ...


_RECORD = re.compile(r"^(\d{1,20})\.json$")


def _record_name(token: int) -> str:
    return f"{token:020d}.json"  # sorts by token


class _LocalStore:
    def __init__(self, directory: str):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)

    def _path(self, token: int) -> str:
        return os.path.join(self.dir, _record_name(token))

    def _temp(self, data: bytes) -> str:
        tmp = os.path.join(self.dir, f".tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def tokens(self) -> list[int]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:  # the folder was removed: no lease (a holder then lost it)
            return []
        return [int(m.group(1)) for n in names if (m := _RECORD.match(n))]

    def create(self, token: int, data: bytes) -> bool:
        os.makedirs(self.dir, exist_ok=True)
        tmp = self._temp(data)
        try:
            os.link(tmp, self._path(token))  # atomic: EEXIST if another run made it first
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def read(self, token: int) -> bytes | None:
        try:
            with open(self._path(token), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, token: int, data: bytes) -> None:
        os.replace(self._temp(data), self._path(token))

    def delete(self, token: int) -> None:
        try:
            os.unlink(self._path(token))
        except FileNotFoundError:
            pass


def _s3_client():
    endpoint = storage.s3_endpoint_url()
    if endpoint and "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    return _s3_client_for(endpoint, os.environ.get("AWS_ACCESS_KEY_ID"))


@functools.lru_cache(maxsize=8)
def _s3_client_for(endpoint: str | None, access_key_id: str | None):
    """One boto3 client per endpoint and key (clients are thread-safe; making one takes tens
    of milliseconds). Credentials come from boto3's default chain, as for pyarrow."""
    import boto3  # present: check_supported ran first

    del access_key_id  # part of the cache key only: new credentials, new client
    return boto3.client("s3", endpoint_url=endpoint)


def _s3_error_code(e: Exception) -> tuple[str, int]:
    response = getattr(e, "response", None) or {}
    return (str(response.get("Error", {}).get("Code", "")),
            int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)))


class _S3Store:
    def __init__(self, location: str):
        self.bucket, _, prefix = location.split("://", 1)[1].partition("/")
        self.prefix = prefix.strip("/") + "/"
        self.client = _s3_client()
        self.probed = False

    def _key(self, token: int) -> str:
        return self.prefix + _record_name(token)

    def tokens(self) -> list[int]:
        found = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                if m := _RECORD.match(obj["Key"][len(self.prefix):]):
                    found.append(int(m.group(1)))
        return found

    def _put_if_absent(self, token: int, data: bytes) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(token), Body=data,
                                   IfNoneMatch="*", ContentType="application/json")
            return True
        except Exception as e:  # botocore's ClientError; its class lives on the client
            code, status = _s3_error_code(e)
            # 412: the key exists; 409: a concurrent conditional write to it is in flight.
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return False
            raise

    def create(self, token: int, data: bytes) -> bool:
        if not self._put_if_absent(token, data):
            return False
        if not self.probed:  # a store that ignores the condition would let every run in
            if self._put_if_absent(token, data):
                raise LeaseUnsupported(
                    f"the S3 endpoint of s3://{self.bucket} ignores If-None-Match (a second "
                    "create of the same lease record succeeded), so a lease there excludes "
                    "nothing. Upgrade the store (AWS S3, MinIO, Ceph RGW and R2 support "
                    "conditional writes) or put the run storage on a shared filesystem.")
            self.probed = True
        return True

    def read(self, token: int) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(token))["Body"].read()
        except Exception as e:  # noqa: BLE001 - ClientError NoSuchKey is "no record"
            if _s3_error_code(e)[0] in ("NoSuchKey", "404") or _s3_error_code(e)[1] == 404:
                return None
            raise

    def write(self, token: int, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(token), Body=data,
                               ContentType="application/json")

    def delete(self, token: int) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(token))


def _store(root: str, name: str) -> _Store:
    check_supported(root)
    folder = storage.join(root, *LEASES_DIR, re.sub(r"[^A-Za-z0-9._-]", "_", name))
    if storage.is_local(root):
        return _LocalStore(folder)
    return _S3Store(folder)


# --- the lease --------------------------------------------------------------------------


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _current(st: _Store) -> tuple[int, dict[str, Any] | None]:
    """The highest token and its record (None: no record, or one that cannot be parsed,
    which counts as expired)."""
    tokens = st.tokens()
    if not tokens:
        return 0, None
    token = max(tokens)
    try:
        record = json.loads(st.read(token) or b"null")
    except ValueError:
        return token, None
    valid = (isinstance(record, dict) and record.get("id")
             and all(isinstance(record.get(k), (int, float)) for k in ("since", "expires")))
    return token, record if valid else None


def _live(record: dict[str, Any] | None, now: float) -> bool:
    return bool(record) and not record.get("released") and float(record["expires"]) > now


@dataclass
class Lease:
    """A held lease; ``token`` is its fencing token. Renewed in the background until
    ``release``."""

    name: str
    root: str
    token: int
    ttl_s: float
    record: dict[str, Any]
    _store: _Store = field(repr=False)
    _lost: str | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def _start_renewal(self, every_s: float) -> None:
        def renew_until_stopped() -> None:
            while not self._stop.wait(every_s):
                try:
                    self._renew()
                except Exception as e:  # noqa: BLE001 - storage hiccup: retry next time
                    log.warning("could not renew %s (token %d): %s", self.name, self.token, e)
                if self._lost:
                    log.error("%s", self._lost)
                    return

        self._thread = threading.Thread(target=renew_until_stopped, daemon=True,
                                        name=f"lease-renewal:{self.name}")
        self._thread.start()

    def _renew(self) -> None:
        token, record = _current(self._store)
        if token != self.token or not record or record.get("id") != self.record["id"]:
            self._lost = self._lost_message(token, record)
            return
        self.record = {**self.record, "expires": time.time() + self.ttl_s}
        self._store.write(self.token, json.dumps(self.record).encode())

    def _lost_message(self, token: int, record: dict[str, Any] | None) -> str:
        who = (f"token {token}, held by {record.get('holder')} since {_when(record['since'])}"
               if record else f"token {token}" if token else "no record at all")
        return (f"this run lost {self.name} (its token {self.token}; the lease in "
                f"{self.root} is now {who}). A lease not renewed for {self.ttl_s:.0f} s (the "
                "run paused, or the storage was unreachable) may be taken over by another run. "
                "Not registering: another run may be working on the same data.")

    def check(self) -> None:
        """The fencing check: raise ``LeaseLost`` unless this lease is still the current
        one, still this holder's and not expired. Call it right before a side effect that
        only the lease holder may have (registering, moving aliases)."""
        if self._lost:
            raise LeaseLost(self._lost)
        token, record = _current(self._store)
        if token != self.token or not record or record.get("id") != self.record["id"]:
            raise LeaseLost(self._lost_message(token, record))
        if not _live(record, time.time()):
            raise LeaseLost(
                f"this run's lease {self.name} (token {self.token}) expired at "
                f"{_when(float(record['expires']))}, {self.ttl_s:.0f} s after its last renewal "
                "(the run paused, or the storage was unreachable); another run may hold it "
                "now. Not registering.")

    def release(self) -> None:
        """Stop renewing; mark the record released when it is still the current one."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        token, record = _current(self._store)
        if token == self.token and record and record.get("id") == self.record["id"]:
            self._store.write(self.token, json.dumps(
                {**self.record, "released": True, "expires": time.time()}).encode())


def try_acquire(root: str, name: str, ttl_s: float = LEASE_TTL_S,
                renew_every_s: float | None = None) -> Lease:
    """Take the lease ``name`` under the run storage ``root`` now, or raise ``LeaseHeld``
    naming the holder. Renewed every ``renew_every_s`` (default ``ttl_s / 6``)."""
    st = _store(root, name)
    now = time.time()
    token, record = _current(st)
    if _live(record, now):
        raise _held(name, root, token, record)
    mine = {"name": name, "token": token + 1, "id": uuid.uuid4().hex,
            "holder": f"{socket.gethostname()}:{os.getpid()}", "since": now,
            "expires": now + ttl_s, "released": False}
    if not st.create(token + 1, json.dumps(mine).encode()):  # another run was first
        raise _held(name, root, token + 1, _current(st)[1])
    for old in st.tokens():  # superseded records; the highest token alone is the lease
        if old < token + 1:
            try:
                st.delete(old)
            except Exception as e:  # noqa: BLE001 - litter only, never wrong
                log.debug("could not delete lease record %d of %s: %s", old, name, e)
    lease = Lease(name, root, token + 1, ttl_s, mine, st)
    lease._start_renewal(renew_every_s or ttl_s / 6)
    return lease


def _held(name: str, root: str, token: int, record: dict[str, Any] | None) -> LeaseHeld:
    who = (f"{record.get('holder')}, since {_when(float(record['since']))}, token {token}"
           if record else f"a run that is starting, token {token}")
    until = f" It is freed when that run ends, or at {_when(float(record['expires']))} if " \
            "that run stops renewing it." if record else ""
    return LeaseHeld(f"another run holds {name} in {root} ({who}); not starting a second "
                     f"one.{until}")


def acquire(root: str, name: str, wait_s: float, poll_s: float = 1.0,
            ttl_s: float = LEASE_TTL_S) -> Lease:
    """Take the lease, waiting up to ``wait_s`` seconds for the holder to release it (or
    for it to expire)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return try_acquire(root, name, ttl_s)
        except LeaseHeld:
            if time.monotonic() >= deadline:
                raise
            time.sleep(poll_s)


def holder_of(root: str, name: str) -> dict[str, Any] | None:
    """The live record of ``name`` (holder, token, since, expires), or None."""
    token, record = _current(_store(root, name))
    return record if _live(record, time.time()) else None
