# The two commands of the README:  `make demo`  and  `make test`.
.PHONY: demo test lint typecheck pytest bootstrap bench fuzz

VENV := .venv/bin

demo:
	@.ci/bootstrap
	@$(VENV)/streamer demo

test:
	@.ci/bootstrap --test
	$(VENV)/ruff check streamer tests
	$(VENV)/ruff format --check streamer tests
	$(VENV)/mypy
	$(VENV)/pytest -q

bench:
	@.ci/bootstrap
	$(VENV)/streamer bench kernel
	$(VENV)/streamer bench e2e

# A long fuzz run of the decode-and-apply step (the suite runs a bounded one).
FUZZ_EXAMPLES ?= 20000
fuzz:
	@.ci/bootstrap --test
	STREAMER_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/pytest -q -s -p no:cacheprovider --timeout 0 tests/unit/test_fuzz.py
