"""Verification on .bin pair sets and the IJB-B/IJB-C protocol math."""
