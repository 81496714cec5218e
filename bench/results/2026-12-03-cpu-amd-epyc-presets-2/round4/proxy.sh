#!/bin/bash
# Issue 24, round 4: the small-data proxy. best's recipe at 3 x 1024 on the first 10,000
# training images, 60 epochs, one change per run. Needs FCGPU_DATA (the CIFAR-10 archive)
# and fcgpu on PATH; run it in an empty folder. A run whose metrics file exists is skipped,
# so the script resumes. The runs were made in two batches: the second (from keep10 on)
# was chosen after the first's results.
set -u
run() { name=$1; shift
  [ -f "$name.json" ] && return
  fcgpu train --preset best --hidden 1024,1024,1024 --num-train 10000 --epochs 60 \
      --seed 0 --metrics "$name.json" --quiet "$@" > "$name.log" 2>&1
  echo "$name $(tail -n 1 "$name.log")"; }
run calib
run keep07 --dropout 0.7
run ls15 --label-smoothing 0.15
run mixup02 --mix mixup --mix-alpha 0.2
run reg1e-3 --reg 1e-3
run keep05 --dropout 0.5
run reg1e-2 --reg 1e-2
run keep10 --dropout 1
run ls25 --label-smoothing 0.25
run lr4e-3 --lr 4e-3
run lr1e-3 --lr 1e-3
run keep10ls15 --dropout 1 --label-smoothing 0.15
run seed1 --seed 1
