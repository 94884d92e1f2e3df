# Entry points for people and CI: `make demo` runs the whole pipeline on the demo data, `make test` the suite.
PYTHON ?= python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_DATA ?= demo_data
DEMO_OUTPUT ?= work_dirs/demo

.PHONY: install lint test demo demo-data demo-train demo-eval bench

# PyTorch is installed only when none is importable: a build already there (your CUDA one) is left alone.
install:
	$(PYTHON) -c "import torch, torchvision" 2>/dev/null || $(PYTHON) -m pip install $(TORCH_SPEC)
	$(PYTHON) -m pip install -r requirement-dev.txt

lint:
	$(PYTHON) -m ruff check .

test: lint
	$(PYTHON) -m pytest

demo: install demo-data demo-train demo-eval

# The data is generated once (manifest.json is written last); delete $(DEMO_DATA) to make it again.
demo-data:
	test -f $(DEMO_DATA)/manifest.json || $(PYTHON) -m tools.make_demo_data --out $(DEMO_DATA) --seed 0

# --resume auto: a second `make demo` continues (or finds finished) the run in $(DEMO_OUTPUT).
demo-train:
	$(PYTHON) train.py configs/demo.py --resume auto --set rec=$(DEMO_DATA) output=$(DEMO_OUTPUT)

# Every benchmark in $(DEMO_DATA) (.bin sets, lfw/, RFW/, IJBC/, tinyface/) in one run; prints the table.
demo-eval:
	$(PYTHON) -m eval.suite --model-prefix $(DEMO_OUTPUT)/model.pt --network vit_nano \
		--data-root $(DEMO_DATA) --result-dir $(DEMO_OUTPUT)/suite --num-workers 2

bench:
	$(PYTHON) -m bench.bench_backbone
	$(PYTHON) -m bench.bench_train_step
	$(PYTHON) -m bench.bench_dpap
	$(PYTHON) -m bench.bench_partial_fc
	$(PYTHON) -m bench.bench_data
	$(PYTHON) -m bench.bench_ijb
