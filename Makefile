# dstrain: `make demo` and `make test` on a fresh Debian/Ubuntu machine (README.md).
# The set-up step installs what is missing (launch/setup_env.sh); builds go to build/.

VENV      ?= $(HOME)/.cache/dstrain/venv
BUILD     ?= build
JOBS      ?= $(shell nproc)
MPIRUN    ?= mpirun --allow-run-as-root --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 -x OMP_NUM_THREADS=1
DEMO_DIR  ?= runs/demo

# ccache: fresh clones live at new paths, and the shared precompiled header needs these settings.
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_SLOPPINESS := pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_MAXSIZE ?= 5G
export OMP_NUM_THREADS ?= 1

.PHONY: all setup configure build demo test format clean

all: build

setup:
	@bash launch/setup_env.sh >/dev/null

$(BUILD)/build.ninja: CMakeLists.txt | setup
	cmake -S . -B $(BUILD) -G Ninja \
	  -DCMAKE_PREFIX_PATH="$$($(VENV)/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	  -DDSTRAIN_PYTHON=$(VENV)/bin/python

configure: setup $(BUILD)/build.ninja

build: configure
	cmake --build $(BUILD) -j$(JOBS)

demo: build
	@echo "[demo] training configs/tiny.toml on 2 ranks (CPU), outputs in $(DEMO_DIR) (replacing an earlier demo's)"
	@rm -rf $(DEMO_DIR)
	$(MPIRUN) -np 2 $(BUILD)/dstrain --config configs/tiny.toml --set run.dir=$(DEMO_DIR)
	@echo "[demo] metrics: $(DEMO_DIR)/metrics.jsonl"

test: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS) --timeout 900

# Lays the C++ sources out as .clang-format says (the `format` test checks it).
format:
	find base cmake launch offload runtime sharding tests -path tests/fuzz/corpus -prune -o \( -name '*.cc' \
	  -o -name '*.h' -o -name '*.cu' -o -name '*.inc' \) -print | xargs clang-format -i

clean:
	rm -rf $(BUILD)
