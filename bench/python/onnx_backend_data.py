"""Writes the ONNX backend test suite that the `onnx` wheel ships as Python
case definitions into a directory, in the suite's own on-disk layout:

    OUT/node/<case>/model.onnx, OUT/node/<case>/test_data_set_N/{input,output}_K.pb
    OUT/light/<model>/model.onnx, .../test_data_set_0/{input_0,output_0}.pb

Node cases come from `onnx.backend.test.case.node.collect_testcases()` (the
expected outputs are the ones the ONNX project computed for each case); light
models are the nine `onnx/backend/test/data/light/*.onnx` files with the input
the ONNX runner feeds them (`arange(n) / n`, see
`onnx.backend.test.runner.Runner.generate_dummy_data`) and the expected output
shipped beside them.

    python bench/python/onnx_backend_data.py OUT
"""

import os
import shutil
import sys

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.test.case import node as node_cases


def write(path: str, tensor) -> None:
    with open(path, "wb") as f:
        f.write(numpy_helper.from_array(np.asarray(tensor)).SerializeToString())


def node_suite(out: str) -> int:
    count = 0
    for case in node_cases.collect_testcases():
        if case.model is None or not case.data_sets:
            continue
        graph = case.model.graph
        if any(not i.type.HasField("tensor_type") for i in list(graph.input) + list(graph.output)):
            continue  # sequences, maps, optionals: not image-model operators
        d = os.path.join(out, "node", case.name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "model.onnx"), "wb") as f:
            f.write(case.model.SerializeToString())
        for i, (inputs, outputs) in enumerate(case.data_sets):
            ds = os.path.join(d, f"test_data_set_{i}")
            os.makedirs(ds, exist_ok=True)
            try:
                for j, x in enumerate(inputs):
                    write(os.path.join(ds, f"input_{j}.pb"), x)
                for j, y in enumerate(outputs):
                    write(os.path.join(ds, f"output_{j}.pb"), y)
            except Exception:  # noqa: BLE001 (a case whose data numpy_helper cannot write)
                shutil.rmtree(d)
                break
        else:
            count += 1
    return count


def light_suite(out: str) -> int:
    src = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    count = 0
    for name in sorted(os.listdir(src)):
        if not name.endswith(".onnx"):
            continue
        stem = name[: -len(".onnx")]
        model = onnx.load(os.path.join(src, name))
        inits = {i.name for i in model.graph.initializer}
        d = os.path.join(out, "light", stem.removeprefix("light_"))
        ds = os.path.join(d, "test_data_set_0")
        os.makedirs(ds, exist_ok=True)
        shutil.copy(os.path.join(src, name), os.path.join(d, "model.onnx"))
        k = 0
        for x in model.graph.input:
            if x.name in inits:
                continue
            shape = tuple(dim.dim_value if dim.HasField("dim_value") else 1 for dim in x.type.tensor_type.shape.dim)
            n = int(np.prod(shape))
            write(os.path.join(ds, f"input_{k}.pb"), (np.arange(n).reshape(shape) / n).astype(np.float32))
            k += 1
        shutil.copy(os.path.join(src, f"{stem}_output_0.pb"), os.path.join(ds, "output_0.pb"))
        count += 1
    return count


def main() -> None:
    out = sys.argv[1]
    n = node_suite(out)
    m = light_suite(out)
    print(f"{n} node cases, {m} light models in {out}")


if __name__ == "__main__":
    main()
