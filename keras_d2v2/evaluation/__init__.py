from keras_d2v2.evaluation.knn import encoder_features, knn_accuracy
