"""Running: devices and mixed precision, the resumable data order, torchrun, progress, and
training and evaluating a fixed network."""
