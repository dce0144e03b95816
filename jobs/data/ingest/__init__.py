"""Real datasets (WebDataset, CSV/TSV/JSONL, COCO) into shards, serially or one Ray task per tar."""
