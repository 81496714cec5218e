#!/bin/bash
export FCGPU_DATA=/work/shared/cifar10/cifar-10-python.tar.gz
cd /work/runs/best150
echo "start $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
/work/main/.venv/bin/fcgpu train --preset best --epochs 150 --seed 0 --metrics best150.json --checkpoint best150.ckpt > best150.log 2>&1
echo "end $(date +%T) rc $?"
