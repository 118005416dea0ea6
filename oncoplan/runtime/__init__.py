"""What every app runs beneath its networks: bundle loading, inference backends (TensorRT, OpenVINO,
ONNX Runtime, eager PyTorch), resampling onto a study's grid."""
