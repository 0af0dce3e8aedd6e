# The two entry points of the README. Both install what they need first.
.PHONY: app test install install-test bench mutants planted

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

# mutation testing (not in CI: hours on two cores); results stay in mutants/ and are saved to
# docs/mutants-results.json, so a run (on this checkout or a fresh one) tries only what changed.
# scripts/mutants_report.py prints the table docs/TESTING.md quotes.
mutants: install-test
	python3 scripts/mutants_state.py restore
	python3 -m mutmut run || true
	python3 scripts/mutants_state.py save
	python3 scripts/mutants_report.py

# the reviewer's eleven one-line bugs (issue 17), planted one at a time in a copy: each must fail its test (minutes)
planted: install-test
	python3 scripts/plant_bugs.py
