VENV ?= .venv
PY := $(VENV)/bin/python
# Stage commands run whatever `python` comes first on PATH: make it the project's venv.
export PATH := $(abspath $(VENV))/bin:$(PATH)

# `make exps`: the experiment table with the key columns only (dvc exp show has 100+ otherwise)
EXP_COLUMNS := ^(Experiment|Created|State)$$|^(seed|device|data\.|base\.|activations\.|sae\.[a-z_]+$$|analysis\.)|^(baseline_acc|recon_acc_jumprelu|delta_acc_jumprelu|achieved_actives_val|achieved_actives_test|fvu|kl_logits|pred_flip_frac|dead_frac|dense_frac|test_acc)$$|^sae\.(purity_mean|n_high_purity|n_classes_covered|inputs_covered)$$|^sae\.probe\.(1|5)\.balanced_accuracy$$

.PHONY: install repro test sweep bench exps baseline push pull clean-venv

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

repro: install
	dvc repro

test: install
	pytest -q

sweep: install
	python bench/sweep.py $(SWEEP_ARGS)

bench: install
	python bench/bench.py

exps: install
	dvc exp show --only-changed --drop '.*' --keep '$(EXP_COLUMNS)'

# A baseline experiment of the default params made on this machine: compare your experiments against it
# (`dvc exp diff baseline-<host> <exp>`), not against the committed metrics, which another CPU type made.
baseline: install
	dvc exp run --temp -n baseline-$$(hostname -s)

# The DVC remote (see README, "Sharing results"): outputs and the run-cache, with one-line errors
push: install
	python tools/remote.py push --run-cache

pull: install
	python tools/remote.py pull --run-cache

clean-venv:
	rm -rf $(VENV)
