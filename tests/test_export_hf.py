"""What the ecosystem loads from an export dir: plain transformers (AutoTokenizer, AutoModelFor…, pipeline),
onnxruntime + the shipped tokenizer, the model card; ``python -m sdq.export ckpt=<run dir>``."""

import json

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from sdq.errors import SdqError
from sdq.export import export_quantized, load_quantized
from sdq.export.__main__ import main
from sdq.export.hf_copy import HF_WEIGHTS, MIN_AGREEMENT
from sdq.export.model_card import card_text
from sdq.export.run_info import resolve_ckpt, run_labels
from sdq.quant import QuantConfig, prepare, set_phase

LABELS = ("science/technology", "travel", "politics", "sports", "health", "entertainment", "geography")
W8 = {"weight": {"bits": 8, "granularity": "channel"}, "embedding": {"bits": 8, "granularity": "row"},
      "skip": ["classifier"]}
W8A8 = {**W8, "act": {"bits": 8, "symmetric": False, "granularity": "tensor", "observer": "ema"}}
W8A8_CHANNEL = {**W8, "act": {"bits": 8, "symmetric": False, "granularity": "channel", "observer": "minmax"}}
SENTENCES = ["t5 t17 t230", "t999 t6 unknownword t42 t42", "t300", "t7 t8 t9 t10 t11 t12 t13 t14"]
RESULTS = {"sib200": {"test": {"eng_Latn": 80.0, "fra_Latn": 75.5, "avg": 77.75}}, "metric": "acc",
           "teacher": {"sib200": {"test": {"eng_Latn": 78.0, "fra_Latn": 76.0, "avg": 77.0}}},
           "fidelity": {"sib200": {"test": {"eng_Latn": {"agree": 97.0, "kl": 0.01},
                                            "fra_Latn": {"agree": 95.5, "kl": 0.02},
                                            "avg": {"agree": 96.25, "kl": 0.015}}}}}


def small_backbone(d):
    """A 2-layer XLM-R (vocabulary 1000) with its own word-level fast tokenizer (``t5`` ... ``t999``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, **{f"t{i}": i for i in range(5, 1000)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>",
                                   model_max_length=64)
    cfg = XLMRobertaConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=66, pad_token_id=1)
    torch.manual_seed(0)
    XLMRobertaModel(cfg, add_pooling_layer=False).save_pretrained(str(d))
    fast.save_pretrained(str(d))
    return str(d)


def write_run(run, backbone, quant, name, ckpt_name="last.ckpt", results=True):
    """An sdq run dir: ``checkpoints/<ckpt_name>`` of a calibrated sib200 student (+ results.json)."""
    from sdq.lit.restore import build_from_config

    full = {"act": None, "attention": None, "overrides": {}, "quant_noise_p": 0.0, "quant_noise_block": 8, **quant}
    cfg = {"model": {"name_or_path": backbone}, "task": {"name": "sib200"},
           "method": {"name": "sdq", "quantize": True, "quant_noise": 0.0}, "quant": {"name": name, **full},
           "data": {"root": None, "max_length": 32, "batch_size": 8, "eval_batch_size": 8,
                    "languages": None, "val_languages": ["eng_Latn"], "limit_train": 8, "limit_eval": 16,
                    "num_workers": 0}, "seed": 0}
    torch.manual_seed(0)
    student = build_from_config(OmegaConf.create(cfg), quantize=False).eval()
    prepare(student, QuantConfig.from_dict(dict(full)))
    set_phase(student, "calibrate")
    with torch.no_grad():
        ids = torch.randint(5, 1000, (8, 16), generator=torch.Generator().manual_seed(1))
        student(input_ids=ids, attention_mask=torch.ones_like(ids))
    set_phase(student, "frozen")
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"student.{k}": v for k, v in student.state_dict().items()}, "sdq": {"config": cfg}},
               run / "checkpoints" / ckpt_name)
    if results:
        (run / "results.json").write_text(json.dumps(RESULTS))
    return student


def student_preds(student, tok, sentences=SENTENCES):
    with torch.no_grad():
        return [int(student(**tok(s, return_tensors="pt")).logits.argmax(-1)) for s in sentences]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return small_backbone(tmp_path_factory.mktemp("backbone"))


@pytest.fixture(scope="module")
def weight_only(tmp_path_factory, backbone):
    """``python -m sdq.export ckpt=<run dir>`` of a W8 (weight-only) student."""
    run = tmp_path_factory.mktemp("run_w8")
    student = write_run(run, backbone, W8, "w8")
    out = run.parent / f"{run.name}_export"
    res = main([f"ckpt={run}", f"out={out}", "check=false"])
    return student, out, res


@pytest.fixture(scope="module")
def w8a8(tmp_path_factory, backbone):
    """The same of a W8A8 (per-tensor activations) student, with check=false: the copy is not measured."""
    run = tmp_path_factory.mktemp("run_w8a8")
    student = write_run(run, backbone, W8A8, "w8a8_int8")
    out = run.parent / f"{run.name}_export"
    res = main([f"ckpt={run}", f"out={out}", "check=false", "onnx=true"])
    return student, out, res


def test_ckpt_run_dir_resolution(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(SdqError, match="holds no checkpoints/best.ckpt or checkpoints/last.ckpt"):
        resolve_ckpt(run)
    with pytest.raises(SystemExit) as exc:
        main([f"ckpt={run}", f"out={tmp_path / 'o'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: run dir") and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resolve_ckpt(run) == run / "checkpoints" / "last.ckpt"
    (run / "checkpoints" / "best.ckpt").write_bytes(b"x")
    assert resolve_ckpt(run) == run / "checkpoints" / "best.ckpt"
    assert resolve_ckpt(run / "checkpoints" / "last.ckpt") == run / "checkpoints" / "last.ckpt"


def test_run_labels_prefer_the_stored_list():
    cfg = OmegaConf.create({"task": {"name": "sib200", "labels": ["b", "a"]}})
    assert run_labels(cfg) == ("b", "a")
    assert run_labels(OmegaConf.create({"task": {"name": "sib200", "labels": None}})) == LABELS
    assert run_labels(OmegaConf.create({"task": {"name": "my_reviews"}}), num_labels=2) == ("LABEL_0", "LABEL_1")


def test_tokenizer_of_the_export_is_the_runs(weight_only, backbone):
    from transformers import AutoTokenizer

    _, out, _ = weight_only
    run_tok, exported = AutoTokenizer.from_pretrained(backbone), AutoTokenizer.from_pretrained(str(out))
    assert len(exported) == len(run_tok) == 1000
    for s in SENTENCES:
        assert exported(s)["input_ids"] == run_tok(s)["input_ids"]
    assert exported("t5 unknownword")["input_ids"] == [0, 5, 3, 2]


def test_config_has_architecture_and_label_names(weight_only):
    _, out, _ = weight_only
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["XLMRobertaForSequenceClassification"]
    assert cfg["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    assert cfg["label2id"] == {name: i for i, name in enumerate(LABELS)}
    assert cfg["sdq_export"]["transformers_weights"] == "dequantized"


def test_transformers_loads_the_students_weights(weight_only, backbone):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    student, out, res = weight_only
    assert res["hf_copy"]["written"] and res["transformers"].startswith("transformers: model.safetensors =")
    model, info = AutoModelForSequenceClassification.from_pretrained(str(out), output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    tok = AutoTokenizer.from_pretrained(backbone)
    preds = student_preds(student, tok)
    with torch.no_grad():
        for s in SENTENCES:  # weight-only: the dequantized copy is the student
            torch.testing.assert_close(model.eval()(**tok(s, return_tensors="pt")).logits,
                                       student(**tok(s, return_tensors="pt")).logits, atol=1e-5, rtol=0)
    clf = pipeline("text-classification", model=str(out))
    assert [r["label"] for r in clf(SENTENCES)] == [LABELS[p] for p in preds]
    assert (out / "sdq_packed.safetensors").is_file()


def test_sdq_loader_still_reads_the_packed_weights(weight_only):
    student, out, _ = weight_only
    ids = torch.randint(5, 1000, (3, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(load_quantized(out)(ids, torch.ones_like(ids)).logits,
                                   student(input_ids=ids, attention_mask=torch.ones_like(ids)).logits,
                                   atol=1e-6, rtol=0)


def front_matter(path) -> dict:
    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_model_card_header_and_per_language_table(weight_only):
    _, out, res = weight_only
    meta = front_matter(out / "README.md")
    assert meta["language"] == ["eng", "fra"] and meta["pipeline_tag"] == "text-classification"
    assert meta["library_name"] == "transformers" and "base_model" not in meta  # a local backbone dir
    assert {"sdq", "quantized", "w8", "8-bit", "sib200"} <= set(meta["tags"])
    assert meta["sdq"]["model_size_mb"] == round(res["packed_total"] / 1e6, 2)
    assert meta["sdq"]["weight_bits"] == [8] and meta["sdq"]["activation_bits"] is None
    assert meta["sdq"]["transformers_weights"] == "dequantized" and meta["sdq"]["onnx"] == "none"
    body = (out / "README.md").read_text()
    assert "| eng_Latn | 80.00 | 78.00 | +2.00 | 97.00 |" in body
    assert "| fra_Latn | 75.50 | 76.00 | -0.50 | 95.50 |" in body
    assert "| **avg** | 77.75 | 77.00 | +0.75 | 96.25 |" in body
    assert "model.onnx: not written" in body and "0: science/technology" in body


def test_model_card_without_a_run_dir_says_not_available(weight_only):
    from sdq.export.report import ExportReport

    text = card_text(ExportReport(out_dir="x"), info=None, labels=LABELS)
    assert "Per-language results: not available" in text
    assert yaml.safe_load(text.split("---\n")[1])["pipeline_tag"] == "text-classification"


def test_unmeasured_activation_quantized_copy_is_refused_clearly(w8a8):
    from transformers import AutoModelForSequenceClassification, pipeline

    _, out, res = w8a8
    assert not (out / HF_WEIGHTS).exists() and not res["hf_copy"]["written"]
    assert res["transformers"].startswith("transformers: refused, no model.safetensors (the student quantizes")
    with pytest.raises(OSError, match="no file named model.safetensors"):
        AutoModelForSequenceClassification.from_pretrained(str(out))
    with pytest.raises(ValueError, match="no file named model.safetensors"):
        pipeline("text-classification", model=str(out))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sdq_export"]["transformers_weights"] is None and "load_quantized" in cfg["sdq_export"]["note"]
    meta = front_matter(out / "README.md")
    assert meta["sdq"]["transformers_weights"] == "refused" and meta["sdq"]["activation_bits"] == 8
    assert "transformers: refused" in (out / "README.md").read_text()


def test_onnxruntime_with_the_shipped_tokenizer_reproduces_the_student(w8a8):
    import onnxruntime as ort
    from transformers import AutoTokenizer, pipeline

    student, out, res = w8a8
    assert res["onnx_kind"].startswith("model.onnx: int8 (") and "QAttention" in res["onnx_kind"]
    assert front_matter(out / "README.md")["sdq"]["onnx"] == "int8"
    tok = AutoTokenizer.from_pretrained(str(out))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for s in SENTENCES:
        enc = tok(s, return_tensors="np")
        (logits,) = session.run(["logits"], {"input_ids": enc["input_ids"].astype(np.int64),
                                             "attention_mask": enc["attention_mask"].astype(np.int64)})
        with torch.no_grad():
            ref = student(**tok(s, return_tensors="pt")).logits.numpy()
        np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=0)
        assert int(logits.argmax(-1)[0]) == int(ref.argmax(-1)[0])
    clf = pipeline("text-classification", model=load_quantized(out, backend="onnx"), tokenizer=str(out))
    assert [r["label"] for r in clf(SENTENCES)] == [LABELS[p] for p in student_preds(student, tok)]


def test_per_channel_activations_run_as_per_channel_qdq_in_a_float_onnx(tmp_path, backbone):
    """Per-input-channel activation scales (the default w8a8) have no MatMulIntegerToFloat form: the ONNX
    model quantizes those inputs with per-axis QuantizeLinear/DequantizeLinear, so it reproduces the
    student's logits, and says what it is."""
    import onnx
    from transformers import AutoTokenizer

    from sdq.lit.restore import load_student

    run = tmp_path / "run"
    write_run(run, backbone, W8A8_CHANNEL, "w8a8")
    res = main([f"ckpt={run}", f"out={tmp_path / 'out'}", "check=false", "onnx=true"])
    assert res["onnx_kind"].startswith("model.onnx: float (MatMuls with the dequantized weights: 12 with Q/DQ")
    assert "12 weights stored as 8-bit codes; 12 Linear inputs quantized per channel" in res["onnx_kind"]
    assert front_matter(tmp_path / "out" / "README.md")["sdq"]["onnx"] == "float"
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    axes = [a.i for n in graph.node if n.op_type == "QuantizeLinear" for a in n.attribute if a.name == "axis"]
    assert axes == [-1] * 12
    student = load_student(run / "checkpoints" / "last.ckpt")
    enc = AutoTokenizer.from_pretrained(str(tmp_path / "out"))(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = student(**enc).logits
        got = load_quantized(tmp_path / "out", backend="onnx")(**enc).logits
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_low_agreement_refuses_the_copy_and_removes_a_stale_one(tmp_path, backbone, weight_only):
    from transformers import AutoModelForSequenceClassification

    student_w8, _, _ = weight_only
    out = tmp_path / "out"
    batches = [{"input_ids": torch.randint(5, 1000, (16, 12), generator=torch.Generator().manual_seed(s)),
                "attention_mask": torch.ones(16, 12, dtype=torch.long)} for s in range(4)]
    first = export_quantized(student_w8, out, labels=LABELS, check_batches=batches)
    assert first.hf_copy["written"] and first.hf_copy["agreement"] == 100.0 and first.hf_copy["examples"] == 64
    run = tmp_path / "run"
    a2 = {**W8A8, "act": {**W8A8["act"], "bits": 2}}  # 2-bit activations: the dequantized copy is another model
    student = write_run(run, backbone, a2, "w8a2")
    report = export_quantized(student, out, labels=LABELS, check_batches=batches)
    agreement = report.hf_copy["agreement"]
    assert agreement < MIN_AGREEMENT and not report.hf_copy["written"]
    assert report.hf_copy["reason"] == (f"prediction agreement {agreement:.2f} % < 99 % on 64 check examples: "
                                        "without the student's activation quantization the copy is a different "
                                        "model")
    assert not (out / HF_WEIGHTS).exists()  # the weight-only export's copy went with it
    with pytest.raises(OSError, match="no file named model.safetensors"):
        AutoModelForSequenceClassification.from_pretrained(str(out))
    forced = export_quantized(student, out, labels=LABELS, check_batches=batches, hf_copy=True)
    assert forced.hf_copy["written"] and forced.hf_copy["agreement"] == agreement and (out / HF_WEIGHTS).is_file()


def test_check_test_measures_the_copy_and_transformers_agrees_on_the_test_split(tmp_path, backbone):
    from transformers import AutoModelForSequenceClassification

    from sdq.export.accuracy import task_batches

    run = tmp_path / "run"
    student = write_run(run, backbone, W8A8, "w8a8_int8")
    res = main([f"ckpt={run}", f"out={tmp_path / 'out'}", "check=test"])
    test = [b for lang in task_batches(run / "checkpoints" / "last.ckpt", "test").values() for b in lang]
    n = sum(int(b["input_ids"].shape[0]) for b in test)
    assert res["hf_copy"]["written"] and res["hf_copy"]["examples"] == n > 100
    assert res["onnx"]["check_examples"] == n and res["agreement"]["split"] == "test"
    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out")).eval()
    same = 0
    with torch.no_grad():
        for b in test:
            inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
            same += int((model(**inputs).logits.argmax(-1) == student(**inputs).logits.argmax(-1)).sum())
    assert 100.0 * same / n == res["hf_copy"]["agreement"] >= MIN_AGREEMENT
