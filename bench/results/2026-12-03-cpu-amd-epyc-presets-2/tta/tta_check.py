"""Scratch: validation accuracy of a checkpoint's best net with and without flip TTA."""
import sys
import numpy as np
from fcgpu.evaluate import load_model_from_checkpoint
from fcgpu.data import get_CIFAR10_data
d = get_CIFAR10_data(num_training=49000, num_validation=1000, num_test=10000, subtract_mean=False)
mean = d["X_train"].mean(axis=0)
for path in sys.argv[1:]:
    model, info = load_model_from_checkpoint(path)
    R, y = d["X_val"], d["y_val"]
    X = (R - mean).astype(np.float32)
    p = model.predict_proba(X)
    pf = model.predict_proba(np.ascontiguousarray((R[..., ::-1] - mean).astype(np.float32)))
    a = (p.argmax(1) == y).mean(); b = ((p + pf).argmax(1) == y).mean()
    print(path, "best val", info["best_val_acc"], "val plain %.4f  flip-TTA %.4f" % (a, b))
