"""What a config and the V2 metadata call the torch family: its file and platform."""

MODEL_FILE = "model.pt2"
PLATFORM = "pytorch_export"
