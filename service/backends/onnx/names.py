"""What a config and the V2 metadata call the ONNX family: its file and platform."""

MODEL_FILE = "model.onnx"
PLATFORM = "onnxruntime_onnx"
