#!/bin/bash
export FCGPU_DATA=/work/shared/cifar10/cifar-10-python.tar.gz
cd /work/runs/batch
for run in "course 490 x 0 a" "augmented 490 3.2e-3 0 t" "augmented 245 3.2e-3 1 a" "augmented 245 3.2e-3 2 a" "augmented 490 3.2e-3 1 t" "course 490 x 0 b"; do
  set -- $run; name=$1_b$2_lr$3_s$4_$5
  echo "== $name start $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  if [ $1 = course ]; then
    /work/main/.venv/bin/fcgpu train --preset course --seed $4 --metrics $name.json > $name.log 2>&1
  else
    /work/main/.venv/bin/fcgpu train --batch-size $2 --lr $3 --seed $4 --metrics $name.json > $name.log 2>&1
  fi
  echo "== $name end $(date +%T) rc $?"
  python3 -c "import json;m=json.load(open('$name.json'));print({k:m.get(k) for k in ('val_acc','wall_seconds','samples_per_s')}, 'epoch_s', [round(x,1) for x in m['epoch_seconds']])"
done
