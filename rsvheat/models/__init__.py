"""Backbone families. Importing a family module registers its variants in :mod:`rsvheat._registry`."""
from rsvheat.models import vheat as vheat
from rsvheat.models import heracles as heracles, heracles_ts as heracles_ts
