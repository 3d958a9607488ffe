"""The ONNX Runtime path of the embedder on a tiny graph built here (the real model is in integration/)."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from indexer.errors import ModelNotBuiltError
from indexer.ort_session import Embedder


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
