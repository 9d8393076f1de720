# `make pretrain` runs the main job; `make test` runs the test suite on TensorFlow, JAX and PyTorch.
# Both set themselves up first (Debian's Fashion-MNIST package, .venv with every backend).
BACKEND ?= torch

.PHONY: setup lint test pretrain finetune pretrain-text finetune-text pretrain-audio finetune-audio docs

setup: .venv/.setup-done

.venv/.setup-done: requirements-dev.txt pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

test: setup
	bash scripts/test_all_backends.sh

# Ruff's lint and import order (pyproject.toml [tool.ruff]).
lint: setup
	.venv/bin/ruff check .

# PyTorch is the fastest backend for this model on a 2-core CPU (benchmarks/README.md);
# `make pretrain BACKEND=jax` or `BACKEND=tensorflow` runs the same recipe on the others.
pretrain: setup
	KERAS_BACKEND=$(BACKEND) .venv/bin/python recipes/pretrain_image.py

# Fine-tune what `make pretrain` saved (runs/pretrain_image.keras) against the same ViT from random init.
finetune: setup
	KERAS_BACKEND=$(BACKEND) .venv/bin/python recipes/finetune_image.py

# Text: BPE + a tiny text model on the Python docs, then a section probe (recipes/pretrain_text.py).
pretrain-text: setup
	KERAS_BACKEND=$(BACKEND) .venv/bin/python recipes/pretrain_text.py

# Fine-tune that model (and its tokenizer) on the same section task (recipes/finetune_text.py).
finetune-text: setup
	KERAS_BACKEND=$(BACKEND) .venv/bin/python recipes/finetune_text.py

# Speech: the Asterisk prompts, then probes / fine-tuning of language and voice. JAX is the fastest
# backend for the speech model on a CPU, so it is the default here unless BACKEND is given.
AUDIO_BACKEND = $(if $(filter command line environment,$(origin BACKEND)),$(BACKEND),jax)
pretrain-audio: setup
	KERAS_BACKEND=$(AUDIO_BACKEND) .venv/bin/python recipes/pretrain_audio.py

finetune-audio: setup
	KERAS_BACKEND=$(AUDIO_BACKEND) .venv/bin/python recipes/finetune_audio.py

# The docs site (mkdocs.yml, docs/): guides and the API reference from the docstrings, into site/.
# --strict turns every warning (a broken link, a docstring mkdocstrings cannot parse) into an error.
docs: setup
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict -d site
