#!/usr/bin/env python3
"""Writes the fuzzers' seed corpus to fuzz/seeds/<target>/ from files the
repository already has (suites/, models.yaml) plus a tiny GGUF file built
here byte by byte (GGUF v3: header, metadata, tensor directory, data)."""
import json, pathlib, struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"

def s(x: str) -> bytes:
    b = x.encode()
    return struct.pack("<Q", len(b)) + b

U32, I32, F32, BOOL, STR, ARR = 4, 5, 6, 7, 8, 9

def kv(key, typ, val):
    out = s(key) + struct.pack("<I", typ)
    if typ == U32: out += struct.pack("<I", val)
    elif typ == F32: out += struct.pack("<f", val)
    elif typ == STR: out += s(val)
    elif typ == ARR:
        et, items = val
        out += struct.pack("<IQ", et, len(items))
        for it in items:
            out += s(it) if et == STR else struct.pack("<f" if et == F32 else "<i", it)
    return out

def gguf(with_template: bool) -> bytes:
    toks = ["<unk>", "<s>", "</s>", "H", "e", "l", "o", "He", "ll", "Hello", "\u0120", "w"]
    meta = [
        kv("general.architecture", STR, "llama"),
        kv("general.alignment", U32, 32),
        kv("llama.block_count", U32, 1),
        kv("llama.context_length", U32, 64),
        kv("llama.embedding_length", U32, 32),
        kv("llama.feed_forward_length", U32, 64),
        kv("llama.attention.head_count", U32, 2),
        kv("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        kv("tokenizer.ggml.model", STR, "gpt2"),
        kv("tokenizer.ggml.tokens", ARR, (STR, toks)),
        kv("tokenizer.ggml.token_type", ARR, (I32, [3, 3, 3] + [1] * (len(toks) - 3))),
        kv("tokenizer.ggml.merges", ARR, (STR, ["H e", "l l", "He ll"])),
        kv("tokenizer.ggml.bos_token_id", U32, 1),
        kv("tokenizer.ggml.eos_token_id", U32, 2),
    ]
    if with_template:
        meta.append(kv("tokenizer.chat_template", STR,
            "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}"))
    # Two tensors: F32 [4, 8] and Q8_0 [32, 2] (one block of 34 bytes per row).
    tensors = [("token_embd.weight", [8, 4], 0, 4 * 8 * 4), ("output.weight", [32, 2], 8, 2 * 34)]
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)) + b"".join(meta)
    offset, data, tdir = 0, b"", b""
    for name, dims, ggml_type, nbytes in tensors:
        tdir += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        tdir += struct.pack("<IQ", ggml_type, offset)
        if ggml_type == 0:
            blob = b"".join(struct.pack("<f", i / 10) for i in range(nbytes // 4))
        else:
            blob = b"".join(struct.pack("<e", 0.01) + bytes(range(32)) for _ in range(2))
        blob += bytes((-len(blob)) % 32)
        data += blob
        offset += len(blob)
    body = head + tdir
    body += bytes((-len(body)) % 32)
    return body + data

def write(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())

write("gguf", "tiny.gguf", gguf(True))
write("gguf", "tiny-no-template.gguf", gguf(False))
write("models_yaml", "models.yaml", (ROOT / "models.yaml").read_text())
docs = "\n".join(json.dumps(d) for d in [
    {"question": "2+2?", "answer": "#### 4", "choices": {"text": ["3", "4"], "label": ["A", "B"]}, "answerKey": "B"},
    {"question": "Sky?", "answer": "blue #### 1", "choices": {"text": ["red", "blue"], "label": ["A", "B"]}, "answerKey": "B"},
    {"question": "1+0?", "answer": "#### 1", "choices": {"text": ["1", "0"], "label": ["A", "B"]}, "answerKey": "A"},
])
for f in sorted((ROOT / "suites").rglob("*.yaml")):
    write("task_yaml", f.name, f.read_text() + "\n---\n" + docs + "\n")
write("chat_template", "simple.jinja",
      "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}[SYS]{{ m.content | trim }}"
      "{% else %}<|{{ m.role }}|>{{ m.content }}{% endif %}{% endfor %}"
      "{% if add_generation_prompt %}<|assistant|>{% endif %}\0"
      + json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]))
write("chat_template", "loops.jinja",
      "{%- for m in messages -%}{%- if loop.first and m.role != 'system' -%}{{ raise_exception('x') }}"
      "{%- endif -%}{{ m | tojson }}{%- if loop.index > 5 %}{% break %}{% endif -%}{%- endfor -%}"
      "{{ strftime_now('%Y') }}\0[]")
rec = {"doc_id": 0, "gold": 1, "context": "Q", "continuations": [" a", " b"],
       "loglikelihoods": [-1.5, -0.5], "is_greedy": [False, True], "pred": 1, "acc": 1.0,
       "acc_norm": 1.0, "pred_norm": 1, "continuation_tokens": [1, 1], "truncated": False,
       "latency_ms": 12.5}
gen = {"doc_id": 0, "prompt": "Question: 2+2?\nAnswer:", "generation": " 4.\n#### 4",
       "target": "#### 4", "filtered": {"strict-match": "4"}, "exact_match,strict-match": 1.0,
       "stop": "until", "prompt_tokens": 9, "generated_tokens": 6, "truncated": False}
write("samples", "gen.jsonl", json.dumps(gen) + "\n")
write("samples", "good.jsonl", json.dumps(rec) + "\n" + json.dumps({**rec, "doc_id": 1}) + "\n")
write("samples", "torn.jsonl", json.dumps(rec) + "\n" + json.dumps(rec)[:20])
print("seeds in", SEEDS)
