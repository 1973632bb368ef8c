"""The run config as a versioned document: what older configs lack, filled once when loaded."""
