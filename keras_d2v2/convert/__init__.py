from keras_d2v2.convert.fairseq import (
    fairseq_weight_names,
    load_fairseq_weights,
    read_fairseq_checkpoint,
)
