"""What the network reads, for inference and training alike: patches sampled on a physical grid around each seed and the network's input channels."""
