"""The network: U-Net, the model folder, tiled application of a network to a volume."""
