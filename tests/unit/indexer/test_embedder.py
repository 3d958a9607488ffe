"""The ONNX Runtime path of the embedder on a tiny graph built here (the real model is in integration/)."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from indexer.ort_session import Embedder, choose_precision, cpu_has_vnni, length_batches
from kernel.errors import ModelNotBuiltError


def _tiny_model(path):
    """sentence_embedding = [sum(attention_mask), sum(input_ids)] per row, as float."""
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("ReduceSum", ["attention_mask", "axes"], ["mask_sum"], keepdims=1),
        helper.make_node("ReduceSum", ["input_ids", "axes"], ["id_sum"], keepdims=1),
        helper.make_node("Concat", ["mask_sum", "id_sum"], ["both"], axis=1),
        helper.make_node("Cast", ["both"], ["sentence_embedding"], to=TensorProto.FLOAT),
    ]
    out = helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", 2])
    graph = helper.make_graph(nodes, "tiny", inputs, [out], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _tiny_tokenizer(path):
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "potassium": 4, "high": 5, "low": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.save(str(path))


@pytest.fixture
def model_dir(tmp_path):
    _tiny_model(tmp_path / "model.onnx")
    _tiny_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "tiny", "dimension": 2, "max_length": 8}))
    return tmp_path


def test_embed_pads_batches_and_feeds_the_graph(model_dir):
    embedder = Embedder(model_dir, batch_size=2)
    vectors = embedder.embed(["potassium high", "low", "potassium potassium low high"])
    # rows: [tokens incl. CLS/SEP, sum of ids]; padding (id 0, mask 0) adds nothing
    assert vectors.tolist() == [[4, 2 + 4 + 5 + 3], [3, 2 + 6 + 3], [6, 2 + 4 + 4 + 6 + 5 + 3]]
    assert vectors.dtype == np.float32
    assert embedder.providers == ["CPUExecutionProvider"]


def test_truncation_to_max_length(model_dir):
    vectors = Embedder(model_dir).embed(["potassium " * 50])
    assert vectors[0][0] == 8


def test_empty_input(model_dir):
    assert Embedder(model_dir).embed([]).shape == (0, 2)


def test_unavailable_providers_are_skipped(model_dir):
    embedder = Embedder(model_dir, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert embedder.providers == ["CPUExecutionProvider"]


def test_missing_model_says_how_to_build_it(tmp_path):
    with pytest.raises(ModelNotBuiltError, match="make models"):
        Embedder(tmp_path)


def test_texts_of_mixed_length_come_back_in_input_order(model_dir):
    texts = ["potassium " * 6, "low", "high high", "potassium low", "low " * 5, "high"]
    grouped = Embedder(model_dir, batch_size=2, batch_tokens=12).embed(texts)
    one_by_one = np.vstack([Embedder(model_dir, batch_size=1).embed([t]) for t in texts])
    assert grouped.tolist() == one_by_one.tolist()


def test_a_fixed_padding_in_tokenizer_json_is_ignored(model_dir):
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_padding(length=8, pad_id=0, pad_token="[PAD]")
    tok.save(str(model_dir / "tokenizer.json"))
    # a text of 3 tokens is fed as 3, not padded to 8 (the mask sum would hide that; ids/width not)
    seen = []
    embedder = Embedder(model_dir)
    run = embedder._session.run
    embedder._session.run = lambda names, feed: seen.append(feed["input_ids"].shape) or run(names, feed)
    embedder.embed(["low"])
    assert seen == [(1, 3)]


@pytest.mark.parametrize(
    ("lengths", "max_texts", "max_tokens", "expected"),
    [
        ([5, 1, 3], 10, 100, [[1, 2, 0]]),  # shortest first, one group
        ([5, 1, 3, 2], 2, 100, [[1, 3], [2, 0]]),  # at most max_texts
        ([4, 4, 4, 10], 10, 12, [[0, 1, 2], [3]]),  # 4 x 4 would pad to 16 > 12
        ([300, 2], 10, 100, [[1], [0]]),  # a text over the budget still gets its own group
        ([], 4, 100, []),
    ],
)
def test_length_batches(lengths, max_texts, max_tokens, expected):
    assert length_batches(lengths, max_texts, max_tokens) == expected


def test_the_precision_picks_the_variant_and_a_missing_one_says_how_to_build_it(model_dir):
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["variants"] = {"fp32": {"file": "model.onnx"}, "int8": {"file": "small.onnx"}}
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    (model_dir / "model.onnx").rename(model_dir / "small.onnx")
    embedder = Embedder(model_dir, precision="int8")
    assert embedder.identity == "tiny/int8/2"
    assert embedder.embed(["low"]).tolist() == [[3, 2 + 6 + 3]]
    del manifest["variants"]["int8"]
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelNotBuiltError, match=r"no int8 variant.*make models"):
        Embedder(model_dir, precision="int8")


@pytest.mark.parametrize(
    ("configured", "recorded", "gpu", "vnni", "expected"),
    [
        ("fp32", "int8", False, True, "fp32"),  # an explicit setting wins
        ("int8", None, True, False, "int8"),
        ("auto", "fp32", False, True, "fp32"),  # a collection built with fp32 stays fp32
        ("auto", "int8", True, False, "int8"),
        ("auto", None, False, True, "int8"),  # a new collection on a VNNI CPU
        ("auto", None, False, False, "fp32"),  # an older CPU
        ("auto", None, True, True, "fp32"),  # a GPU: dynamic int8 would run on the CPU
        ("auto", "fp16", False, True, "int8"),  # a precision this build has not: hardware decides
    ],
)
def test_auto_precision(configured, recorded, gpu, vnni, expected):
    assert choose_precision(configured, recorded, variants=["fp32", "int8"], gpu=gpu, vnni=vnni) == expected


def test_auto_precision_without_an_int8_build_is_fp32():
    assert choose_precision("auto", None, variants=["fp32"], gpu=False, vnni=True) == "fp32"


def test_vnni_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert cpu_has_vnni(info)
    info.write_text("flags\t\t: fpu sse2 avx2 avx_vnni\n")
    assert cpu_has_vnni(info)
    info.write_text("flags\t\t: fpu sse2 avx2 avx512f\n")
    assert not cpu_has_vnni(info)
    assert not cpu_has_vnni(tmp_path / "missing")
