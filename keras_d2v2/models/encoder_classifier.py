"""What the image, audio and text classifiers share: the encoder, fine-tuning optimizer set-up, saving."""

import keras

from keras_d2v2.atomic_write import AtomicSaves
from keras_d2v2.optimizers import exclude_1d_weights_from_weight_decay
from keras_d2v2.pretraining.data2vec2 import Data2Vec2


class EncoderClassifier(AtomicSaves, keras.Model):
    """Base of `ImageClassifier`, `AudioClassifier` and `TextClassifier`: a pre-trained encoder and a head.

    Subclasses set `encoder_class` and `modality`, build their head in `__init__` and pool the
    encoder's output in `call`. This class checks the arguments, builds a classifier from a
    pre-trained `Data2Vec2`, keeps 1-D weights out of weight decay in `compile`, and gives the
    reference's layer-wise learning-rate decay (`layer_decay_multipliers`).
    """

    encoder_class = None
    modality = None

    def __init__(self, *, encoder, num_classes, **kwargs):
        if not isinstance(encoder, self.encoder_class):
            raise ValueError(
                f"`encoder` must be an instance of `{self.encoder_class.__name__}` (a {self.modality} encoder), got "
                f"{type(encoder).__name__}; {type(self).__name__} classifies {self.modality} only."
            )
        encoder.check_feature_encoder("encoder")
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f"`num_classes` must be an int >= 2, got {num_classes!r}.")
        super().__init__(**kwargs)
        self.encoder = encoder
        self.num_classes = num_classes
        if not encoder.built:
            encoder.build()

    def norm_and_linear_head(self, norm_eps):
        """The reference's image fine-tuning head on pooled features: LayerNorm (`fc_norm`) and a
        linear layer (truncated-normal init, std 0.02, zero bias) to `num_classes` logits."""
        fc_norm = keras.layers.LayerNormalization(epsilon=norm_eps, dtype=self.dtype_policy, name="fc_norm")
        head = keras.layers.Dense(
            self.num_classes,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=self.dtype_policy,
            name="head",
        )
        fc_norm.build((None, self.encoder.embed_dim))
        head.build((None, self.encoder.embed_dim))
        return fc_norm, head

    @classmethod
    def from_pretrained(cls, pretrained, *, num_classes, **encoder_overrides):
        """A classifier on a copy of the student encoder of `pretrained`, a `Data2Vec2` model or the
        path of one saved with `model.save()`. `encoder_overrides` (e.g. `drop_path_rate=0.1`)
        change the copy's configuration, not its weights."""
        if isinstance(pretrained, str):
            pretrained = keras.saving.load_model(pretrained)
        if not isinstance(pretrained, Data2Vec2):
            raise ValueError(f"`pretrained` must be a `Data2Vec2` model or its path, got {type(pretrained).__name__}.")
        return cls(encoder=pretrained.export_encoder(**encoder_overrides), num_classes=num_classes)

    def compile(self, optimizer="adamw", **kwargs):
        """As `keras.Model.compile`; 1-D weights (biases, LayerNorm) are kept out of the optimizer's
        weight decay, as in the reference's fine-tuning parameter groups."""
        super().compile(optimizer=optimizer, **kwargs)
        exclude_1d_weights_from_weight_decay(self.optimizer, self.trainable_variables)

    def evaluate(self, *args, **kwargs):
        """As `keras.Model.evaluate`; without `compile()` it raises the ValueError Keras raises on
        JAX and TensorFlow (Keras' PyTorch trainer does not check, and fails on the missing optimizer)."""
        if not self.compiled:
            raise ValueError("You must call `compile()` before using the model.")
        return super().evaluate(*args, **kwargs)

    def build_from_config(self, config):
        # Every weight is created in __init__; tracing `call` on the saved input shape (Keras'
        # default) would fail for integer token ids.
        pass

    def compile_from_config(self, config):
        # Keras skips compile() on load when it is overridden, which would drop the optimizer state.
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    def layer_decay_multipliers(self, layer_decay):
        """`{variable.path: multiplier}` for `LayerDecayAdamW`, the reference's layer-wise decay.

        Block `i` of the `n` transformer blocks (prenet blocks first, then the main ones) gets
        `layer_decay ** (n - i)`; as in the reference, only the blocks are scaled: the embeddings,
        CLS token, LayerNorms outside the blocks and the head keep the full learning rate."""
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"`layer_decay` must be in (0, 1], got {layer_decay}.")
        blocks = list(self.encoder.prenet_blocks) + list(self.encoder.blocks)
        multipliers = {}
        for i, block in enumerate(blocks):
            for variable in block.trainable_variables:
                if variable.path in multipliers:
                    raise ValueError(f"Two weights share the path {variable.path!r}; rename the layers.")
                multipliers[variable.path] = layer_decay ** (len(blocks) - i)
        return multipliers

    def get_config(self):
        config = super().get_config()
        config.update(encoder=keras.saving.serialize_keras_object(self.encoder), num_classes=self.num_classes)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
