# The image that cluster.yaml (docker.image) and deploy/raycronjob.yaml (every container) run:
# Ray's own GPU image with this project and its pinned dependencies installed, so no node
# pip-installs torch at boot.
#
#   docker build -t ghcr.io/my-org/visual-dpo:0.1.0 . && docker push ghcr.io/my-org/visual-dpo:0.1.0
#
# The Ray version in FROM is the one pyproject pins (ray[...]==2.60.*) and raycronjob's
# rayVersion; the tag below is the one both manifests name and the version is pyproject's.
# tests/test_manifests.py checks that they agree.
FROM rayproject/ray:2.60.0-py311-gpu

LABEL org.opencontainers.image.ref.name="ghcr.io/my-org/visual-dpo:0.1.0" \
      org.opencontainers.image.title="visual-dpo" \
      org.opencontainers.image.version="0.1.0"

# Dependencies first, exactly as requirements.lock pins them (`make lock`; the same files, by
# hash, that `make install` and CI install), in their own layer: a code change does not reinstall
# torch (several GB). The lock is the whole set, the `gpu` extra (NVML for MLflow's GPU metrics)
# and the `clip` extra (open_clip for model.name=clip) among it. Ray 2.60.0 is already in the
# base image and is the locked release; pip replaces only what differs from the lock.
COPY --chown=ray:users requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --require-hashes -r /tmp/requirements.lock \
    && rm /tmp/requirements.lock

# The project itself (a regular install, not editable, built with the locked setuptools), then no
# source copy is left behind: `python -m pipelines` and `visual-dpo` import the installed package
# from any directory. First a check that the lock is not stale: every requirement of
# pyproject.toml (its dependencies, the `gpu` and `clip` extras) is met by what was installed.
COPY --chown=ray:users . /tmp/visual-dpo
RUN python -c "import tomllib; from importlib.metadata import version; from packaging.requirements import Requirement; p = tomllib.load(open('/tmp/visual-dpo/pyproject.toml', 'rb'))['project']; reqs = [Requirement(r) for r in p['dependencies'] + p.get('optional-dependencies', {}).get('gpu', []) + p.get('optional-dependencies', {}).get('clip', [])]; stale = [f'{r} (locked: {version(r.name)})' for r in reqs if not r.specifier.contains(version(r.name), prereleases=True)]; assert not stale, f'requirements.lock does not meet pyproject.toml, run make lock: {stale}'" \
    && pip install --no-cache-dir --no-deps --no-build-isolation --force-reinstall /tmp/visual-dpo \
    && rm -rf /tmp/visual-dpo \
    && cd / && python -c "import ray; assert ray.__version__.startswith('2.60.'), ray.__version__" \
    && python -m pipelines --help > /dev/null && visual-dpo --help > /dev/null

# No ENTRYPOINT: the Ray cluster launcher starts this image as `docker run ... IMAGE bash` and
# KubeRay sets each container's command to `ray start ...`; an ENTRYPOINT would break both.
# Jobs name their command: `python -m pipelines run image|video ...`.
