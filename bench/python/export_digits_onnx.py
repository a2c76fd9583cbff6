"""Exports the committed digits weights (models/digits/digits.safetensors) as an
ONNX graph with a dynamic batch, built with the onnx helper API
(`fixtures.digits_graph`), plus the 128-wide penultimate activation as a second
output `hr` (what `models/digits-embed` serves):

    python bench/python/export_digits_onnx.py models/digits-onnx/digits.onnx
"""

import os
import sys

import onnx
from onnx import TensorProto, helper
from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(__file__))
from fixtures import digits_graph  # noqa: E402

root = os.path.join(os.path.dirname(__file__), "..", "..")
model = digits_graph(load_file(os.path.join(root, "models", "digits", "digits.safetensors")))
model.graph.output.append(helper.make_tensor_value_info("hr", TensorProto.FLOAT, ["batch", 128]))
model.graph.name = "digits"
onnx.checker.check_model(model)
onnx.save(model, sys.argv[1])
