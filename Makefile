# edgewarden: `make demo` and `make test` set up everything they need
# (apt packages, .venv, the build) and are safe to run again.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config bpftool xdp-tools \
	iproute2 iputils-ping ethtool tshark tcpreplay nftables util-linux gcc g++ make \
	postgresql fastnetmon libdpdk-dev dpdk-dev
BUILD_INPUTS := pyproject.toml setup.py $(wildcard native/*.py native/*.pyx native/*.cpp native/*.h native/include/*.h native/dpdk/*.[ch] native/dpdk/*.py bpf/*.c bpf/*.h bpf/lab/*.c)

.PHONY: all setup os-packages build demo test bench bench-import bench-push crowdsec loadtest clean install

all: build

setup: os-packages build

# dpkg-query first so a machine that has everything never touches apt.
os-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing OS packages:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(VENV)/.stamp-deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel cffi Cython pybind11
	touch $@

# Editable install compiles the extensions and the XDP object in place.
$(VENV)/.stamp-build: $(VENV)/.stamp-deps $(BUILD_INPUTS)
	$(PY) -m pip install -q --no-build-isolation -e '.[dev]'
	touch $@

build: os-packages $(VENV)/.stamp-build

# The datapath in a lab, then the controller on SQLite (tenants, filings,
# a block list, the revision), then one case up the enforcement ladder.
demo: setup
	$(PY) -m agent.lab.demo
	@workdir=$$(mktemp -d /tmp/edgewarden-demo.XXXXXX); \
	echo; echo "== controller on SQLite in $$workdir"; \
	$(PY) -m controller.demo "$$workdir" && rc=0 || rc=$$?; rm -rf "$$workdir"; exit $$rc
	@echo; echo "== the enforcement ladder, with injected time"
	$(PY) -m controller.workflow.demo

# pytest exits 5 when it collected no tests: that is a failure, not a pass.
test: setup
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: setup
	$(PY) benchmarks/bench_datapath.py --write-results
	$(PY) benchmarks/bench_blocklist.py --write-results
	$(PY) benchmarks/bench_counters.py --write-results
	$(PY) benchmarks/bench_dpdk.py --write-results

# CrowdSec for the import benchmark, installed offline: a non-empty Central API
# credentials file written before the package is configured skips its
# registration (which needs the internet); the benchmark runs its own LAPI.
crowdsec:
	@dpkg-query -W -f='$${Status}\n' crowdsec 2>/dev/null | grep -q '^install ok installed' || { \
		mkdir -p /etc/crowdsec; \
		[ -s /etc/crowdsec/online_api_credentials.yaml ] || printf 'url: http://127.0.0.1:1/\nlogin: offline\npassword: offline\n' > /etc/crowdsec/online_api_credentials.yaml; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q crowdsec; }

# 1M-line import into the controller (SQLite, PostgreSQL) vs cscli decisions import: a few minutes.
bench-import: setup crowdsec
	$(PY) benchmarks/bench_import.py --write-results

# Push latency to 1,000 simulated agents and the two real lab agents (XDP in namespaces), an emergency block
# during a 1M-prefix snapshot, vs CrowdSec bouncers polling its LAPI: a few minutes.
bench-push: setup crowdsec
	$(PY) benchmarks/bench_push.py --agents 1000 --processes 4 --write-results

# Attack floods against the lab: a few minutes; writes benchmarks/results/.
loadtest: setup
	$(PY) benchmarks/loadtest.py --write-results

# The agent on an edge server: a virtualenv of its own under $(PREFIX)/lib,
# `edgewarden` on PATH, the unit, and the example config (never overwriting
# one that is there). Then: systemctl daemon-reload && systemctl enable --now edgewarden-agent
PREFIX ?= /usr/local
DESTDIR ?=
AGENT_VENV := $(PREFIX)/lib/edgewarden
UNIT_DIR ?= /etc/systemd/system
install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNIT_DIR) $(DESTDIR)/etc/edgewarden
	$(PYTHON) -m venv $(DESTDIR)$(AGENT_VENV)
	$(DESTDIR)$(AGENT_VENV)/bin/pip install -q --upgrade pip setuptools wheel cffi Cython pybind11
	$(DESTDIR)$(AGENT_VENV)/bin/pip install -q --no-build-isolation .
	ln -sf $(AGENT_VENV)/bin/edgewarden $(DESTDIR)$(PREFIX)/bin/edgewarden
	sed 's|/usr/local/bin/edgewarden|$(PREFIX)/bin/edgewarden|' configs/edgewarden-agent.service > $(DESTDIR)$(UNIT_DIR)/edgewarden-agent.service
	test -e $(DESTDIR)/etc/edgewarden/agent.toml || install -m 0600 configs/agent.toml $(DESTDIR)/etc/edgewarden/agent.toml
	@echo "installed; edit /etc/edgewarden/agent.toml and the policy file it names, then:"
	@echo "  systemctl daemon-reload && systemctl enable --now edgewarden-agent"

clean:
	rm -rf build *.egg-info agent/*.so agent/datapath/*.bpf.o agent/lab/*.bpf.o agent/abi_constants.py native/counters.c $(VENV)
