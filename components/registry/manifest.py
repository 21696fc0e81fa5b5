"""The manifest of a logged scorer model: the SHA-256 of every file in its directory.

``manifest.json`` sits beside ``MLmodel`` and lists every file of the model, relative POSIX
path -> SHA-256: the weights and ``scorer.json`` (``artifacts/scorer/``), the code MLflow runs
(``scorer_model.py`` and the ``code/visual_dpo_components`` package), ``MLmodel`` (it chooses
the loader module, the code directory, the artifact paths and the signature, so editing it
changes what loading does) and the environment files (what ``--env-manager`` installs). Not
listed: the manifest itself and ``registered_model_meta``, which MLflow (re)writes on the
consumer's side at every download (the model's name and version; nothing loads it).

The manifest proves nothing alone (whoever rewrites a file can rewrite the manifest): its own
SHA-256 is recorded in the tracking store when the model is registered
(components/tracking/models.py) and a verified load compares the two first. Every check here
is on the files as they are on disk, before anything in them is imported or read.
"""

from __future__ import annotations

import hashlib
import json
import os

MANIFEST = "manifest.json"
MANIFEST_TAG = "manifest_sha256"  # on the registered version and the logged model
FORMAT = "visual-dpo-model-manifest/1"
# MLflow writes this one at download (model name and version), after any manifest was made.
REGISTERED_META = "registered_model_meta"
UNLISTED = (MANIFEST, REGISTERED_META)
REREGISTER = ("Do not load it: restore the original files, or register the model again (run its "
              "training workflow again); an alias such as champion that names it must be moved "
              "to a verified version or deleted (MlflowClient().delete_registered_model_alias), "
              "or the next run's gate stops at it too.")


class ModelVerificationError(RuntimeError):
    """A model's files are not the ones recorded when it was registered (or nothing was
    recorded): it must not be loaded. ``path`` names the first offending file (relative to
    the model directory) when there is one."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digests(root: str, skip_bytecode: bool = False) -> dict[str, str]:
    """``{relative path: SHA-256}`` of every file under ``root`` except ``UNLISTED`` at its top.
    A symbolic link is refused: what it points at could change after the check, and a linked
    directory would not be listed at all. ``skip_bytecode``: leave out ``__pycache__``
    folders, which Python writes when it imports the model's code (only for a check made
    after that import, where bytecode can no longer change anything)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        if skip_bytecode:
            dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in sorted(dirs + files):
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if os.path.islink(path):
                raise ModelVerificationError(
                    f"{rel}: a symbolic link in the model directory {root}; a registered model "
                    f"holds plain files only. {REREGISTER}", rel)
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
            if rel not in UNLISTED:
                out[rel] = sha256_file(os.path.join(folder, name))
    return out


def write_manifest(root: str) -> str:
    """Write ``root/manifest.json`` over every file now in ``root``; returns its SHA-256 (the
    digest to record in the tracking store)."""
    body = {"format": FORMAT, "algorithm": "sha256", "files": dict(sorted(file_digests(root).items()))}
    path = os.path.join(root, MANIFEST)
    with open(path, "w") as f:
        json.dump(body, f, indent=1, sort_keys=True)
        f.write("\n")
    return sha256_file(path)


def check_manifest(root: str, expected_sha256: str | None, skip_bytecode: bool = False) -> str:
    """Raise ``ModelVerificationError`` unless ``root`` holds exactly the files its manifest
    lists, each with the listed SHA-256, and (when ``expected_sha256`` is given) the manifest
    is the one whose digest the tracking store recorded. Returns the manifest's SHA-256.
    Nothing in ``root`` is imported or parsed except the manifest itself."""
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path) or os.path.islink(path):
        raise ModelVerificationError(
            f"{root}: no {MANIFEST}; this model was registered before model manifests "
            f"(or not by visual-dpo) and its files cannot be verified. {REREGISTER}", MANIFEST)
    digest = sha256_file(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ModelVerificationError(
            f"{MANIFEST}: SHA-256 {digest} differs from the {expected_sha256} recorded in the "
            f"tracking store at registration; the model's files were replaced. {REREGISTER}",
            MANIFEST)
    try:
        with open(path) as f:
            listed = json.load(f)
        files = listed["files"]
        if listed.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {listed.get('format')!r}")
    except (ValueError, KeyError, TypeError) as e:
        raise ModelVerificationError(f"{MANIFEST}: unreadable ({e}). {REREGISTER}", MANIFEST) from e
    found = file_digests(root, skip_bytecode)
    for rel in sorted(set(files) | set(found)):
        if rel not in found:
            problem = "is listed in the manifest but missing"
        elif rel not in files:
            problem = "is not in the manifest (added after registration)"
        elif found[rel] != files[rel]:
            problem = f"has SHA-256 {found[rel]}, the manifest records {files[rel]}"
        else:
            continue
        raise ModelVerificationError(f"{rel}: {problem}; the model's files were changed. "
                                     f"{REREGISTER}", rel)
    return digest
