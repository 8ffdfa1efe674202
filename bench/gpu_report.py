"""The GPU run's Markdown: one table per step kind, from the result that gpu_run.json holds."""

from __future__ import annotations


def printable(text: str) -> str:
    """Model output as one Markdown-safe line (a random model's answer holds control characters)."""
    return "".join(c if c.isprintable() else "·" for c in text.replace("\n", " "))


def fmt(v, nd: int = 0) -> str:
    if v is None or v == "":
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def table(head: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c.replace("|", "\\|") for c in r) + " |"
            for r in rows]
    return "\n".join(out)


def markdown(r: dict) -> str:
    m = r.get("machine", {})
    gpu = m.get("gpu")
    lcp = (r.get("build") or {}).get("after") or m.get("llama_cpp") or {}
    torch = m.get("torch") or {}
    ort = m.get("onnxruntime") or {}
    parts = [f"# llasm GPU run — {r['mode']}", "",
             f"{gpu['name'] + ' (compute capability ' + gpu['compute_cap'] + ', driver ' + gpu['driver'] + ')' if gpu else 'no GPU'}, "
             f"{m.get('cpu', '?')} × {m.get('cpus', '?')} CPUs, Python {m.get('python', '?')}; llama-cpp-python "
             f"{lcp.get('version', '?')} ({'GPU offload' if lcp.get('gpu_offload') else 'CPU only'}), torch "
             f"{torch.get('version', '?')} (CUDA {'yes' if torch.get('cuda') else 'no'}), onnxruntime "
             f"{ort.get('version', '?')} ({', '.join(ort.get('providers') or []) or '?'}). "
             f"Wall {r.get('wall_s', 0):.0f} s of a {r.get('deadline_s', 0):.0f} s deadline. Sizes: "
             + ", ".join(f"{k} {v}" for k, v in r.get("sizes", {}).items()) + ".", "", "## Steps", "",
             table(["step", "status", "s", "note"], [[s["name"], s["status"], f"{s['seconds']:.1f}", s["note"]]
                                                      for s in r.get("steps", [])])]
    if r.get("import_order"):
        parts += ["", "## `import llama_cpp` and `import torch` in one process", "",
                  table(["order", "torch on", "LLM GPU offload", "exit", "free(): invalid pointer"],
                        [[x["order"], x.get("torch_device"), "yes" if x.get("llama_gpu_offload") else "no",
                          "timeout" if x["timed_out"] else f"{x['rc']}" + (f" ({x['signal']})" if x["signal"] else ""),
                          "yes" if x["free_invalid_pointer"] else "no"] for x in r["import_order"]])]
    if r.get("ask"):
        parts += ["", "## `llasm ask --gpu-layers -1` (ms)", "",
                  table(["model", "example", "tower", "tower on", "LLM on", "answer", "encode", "prefill",
                         "first token", "decode tok/s"],
                        [[a["model"], a["example"], a["backend"], a.get("tower_device"),
                          (a.get("llm_device") or "—") + (f" ({a['llm_layers_on_gpu']} layers)" if a.get("llm_layers_on_gpu") else ""),
                          printable(a.get("answer") or ("error: " + (a.get("error") or "") if a.get("rc") else ""))[:40],
                          fmt(a.get("encode_ms")), fmt(a.get("prefill_ms")), fmt(a.get("first_token_ms")),
                          fmt(a.get("decode_tokens_per_s"))] for a in r["ask"]])]
    for key, title in (("realtime", "streamed while spoken (`bench/latency.py --realtime`)"),
                       ("whole", "whole clips (`bench/latency.py`)")):
        lat = (r.get("latency") or {}).get(key)
        if not lat:
            continue
        parts += ["", f"## End of speech → first answer token, {title}, ms (median)", "",
                  table(["system", "speech s", "encode / ASR", "prefill", "1st token", "total", "× faster cascade"],
                        [[x["system"], fmt(x.get("utterance_s"), 1), fmt(x.get("encode_ms")), fmt(x.get("prefill_ms")),
                          fmt(x.get("first_token_ms"), 1), fmt(x.get("total_ms")), fmt(x.get("vs_faster_cascade"), 2)]
                         for x in lat.get("latency", [])])]
        if lat.get("decode"):
            parts += ["", table(["decode: runtime", "sampling", "tokens", "tokens/s", "× llama.cpp C loop"],
                                [[x["runtime"], x["sampling"], x["tokens"], fmt(x["tokens_per_s"], 1),
                                  fmt(x.get("vs_llama_cpp"), 2)] for x in lat["decode"]])]
    sv = r.get("serve") or {}
    if sv.get("cells"):
        parts += ["", f"## `llasm serve` under load (`bench/serve.py`, {sv.get('seconds')} s per cell, "
                  f"max {sv.get('max_tokens')} tokens, --gpu-layers {sv.get('gpu_layers')})", "",
                  table(["system", "clients", "requests", "req/s", "TTFT p50 ms", "TTFT p95 ms", "same", "errors"],
                        [[c["system"], c["clients"], c["requests"], fmt(c["rps"], 2), fmt(c["ttft_p50_ms"]),
                          fmt(c["ttft_p95_ms"]), fmt(None if c["same"] is None else f"{100 * c['same']:.0f}%"),
                          c["errors"]] for c in sv["cells"]])]
        parts += [""] + [f"- {n}" for n in sv.get("notes", [])] if sv.get("notes") else []
    if r.get("notes"):
        parts += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(parts) + "\n"

