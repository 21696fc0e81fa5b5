# visual-dpo: `make demo` sets up and runs the image workflow; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DATA ?= data/sample
PAIRS ?= 600
EPOCHS ?= 4

# Ray job submission: RAY_ADDRESS=http://HEAD:8265 make submit TRAIN=s3://... EVAL=s3://...
# (CLUSTER=1 submits to the cluster.yaml cluster through `ray attach`-style port forwarding).
RAY_ADDRESS ?= http://127.0.0.1:8265
TRAIN ?= $(DATA)/train
EVAL ?= $(DATA)/eval
ARGS ?=
MODALITY ?= image
JOB_EXCLUDES = [".venv", ".git", "outputs", "data", "mlflow.db", "mlruns", "mlartifacts", "*.egg-info", "benchmarks/out"]

.PHONY: install demo demo-video test test-fast lint bench bench-accuracy bench-video bench-objectives clean submit cluster-up cluster-down

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

# The video workflow on sample clips (camera moves over the scikit-image photos).
demo-video: install
	$(PY) -m pipelines sample-data --modality video --out data/sample-video --pairs 200 --size 32 --frames 8
	mkdir -p outputs
	$(PY) -m pipelines run video --train data/sample-video/train --eval data/sample-video/eval \
		--epochs $(EPOCHS) data.image_size=32 data.video.frames=8 train.batch_size=16 train.lr=3e-3 \
		--summary outputs/demo-video-summary.json

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(PY) -m ruff check components pipelines tests benchmarks

# Throughput, memory and pinning ratios -> benchmarks/results.json (about 14 minutes on 2 cores).
bench: install
	$(PY) benchmarks/suite.py

# Accuracy and speed of each image scorer through the workflow -> benchmarks/accuracy.json.
bench-accuracy: install
	$(PY) benchmarks/demo_figures.py --out benchmarks/accuracy.json

# Each video scorer and the temporal prior through the workflow -> benchmarks/video_models.json.
bench-video: install
	$(PY) benchmarks/video_models.py

bench-objectives: install
	$(PY) benchmarks/objectives.py

cluster-up: install
	$(VENV)/bin/ray up -y cluster.yaml

cluster-down: install
	$(VENV)/bin/ray down -y cluster.yaml

submit: install
ifeq ($(CLUSTER),1)
	$(VENV)/bin/ray dashboard cluster.yaml & sleep 5; \
	$(VENV)/bin/ray job submit --address http://127.0.0.1:8265 --working-dir . \
		--runtime-env-json '{"excludes": $(JOB_EXCLUDES), "env_vars": {"MLFLOW_TRACKING_URI": "$(MLFLOW_TRACKING_URI)"}}' \
		-- python -m pipelines run $(MODALITY) --train $(TRAIN) --eval $(EVAL) $(ARGS)
else
	$(VENV)/bin/ray job submit --address $(RAY_ADDRESS) --working-dir . \
		--runtime-env-json '{"excludes": $(JOB_EXCLUDES), "env_vars": {"MLFLOW_TRACKING_URI": "$(MLFLOW_TRACKING_URI)"}}' \
		-- python -m pipelines run $(MODALITY) --train $(TRAIN) --eval $(EVAL) $(ARGS)
endif

clean:
	rm -rf outputs data mlflow.db mlruns
