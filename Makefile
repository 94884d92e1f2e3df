# Entry points for people and CI. `make install` once, then `make test` or `make demo`.
PYTHON ?= python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint bench

install:
	$(PYTHON) -m pip install $(TORCH_SPEC)
	$(PYTHON) -m pip install -r requirement-dev.txt

lint:
	$(PYTHON) -m ruff check .

test: lint
	$(PYTHON) -m pytest

bench:
	$(PYTHON) -m bench.bench_backbone
