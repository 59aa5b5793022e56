# The two set-up-and-go commands (see README). Each creates or reuses .venv first.
PY := .venv/bin/python
DEMO_CONFIG := configs/segmentation/sample/upernet_dinat_sample_ade20k.py
DEMO_WORK_DIR := work_dirs/demo
# The demo model and the test models are tiny: one thread per process is fastest, and it keeps
# the multi-process tests (2-process DDP, tool subprocesses) from oversubscribing small machines.
THREADS := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}

.PHONY: setup demo test

setup:
	bash scripts/setup_env.sh

# Train UPerNet-DiNAT on the embedded ADE20K-format sample, evaluate mIoU, report outputs.
demo: setup
	$(THREADS) $(PY) tools/make_sample_data.py --out data/sample
	$(THREADS) $(PY) tools/train.py $(DEMO_CONFIG) --work-dir $(DEMO_WORK_DIR)

test: setup
	$(THREADS) $(PY) -m pytest
