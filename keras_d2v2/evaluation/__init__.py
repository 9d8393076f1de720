from keras_d2v2.evaluation.knn import encoder_features, knn_accuracy
from keras_d2v2.evaluation.linear_probe import linear_probe_accuracy
