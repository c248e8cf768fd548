"""Tests of the built-in text, image, audio and video encoder plugins."""
