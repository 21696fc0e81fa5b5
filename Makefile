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
# STORAGE=s3://bucket/prefix: where the run's state goes (`--storage`); required with CLUSTER=1.
RAY_ADDRESS ?= http://127.0.0.1:8265
STORAGE ?=
TRAIN ?= $(DATA)/train
EVAL ?= $(DATA)/eval
ARGS ?=
MODALITY ?= image
# The job's working dir ships without .git: the commit goes in as MLflow's source tag.
GIT_COMMIT := $(shell git rev-parse HEAD 2>/dev/null)
JOB_EXCLUDES = [".venv", ".git", "outputs", "data", "mlflow.db", "mlruns", "mlartifacts", "*.egg-info", "benchmarks/out"]

# A submitted job runs elsewhere, from an upload of this checkout without JOB_EXCLUDES (and what
# .gitignore / .rayignore list, as Ray does): refuse, before submitting anything, a tracking URI
# that would log into a throwaway store inside that copy, and a local TRAIN/EVAL that the upload
# leaves out. Arguments: MLFLOW_TRACKING_URI, JOB_EXCLUDES, then NAME=PATH pairs.
define SUBMIT_CHECK
import json, os, sys
from urllib.parse import urlparse
from ray._private.thirdparty.pathspec import PathSpec
uri, excludes, paths = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
ignored = list(excludes)
for name in (".gitignore", ".rayignore"):
    if os.path.isfile(name):
        ignored += open(name).read().splitlines()
spec = PathSpec.from_lines("gitwildmatch", ignored)
errors = []
if urlparse(uri).scheme in ("", "file", "sqlite") and uri not in ("databricks", "databricks-uc"):
    what = "is not set" if not uri else f"is {uri!r}, a local store"
    errors.append(f"MLFLOW_TRACKING_URI {what}: the job would log into a throwaway store inside its working-dir copy on the cluster. Point it at a tracking server the cluster reaches, e.g. MLFLOW_TRACKING_URI=http://mlflow:5000 make submit ...")
for pair in paths:
    name, path = pair.split("=", 1)
    if not path or "://" in path or os.path.isabs(path):
        continue  # a URI or an absolute path: read as given, on the cluster
    rel = os.path.normpath(path)
    if rel == ".." or rel.startswith("../"):
        errors.append(f"{name}={path} is outside this checkout, so it is not uploaded with the job. Use shared storage: {name}=s3://bucket/pairs/ (or an absolute path every node mounts).")
    elif spec.match_file(rel) or spec.match_file(rel + "/_"):
        hits = sorted({p.rstrip("/") for p in ignored if PathSpec.from_lines("gitwildmatch", [p]).match_file(rel + "/_")}) or [rel]
        errors.append(f"{name}={path} is under {', '.join(map(repr, hits))}, which the job upload leaves out (JOB_EXCLUDES, .gitignore): the job would find no data there. Copy it to shared storage and pass {name}=s3://bucket/pairs/ (or an absolute path every node mounts).")
    elif not os.path.exists(rel):
        errors.append(f"{name}={path} does not exist in this checkout, and a relative path is read from the job's uploaded copy of it.")
for e in errors:
    print("make submit:", e, file=sys.stderr)
sys.exit(2 if errors else 0)
endef
export SUBMIT_CHECK
# Runs a command in a new session (process group), so all of it can be stopped at once: `ray
# dashboard` leaves its ssh port-forward running when only the ray process is killed.
NEW_SESSION = $(PY) -c 'import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])'

.PHONY: install lock demo demo-video test test-fast lint bench bench-accuracy bench-video bench-objectives bench-serve clean submit cluster-up cluster-down

# requirements.lock pins every package of the whole dependency set (the project's dependencies
# and all its extras: test, clip, gpu, hf) to one version and its files' hashes, for CPython 3.11
# on Linux x86_64: every install (this one, CI's, the Dockerfile's) gets exactly what CI tested.
# A lock that no longer meets pyproject.toml's requirements (edited without `make lock`) stops
# here. Then the project itself, editable, resolving nothing (built with the locked setuptools).
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	@$(PY) -c "import tomllib; from importlib.metadata import version; from packaging.requirements import Requirement; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; stale = [f'{r} (locked: {version(r.name)})' for r in map(Requirement, p['dependencies'] + sum(p.get('optional-dependencies', {}).values(), [])) if not r.specifier.contains(version(r.name), prereleases=True)]; stale and exit(f'make install: requirements.lock does not meet pyproject.toml, run make lock: {stale}')"
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# Re-resolves pyproject.toml (dependencies and all extras) into requirements.lock after a change
# to its requirements, keeping every pin that still fits (`make lock UPGRADE=1`: the newest
# releases that fit instead). Only package metadata is downloaded. uv (pinned) runs from a venv
# of its own under $(VENV), so it is not part of the locked set.
UV_VERSION := 0.13.9
UV := $(VENV)/uv/bin/uv
UPGRADE ?=
lock:
	test -x $(UV) && $(UV) --version | cut -d' ' -f2 | grep -qx '$(UV_VERSION)' \
		|| { $(PYTHON) -m venv $(VENV)/uv && $(VENV)/uv/bin/pip install -q 'uv==$(UV_VERSION)'; }
	$(UV) pip compile -q pyproject.toml --all-extras --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --generate-hashes $(if $(UPGRADE),--upgrade) \
		--custom-compile-command 'make lock' -o requirements.lock

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

# Two pytest-xdist workers (2 cores): each runs half of the tests on a session 2-CPU Ray
# cluster of its own, then the tests that start servers and clusters of their own and the rest
# as it comes free (tests/xdist_groups.py). Each test has 10 minutes (pytest-timeout, pyproject.toml).
test: install
	$(PY) -m pytest -q -n 2 --dist loadgroup

# Without Ray and without the slow tests (tests/conftest.py marks every test that starts Ray,
# and fails one that starts it unmarked): under two minutes on 2 cores.
test-fast: install
	$(PY) -m pytest -q -n 2 -m "not slow and not ray"

lint: install
	$(PY) -m ruff check components pipelines tests benchmarks

# The documentation site: regenerates docs/reference/configuration.md from components/config.py
# (tests/test_docs.py fails when the committed page is stale), then builds docs/ into
# outputs/site/ with --strict, so a broken link or a page missing from the nav fails here.
.PHONY: docs
docs: install
	$(PY) -m components.config_reference > docs/reference/configuration.md.tmp
	mv docs/reference/configuration.md.tmp docs/reference/configuration.md
	$(PY) -m mkdocs build --strict --site-dir outputs/site

# Throughput, memory and pinning ratios -> benchmarks/results.json (about 14 minutes on 2 cores).
bench: install
	$(PY) benchmarks/suite.py
	$(PY) benchmarks/streaming.py

# Accuracy and speed of each image scorer through the workflow -> benchmarks/accuracy.json.
bench-accuracy: install
	$(PY) benchmarks/demo_figures.py --out benchmarks/accuracy.json

# Each video scorer and the temporal prior through the workflow -> benchmarks/video_models.json.
bench-video: install
	$(PY) benchmarks/video_models.py

bench-objectives: install
	$(PY) benchmarks/objectives.py

# Ray Serve reward service vs `mlflow models serve`, same model, concurrency 1/8/64, loopback
# (docs/serving.md, "Measured under load"); writes benchmarks/serve_load.json.
bench-serve: install
	$(PY) benchmarks/serve_load.py

cluster-up: install
	$(VENV)/bin/ray up -y cluster.yaml

cluster-down: install
	$(VENV)/bin/ray down -y cluster.yaml

submit: install
	@$(PY) -c "$$SUBMIT_CHECK" '$(MLFLOW_TRACKING_URI)' '$(JOB_EXCLUDES)' 'TRAIN=$(TRAIN)' 'EVAL=$(EVAL)'
ifeq ($(CLUSTER),1)
	@case '$(STORAGE)' in *://*) ;; *) \
		echo "make submit: CLUSTER=1 needs STORAGE=s3://BUCKET/PREFIX (got '$(STORAGE)'): cluster.yaml's nodes share no disk and its head has no CPUs, so the run would exit 2 before any work" >&2; \
		exit 2;; \
	esac
	@if $(PY) -c "import socket, sys; sys.exit(socket.socket().connect_ex(('127.0.0.1', 8265)) != 0)"; then \
		echo "make submit: 127.0.0.1:8265 is in use (a local Ray?); the port-forward to cluster.yaml needs it" >&2; \
		exit 1; \
	fi
	$(NEW_SESSION) $(VENV)/bin/ray dashboard cluster.yaml & forward=$$!; \
	trap 'kill -TERM -$$forward 2>/dev/null' EXIT; trap 'exit 130' INT TERM HUP; \
	for i in $$(seq 60); do \
		kill -0 $$forward 2>/dev/null || { echo "make submit: ray dashboard cluster.yaml exited; is the cluster up (make cluster-up)?" >&2; exit 1; }; \
		$(PY) -c "import socket, sys; sys.exit(socket.socket().connect_ex(('127.0.0.1', 8265)))" && break; \
		sleep 1; \
	done; \
	$(VENV)/bin/ray job submit --address http://127.0.0.1:8265 --working-dir . \
		--runtime-env-json '{"excludes": $(JOB_EXCLUDES), "env_vars": {"MLFLOW_TRACKING_URI": "$(MLFLOW_TRACKING_URI)", "VISUAL_DPO_GIT_COMMIT": "$(GIT_COMMIT)"}}' \
		-- python -m pipelines run $(MODALITY) --train $(TRAIN) --eval $(EVAL) $(if $(STORAGE),--storage $(STORAGE)) $(ARGS)
else
	$(VENV)/bin/ray job submit --address $(RAY_ADDRESS) --working-dir . \
		--runtime-env-json '{"excludes": $(JOB_EXCLUDES), "env_vars": {"MLFLOW_TRACKING_URI": "$(MLFLOW_TRACKING_URI)", "VISUAL_DPO_GIT_COMMIT": "$(GIT_COMMIT)"}}' \
		-- python -m pipelines run $(MODALITY) --train $(TRAIN) --eval $(EVAL) $(if $(STORAGE),--storage $(STORAGE)) $(ARGS)
endif

clean:
	rm -rf outputs data mlflow.db mlruns
