"""Converted checkpoints in Hugging Face transformers (checkpoints_convert/export_hf.py): for every variant and a hybrid,
AutoModelForCausalLM's logits equal hope_megatron.inference (fp32, relative 1e-5), streaming through its cache in
uneven segments equals the whole forward, generate gives the same greedy tokens, a left-padded batch equals its rows
run alone (also under hope_reset_at_eod, with EODs inside the tokens); AutoTokenizer encodes and decodes exactly as
training did (SentencePiece, GPT-2 BPE, Null); the remote code imports neither megatron nor hope_megatron; `lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True`
on a local task scores exactly what the `hope` adapter scores. The converted directories (the converter's output
format: config.json + model.safetensors + megatron_args.json + tokenizer file) are built once per module."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.unit.eval.helpers import tiny_config

pytest.importorskip("transformers")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
HAMLET = os.path.join(REPO, "tests", "fixtures", "hamlet_excerpt.txt")
VOCAB = 640  # > the 600-piece SentencePiece model, as Megatron's padded vocabulary is
SEGMENTS = ((0, 5), (5, 6), (6, 13), (13, 19))  # split mid-chunk, mid-window and token by token
EOD = VOCAB - 1  # the NullTokenizer's EOD id (its vocabulary is megatron_args' VOCAB - 1)
# the "reset" case's EODs: documents begin at segment starts (5, 7, 13: the cache carries "last token was EOD"), inside
# a segment (10), and one is a single EOD (10); the generate prompt t[:, :7] ends with EOD in row 0
EODS = ((0, 4), (0, 6), (0, 12), (1, 5), (1, 9), (1, 10))


def _op(**kw):
    from hope_megatron.ops import TitansOpConfig

    return dataclasses.asdict(TitansOpConfig(**kw))


DELTANET = dict(chunk_size=1, self_mod=False, dgd=False, momentum=0.0, decay=False, memory_depth=1, eta_max=0.5,
                read_after_update=True)


def _configs():
    hope = tiny_config("hope", layers=2, vocab=VOCAB)
    hope["op_configs"] = {"H": _op(chunk_size=4, proj_chunk_size=2, inner_clip=0.5)}
    tied = tiny_config("hope_attention", layers=2, vocab=VOCAB)
    tied["share_embeddings_and_output_weights"] = True
    gqa = tiny_config("transformer", layers=2, heads=4, vocab=VOCAB)
    gqa["num_query_groups"] = 2
    swa = tiny_config("swa", layers=2, vocab=VOCAB)
    swa["swa_window"] = 5
    delta = tiny_config("deltanet", layers=2, vocab=VOCAB)
    delta["op_configs"] = {"D": _op(**DELTANET)}
    hybrid = tiny_config("hope", layers=4, vocab=VOCAB, cms_widths=(16, 32))
    hybrid.update(layer_letters="HDWT", cms_variant="independent",
                  op_configs={"H": _op(chunk_size=4, inner_clip=0.5), "D": _op(**DELTANET),
                              "T": _op(chunk_size=4, self_mod=False, dgd=False)})
    # hope_reset_at_eod (hope_math §2.7): both memory kinds restart after each EOD, the W layer sees across documents
    reset = tiny_config("hope", layers=3, vocab=VOCAB)
    reset.update(layer_letters="HTW", hope_reset_at_eod=True, eod_token_id=EOD,
                 op_configs={"H": _op(chunk_size=4, proj_chunk_size=2, inner_clip=0.5),
                             "T": _op(chunk_size=4, self_mod=False, dgd=False)})
    return {"hope": hope, "hope_attention": tied, "titans": tiny_config("titans", layers=2, vocab=VOCAB),
            "transformer": gqa, "swa": swa, "deltanet": delta, "hybrid": hybrid,
            "reset": reset}


def _write_converted(path, cfg, seed, tokenizer):
    """A directory in convert_to_torch.py's format, with every parameter away from its init (no trivial zeros)."""
    from safetensors.torch import save_file

    from hope_megatron.inference import HopeLM

    torch.manual_seed(seed)
    model = HopeLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    os.makedirs(path)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(path, "model.safetensors"))
    args = {"vocab_size": VOCAB - 1}
    cfg = dict(cfg, tokenizer_type="NullTokenizer", tokenizer_file=None)
    if tokenizer is not None:
        args["tokenizer_model"] = "/elsewhere/" + os.path.basename(tokenizer)
        os.link(tokenizer, os.path.join(path, os.path.basename(tokenizer)))
        cfg.update(tokenizer_type="SentencePieceTokenizer", tokenizer_file=os.path.basename(tokenizer))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(path, "megatron_args.json"), "w") as f:
        json.dump(args, f)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from checkpoints_convert import export_hf
    from tests.unit.data.conftest import load_tool

    root = tmp_path_factory.mktemp("hf")
    os.environ.setdefault("HF_MODULES_CACHE", str(root / "modules"))  # the remote code's import cache
    code = load_tool("train_tokenizer").main(["--input", HAMLET, "--text-unit", "paragraph", "--model-prefix",
                                              str(root / "sp"), "--vocab-size", "600", "--num-threads", "1"])
    assert code == 0
    dirs = {}
    for i, (case, cfg) in enumerate(_configs().items()):
        src = str(root / case)
        _write_converted(src, cfg, i, str(root / "sp.model") if case == "hope" else None)
        if case == "titans":  # the CLI, into another directory
            export_hf.main(["--checkpoint", src, "--output", src + "_hf"])
            src += "_hf"
        else:
            export_hf.export_hf(src)
        dirs[case] = src
    return dirs


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _tokens(n=19, batch=2, seed=5):
    return torch.randint(0, VOCAB - 1, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", list(_configs()))
def test_transformers_equals_inference(exported, case):
    from hope_megatron.inference import load_model

    ref, hf = load_model(exported[case]), _load(exported[case])
    assert hf.dtype == torch.float32
    t = _tokens()
    for r, c in EODS if case == "reset" else ():
        t[r, c] = EOD
    with torch.no_grad():
        want = ref(t)
        assert _rel(hf(t).logits, want) <= 1e-5
        if case == "reset":  # the EODs matter: without the reset the memory reads across documents
            assert ref.reset_eod and hf.reset_eod and hf.config.eod_token_id == EOD
            hf.reset_eod = False
            assert _rel(hf(t).logits, want) > 1e-3
            hf.reset_eod = True
        cache, pieces = None, []
        for a, b in SEGMENTS:
            out = hf(t[:, a:b], cache=cache, use_cache=True)
            cache = out.cache
            pieces.append(out.logits)
        assert _rel(torch.cat(pieces, dim=1), want) <= 1e-5
        assert cache.position == t.shape[1]
        new = hf.generate(t[:, :7], max_new_tokens=6, do_sample=False, min_new_tokens=6)[:, 7:]
        assert torch.equal(new, ref.generate(t[:, :7], 6))


@pytest.mark.parametrize("case", ["hope", "hybrid", "reset"])
def test_padded_batch_equals_rows_alone(exported, case):
    """lm-eval's generate_until left-pads a batch: each row must stream as if it were alone (no pad enters a memory).
    reset: each row carries its own "last token was EOD" (row 1's prompt ends with one)."""
    hf = _load(exported[case])
    rows = [_tokens(9, 1, 1)[0], _tokens(5, 1, 2)[0]]
    if case == "reset":
        rows[0][3] = rows[1][4] = EOD
    batch = torch.full((2, 9), 7, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.long)
    for r, row in enumerate(rows):
        batch[r, 9 - len(row):] = row
        mask[r, 9 - len(row):] = 1
    with torch.no_grad():
        logits = hf(batch, attention_mask=mask).logits
        gen = hf.generate(batch, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False)[:, 9:]
        for r, row in enumerate(rows):
            alone = hf(row[None]).logits[0]
            assert _rel(logits[r, 9 - len(row):], alone) <= 1e-5
            assert torch.equal(gen[r], hf.generate(row[None], max_new_tokens=5, min_new_tokens=5, do_sample=False)[0,
                                                                                                                  len(row):])


def test_a_whole_batch_cache_refuses_a_padded_continuation(exported):
    """A cache from an unpadded batch holds one state for all rows; a padded call cannot split it per row (it used to
    restart every row from the meta-init state, silently)."""
    hf = _load(exported["hope"])
    t = _tokens(9, 2)
    with torch.no_grad():
        cache = hf(t, use_cache=True).cache
        with pytest.raises(ValueError, match="holds one state for the whole batch"):
            hf(t[:, :3], attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]), cache=cache, use_cache=True)


def test_tokenizers_match_training(exported, tmp_path):
    from transformers import AutoTokenizer

    from checkpoints_convert.export_hf import export_hf
    from hope_megatron.data.tokenizers import build_tokenizer
    from hope_megatron.eval.common import load_tokenizer
    from tests.unit.data.test_tokenizers_and_datasets import tiny_gpt2_files

    texts = [p for p in open(HAMLET, encoding="utf-8").read().split("\n\n") if p.strip()][:12]
    texts += ["  two leading spaces", "tabs\tand\n\nnewlines", "unicode é ☃ 字", " Answer: yes"]
    sp = load_tokenizer(exported["hope"])
    tok = AutoTokenizer.from_pretrained(exported["hope"], trust_remote_code=True)
    assert tok.eos_token_id == sp.eod == 2 and tok.pad_token_id == sp.eod
    for text in texts:
        ids = tok(text)["input_ids"]
        assert ids == sp.tokenize(text) and tok.encode(text, add_special_tokens=False) == ids, text
        assert tok.decode(ids) == sp.detokenize(ids)
    assert tok.decode(ids + [sp.eod], skip_special_tokens=True) == sp.detokenize(ids)

    null = AutoTokenizer.from_pretrained(exported["titans"], trust_remote_code=True)
    assert null("3 14 600")["input_ids"] == [3, 14, 600] and null.eos_token_id == VOCAB - 1
    assert null.decode([3, 14]) == "3 14"

    src = str(tmp_path / "gpt2")
    _write_converted(src, _configs()["titans"], 0, None)
    vocab_file, merge_file, _ = tiny_gpt2_files(tmp_path)
    for f in (vocab_file, merge_file):
        os.link(f, os.path.join(src, os.path.basename(f)))
    cfg = json.load(open(os.path.join(src, "config.json")))
    json.dump(dict(cfg, tokenizer_type="GPT2BPETokenizer"), open(os.path.join(src, "config.json"), "w"))
    json.dump({"vocab_file": vocab_file, "merge_file": merge_file}, open(os.path.join(src, "megatron_args.json"), "w"))
    export_hf(src)
    bpe = build_tokenizer("GPT2BPETokenizer", vocab_file=vocab_file, merge_file=merge_file)
    gpt2 = AutoTokenizer.from_pretrained(src, trust_remote_code=True)
    for text in ("hello world é", " hello  hello\nworld", "<|endoftext|> hell"):
        assert gpt2(text)["input_ids"] == bpe.tokenize(text), text
    assert gpt2.eos_token_id == bpe.eod and gpt2.decode(bpe.tokenize("hello world")) == "hello world"


def test_remote_code_is_self_contained(exported):
    """The files that travel with the checkpoint import only torch, transformers, sentencepiece and the stdlib."""
    allowed = {"__future__", "math", "os", "shutil", "dataclasses", "typing", "torch", "transformers", "sentencepiece"}
    for name in ("modeling_hope.py", "memory_hope.py", "configuration_hope.py", "tokenization_hope.py"):
        text = open(os.path.join(exported["hope"], name), encoding="utf-8").read()
        assert text == open(os.path.join(REPO, "hope_megatron", "inference", "hf", name), encoding="utf-8").read()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = set() if node.level else {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, (name, roots)
    cfg = json.load(open(os.path.join(exported["hybrid"], "config.json")))
    assert sorted(cfg["in_proj_components"]) == ["D", "H", "T"] and cfg["auto_map"]["AutoModelForCausalLM"]


def _piqa(path, n=8):
    rows = [{"goal": f"To {w} the door,", "sol1": "turn the handle.", "sol2": f"{w} a stone.", "label": i % 2}
            for i, w in enumerate(["open", "close", "paint", "lock", "fix", "clean", "move", "hold"][:n])]
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def test_lm_eval_cli_through_hf_equals_hope_adapter(exported, tmp_path):
    """The one-line route users run: `lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True` on a
    local task (written by `python -m hope_megatron.eval.zeroshot --write-lm-eval-tasks`), against the `hope`
    adapter on the same items: the same log-likelihoods (1e-5) and the same acc / acc_norm."""
    pytest.importorskip("lm_eval")
    from hope_megatron.eval import zeroshot
    from hope_megatron.eval.common import load
    from hope_megatron.eval.lm_eval_adapter import HopeEvalLM

    data = tmp_path / "data"
    os.makedirs(data / "piqa")
    _piqa(data / "piqa" / "validation.jsonl")
    tasks = tmp_path / "tasks"
    zeroshot.main(["--checkpoint", exported["hope"], "--tasks", "piqa", "--data-dir", str(data),
                   "--write-lm-eval-tasks", str(tasks)])
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
           f"pretrained={exported['hope']},trust_remote_code=True", "--tasks", "piqa_local", "--include_path",
           str(tasks), "--batch_size", "3", "--device", "cpu", "--output_path", str(out), "--log_samples"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    results = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f.startswith("results")]
    samples = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f.startswith("samples_piqa_local")]
    hf = json.load(open(results[0]))["results"]["piqa_local"]
    rows = [json.loads(line) for line in open(samples[0])]

    model, tok, _ = load(exported["hope"])
    lm = HopeEvalLM(model=model, tokenizer=tok, batch_size=3)
    ours = zeroshot.evaluate(lm, ["piqa"], str(data))["piqa"]
    assert (hf["acc,none"], hf["acc_norm,none"]) == (ours["acc"], ours["acc_norm"])

    class Req:
        def __init__(self, args):
            self.args = args

    for row in rows:  # every choice's log-likelihood, as the CLI logged it, against the adapter's
        got = [float(resp[0][0]) for resp in row["resps"]]
        want = [ll for ll, _ in lm.loglikelihood([Req((g["arg_0"], g["arg_1"])) for g in row["arguments"].values()],
                                                 disable_tqdm=True)]
        assert max(abs(a - b) / abs(b) for a, b in zip(got, want)) <= 1e-5, (got, want)


def test_export_refuses_what_is_not_a_converted_checkpoint(tmp_path):
    from checkpoints_convert import export_hf

    with pytest.raises(SystemExit, match=r"^export_hf: .* is not a converted checkpoint \(it needs config.json and "
                                         r"model.safetensors\); run checkpoints_convert/convert_to_torch.py"):
        export_hf.main(["--checkpoint", str(tmp_path)])
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    with pytest.raises(SystemExit, match=r"config.json lacks layer_letters, vocab_size, op_configs: it was not written "
                                         r"by convert_to_torch.py"):
        export_hf.main(["--checkpoint", str(tmp_path)])
    (tmp_path / "config.json").write_text(json.dumps(dict(_configs()["reset"], eod_token_id=None)))
    with pytest.raises(SystemExit, match=r"config.json sets hope_reset_at_eod but no eod_token_id, so the exported "
                                         r"model could not find the document starts; re-run convert_to_torch.py"):
        export_hf.main(["--checkpoint", str(tmp_path)])
    assert not (tmp_path / "modeling_hope.py").exists()  # nothing written before the checks


def test_older_and_padded_conversions_export_to_the_same_function(tmp_path):
    """A directory hope_megatron.inference loads must export too: one converted before issue 16 (format_version 1,
    dead x̃ rows in a Titans layer's in_proj and conv) whose vocabulary tables also carry 4 padding rows. The export
    writes today's layout into its output (the source file untouched) and transformers gives load_model's logits;
    from_pretrained refused it with a size mismatch before."""
    from safetensors.torch import load_file, save_file

    from checkpoints_convert import export_hf
    from hope_megatron.inference import load_model
    from hope_megatron.inference.model import VOCAB_TABLES

    os.environ.setdefault("HF_MODULES_CACHE", str(tmp_path / "modules"))
    cfg = tiny_config("titans", layers=2, vocab=VOCAB)
    src, out = str(tmp_path / "old"), str(tmp_path / "hf")
    _write_converted(src, cfg, 3, None)
    weights = os.path.join(src, "model.safetensors")
    sd = load_file(weights)
    rows = cfg["memory_heads"] * cfg["memory_head_dim"]
    for i in range(2):
        for name in ("in_proj.weight", "conv_weight"):
            key = f"decoder.layers.{i}.self_attention.{name}"
            sd[key] = torch.cat([torch.randn(rows, *sd[key].shape[1:]), sd[key]])
    for key in VOCAB_TABLES:
        if key in sd:
            sd[key] = torch.cat([sd[key], torch.randn(4, sd[key].shape[1])])
    save_file(sd, weights)
    old = json.load(open(os.path.join(src, "config.json")))
    json.dump(dict(old, format_version=1), open(os.path.join(src, "config.json"), "w"))
    before = open(weights, "rb").read()

    export_hf.export_hf(src, out)
    assert open(weights, "rb").read() == before and json.load(open(os.path.join(out, "config.json")))[
        "format_version"] == 2
    t = _tokens()
    with torch.no_grad():
        want = load_model(src)(t)
        assert _rel(_load(out)(t).logits, want) <= 1e-5
        assert _rel(load_model(out)(t), want) <= 1e-6
