"""Case -> NodeResults with a resident model: batched patches, network, masks pasted back into the CT grid, overlaps resolved, measurements."""
