from keras_d2v2.convert.fairseq import (
    fairseq_image_weight_names,
    load_fairseq_image_weights,
    read_fairseq_checkpoint,
)
