# skysub: two commands from a fresh clone -- `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.skysub-installed

.PHONY: demo test bench lint clean install models

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, exactly this version: it is the CPU wheel on this machine's disk.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/skysub demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

# Re-train the shipped models exactly as they were made (each card records its command).
models: $(STAMP)
	$(VENV)/bin/skysub train bkgnet --simulated --config paus --labels truth --n-exposures 60 \
	    --stamps-per-image 600 --epochs 20 --seed 7 --threads 1 \
	    --output src/skysub/models/bkgnet-paus.pt --overwrite
	$(VENV)/bin/skysub train lumos --simulated --config paus --n-exposures 160 \
	    --stamps-per-image 700 --pairs auto --epochs 12 --seed 0 --threads 1 \
	    --output src/skysub/models/lumos-paus.pt --overwrite
	$(VENV)/bin/skysub train lumos --calibrate-only --simulated --config paus --n-exposures 40 \
	    --stamps-per-image 700 --seed 777 --output src/skysub/models/lumos-paus.pt
	# inpaint-default: the classic model (inpaint-generic, 20 epochs), then fine-tuned 3 epochs
	# on the mixture of classic and family fields (inpaint-mixed) and calibrated on its test
	# fields (docs/removal.md, "The mixture")
	mkdir -p build
	$(VENV)/bin/skysub train inpaint --config inpaint-generic --threads 1 \
	    --output build/inpaint-classic.pt --overwrite
	$(VENV)/bin/skysub train inpaint --config inpaint-mixed --init build/inpaint-classic.pt \
	    --threads 1 --output build/inpaint-mixed.pt --overwrite
	$(VENV)/bin/skysub train inpaint --config inpaint-mixed --threads 1 \
	    --output build/inpaint-mixed.pt --calibrate-only
	cp build/inpaint-mixed.pt src/skysub/models/inpaint-default.pt
	cp build/inpaint-mixed.json src/skysub/models/inpaint-default.json

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) skysub-demo .pytest_cache
