"""autoresearch: an agent does ML research under a fixed budget with a metric it cannot fake."""
__version__ = "0.1.0"
