# FSGR + PMA captioning pipeline. `make demo` / `make test` set everything up from nothing.
DATASET ?= demo
CONFIG  ?= configs/$(DATASET).toml
ARGS    ?=
FAISS   ?= cpu
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(FAISS)
DEV     := $(VENV)/.installed-dev

.PHONY: setup java browser demo test data extract cluster train eval all ablation transfer clean bench gpu-check status

setup: $(STAMP) java

# constraints.txt: the tested versions of every dependency (what README's figures were made with)
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(FAISS)]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# the test and benchmark tools (pytest, scikit-learn, tensorboard) on top: `make test`, `make bench`
$(DEV): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,$(FAISS)]'
	@touch $@

# Java runs the PTB tokenizer and METEOR of pycocoevalcap.
java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "java not found: installing a headless JRE"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq default-jre-headless >/dev/null; \
	  else echo "error: Java is required (PTB tokenizer, METEOR); install a JRE (e.g. apt-get install default-jre-headless)"; exit 1; fi; }
	@java -version 2>&1 | head -n 1

# Headless Chromium renders the HTML report in tests/test_report.py (skipped without one).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then echo "chromium not found: installing it (report rendering tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: no chromium on PATH; the report rendering tests will be skipped"; fi; }

test: setup $(DEV) browser
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

# The research question on one dataset: CLIP or FSGR features, with or without PMA memory, over
# the decoder seeds SEEDS (default 0; e.g. SEEDS="0 1 2"). For each seed S the four decoders
# train (XE + SCST, --set train.seed=S) and are scored on the same feature caches (no extract or
# cluster stage depends on train.seed). The first seed's FSGR + PMA row is the main run (`make
# all`, which the ablation runs with train.seed = the first seed; FSGR + PMA in the shipped
# configs) and its other three decoders go to $(RUNS)/experiments/{clip,clip_pma,fsgr}; a
# further seed S gets $(RUNS)/experiments/{clip,clip_pma,fsgr,fsgr_pma}_s<S> (fsgr_pma_s<S>:
# the main run's config with train.seed=S), so adding seeds reuses the finished runs. One
# `evaluate compare` then gives each row all its seeds: mean ± sd per metric, paired-bootstrap
# intervals of the CIDEr / CHAIR differences from CLIP over the test images, provenance:
# $(RUNS)/ablation.{md,tex,json}. RUNS must match data.run_root/<data.name> when ARGS moves
# the runs.
RUNS  ?= runs/$(DATASET)
SEEDS ?= 0
first_seed = $(firstword $(SEEDS))
comma := ,
space := $(subst ,, )
# the eval run of decoder $(1) (clip, clip_pma, fsgr, fsgr_pma) for seed $(2)
seed_run = $(if $(filter $(2),$(first_seed)),$(first_seed_run),$(RUNS)/experiments/$(1)_s$(2))
first_seed_run = $(if $(filter fsgr_pma,$(1)),$(RUNS),$(RUNS)/experiments/$(1))
# its runs over SEEDS, comma-separated: one row of `evaluate compare`
seed_runs = $(subst $(space),$(comma),$(strip $(foreach s,$(SEEDS),$(call seed_run,$(1),$(s)))))
define ablation_variant
	$(PY) -m train --config $(CONFIG) $(ARGS) --set train.experiment=$(1) $(2)
	$(PY) -m evaluate score --config $(CONFIG) $(ARGS) --set train.experiment=$(1) $(2)
endef
clip_sets     := --set decoder.visual_input=clip --set memory.self=false
clip_pma_sets := --set decoder.visual_input=clip --set memory.self=true
fsgr_sets     := --set decoder.visual_input=fsgr --set memory.self=false
# the decoders of seed $(1) (fsgr_pma: the main run's config; the recipe ends with a newline,
# so the seeds' recipes chain)
define ablation_seed
$(call ablation_variant,$(notdir $(call seed_run,clip,$(1))),--set train.seed=$(1) $(clip_sets))
$(call ablation_variant,$(notdir $(call seed_run,clip_pma,$(1))),--set train.seed=$(1) $(clip_pma_sets))
$(call ablation_variant,$(notdir $(call seed_run,fsgr,$(1))),--set train.seed=$(1) $(fsgr_sets))
$(if $(filter $(1),$(first_seed)),,$(call ablation_variant,fsgr_pma_s$(1),--set train.seed=$(1)))

endef

ablation: override ARGS += --set train.seed=$(first_seed)
ablation: all
	$(foreach s,$(SEEDS),$(call ablation_seed,$(s)))
	$(PY) -m evaluate compare -o $(RUNS)/ablation CLIP=$(call seed_runs,clip) \
	  CLIP+PMA=$(call seed_runs,clip_pma) FSGR=$(call seed_runs,fsgr) \
	  FSGR+PMA=$(call seed_runs,fsgr_pma)

# A finished run (FROM, e.g. runs/coco) captions and scores another dataset's eval.split, overall
# and per eval.subsets entry: `make data transfer DATASET=nocaps FROM=runs/coco`.
FROM ?= runs/coco
transfer: setup
	$(PY) -m evaluate transfer --config $(CONFIG) --run $(FROM) $(ARGS)

status: setup
	$(PY) -m shared.status --config $(CONFIG) $(ARGS)

bench: setup $(DEV)
	$(PY) -m bench.extract
	$(PY) -m bench.beam
	$(PY) -m bench.cider
	$(PY) -m bench.scst

# One run on one CUDA GPU (< 8 min): runs/gpu_check.{json,md}. It installs the FAISS GPU build
# (GPU_FAISS); on a host without a GPU it says so in one line and changes nothing.
GPU_FAISS ?= gpu
gpu-check:
	@if nvidia-smi -L >/dev/null 2>&1 || { test -x $(PY) && $(PY) -c \
	  'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; }; then \
	  $(MAKE) --no-print-directory setup FAISS=$(GPU_FAISS) && $(PY) -m bench.gpu_check $(ARGS); \
	else echo "gpu-check: no CUDA GPU on this host (nvidia-smi / torch.cuda); nothing checked"; fi

clean:
	rm -rf runs/$(DATASET)
