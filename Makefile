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
	# deploy-check: the offline validators tests/test_deploy.py runs on deploy/
	$(PY) -m pip install -q -e '.[test,deploy-check]'
	touch $@

install: $(VENV)/.installed

# The demo secret is for this scratch copy only; real deployments set their own.
DEMO_SECRET ?= whsec_ZGVtby1zZWNyZXQtZm9yLWV2ZW50cnVubmVyLTI0Yg==

demo: install
	rm -rf $(DEMO) && cp -r examples/auto-blog $(DEMO)
	BLOG_HOOK_SECRET=$(DEMO_SECRET) $(ER) -w $(DEMO) run || true
	$(ER) -w $(DEMO) status
	@echo
	@echo "Now serving $(DEMO)/ (a copy of examples/auto-blog) on http://127.0.0.1:$(PORT)."
	@echo "Open http://127.0.0.1:$(PORT)/ in a browser for the dashboard. In another terminal:"
	@echo "  cp $(DEMO)/logs/2026-11-25.md $(DEMO)/logs/2026-11-27.md   # drop a log: html, podcast, audio, index follow"
	@echo "  ls $(DEMO)/blog $(DEMO)/podcast $(DEMO)/audio"
	@echo "  $(ER) -w $(DEMO) status"
	@echo "  $(ER) -w $(DEMO) explain 2026-11-27"
	@echo "  BLOG_HOOK_SECRET=$(DEMO_SECRET) $(PY) examples/sign_webhook.py http://127.0.0.1:$(PORT)/hooks/auto-blog/daily_log?date=2026-11-28 '# Saturday'"
	@echo "  curl -sN http://127.0.0.1:$(PORT)/api/events     # live event stream"
	@echo "  curl -s http://127.0.0.1:$(PORT)/api/pipelines | python3 -m json.tool"
	@echo "Stop with Ctrl-C."
	BLOG_HOOK_SECRET=$(DEMO_SECRET) $(ER) -w $(DEMO) serve --port $(PORT)

lint: install
	$(VENV)/bin/ruff check eventrunner handlers tests examples
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -q

bench: install
	$(PY) tests/bench/bench_engine.py --entities 10000

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
