"""The model card of an export dir: ``README.md`` with the Hugging Face YAML header (languages, base
model, pipeline tag, tags with the quantization scheme and bits, sizes, what loads the dir) and the
per-language table student vs teacher with agreement from the run's ``results.json``.

>>> write_card(out / "README.md", report, run_info(ckpt), labels)
>>> huggingface_hub.ModelCard.load(out / "README.md").data.pipeline_tag
'text-classification'
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from sdq.export.report import ExportReport
from sdq.export.run_info import RunInfo

CARD_FILE = "README.md"
PIPELINE_TAGS = {"token_cls": "token-classification"}  # every other kind: text-classification


def hub_languages(codes: list[str]) -> list[str]:
    """Language codes as the hub's metadata wants them: ``eng_Latn`` -> ``eng``, ``zh-tw`` -> ``zh``
    (ISO 639), first occurrence order, duplicates dropped."""
    out: list[str] = []
    for c in codes:
        code = str(c).split("_")[0].split("-")[0].lower()
        if code and code not in out:
            out.append(code)
    return out


def quant_bits(report: ExportReport, info: RunInfo | None) -> tuple[str, list[int], int | None]:
    """(scheme name, weight bit-widths, activation bits or None) of the export."""
    quant = (info.quant if info else None) or {}
    act = quant.get("act") or {}
    act_bits = int(act["bits"]) if act.get("bits") is not None and report.quantized_inputs else None
    wbits = sorted(set(report.bits.values()))
    name = str(quant.get("name") or (f"w{'/'.join(map(str, wbits))}" + (f"a{act_bits}" if act_bits else "")))
    return name, wbits, act_bits


def results_table(info: RunInfo | None) -> list[str]:
    """Markdown lines: per language student, teacher, difference and agreement (results.json), or why not."""
    res = info.results if info else None
    task = info.task if info else ""
    per = (res or {}).get(task) or {}
    split = next((s for s in ("test", "dev") if per.get(s)), None)
    if split is None:
        return [("Per-language results: not available (the checkpoint does not sit in a run dir with a "
                 "results.json; export `ckpt=<run dir>` of a finished run to include them).")]
    teacher = ((res.get("teacher") or {}).get(task) or {}).get(split, {})
    fidelity = ((res.get("fidelity") or {}).get(task) or {}).get(split, {})
    metric = res.get("metric", info.metric)
    head = (f"{task} {split} {metric} per language (from the run's results.json; agreement: % of the teacher's "
            "predictions the student reproduces):")
    lines = [head, "", f"| language | student {metric} | teacher {metric} | Δ (pt) | agreement % |",
             "|---|---:|---:|---:|---:|"]

    def cell(v, fmt: str = ".2f") -> str:
        return "not available" if v is None else format(v, fmt)

    for lang, value in per[split].items():
        t = teacher.get(lang)
        agree = (fidelity.get(lang) or {}).get("agree")
        name = f"**{lang}**" if lang == "avg" else lang
        lines.append(f"| {name} | {cell(value)} | {cell(t)} | {cell(None if t is None else value - t, '+.2f')} "
                     f"| {cell(agree)} |")
    return lines


def card_text(report: ExportReport, info: RunInfo | None = None, labels: tuple | list | None = None) -> str:
    """The README.md text (YAML front matter + markdown body)."""
    name, wbits, act_bits = quant_bits(report, info)
    kind = info.kind if info else "seq_cls"
    copy = report.hf_copy or {}
    onnx_kind = report.onnx_line.split(":", 1)[1].strip().split(" ", 1)[0] if report.onnx else "none"
    tags = ["sdq", "quantized", "self-distillation", name, *(f"{b}-bit" for b in wbits)]
    if act_bits:
        tags.append(f"a{act_bits}")
    if info and info.task:
        tags.append(info.task)
    data = ModelCardData(
        language=hub_languages(info.languages) if info and info.languages else None,
        base_model=info.base_model if info else None, library_name="transformers",
        pipeline_tag=PIPELINE_TAGS.get(kind, "text-classification"), tags=tags,
        sdq={"quantization": name, "weight_bits": wbits, "activation_bits": act_bits,
             "model_size_mb": round(report.packed_total / 1e6, 2), "fp32_size_mb": round(report.fp32_total / 1e6, 2),
             "compression": round(report.ratio, 2), "transformers_weights": "dequantized" if copy.get("written")
             else "refused", "onnx": onnx_kind, "task": info.task if info else None,
             "method": info.method if info else None})
    title = f"{info.task} student, {name}" if info else f"sdq student, {name}"
    base = info.base_model or info.model if info else "the run's backbone"
    acts = f", {act_bits}-bit activations" if act_bits else ", full-precision activations"
    intro = (f"A {name} quantized student of {base}, trained by self-distillation from its full-precision "
             f"teacher with sdq; {'/'.join(map(str, wbits))}-bit weights{acts}.")
    if report.onnx:
        agree = _pct(report.onnx.get("agreement_with_student"), report.onnx.get("check_examples", 0))
        onnx = (f"- {report.onnx_line}; prediction agreement with the student: {agree}. "
                "`onnxruntime.InferenceSession(\"model.onnx\")` with the tokenizer of this dir (inputs "
                "`input_ids`, `attention_mask`; output `logits`). On x86 CPUs without VNNI use "
                "`sdq.export.ort_model.ort_session` (exact int8 kernels).")
    else:
        onnx = f"- {report.onnx_line}."
    exact = ("- exact: `sdq.export.load_quantized(dir, backend=\"int8\")` (the student's logits, from "
             "`sdq_packed.safetensors`).")
    refused = "" if copy.get("written") else "  # refused here: no model.safetensors, see above"
    example = f'clf = pipeline("{PIPELINE_TAGS.get(kind, "text-classification")}", model="<this dir>"){refused}'
    body = [f"# {title} (sdq)", "", intro, "", "## Loading", "", f"- {report.transformers_line}.", onnx, exact, "",
            "```python", "from transformers import pipeline", example, "```", "",
            "## Size", "", "```", report.table(), "```", "",
            "## Results", "", *results_table(info), ""]
    if labels:
        body += ["## Labels", "", ", ".join(f"{i}: {n}" for i, n in enumerate(labels)), ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)


def _pct(v: float | None, n: int = 0) -> str:
    return "not measured (check=false)" if v is None else f"{v:.2f} % on {n} check examples"


def write_card(path: str | Path, report: ExportReport, info: RunInfo | None = None,
               labels: tuple | list | None = None) -> Path:
    """Write the model card to ``path`` (``<export dir>/README.md``)."""
    ModelCard(card_text(report, info, labels)).save(str(path))
    return Path(path)
