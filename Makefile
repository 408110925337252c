# Everything a fresh machine needs: `make demo` and `make test` set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup demo test data browser clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch torchvision
	$(PIP) install -q -c constraints.txt -e '.[dev,lite,report,tensorboard,export,serve,hf,data,int8,corrupt,audit]'
	touch $@

# Fashion-MNIST ships as a Debian package; without apt the code falls back to the official download.
data:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; \
	fi

# Headless Chromium renders report.html in the tests, and chromedriver drives the serve page;
# without apt as root those tests skip and say why.
browser:
	@if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1) || echo "chromium not installed: browser tests will skip"; \
	fi

demo: setup
	$(VENV)/bin/transferkit demo

test: setup browser
	TRANSFERKIT_REQUIRE_EXTRAS=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
