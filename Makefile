# The two commands: `make demo` and `make test`. Each sets up .venv and the data itself;
# a stamp file makes the second run skip the install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install
FMNIST_DEB := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FMNIST_LOCAL := $(or $(SSLRAY_DATA),data)/fashion_mnist/train-images-idx3-ubyte.gz

.PHONY: demo test install data lint clean bench bench-smoke peer-venv rehearsal scale

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
	$(VENV)/bin/ruff check sslray tests analysis cluster benchmarks
	$(VENV)/bin/mypy sslray analysis cluster benchmarks

# Benchmarks (README "Benchmarks"): JSON lines under benchmarks/results/, then SUMMARY.md there.
# Measure on a quiet machine: each run waits up to 60 s for other processes to go below 0.25
# cores and records what it saw. About 45-50 minutes on the 2-core machine: training 4 methods x
# (compute, plain, Ray 1 worker, Ray 2 workers) at 3 epochs x 3 steps of batch 128 (epochs 2-3
# timed); lightly vs ours for MoCo (symmetric) and BYOL, one pair each; kNN / k-means / linear
# probe at 60k x 512; kNN / linear top-1 against wall minutes per method (the quality curve).
BENCH_OUT ?= benchmarks/results
BENCH_SMOKE_OUT ?= benchmarks/results/smoke
BENCH_TRAIN ?= --steps 3 --epochs 3 --batch 128 --size 32 --threads 2 --precision fp32
PEER_VENV ?= .peer-venv
# quality per CPU-minute (benchmarks/quality_curve.py): about 25 min for 1,2,4; the full curve
# is QUALITY_BUDGETS=1,2,4,8,15 (about 90 min)
QUALITY_BUDGETS ?= 1,2,4

bench: install peer-venv
	$(PY) -m benchmarks.train_throughput $(BENCH_TRAIN) --wait-quiet 60 \
		--out $(BENCH_OUT)/train_throughput.jsonl
	$(PY) -m benchmarks.peer_compare $(BENCH_TRAIN) --pairs 1 --wait-quiet 60 \
		--peer-python $(PEER_VENV)/bin/python --out $(BENCH_OUT)/peer_compare.jsonl
	$(PY) -m benchmarks.eval_throughput --threads 2 --wait-quiet 60 \
		--out $(BENCH_OUT)/eval_throughput.jsonl
	$(PY) -m benchmarks.sweep_overhead --trials 40 --trials2 6 \
		--out $(BENCH_OUT)/sweep_overhead.jsonl
	$(PY) -m benchmarks.quality_curve --budgets $(QUALITY_BUDGETS) --wait-quiet 60 \
		--out $(BENCH_OUT)/quality_curve.jsonl --figure $(BENCH_OUT)/quality_curve.png
	$(PY) -m benchmarks.summarize --results $(BENCH_OUT)

# Every imagenet_* config on a generated 10-class x 40/10 JPEG folder (ResNet-50, 224 px, 2 gloo
# workers, a worker killed and resumed): about 10 minutes. `make test` runs the same on a
# smaller folder (tests/rehearsal/).
rehearsal: install
	$(PY) -m benchmarks.rehearsal --out $(BENCH_OUT)/rehearsal.jsonl

# Large grids: a 1,000-trial sweep (wall time, driver memory, status table), then analysis of
# 10 / 1,000 / 10,000-trial sweeps grown from it. About 15 minutes.
scale: install
	rm -rf /tmp/sslray-load1000
	$(PY) benchmarks/load_sweep.py --trials 1000 --keep /tmp/sslray-load1000 \
		--out $(BENCH_OUT)/load_sweep.jsonl
	$(PY) -m benchmarks.analysis_scale --source /tmp/sslray-load1000/sweeps/load \
		--sizes 10,1000,10000 --out $(BENCH_OUT)/analysis_scale.jsonl

# Every script at toy sizes (tiny backbone, batch 16): checks the wiring in about 2 minutes.
# Its figures mean nothing; they go to $(BENCH_SMOKE_OUT), never over the real results.
BENCH_TOY := --batch 16 --steps 1 --epochs 2 --width 4
bench-smoke: install
	$(PY) -m benchmarks.train_throughput $(BENCH_TOY) --size 16 --modes compute,plain \
		--out $(BENCH_SMOKE_OUT)/train_throughput.jsonl
	$(PY) -m benchmarks.train_throughput $(BENCH_TOY) --size 16 --methods moco_sym \
		--modes ray1,ray2 --append --out $(BENCH_SMOKE_OUT)/train_throughput.jsonl
	$(PY) -m benchmarks.peer_compare $(BENCH_TOY) --methods moco_sym --peer-warmup 1 \
		--peer-python $(PEER_VENV)/bin/python --out $(BENCH_SMOKE_OUT)/peer_compare.jsonl
	$(PY) -m benchmarks.eval_throughput --knn-sizes 3000x64,1000x32 --queries 500 --k 50 \
		--kmeans-size 3000x64 --kmeans-k 10 --kmeans-components 10 --linear-size 3000x64 \
		--linear-test 500 --paper-epochs 3 --out $(BENCH_SMOKE_OUT)/eval_throughput.jsonl
	$(PY) -m benchmarks.summarize --results $(BENCH_SMOKE_OUT)

# The peer library's own venv (lightly pulls pytorch_lightning & co.; kept out of .venv).
peer-venv: $(PEER_VENV)/.stamp-peer

$(PEER_VENV)/.stamp-peer:
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1 lightly
	$(PEER_VENV)/bin/python -c "import lightly"
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache $(BENCH_SMOKE_OUT)
