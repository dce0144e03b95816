"""The training input pipeline: Ray Data streaming of shards through the TIPS views (crops, masks, augmentations)."""
