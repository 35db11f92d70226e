# Two commands: `make demo` (install, then run and serve an example) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
ER     := $(VENV)/bin/eventrunner
DEMO   ?= demo
PORT   ?= 8700
# bash: the demo's pipeline needs pipefail
SHELL  := /bin/bash

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

# What to try, printed once serve says it is serving ("eventrunner: serving ... at URL"), with
# the URL it bound: a busy port prints serve's one-line error instead, and no hints.
define DEMO_HINTS
echo; \
echo "Now serving $(DEMO)/ (a copy of examples/auto-blog) on $$url. In another terminal:"; \
echo "  open $$url/ in a browser                 # the dashboard"; \
echo "  cp $(DEMO)/logs/2026-11-25.md $(DEMO)/logs/2026-11-27.md   # drop a log: html, podcast, audio, index follow"; \
echo "  ls $(DEMO)/blog $(DEMO)/podcast $(DEMO)/audio"; \
echo "  $(ER) -w $(DEMO) status"; \
echo "  $(ER) -w $(DEMO) explain 2026-11-27"; \
echo "  BLOG_HOOK_SECRET=$(DEMO_SECRET) $(PY) examples/sign_webhook.py $$url/hooks/auto-blog/daily_log?date=2026-11-28 '# Saturday'"; \
echo "  curl -sN $$url/api/events     # live event stream"; \
echo "  curl -s $$url/api/pipelines | python3 -m json.tool"; \
echo "Stop with Ctrl-C."
endef

demo: install
	rm -rf $(DEMO) && cp -r examples/auto-blog $(DEMO)
	BLOG_HOOK_SECRET=$(DEMO_SECRET) $(ER) -w $(DEMO) run || true
	$(ER) -w $(DEMO) status
	@set -o pipefail; BLOG_HOOK_SECRET=$(DEMO_SECRET) $(ER) -w $(DEMO) serve --port $(PORT) \
	  | while IFS= read -r line; do \
	      echo "$$line"; \
	      case "$$line" in "eventrunner: serving "*) \
	        url="$${line##* at }"; url="$${url%% *}"; $(DEMO_HINTS);; esac; \
	    done

lint: install
	$(VENV)/bin/ruff check eventrunner handlers tests examples
	$(VENV)/bin/mypy

# Byte-compiled once here: the tests start hundreds of eventrunner processes, which would each
# compile the package again where PYTHONDONTWRITEBYTECODE is set.
test: lint
	$(PY) -m compileall -q eventrunner handlers
	$(VENV)/bin/pytest -q

# compileall first (see test): otherwise the timings would include the compiler's.
bench: install
	$(PY) -m compileall -q eventrunner handlers
	$(PY) tests/bench/bench_engine.py --entities 10000

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
