"""Helpers the test modules share (none of them imports another test module)."""
