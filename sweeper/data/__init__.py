"""Data: sources -> uint8 tensors, the stratified A/B split, device-resident batches."""
