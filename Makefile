# Developer entry points. `make` alone lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

JOBS ?= 2
FORMAT_FILES = $(shell find cmd internal tests bench -type f \( -name '*.cpp' -o -name '*.hpp' \) 2>/dev/null | sort)

.PHONY: help bootstrap build release run test test-asan format format-check stack-start \
        stack-stop stack-status clean tidy check-deploy check-metrics chaos chaos-ci fuzz bench bench-smoke bench-cpu soak

help: ## Show the targets
	@echo "Targets:"
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  make %-13s %s\n", $$1, $$2}'

bootstrap: ## Install the Debian packages needed to build, test and run
	scripts/bootstrap.sh

build: bootstrap ## Configure and build the dev (Debug) preset into build/dev
	cmake --preset dev
	cmake --build --preset dev -j$(JOBS)

release: bootstrap ## Configure and build the release preset into build/release
	cmake --preset release
	cmake --build --preset release -j$(JOBS)

run: bootstrap ## Build, start NATS + PostgreSQL under .local/, run processor and DLQ worker
	cmake --preset dev
	cmake --build --preset dev -j$(JOBS) --target events-processor dlq-worker eventctl
	scripts/run-local.sh

test: ## Build dev and run all tests (unit + integration) against throw-away servers
	scripts/test.sh

test-asan: ## The same under AddressSanitizer + UndefinedBehaviorSanitizer (build/asan)
	PRESET=asan scripts/test.sh

format: ## Reformat C++ sources in cmd/ internal/ tests/ bench/ with clang-format
	@files="$(FORMAT_FILES)"; [[ -z "$$files" ]] || clang-format -i $$files

format-check: ## Fail if any C++ source is not clang-formatted
	@files="$(FORMAT_FILES)"; [[ -z "$$files" ]] || clang-format --dry-run --Werror $$files
	@echo "format-check: ok"

chaos: ## Chaos suite (kills, restarts, outages under load); CHAOS_EVENTS=100000 by default
	CTEST_ARGS="-L chaos" scripts/test.sh

bench: bootstrap ## Benchmark of docs/performance.md (release build, own servers; RUNS, EVENTS, ...)
	bench/run.sh

soak: bootstrap ## Benchmark plus a 10-minute soak at 5,000 events/s with the processor's RSS sampled (RUNS=1)
	RUNS=$${RUNS:-1} SOAK_SECONDS=$${SOAK_SECONDS:-600} bench/run.sh

bench-smoke: bootstrap ## A tiny benchmark run on the dev build, as CI runs it (checks the command works)
	SMOKE=1 PRESET=dev bench/run.sh

bench-cpu: bootstrap ## The processor's own CPU per event (decode, validate, plan), no servers
	cmake --preset release >/dev/null && cmake --build --preset release -j2 --target evp_bench_prepare_cpu
	build/release/bench/evp_bench_prepare_cpu

chaos-ci: ## A shortened chaos selection, as CI runs it (about 75 s)
	CHAOS_EVENTS=$${CHAOS_EVENTS:-3000} CTEST_ARGS="-L chaos -R (ProcessorKilled|Sigterm|PostgresRestart|NatsServerRestart|PoisonMix|DlqWorkerKilled|ConcurrentReplicas|TwoReplicas)" scripts/test.sh

fuzz: ## libFuzzer targets under ASan/UBSan, FUZZ_SECONDS per target (default 60)
	scripts/fuzz.sh $${FUZZ_SECONDS:-60}

tidy: bootstrap ## clang-tidy (.clang-tidy checks) on every C++ source; fails on any finding
	scripts/tidy.sh

check-deploy: ## Offline checks of Dockerfile, compose, Helm chart, alert rules, dashboard
	scripts/check-deploy.sh

check-metrics: ## promtool check metrics on a live endpoint: make check-metrics URL=http://127.0.0.1:8080/metrics
	scripts/check-metrics.sh $(URL)

stack-start: ## Start the local NATS + PostgreSQL stack (data kept in .local/)
	scripts/local-stack.sh start

stack-stop: ## Stop the local stack
	scripts/local-stack.sh stop

stack-status: ## Show whether the local stack runs
	scripts/local-stack.sh status

clean: ## Remove build outputs (keeps .local/ data; stack-stop first to stop servers)
	rm -rf build
