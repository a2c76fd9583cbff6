"""onnxruntime on one input: `python ort_run.py MODEL.onnx IN.npy OUT.npy` feeds
IN to the graph's first input and writes its first output to OUT (the
reference `scorefleet-model check` compares the runner against)."""

import sys

import numpy as np
import onnxruntime as ort

model, inp, out = sys.argv[1:4]
opts = ort.SessionOptions()
opts.intra_op_num_threads = 2
sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
x = np.load(inp)
name = sess.get_inputs()[0].name
np.save(out, sess.run(None, {name: x})[0].astype(np.float32))
