"""The labelled corpus (`corpus/*.jsonl`) and how it is split into train, dev and test."""
