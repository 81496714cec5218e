#!/bin/bash
export FCGPU_DATA=/work/shared/cifar10/cifar-10-python.tar.gz
cd /work/runs/batch
for run in "490 3.2e-3 0" "245 3.2e-3 0" "245 2.26e-3 0"; do
  set -- $run; name=b$1_lr$2_s$3
  echo "== $name start $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  /work/main/.venv/bin/fcgpu train --batch-size $1 --lr $2 --seed $3 --metrics $name.json > $name.log 2>&1
  echo "== $name end $(date +%T) rc $?"
  python3 -c "import json;m=json.load(open('$name.json'));print({k:m.get(k) for k in ('val_acc','wall_seconds','samples_per_second','best_epoch')})"
done
