# `make demo` and `make test` set up .venv on first use, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A CPU build of torch for machines without a GPU; GPU users install torch their own way
# before `pip install -e .` and this pin is never consulted.
TORCH_CPU ?= torch==2.13.0

.PHONY: demo test bench clean model

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

# The bundled model (model/bundled/): build its synthetic training data, train it (about two
# hours on 2 CPU cores; the log is build/model/run/training_log.jsonl). Killed, run it again:
# the builds and the training resume where they stopped.
MODEL_DATA := build/model/data
MODEL_RUN := build/model/run
model: $(BIN)/.installed
	test -e $(MODEL_DATA)/size2/stats.json || $(BIN)/tracekit dataset build synthetic:40000:101 --synthetic-size 2 \
	    -o $(MODEL_DATA)/size2 $$(test -e $(MODEL_DATA)/size2/manifest.json && echo --resume)
	test -e $(MODEL_DATA)/size3/stats.json || $(BIN)/tracekit dataset build synthetic:25000:202 --synthetic-size 3 \
	    -o $(MODEL_DATA)/size3 $$(test -e $(MODEL_DATA)/size3/manifest.json && echo --resume)
	$(BIN)/tracekit train $(MODEL_DATA)/size2 $(MODEL_DATA)/size3 -o $(MODEL_RUN) --size small \
	    --steps 1600 --lr 3e-3 --val-traces 30 --compile \
	    $$(test -e $(MODEL_RUN)/training_state.pt && echo --resume)
	$(BIN)/python -c "from pathlib import Path; from tracekit.evals.train_run import bundle; \
	    bundle(Path('$(MODEL_RUN)'), Path('model/bundled'))"

clean:
	rm -rf $(VENV) build *.egg-info
