"""Tests of Products.BeakerSessionDataManager."""
