import sys, time, io, json
import numpy as np
from fcgpu.data import cifar10_arrays
from fcgpu.fc_net import FullyConnectedNet
from fcgpu.solver import Solver

mode = sys.argv[1]           # raw | pca | zca
k = int(sys.argv[2]) if len(sys.argv) > 2 else 800
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 10
Xa, ya, Xt, yt = cifar10_arrays("/work/shared/cifar10/cifar-10-python.tar.gz")
X = Xa.reshape(50000, -1).astype(np.float32)
mean = X[:49000].mean(axis=0)
X -= mean
Xtr, Xv = X[:49000], X[49000:]
t0 = time.time()
if mode != "raw":
    C = (Xtr.astype(np.float64).T @ Xtr.astype(np.float64)) / Xtr.shape[0]
    w, V = np.linalg.eigh(C)
    order = np.argsort(w)[::-1]
    w, V = w[order], V[:, order]
    eps = float(sys.argv[4]) if len(sys.argv) > 4 else 0.1 * w[k-1] if mode=="pca" else 1e-2*w[0]
    if mode == "proj":
        P = V[:, :k].astype(np.float32)
    elif mode == "pca":
        P = (V[:, :k] / np.sqrt(w[:k] + eps)).astype(np.float32)
    else:  # zca, full
        P = ((V / np.sqrt(w + eps)) @ V.T).astype(np.float32)
    Xtr, Xv = Xtr @ P, Xv @ P
    s = Xtr.std()
    Xtr /= s; Xv /= s
print(mode, "prep %.1f s" % (time.time() - t0), Xtr.shape, flush=True)
data = {"X_train": Xtr, "y_train": ya[:49000].astype(np.int64), "X_val": Xv, "y_val": ya[49000:].astype(np.int64)}
model = FullyConnectedNet([1024]*3, input_dim=Xtr.shape[1], num_classes=10, dropout=0.9, use_batchnorm=True,
                          weight_scale=4e-2, dtype=np.float32, seed=0, fresh_masks=True, label_smoothing=0.05)
s = Solver(model, data, update_rule="adam", optim_config={"learning_rate": 3.2e-3}, batch_size=490, num_epochs=epochs,
           num_train_samples=1000, verbose=False, seed=0, lr_schedule="onecycle")
t0 = time.time(); s.train()
print(mode, k, "epochs", epochs, "val", s.val_acc_history, "best", s.best_val_acc, "time %.0f" % (time.time()-t0), flush=True)
