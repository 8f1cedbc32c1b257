# FSGR + PMA captioning pipeline. `make demo` / `make test` set everything up from nothing.
DATASET ?= demo
CONFIG  ?= configs/$(DATASET).toml
ARGS    ?=
FAISS   ?= cpu
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(FAISS)

.PHONY: setup java demo test data extract cluster train eval all ablation clean bench gpu-check status

setup: $(STAMP) java

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,$(FAISS)]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# Java runs the PTB tokenizer and METEOR of pycocoevalcap.
java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "java not found: installing a headless JRE"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq default-jre-headless >/dev/null; \
	  else echo "error: Java is required (PTB tokenizer, METEOR); install a JRE (e.g. apt-get install default-jre-headless)"; exit 1; fi; }
	@java -version 2>&1 | head -n 1

test: setup
	$(PY) -m pytest -q tests $(ARGS)

data: setup
	$(PY) -m shared.datasets prepare --config $(CONFIG) $(ARGS)

extract: setup
	$(PY) -m extract all --config $(CONFIG) $(ARGS)

cluster: setup
	$(PY) -m cluster all --config $(CONFIG) $(ARGS)

train: setup
	$(PY) -m train --config $(CONFIG) $(ARGS)

eval: setup
	$(PY) -m evaluate score --config $(CONFIG) $(ARGS)
	$(PY) -m evaluate report --config $(CONFIG) $(ARGS)

all: data extract cluster train eval

demo: DATASET = demo
demo: all

# The research question on one dataset: CLIP or FSGR features, with or without PMA memory.
# The main run (`make all`; FSGR + PMA in the shipped configs) is one row; the three others
# train (XE + SCST) and are scored under $(RUNS)/experiments/<name>/ on the same feature
# caches. RUNS must match data.run_root/<data.name> when ARGS moves the runs.
RUNS ?= runs/$(DATASET)
define ablation_variant
	$(PY) -m train --config $(CONFIG) $(ARGS) --set train.experiment=$(1) $(2)
	$(PY) -m evaluate score --config $(CONFIG) $(ARGS) --set train.experiment=$(1) $(2)
endef

ablation: all
	$(call ablation_variant,clip,--set decoder.visual_input=clip --set memory.self=false)
	$(call ablation_variant,clip_pma,--set decoder.visual_input=clip --set memory.self=true)
	$(call ablation_variant,fsgr,--set decoder.visual_input=fsgr --set memory.self=false)
	$(PY) -m evaluate compare -o $(RUNS)/ablation CLIP=$(RUNS)/experiments/clip \
	  CLIP+PMA=$(RUNS)/experiments/clip_pma FSGR=$(RUNS)/experiments/fsgr FSGR+PMA=$(RUNS)

status: setup
	$(PY) -m shared.status --config $(CONFIG) $(ARGS)

bench: setup
	$(PY) bench/extract.py
	$(PY) bench/beam.py
	$(PY) bench/cider.py
	$(PY) bench/scst.py

gpu-check: setup
	$(PY) bench/gpu_check.py

clean:
	rm -rf runs/$(DATASET)
