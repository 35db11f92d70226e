# Two commands: `make demo` (install, then run and serve an example) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
ER     := $(VENV)/bin/eventrunner
DEMO   ?= demo
PORT   ?= 8700

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	rm -rf $(DEMO) && cp -r examples/echo $(DEMO)
	$(ER) -w $(DEMO) run
	$(ER) -w $(DEMO) status
	@echo
	@echo "Now serving $(DEMO)/ on http://127.0.0.1:$(PORT). In another terminal, try:"
	@echo "  echo 'a brand new note' > $(DEMO)/inbox/new.txt    # watch shouted/ counts/ summary.md update"
	@echo "  $(ER) -w $(DEMO) status"
	@echo "  $(ER) -w $(DEMO) explain new"
	@echo "  curl -s http://127.0.0.1:$(PORT)/api/pipelines | python3 -m json.tool"
	@echo "  curl -sN http://127.0.0.1:$(PORT)/api/events     # live event stream"
	@echo "Stop with Ctrl-C."
	$(ER) -w $(DEMO) serve --port $(PORT)

lint: install
	$(VENV)/bin/ruff check eventrunner handlers tests
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -q

bench: install
	$(PY) tests/bench/bench_engine.py --entities 10000

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
