# Semantic Imagery Search -- every target sets itself up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
export QT_QPA_PLATFORM ?= offscreen
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
PYTEST_ARGS ?=

.PHONY: setup test test-core test-qgis lint demo screenshot walkthrough bench clean package install qgis

setup: $(STAMP)

$(STAMP): scripts/setup.sh requirements.txt requirements-dev.txt plugin/core/env/engine_requirements_cluster.txt
	bash scripts/setup.sh
	touch $@

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

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
