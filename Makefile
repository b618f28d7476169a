# The two quick-start commands: `make demo` (the monitored fine-tuning demo) and `make test`.
VENV ?= .venv
export SPARSIFY_DISABLE_TRITON ?= 1

.PHONY: demo test setup lint
setup:
	./scripts/setup.sh

demo: setup
	$(VENV)/bin/featuredrift demo $(ARGS)

test:
	./scripts/setup.sh --services
	$(VENV)/bin/python -m pytest -q $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
