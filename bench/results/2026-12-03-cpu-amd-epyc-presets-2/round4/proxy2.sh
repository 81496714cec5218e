#!/bin/bash
export FCGPU_DATA=/work/shared/cifar10/cifar-10-python.tar.gz
run() { name=$1; shift
  [ -f $name.json ] && return
  /work/main/.venv/bin/fcgpu train --preset best --hidden 1024,1024,1024 --num-train 10000 --epochs 60 --seed 0 --metrics $name.json --quiet "$@" > $name.log 2>&1
  echo "$name $(tail -1 $name.log)"; }
run keep10 --dropout 1
run ls25 --label-smoothing 0.25
run lr4e-3 --lr 4e-3
run lr1e-3 --lr 1e-3
run keep10ls15 --dropout 1 --label-smoothing 0.15
run seed1 --seed 1
