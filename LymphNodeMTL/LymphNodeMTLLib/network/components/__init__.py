"""The five published methods' building blocks, one per file, each selectable from the model config (docs/methods.md)."""
