# visual-dpo: `make demo` sets up and runs the image workflow; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DATA ?= data/sample
PAIRS ?= 600
EPOCHS ?= 4

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m pipelines sample-data --modality image --out $(DATA) --pairs $(PAIRS)
	mkdir -p outputs
	$(PY) -m pipelines run image --train $(DATA)/train --eval $(DATA)/eval --epochs $(EPOCHS) \
		--summary outputs/demo-summary.json
	@$(PY) -c "import json; s = json.load(open('outputs/demo-summary.json')); \
	print('\nrun id          ', s['run_id']); \
	print('model           ', s['model_uri'], 'aliases', s['aliases']); \
	print('eval/accuracy   ', s['metrics']['eval/accuracy']); \
	print('rows            ', s['rows']); \
	print('wall_s          ', s['wall_s']); \
	print('look at it with  $(VENV)/bin/mlflow ui --backend-store-uri ' + s['tracking_uri'])"

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(PY) -m ruff check components pipelines tests benchmarks

bench: install
	$(PY) benchmarks/demo_figures.py

clean:
	rm -rf outputs data mlflow.db mlruns
