# `make demo` and `make test` set up .venv on first use, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A CPU build of torch for machines without a GPU; GPU users install torch their own way
# before `pip install -e .` and this pin is never consulted.
TORCH_CPU ?= torch==2.13.0

.PHONY: demo test bench clean model realworld

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_CPU)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/tracekit demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/tracer.py

# The bundled model (model/bundled/), in three stages on 2 CPU cores with Muon under bf16
# autocast: (1) from scratch on synthetic programs; (2) from stage 1's weights (--init) on
# more synthetic programs and on everyday functions; (3) from stage 2's weights, as bundled
# in bfloat16, with a context of 4,096 tokens, on the test suites and docstring examples of
# pinned PyPI projects (tracekit/training/real_code.py, downloaded into build/model/pypi) and
# the standard library's examples beside more synthetic programs, leaving out traces with a
# frame over the predictor's 256 tokens. From a fresh clone on a 2-core VM with bubblewrap
# (2026-12-08): 2 h 6 min, other work beside its first hour; its last hour alone held stage
# 2's data and training (21 min) and stage 3's (38 min). Without bubblewrap every program
# gets its own sandbox and the builds take ~4x as long. Logs:
# build/model/run*/training_log.jsonl. Killed, run it again: the builds and the training
# resume where they stopped.
MODEL_DATA := build/model/data
MODEL_RUN := build/model/run
MODEL_RUN2 := build/model/run2
MODEL_STAGE2 := build/model/stage2
MODEL_RUN3 := build/model/run3
# $(call dataset,DIR,SOURCE SPEC AND OPTIONS): build DIR unless it is built, resuming a killed build
dataset = test -e $(1)/stats.json || $(BIN)/tracekit dataset build $(2) -o $(1) \
	$$(test -e $(1)/manifest.json && echo --resume)
# $(call train,RUN,DATASETS AND OPTIONS): train into RUN, resuming a killed run
train = $(BIN)/tracekit train $(2) -o $(1) --val-traces 30 --compile --bf16 \
	$$(test -e $(1)/training_state.pt && echo --resume)
model: $(BIN)/.installed
	$(call dataset,$(MODEL_DATA)/size2,synthetic:40000:101 --synthetic-size 2)
	$(call dataset,$(MODEL_DATA)/size3,synthetic:25000:202 --synthetic-size 3)
	test -e $(MODEL_RUN)/model.safetensors || $(call train,$(MODEL_RUN),$(MODEL_DATA)/size2 \
	    $(MODEL_DATA)/size3 --size small --steps 800 --lr 3e-3 --optimizer muon)
	$(call dataset,$(MODEL_DATA)/names2,synthetic:30000:111 --synthetic-size 2)
	$(call dataset,$(MODEL_DATA)/names3,synthetic:12000:222 --synthetic-size 3)
	$(call dataset,$(MODEL_DATA)/basic,basic:30000:303)
	test -e $(MODEL_RUN2)/model.safetensors || $(call train,$(MODEL_RUN2),$(MODEL_DATA)/names2 \
	    $(MODEL_DATA)/names3 $(MODEL_DATA)/basic --init $(MODEL_RUN) --steps 1000 --lr 2e-3 \
	    --optimizer muon)
	test -e $(MODEL_STAGE2)/model.safetensors || \
	    $(BIN)/python -m tracekit.training bundle $(MODEL_RUN2) $(MODEL_STAGE2)
	test -e $(MODEL_DATA)/real/stats.json || $(BIN)/python -m tracekit.training.real_code \
	    --work build/model/pypi > build/model/real-specs.txt
	$(call dataset,$(MODEL_DATA)/real,$$(cat build/model/real-specs.txt) --per-function 8)
	$(call dataset,$(MODEL_DATA)/long2,synthetic:10000:131 --synthetic-size 2)
	$(call dataset,$(MODEL_DATA)/long3,synthetic:6000:242 --synthetic-size 3)
	$(call dataset,$(MODEL_DATA)/basic3,basic:10000:323)
	$(call dataset,$(MODEL_DATA)/replay2,synthetic:10000:151 --synthetic-size 2)
	test -e $(MODEL_RUN3)/model.safetensors || $(call train,$(MODEL_RUN3),$(MODEL_DATA)/real \
	    $(MODEL_DATA)/long2 $(MODEL_DATA)/long3 $(MODEL_DATA)/basic3 $(MODEL_DATA)/replay2 \
	    --init $(MODEL_STAGE2) --seq-len 4096 --batch-rows 4 --eval-every 0 --steps 600 \
	    --lr 1e-3 --optimizer muon --max-frame-tokens 256)
	$(BIN)/python -m tracekit.training bundle $(MODEL_RUN3) model/bundled

# The real-code evaluation set (data/realworld/): the pinned PyPI projects of
# evals/realworld.py downloaded into build/realworld/, their test suites cut into episodes.
realworld: $(BIN)/.installed
	$(BIN)/python -m tracekit.evals.realworld -o data/realworld --work build/realworld

clean:
	rm -rf $(VENV) build *.egg-info
