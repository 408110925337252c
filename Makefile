# Everything a fresh machine needs: `make demo` and `make test` set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup demo test data clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch torchvision
	$(PIP) install -q -c constraints.txt -e '.[dev,lite,report]'
	touch $@

# Fashion-MNIST ships as a Debian package; without apt the code falls back to the official download.
data:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; \
	fi

demo: setup
	$(VENV)/bin/transferkit demo

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
