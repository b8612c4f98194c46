VENV ?= .venv
PY := $(VENV)/bin/python
# Stage commands run whatever `python` comes first on PATH: make it the project's venv.
export PATH := $(abspath $(VENV))/bin:$(PATH)

# `make exps`: the experiment table without the noise (metric columns are `file:key` when several sites' files
# share a key, so the patterns match the key after the colon) (dependency hashes, per-class accuracies, the baselines'
# and hypotheses' internals): with --only-changed, what is left are the params and key metrics that differ.
EXP_DROP := ^params\.yaml$$|^(data|src|stages|metrics|plots)/[^:]*$$|^(rev|typ|parent)$$|^(.*:)?(per_class_test_acc|hypotheses\.|selection_on_val\.|(random|neurons|neurons_p90|pca|dense_probe)\.|sae\.absorption\.(per_digit|main_silent_rate_mean|main_latents_mean)|sae\.(n_units|n_counted|firing_rate_mean|purity_median|classes_covered|top100_purity_mean|probe\.(2|5|10)\.|probe\.1\.f1)|(Executor|note|explained_variance|cosine_sim|acc_recovered|final_train_loss|final_loss|steps|knob|value|l0_val|l0_val_after|fvu_val|converged|split|min_count|high_purity|n_latents|n_live|n_features|select|selected_firing_rate_mean|selected_share_high_grade|model|hook|d_in)$$)

.PHONY: install repro test test-fast sweep bench exps baseline reset push pull clean-venv

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# `make repro ONLY='mlp-*'`: only the sites whose names match (and what they need), e.g. the MLP alone
repro: install
	dvc repro $(if $(ONLY),--glob 'analyze@$(ONLY)')

# Two workers on two cores (pytest-xdist), each taking the next test when it is free, the longest first
# (tests/conftest.py, LONGEST_FIRST); one tiny project built per run and copied to each worker, an SSH server each
test: install
	pytest -q -n 2 --dist load --maxschedchunk 1

# The inner loop: every test but the end-to-end ones (real DVC, SSH server, Chromium), in well under a minute
test-fast: install
	pytest -q -n 2 -m "not e2e"

sweep: install
	python bench/sweep.py $(SWEEP_ARGS)

bench: install
	python bench/bench.py $(BENCH_ARGS)

# Always shown, even when nothing differs (e.g. a fresh clone with no experiments yet): the knobs users turn and
# the headline metrics.
EXP_KEEP := ^(sae\.(arch|recipe|target_actives|tau)|sites\..*\.sae\..*)$$|^(.*:)?(test_acc|achieved_actives_test|fvu|kl_logits|delta_acc_jumprelu|dead_frac|dense_frac|sae\.purity_mean|sae\.n_high_purity)$$|^(.*:)?(pairs\..*\.universality_score\.sae_hungarian_mean\.U|cross_fvu_offdiag_mean)$$

exps: install
	dvc exp show --only-changed --keep '$(EXP_KEEP)' --drop '$(EXP_DROP)'

# A baseline experiment of the default params made on this machine: compare your experiments against it
# (`dvc exp diff baseline-<host> <exp>`), not against the committed metrics, which another CPU type made.
baseline: install
	dvc exp run --temp -n baseline-$$(hostname -s)

# Undo a workspace `dvc exp run -S ...` (or any edit of params.yaml): params, dvc.lock, metrics, what git tracks in
# data/ (check_params's outputs, DVC's .gitignore files) and DVC's outputs as committed; metrics and settings files an experiment
# added (a new site's) are removed. The files are taken out of git's index first, so that git must write them: DVC
# rewrites params.yaml within a second of writing git's index, and a value of the same length (sae.tau 0.2 -> 0.5)
# then leaves size and times as git recorded them, so git believes the file unchanged and a plain `git checkout
# params.yaml` skips it (seen with git 2.39 and DVC 3.67; the next `dvc exp run` then carries the stale value
# along). --allow-missing: a clone that ran only a subset (ONLY=...) has no cache for the rest, which stays absent.
RESET_GIT = params.yaml dvc.lock metrics $(shell git ls-files -- data)
reset:
	git rm -r -q --cached $(RESET_GIT)
	git checkout HEAD -- $(RESET_GIT)
	git clean -fdq metrics data/site_params
	dvc checkout -f -q --allow-missing

# The DVC remote (see README, "Sharing results"): outputs and the run-cache, with one-line errors
push: install
	python tools/remote.py push --run-cache

pull: install
	python tools/remote.py pull --run-cache

clean-venv:
	rm -rf $(VENV)
