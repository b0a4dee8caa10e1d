# The two commands of the README:  `make demo`  and  `make test`.
.PHONY: demo test lint typecheck pytest bootstrap bench

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
