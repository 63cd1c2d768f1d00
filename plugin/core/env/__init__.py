"""What the engine runs on: its own Python environment, the torch device, the Ray cluster."""
