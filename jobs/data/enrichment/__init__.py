"""What is added to shards after ingestion: synthetic captions (a captioner stage) and Tag2Text-style tags."""
