#!/bin/bash
# overfitting proxy: best's recipe at 3x1024 on the first 10,000 training images, 60 epochs
export FCGPU_DATA=/work/shared/cifar10/cifar-10-python.tar.gz
run() { name=$1; shift
  [ -f $name.json ] && return
  /work/main/.venv/bin/fcgpu train --preset best --hidden 1024,1024,1024 --num-train 10000 --epochs 60 --seed 0 --metrics $name.json --quiet "$@" > $name.log 2>&1
  echo "$name $(tail -1 $name.log)"; }
run keep07 --dropout 0.7
run ls15 --label-smoothing 0.15
run mixup02 --mix mixup --mix-alpha 0.2
run reg1e-3 --reg 1e-3
run keep05 --dropout 0.5
run reg1e-2 --reg 1e-2
