# The two commands: `make demo` and `make test`. Each sets up .venv and the data itself;
# a stamp file makes the second run skip the install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install
FMNIST_DEB := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FMNIST_LOCAL := $(or $(SSLRAY_DATA),data)/fashion_mnist/train-images-idx3-ubyte.gz

.PHONY: demo test install data lint clean

# The quickstart sweep (sweeps/quickstart.yaml): every method, 2 seeds, on Ray Tune; prints its
# table and writes it (md/tex/csv) and its figure under runs/sweeps/quickstart/.
demo: install data
	$(VENV)/bin/sslray sweep quickstart --overwrite

test: install data
	$(PY) -m pytest -q tests

install: $(STAMP)

# constraints.txt pins every package to the versions verified together on this project's machines.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Fashion-MNIST (the full official 60k/10k set) from Debian's dataset-fashion-mnist package.
data:
	@if [ -f $(FMNIST_DEB) ] || [ -f $(FMNIST_LOCAL) ]; then \
		echo "Fashion-MNIST: found"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "Fashion-MNIST: installing Debian package dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing and cannot be installed here (needs apt-get and root)."; \
		echo "Either run: sudo apt-get install dataset-fashion-mnist"; \
		echo "or copy the four official IDX files (train-images-idx3-ubyte.gz, ...) into"; \
		echo "  $(dir $(FMNIST_LOCAL))  (or point SSLRAY_DATA at a folder holding fashion_mnist/)"; \
		exit 1; \
	fi

lint: install
	$(VENV)/bin/ruff check sslray tests analysis cluster
	$(VENV)/bin/mypy sslray analysis cluster

clean:
	rm -rf $(VENV) runs .pytest_cache
