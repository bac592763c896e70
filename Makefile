# MAGC for QGIS. The two commands a fresh Debian 12 machine needs: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SHARED := ../shared
DATA := data/dubai
export QT_QPA_PLATFORM := offscreen

.PHONY: setup test demo train-lite train-segmentation eval bench package install-plugin screenshots clean

setup: $(VENV)/.setup-done

# Debian's QGIS/GDAL for /usr/bin/python3 (installed when missing), then a venv that sees them.
$(VENV)/.setup-done: requirements.txt core/pyproject.toml
	@if ! /usr/bin/python3 -c "import qgis.core, osgeo.gdal" 2>/dev/null || ! command -v qgis_process.bin >/dev/null || ! command -v Xvfb >/dev/null; then \
		echo "installing Debian packages: qgis python3-qgis python3-gdal gdal-bin python3-venv xvfb"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q qgis python3-qgis python3-gdal gdal-bin python3-venv xvfb; \
	fi
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e core
	touch $@

test: setup
	XDG_RUNTIME_DIR=$$(mktemp -d) $(PY) -m pytest -q

demo: setup
	$(PY) -m magc.cli demo

$(DATA)/index.json: | setup
	$(PY) -m magc.cli prepare-data --source $(SHARED)/data/dubai-aerial -o $(DATA)

train-lite: setup $(DATA)/index.json
	$(PY) -m magc.cli train --preset lite --data $(DATA) --run runs/lite --stages 1,2,3 --export resources/weights/lite.safetensors

train-segmentation: setup $(DATA)/index.json
	$(PY) -m magc.cli train-segmentation --data $(DATA) --run runs/segmentation --export resources/weights/segmentation.safetensors

eval: setup $(DATA)/index.json
	$(PY) -m magc.cli eval --data $(DATA) --split val -o results/eval

bench: setup
	$(PY) -m magc.cli bench -o results/bench.json

# -- QGIS plugin: zip for the plugin repository, install into the default profile, screenshots
PLUGIN_VERSION := $(shell sed -n 's/^version=//p' metadata.txt)
PLUGIN_ZIP := dist/magc_qgis-$(PLUGIN_VERSION).zip
QGIS_PLUGINS := $(HOME)/.local/share/QGIS/QGIS3/profiles/default/python/plugins

package:
	python3 magc_qgis/packaging.py --dist dist --stage build/plugin

# Replaces an installed copy but keeps its deps/ (packages the dependency installer put there).
install-plugin: package
	mkdir -p $(QGIS_PLUGINS)
	@if [ -d $(QGIS_PLUGINS)/magc_qgis/deps ]; then mv $(QGIS_PLUGINS)/magc_qgis/deps build/plugin-deps.keep; fi
	rm -rf $(QGIS_PLUGINS)/magc_qgis
	unzip -q -o $(PLUGIN_ZIP) -d $(QGIS_PLUGINS)
	@if [ -d build/plugin-deps.keep ]; then mv build/plugin-deps.keep $(QGIS_PLUGINS)/magc_qgis/deps; fi
	-QGIS_PLUGINPATH= XDG_RUNTIME_DIR=$$(mktemp -d) qgis_process.bin plugins enable magc_qgis >/dev/null
	@echo "installed and enabled in $(QGIS_PLUGINS)/magc_qgis: restart QGIS"

# Opens each dialog and the comparison on a real fixture layer under Xvfb; PNGs in docs/screenshots/.
screenshots: setup
	mkdir -p docs/screenshots
	XDG_RUNTIME_DIR=$$(mktemp -d) MAGC_SCREENSHOTS=$(CURDIR)/docs/screenshots QT_QPA_PLATFORM=xcb \
		xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest -q tests/test_plugin_screenshots.py

clean:
	rm -rf build dist results/tmp
