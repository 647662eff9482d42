"""Backbone families. Importing a family module registers its variants in :mod:`rsvheat._registry`."""
