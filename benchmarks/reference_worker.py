"""Runs the reference implementation (TensorFlow 1.x code, JWSoh/MZSR) for
benchmarks/bench_reference.py: its own meta-test code, imported from the
user's checkout, in an interpreter that has TensorFlow. Imports neither torch
nor mzsr_fast, so it runs in a separate environment.

    python reference_worker.py CHECKOUT CHECKPOINT_PREFIX KERNEL.npy SCALE METHOD

CHECKOUT: the reference's folder (test.py, model.py, imresize.py...);
CHECKPOINT_PREFIX: a checkpoint of its network; KERNEL.npy: the blur kernel
[k, k]; METHOD: the reference's model number (0 direct x2, 1 multi-scale,
2 bicubic x2, 3 direct x4), which picks its learning-rate schedule and the
son's subsampling.

Protocol: one JSON request per line on stdin, {"image": "IN.npy", "steps": n,
"output": "OUT.npy"}, IN.npy an LR image [H, W, 3] float32 in [0, 1]. For each,
the reference's test.Test restores the checkpoint (not timed), runs `steps`
adaptation steps (Test.train) and the final forward pass (Test.forward_pass:
float, clipped, before its uint8 rounding), writes SR [sH, sW, 3] float32 to
OUT.npy and answers one JSON line on stdout: {"seconds": adaptation and final
pass, "network_seconds": of it, the time inside Session.run}. Answers
{"error": "..."} for a request it cannot run. The reference's own prints go to
stderr. One thread: TensorFlow's intra- and inter-op pools of size 1 (the
caller also sets OMP_NUM_THREADS=1 for numpy and oneDNN).
"""
import contextlib
import importlib
import json
import os
import sys
import time

import numpy as np


def import_reference(checkout: str):
    """The reference's test module, its `import tensorflow as tf` given
    tf.compat.v1 with the 1.x behaviour (placeholders, sessions, tf.losses),
    so its code runs unchanged under TensorFlow 2; returns (test module, tf)."""
    import tensorflow

    tf = tensorflow.compat.v1
    tf.disable_v2_behavior()
    sys.modules["tensorflow"] = tf
    sys.path.insert(0, checkout)
    test = importlib.import_module("test")  # the checkout's test.py shadows the standard library's test package
    where = os.path.dirname(os.path.abspath(test.__file__))
    if where != os.path.abspath(checkout):
        raise ImportError(f"CHECKOUT: expected the reference's test.py in {checkout}, imported {test.__file__}")
    return test, tf


class TimedSession:
    """A Session whose run() adds its wall time to .seconds."""

    def __init__(self, session):
        self.session, self.seconds = session, 0.0

    def run(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.session.run(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def adapt_once(tester, image: np.ndarray, steps: int, scale: float) -> tuple[np.ndarray, float, float]:
    """The reference's MZSR(steps) of image [H, W, 3]: (SR [sH, sW, 3] float32,
    seconds, seconds inside Session.run)."""
    tester.max_iters = steps
    tester.initialize()  # re-initialise and restore the checkpoint's weights
    timed = TimedSession(tester.sess)
    tester.sess, session = timed, tester.sess
    tester.img = image
    shape = (int(round(image.shape[0] * scale)), int(round(image.shape[1] * scale)), image.shape[2])
    try:
        start = time.perf_counter()
        tester.train()
        sr = tester.forward_pass(image, shape)
        seconds = time.perf_counter() - start
    finally:
        tester.sess = session
    return sr.astype(np.float32), seconds, timed.seconds


def serve(tester, scale: float, requests, answer) -> None:
    """Answer each request line (see the module's docstring) with one JSON line."""
    for line in requests:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            image = np.load(request["image"]).astype(np.float32)
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image: expected [H, W, 3], got {list(image.shape)}")
            with contextlib.redirect_stdout(sys.stderr):
                sr, seconds, network = adapt_once(tester, image, int(request["steps"]), scale)
            np.save(request["output"], sr)
            reply = {"seconds": seconds, "network_seconds": network}
        except Exception as error:  # reported to the caller, which raises it
            reply = {"error": f"{type(error).__name__}: {error}"}
        answer.write(json.dumps(reply) + "\n")
        answer.flush()


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    checkout, prefix, kernel_path, scale, method = argv
    test, tf = import_reference(checkout)
    conf = tf.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1,
                          device_count={"GPU": 0})
    with contextlib.redirect_stdout(sys.stderr):
        tester = test.Test(prefix, None, np.load(kernel_path), float(scale), conf, int(method), 1)
    tester.save_results = False
    print(json.dumps({"ready": tf.__version__}), flush=True)
    serve(tester, float(scale), sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
