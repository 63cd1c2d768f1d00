# Semantic Imagery Search -- every target sets itself up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
export QT_QPA_PLATFORM ?= offscreen
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
PYTEST_ARGS ?=

# The engine a QGIS user gets: built by the Set up engine dialog's own code (no system site packages,
# the engine lock, torch from PyPI -- the route for networks without PyTorch's index), cluster extra.
ENGINE ?= build/engine
ENGINE_PY := $(ENGINE)/bin/python
ENGINE_STAMP := $(ENGINE)/.setup-stamp
ENGINE_TEST_SITE ?= build/engine-test-site
ENGINE_TORCH_SOURCE ?= pypi
# The engine tests: index, search, repair, store safety, local and Ray executors, worker, VLM family matrix.
ENGINE_TESTS ?= tests/core/test_store.py tests/core/test_store_safety.py tests/core/test_ann.py \
	tests/core/test_pipeline.py tests/core/test_search.py tests/core/test_repair.py tests/core/test_local_executor.py \
	tests/core/test_worker.py tests/core/test_onnx_embedder.py tests/core/test_vlm_families.py \
	tests/core/test_captioners_transformers.py tests/core/test_index_request.py tests/core/test_seams.py tests/core/test_row_sampler.py \
	tests/core/test_ray_executor.py::test_same_index_as_local_with_faults_a_remote_cog_and_unreadable_and_empty_tiles
UPGRADE_VENV ?= build/upgrade-check

.PHONY: fresh-walk setup test test-dev test-core test-qgis test-engine engine lock upgrade-check lint demo screenshot walkthrough bench clean package install qgis

setup: $(STAMP)

$(STAMP): scripts/setup.sh locks/dev-lock.txt locks/testdata-lock.txt
	bash scripts/setup.sh
	touch $@

# Both environments: the dev venv (QGIS + every test), then the dialog-built engine (the engine tests).
test: test-dev test-engine

test-dev: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

engine: $(ENGINE_STAMP)

$(ENGINE_STAMP): $(STAMP) plugin/core/env/engine_lock.txt plugin/core/env/engine_lock_cluster.txt locks/engine-test-lock.txt \
		plugin/core/env/engine_commands.py plugin/core/env/engine_env.py scripts/engine_env.py
	rm -rf $(ENGINE_TEST_SITE)
	$(PY) scripts/engine_env.py --dir $(ENGINE) --python /usr/bin/python3.11 --torch-source $(ENGINE_TORCH_SOURCE) \
	  --extra cluster --test-site $(ENGINE_TEST_SITE)
	touch $@

test-engine: $(ENGINE_STAMP)
	PYTHONPATH=$(ENGINE_TEST_SITE) $(ENGINE_PY) -m pytest -p no:cacheprovider $(ENGINE_TESTS) $(PYTEST_ARGS)

# Rewrite the locks from the ranges (newest allowed versions); see scripts/lock.py. Then run make test.
lock: $(STAMP)
	$(PY) scripts/lock.py

# What the newest releases the ranges allow would break: a scratch venv without the lock, the VLM family
# matrix and the core tests there, and a short report (build/upgrade-check/report.txt).
upgrade-check: $(STAMP)
	bash scripts/upgrade_check.sh $(UPGRADE_VENV)

test-core: $(STAMP)
	$(PY) -m pytest tests/core $(PYTEST_ARGS)

test-qgis: $(STAMP)
	$(PY) -m pytest tests/qgis $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy plugin/core

demo: $(STAMP)
	$(PY) scripts/demo.py --out demo_out

screenshot: $(STAMP)
	$(PY) scripts/screenshot.py --out docs/screenshot.jpg

# The analyst's first hour in a real QGIS window under Xvfb (apt-get install -y xvfb): index the demo scene,
# search, open a hit, save and reopen the project; PNGs and steps.txt land in build/walkthrough/.
walkthrough: $(STAMP)
	rm -rf build/walkthrough
	$(PY) scripts/package.py demo --out build/walkthrough/demo
	env -u QT_QPA_PLATFORM SIS_WALKTHROUGH_OUT=$(CURDIR)/build/walkthrough xvfb-run -a -s "-screen 0 1600x1000x24" \
	  qgis --nologo --profiles-path build/walkthrough/demo --profile demo \
	  --project build/walkthrough/demo/demo.qgz --code scripts/qgis_walkthrough.py
	cat build/walkthrough/steps.txt

# A new user's whole way in a real QGIS window under Xvfb: the release zip in a brand-new profile, Set up
# engine (PyTorch's index first, then PyPI only), index the demo scene, search; PNGs and steps.txt in
# build/fresh-walk/ (minutes: the engine is installed for real into the profile).
fresh-walk: $(STAMP)
	rm -rf build/fresh-walk
	$(PY) scripts/package.py fresh --out build/fresh-walk
	env -u QT_QPA_PLATFORM SIS_WALKTHROUGH_OUT=$(CURDIR)/build/fresh-walk xvfb-run -a -s "-screen 0 1600x1000x24" \
	  qgis --nologo --profiles-path build/fresh-walk --profile fresh \
	  --project build/fresh-walk/demo.qgz --code scripts/qgis_fresh_walk.py
	cat build/fresh-walk/steps.txt

bench: $(STAMP)
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf demo_out .pytest_cache .mypy_cache .ruff_cache

# Release zip for plugins.qgis.org: dist/semantic_imagery_search-<version>.zip (no tests, caches, .venv).
package:
	python3 scripts/package.py zip --out dist

# Link this working tree into the user's QGIS profile (QGIS_PROFILE_DIR=... to choose another profile).
install:
	python3 scripts/package.py install

# Start QGIS (needs a display) with the plugin enabled on a demo project holding the Sentinel-2 scene.
qgis: $(STAMP)
	env -u QT_QPA_PLATFORM $(PY) scripts/package.py qgis --out build/demo
