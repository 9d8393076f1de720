# `make pretrain` runs the main job; `make test` runs the test suite on TensorFlow, JAX and PyTorch.
# Both set themselves up first (Debian's Fashion-MNIST package, .venv with every backend).
BACKEND ?= torch

.PHONY: setup test pretrain finetune pretrain-text docs

setup: .venv/.setup-done

.venv/.setup-done: requirements-dev.txt pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

test: setup
	bash scripts/test_all_backends.sh

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

# The docs site (mkdocs.yml, docs/): guides and the API reference from the docstrings, into site/.
# --strict turns every warning (a broken link, a docstring mkdocstrings cannot parse) into an error.
docs: setup
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict -d site
