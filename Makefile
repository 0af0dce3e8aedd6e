# The two entry points of the README. Both install what they need first.
.PHONY: app test install install-test bench

install:
	bash scripts/install.sh

install-test:
	bash scripts/install.sh --test

app: install
	python3 -m proxyfda prepare
	python3 -m proxyfda app

test: install-test
	python3 -m pytest -q --durations=15

bench: install-test
	python3 benchmarks/bench_core.py
